"""Pattern recognition as a pass: facts about ops, kept in a side table.

Some meanings are not visible from an op's type alone: this `Mul` is the
scale step of an unfused BatchNorm, that one applies a gate mask, this
`Conv2D` runs on a space-to-batch view of its input (a dilated conv). A
recognizer looks at one op (and a few ops around it) and returns a fact, or
None. `Facts` runs the recognizers registered for an op's type, once per op,
and keeps the results keyed by op name (like torch.fx's `node.meta`).

Handlers, regularizer families and the latency model look facts up; no
handler is overridden to recognize a pattern, so replacing the `Mul` handler
does not hide a BatchNorm.

Adding a pattern: a frozen dataclass for the fact, a recognizer
`(op, view) -> fact or None`, and an entry in `RECOGNIZERS`.
"""

import collections
import dataclasses

import numpy as np
import tensorflow as tf

from morph_net.framework import errors
from morph_net.framework import op_handler
from morph_net.framework import op_types

# Ops seen through when looking for a parameter behind a broadcast.
_SEE_THROUGH = ('Cast', 'Identity', 'Reshape', 'ExpandDims')
# Gate logits variables are recognized by this name (LogisticSigmoidGating
# and the graph-mode helper create them with it).
LOGITS_NAME = 'mask_logits'
# A gate's mask is a few ops from its logits (cast, compare, reshape); the
# bound keeps the search local and the pass linear overall.
_MAX_GATE_SEARCH = 48


@dataclasses.dataclass(frozen=True)
class BatchNormScale:
  """The op scales its activation input by a BatchNorm's gamma.

  Attributes:
    gamma: the rank-1 tensor holding gamma's value ([C]).
    param_inputs: input indices that are parameters, not activations.
  """
  gamma: object
  param_inputs: tuple = ()


@dataclasses.dataclass(frozen=True)
class BatchNormUnscaled:
  """The op normalizes its activation input by a BatchNorm's
  rsqrt(var + eps) with no gamma (`scale=False`): a BatchNorm's memory
  traffic, nothing to regularize.

  Attributes:
    param_inputs: input indices that are parameters, not activations.
  """
  param_inputs: tuple = ()


@dataclasses.dataclass(frozen=True)
class Gate:
  """The op multiplies an activation by a gate mask from `mask_logits`.

  Attributes:
    activation_index: the input holding the activation.
    logits: the [C] tensor holding the gate logits' value.
    param_inputs: the mask input (never walked: its sampling ops need no
      handler).
  """
  activation_index: int
  logits: object
  param_inputs: tuple = ()


@dataclasses.dataclass(frozen=True)
class SpaceToBatch:
  """A conv applied to a space-to-batch view of its input (a dilated conv).

  `tf.nn.atrous_conv2d` and Keras' `dilation_rate` trace as
  SpaceToBatchND -> conv -> BatchToSpaceND; the conv's static output shape
  counts b x b sub-images per example. Its real output is `output`, the
  BatchToSpaceND result.

  Attributes:
    block: the block shape (the dilation rate per spatial axis).
    output: the BatchToSpaceND output (per-example positions).
  """
  block: tuple
  output: object


def _see_through(tensor):
  op = tensor.op
  while op.type in _SEE_THROUGH and op.inputs:
    tensor = op.inputs[0]
    op = tensor.op
  return tensor


def is_channel_vector(tensor, channels=None):
  """[C] or [1, ..., 1, C]: a per-channel parameter or mask broadcast."""
  shape = tensor.shape
  if shape.rank is None or shape.rank == 0:
    return False
  dims = shape.as_list()
  if channels is not None and dims[-1] != channels:
    return False
  return all(d == 1 for d in dims[:-1])


def is_parameter_vector(tensor, view, channels=None):
  """A channel vector (by shape) that does not depend on the data: at a
  batch of 1 and 1x1 resolution an activation has the same shape."""
  return (is_channel_vector(tensor, channels)
          and not view.depends_on_input(tensor, shapes=True))


