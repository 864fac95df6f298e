"""The cost floor: the lowest cost a regularizer can ever report.

With every source dead (each source variable at a value its own alive rule
calls dead: zeros for BatchNorm gammas and group-lasso kernels, very
negative logits for gates) the cost is what the channels no source can
remove still cost: the data's input channels, the outputs' channels, and
layers the family does not regularize (a conv with no BatchNorm after it,
for Gamma regularizers). A `target_cost` under that floor cannot be
reached: the controller would raise the strength without end, set every
source to 0 and leave the cost at the floor.

The floor is evaluated by the regularizer's own cost machinery
(`OpRegularizerManager.substituted_sources`, then `get_cost` and
`per_op_costs`), so it follows every cost model, tie and decorator exactly
as `get_cost` does. `check_target` refuses such a target when the
regularizer is wrapped; `FloorMonitor` warns during `fit` when the floor
changes (e.g. a `regularizer_decorator` that pins channels alive) or when
the target is moved under it.
"""

import math
import warnings

import keras
import numpy as np
import tensorflow as tf

__all__ = ['Floor', 'FloorMonitor', 'check_target', 'cost_floor']

# A gate logit this low has probability 0 in float16 and float32.
_DEAD_LOGIT = -1e4
# Floors closer than this (relative) are the same floor.
_SAME = 1e-6
# How many holders a message names.
_NAMED = 5


class Floor:
  """A regularizer's cost with every source dead, and what holds it up.

  Attributes:
    cost: the floor, in the regularizer's unit.
    holders: [(name, cost, alive_in, alive_out)] of the ops still costing
      something at the floor, largest first; `name` is the Keras layer key
      (or the op name where no layer owns the op); alive counts are the
      channels no source can remove (None for an op that is not a conv or
      matmul, e.g. an activation's memory traffic under a latency cost).
    cost_name: the regularizer's `cost_name`.
  """

  def __init__(self, cost, holders, cost_name):
    self.cost = float(cost)
    self.holders = holders
    self.cost_name = cost_name

  def describe(self):
    """'conv1 9,216 FLOPs (3 input and 32 output channels ...), ...'."""
    if not self.holders:
      return 'no op'
    parts = []
    for name, cost, a_in, a_out in self.holders[:_NAMED]:
      text = '%s %s %s' % (name, _number(cost), self.cost_name)
      if a_in is not None:  # a compute op (not a latency-only op)
        text += (' (%s input and %s output channels no source can remove)'
                 % (_number(a_in), _number(a_out)))
      parts.append(text)
    more = len(self.holders) - _NAMED
    if more > 0:
      parts.append('and %d more op%s' % (more, 's' if more > 1 else ''))
    return '; '.join(parts)


def _number(value):
  value = float(value)
  return ('{:,}'.format(int(round(value))) if abs(value) >= 1 and
          value == round(value) else '%.4g' % value)


def _parts(regularizer):
  """[(part, weight)]: a CombinedRegularizer's parts, or the regularizer."""
  if hasattr(regularizer, 'regularizers') and hasattr(regularizer, 'weights'):
    return list(zip(regularizer.regularizers, regularizer.weights))
  return [(regularizer, 1.0)]


def supported(regularizer):
  """Whether the floor can be evaluated: every part's manager substitutes
  source values and its costs read live variables (a Keras model or a
  `tf.function`, not `tf.compat.v1` graph ops)."""
  for part, _ in _parts(regularizer):
    manager = getattr(part, 'op_regularizer_manager', None)
    view = getattr(manager, 'view', None)
    if (view is None or not view.eager or
        not hasattr(manager, 'substituted_sources') or
        not hasattr(part, 'per_op_costs')):
      return False
  return True


def _alive_count(source, value):
  """How many of the source's channels its alive rule calls alive at
  `value` (its own batch_vectors, as the cost reads them)."""
  cls = source.regularizer_cls
  if getattr(cls, 'takes_variables', False):
    _, alive = cls.batch_vectors([value], [source.setting], [source.param])
  else:
    _, alive = cls.batch_vectors([value], [source.setting])
  return int(np.sum(np.asarray(alive)))


def dead_value(source):
  """A value of the source's variable with as few alive channels as its
  alive rule allows: zeros (gammas, kernels) or very negative logits
  (gates). A gate keeping its first channel keeps it; a gate alive at any
  probability (alive_threshold=0) stays alive."""
  value = tf.convert_to_tensor(source.param)
  candidates = [tf.zeros_like(value),
                tf.fill(tf.shape(value), tf.constant(_DEAD_LOGIT, value.dtype))]
  counts = [_alive_count(source, c) for c in candidates]
  return candidates[int(np.argmin(counts))]


def _layer_names(manager):
  """{compute op name: layer key} from the manager's layer table."""
  names = {}
  for key, entry in manager.layers(include_depthwise=True).items():
    for c in entry.computes:
      names[c.op.name] = key
  return names


def _holders(part, weight):
  """[(name, weighted cost, alive_in, alive_out)] at the floor (call it
  inside the substitution)."""
  manager = part.op_regularizer_manager
  costs = part.per_op_costs()
  alive = np.asarray(manager.class_vectors()[1])
  computes = {c.op.name: c for c in manager.compute_ops}
  names = _layer_names(manager)
  by_name = {}
  for op_name, cost in costs.items():
    if not cost > 0:
      continue
    c = computes.get(op_name)
    a_in = a_out = None
    if c is not None:
      a_in = float(alive[manager.class_indices(c.input)].sum())
      a_out = float(alive[manager.class_indices(c.output)].sum())
    name = names.get(op_name, op_name)
    total, i, o = by_name.get(name, (0.0, None, None))
    by_name[name] = (total + weight * cost, _max(i, a_in), _max(o, a_out))
  return [(n, c, i, o) for n, (c, i, o) in by_name.items()]


def _max(a, b):
  return b if a is None else a if b is None else max(a, b)


def cost_floor(regularizer):
  """The `Floor` of `regularizer`, or None where it cannot be evaluated
  (see `supported`)."""
  if not supported(regularizer):
    return None
  manager = regularizer.op_regularizer_manager
  values = [(s.param, dead_value(s)) for s in manager.sources]
  with manager.substituted_sources(values):
    cost = float(regularizer.get_cost())
    holders = []
    for part, weight in _parts(regularizer):
      holders.extend(_holders(part, weight))
  holders.sort(key=lambda h: -h[1])
  return Floor(cost, holders, regularizer.cost_name)


def _unreachable(target, floor):
  return target < floor.cost * (1.0 - _SAME)


def _family_hint(regularizer):
  hints = []
  for part, _ in _parts(regularizer):
    family = getattr(part, 'family', None)
    if family is not None and family.sources_description not in hints:
      hints.append('%s regularizers prune only the channels of their '
                   'sources: %s' % (family.name, family.sources_description))
  return '; '.join(hints)


def unreachable_message(target, floor, regularizer):
  """Why `target` cannot be reached, and what to do."""
  hint = _family_hint(regularizer)
  return (
      'target_cost=%s is below the lowest %s this network can reach, %s '
      '(its cost with every regularized channel dead): the strength would '
      'rise without end, every source would go to 0 and the cost would stay '
      'at %s. What holds the floor up: %s. Pass target_cost >= %s, or make '
      'those channels prunable%s.'
      % (_number(target), floor.cost_name, _number(floor.cost),
         _number(floor.cost), floor.describe(), _number(floor.cost),
         ' (%s)' % hint if hint else ''))


def check_target(regularizer, target):
  """Raises ValueError if `target` is under the regularizer's floor.

  Returns the `Floor` (None where it cannot be evaluated).
  """
  floor = cost_floor(regularizer)
  if floor is not None and _unreachable(float(target), floor):
    raise ValueError(unreachable_message(target, floor, regularizer))
  return floor


class FloorMonitor(keras.callbacks.Callback):
  """Warns when the cost floor changes, or the target goes under it.

  The floor is evaluated when training begins and after every epoch (one
  what-if cost evaluation each). A warning names the old and new floor and
  what holds it up; if the target (read from `controller.target_cost`, so a
  target moved during training counts) is under the floor, it says so.

  Args:
    regularizer: the network regularizer being trained.
    controller: the `budget.StrengthController` (its `target_cost`).
    floor: the floor already evaluated (e.g. by `check_target`), or None.
  """

  def __init__(self, regularizer, controller, floor=None):
    super().__init__()
    self._regularizer = regularizer
    self._controller = controller
    self._floor = floor
    self._warned_target = None
    self.warnings = []  # every message issued, in order

  @property
  def floor(self):
    """The last floor evaluated (a `Floor`), or None."""
    return self._floor

  def _warn(self, message):
    self.warnings.append(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)

  def _check(self):
    floor = cost_floor(self._regularizer)
    if floor is None:
      return
    previous, self._floor = self._floor, floor
    target = float(self._controller.target_cost)
    below = _unreachable(target, floor)
    if previous is not None and not math.isclose(
        previous.cost, floor.cost, rel_tol=_SAME):
      self._warn(
          'The lowest %s this network can reach (every regularized channel '
          'dead) changed from %s to %s; it is held up by: %s.%s'
          % (floor.cost_name, _number(previous.cost), _number(floor.cost),
             floor.describe(), (' target_cost=%s is now below it and cannot '
                                'be reached.' % _number(target))
             if below else ''))
      self._warned_target = target if below else None
      return
    if below and self._warned_target != target:
      self._warned_target = target
      self._warn(unreachable_message(target, floor, self._regularizer))

  def on_train_begin(self, logs=None):
    self._check()

  def on_epoch_end(self, epoch, logs=None):
    self._check()