def _batch_norm_fused(op, view):
  """FusedBatchNorm*: gamma is input 1."""
  del view
  gamma = op.inputs[1]
  if op_handler.rank(gamma) != 1:
    return None
  return BatchNormScale(gamma, param_inputs=(1, 2, 3, 4))


def _batch_norm_unfused(op, view):
  """`x * (rsqrt(var + eps) * gamma)`: what Keras 3 and
  `tf.nn.batch_normalization` trace; `x * rsqrt(var + eps)` without a gamma
  (`scale=False`) is a `BatchNormUnscaled`.

  Keras reshapes the parameters to [1, 1, 1, C] when `axis` is explicit, so
  the scale may be a broadcast of a Reshape of gamma. The `Mul` that folds
  the scale into the mean (`mean * scale`, both channel vectors) is no
  BatchNorm: its other operand is not an activation.
  """
  if len(op.inputs) != 2:
    return None
  out = op.outputs[0]
  if not op_handler.rank(out) or is_parameter_vector(out, view):
    return None

  def per_channel(vector):
    return (op_handler.rank(vector) == 1
            and view.channels(out) == vector.shape.as_list()[0])

  for i in (0, 1):
    scale, other = op.inputs[i], op.inputs[1 - i]
    if (not is_parameter_vector(scale, view)
        or other.shape.rank != out.shape.rank):
      continue
    scale = _see_through(scale)
    if scale.op.type == 'Rsqrt' and per_channel(scale):
      return BatchNormUnscaled(param_inputs=(i,))
    if scale.op.type != 'Mul':
      continue
    a, b = (_see_through(t) for t in scale.op.inputs)
    gamma = b if a.op.type == 'Rsqrt' else a if b.op.type == 'Rsqrt' else None
    if gamma is not None and per_channel(gamma):
      return BatchNormScale(gamma, param_inputs=(i,))
  return None


def _is_logits(tensor, view, channels):
  """A [C] value of a variable named *mask_logits*."""
  if tensor.shape.rank != 1 or tensor.shape.as_list()[0] != channels:
    return False
  if view.eager:
    var = view.variable(tensor)
    return var is not None and LOGITS_NAME in var.name
  source = view.source_of(tensor)
  return source.type in op_types.VARIABLE_OPS and LOGITS_NAME in source.name


def _find_logits(mask, view, channels):
  """Breadth-first search up from the mask (never the activation)."""
  queue = collections.deque([mask])
  seen = {mask.name}
  visited = 0
  while queue and visited < _MAX_GATE_SEARCH:
    tensor = queue.popleft()
    if _is_logits(tensor, view, channels):
      return tensor
    visited += 1
    for t in tensor.op.inputs:
      if t.name not in seen:
        seen.add(t.name)
        queue.append(t)
  return None


def _gate(op, view):
  """`activation * mask`, the mask computed from a `mask_logits` variable
  (LogisticSigmoidGating in Keras traces, the graph-mode helper's gates)."""
  if len(op.inputs) != 2 or not op.outputs:
    return None
  out = op.outputs[0]
  rank = op_handler.rank(out)
  channels = view.channels(out)
  if not rank or rank < 2 or channels is None:
    return None
  for i in (0, 1):
    act, mask = op.inputs[i], op.inputs[1 - i]
    if (op_handler.rank(act) != rank or view.channels(act) != channels
        or not is_channel_vector(mask, channels)
        or is_parameter_vector(act, view, channels)):
      continue
    logits = _find_logits(mask, view, channels)
    if logits is not None:
      return Gate(i, logits, param_inputs=(1 - i,))
  return None


# A 1-D conv runs as a 2-D one on an added axis: ExpandDims before it,
# Squeeze after it, between SpaceToBatchND and BatchToSpaceND.
_INTO_CONV = ('Identity', 'ExpandDims')
_OUT_OF_CONV = ('Identity', 'Squeeze')


def _through_into_conv(tensor):
  while tensor.op.type in _INTO_CONV and tensor.op.inputs:
    tensor = tensor.op.inputs[0]
  return tensor


def _consumers_out_of_conv(tensor):
  """The consumers of `tensor`, looking through Identity and Squeeze."""
  found = []
  for c in tensor.consumers():
    if c.type in _OUT_OF_CONV and c.outputs:
      found += _consumers_out_of_conv(c.outputs[0])
    else:
      found.append(c)
  return found


def _dilation(op, resolve, static_value):
  """(SpaceToBatchND producer, its block, the BatchToSpaceND output with
  the same block or None) of a conv reading a space-to-batch tensor (a 1-D
  conv: with ExpandDims and Squeeze around it); None for any other op."""
  if not op.inputs:
    return None
  producer = resolve(_through_into_conv(op.inputs[0]).op)
  if producer.type != 'SpaceToBatchND':
    return None
  block = static_value(producer.inputs[1])
  for c in _consumers_out_of_conv(op.outputs[0]):
    if c.type == 'BatchToSpaceND' and block is not None and np.array_equal(
        static_value(c.inputs[1]), block):
      return producer, tuple(int(b) for b in np.ravel(block)), c.outputs[0]
  return producer, block, None


def _space_to_batch(op, view):
  """A conv between SpaceToBatchND and BatchToSpaceND with one block shape.

  Raises:
    UnsupportedOpError: the conv reads a space-to-batch tensor but its
      result does not go back through a BatchToSpaceND of the same block
      (its positions per example would be unknown).
  """
  found = _dilation(op, view.resolve, view.static_value)
  if found is None:
    return None
  producer, block, output = found
  if output is not None:
    return SpaceToBatch(block, output)
  raise errors.UnsupportedOpError(
      'Op %r (%s) reads a SpaceToBatchND tensor (%r), but its output does '
      'not go through a BatchToSpaceND with the same block shape, so its '
      'output positions per example are unknown. Dilated convs (Keras '
      'dilation_rate, tf.nn.atrous_conv2d) trace as SpaceToBatchND -> conv '
      '-> BatchToSpaceND; other uses of SpaceToBatchND are not supported.'
      % (op.name, op.type, producer.name))


def dilated_output(op):
  """(block, BatchToSpaceND output) of a conv run on a space-to-batch
  view of its input, read from the graph alone (the op-level resource
  functions have no view); None for any other op."""
  found = _dilation(op, lambda o: o, tf.get_static_value)
  return None if found is None or found[2] is None else found[1:]


# Convs a dilation runs through SpaceToBatchND (not transposed ones).
_CONVS = op_types.CONVS + op_types.DEPTHWISE_CONVS

# Op type -> recognizers, tried in order; each op keeps every fact found.
RECOGNIZERS = {
    'Mul': (_batch_norm_unfused, _gate),
    **{t: (_batch_norm_fused,) for t in op_types.BATCH_NORMS},
    **{t: (_space_to_batch,) for t in _CONVS},
}


class Facts:
  """The side table: op name -> facts, computed once per op on first ask.

  Args:
    view: the `GraphView` the ops come from.
    recognizers: op type -> recognizers; `RECOGNIZERS` if None (copied).
  """

  def __init__(self, view, recognizers=None):
    self._view = view
    self._recognizers = dict(RECOGNIZERS if recognizers is None
                             else recognizers)
    self._table = {}

  def of(self, op):
    """Every fact recorded for `op` (a tuple, maybe empty)."""
    facts = self._table.get(op.name)
    if facts is None:
      found = (r(op, self._view) for r in self._recognizers.get(op.type, ()))
      facts = tuple(f for f in found if f is not None)
      self._table[op.name] = facts
    return facts

  def first(self, op, kind):
    """The first fact of type `kind` recorded for `op`, or None."""
    for fact in self.of(op):
      if isinstance(fact, kind):
        return fact
    return None

  def param_inputs(self, op):
    """Input indices that facts mark as parameters (never walked)."""
    return frozenset(i for f in self.of(op)
                     for i in getattr(f, 'param_inputs', ()))

  def items(self):
    """(op name, facts) for every op asked about that has facts."""
    return [(name, f) for name, f in self._table.items() if f]
