"""Logistic-sigmoid gates as regularizer sources (the FiGS family).

A gate is the `Mul` of an activation by a per-channel mask ([C] or
[1, ..., 1, C]) computed from a `mask_logits` variable. The mask is
recognized by its ancestry, not by op names: a short backward search from
the mask operand (never from the activation) looks for the value of a
variable whose name contains `mask_logits` and whose shape is [C]. This
finds `LogisticSigmoidGating` in Keras inference traces (mask =
1[logits > 0], read from a captured variable) and the graph-mode helper's
gates (sampled or deterministic mask, read from a `tf.compat.v1` variable).
The mask's producers are never walked, so the sampling ops need no handler.

Any other `Mul` is an ordinary elementwise op.
"""

import collections

from morph_net.framework import grouping_op_handlers
from morph_net.framework import op_handler
from morph_net.framework import op_handlers

_LOGITS_NAME = 'mask_logits'
_VARIABLE_OPS = ('VarHandleOp', 'VariableV2', 'Variable')
# The mask is a few ops from its logits (cast, compare, keep-first, reshape);
# the bound keeps the search local and linear overall.
_MAX_SEARCH_OPS = 48

Gate = collections.namedtuple('Gate', ['activation_index', 'logits'])


def _is_channel_vector(tensor, channels):
  shape = tensor.shape
  if shape.rank is None or shape.rank == 0:
    return False
  dims = shape.as_list()
  return dims[-1] == channels and all(d == 1 for d in dims[:-1])


def _is_logits(tensor, view, channels):
  """A [C] value of a variable named *mask_logits*."""
  if tensor.shape.rank != 1 or tensor.shape[0] != channels:
    return False
  if view.eager:
    var = view.variable(tensor)
    return var is not None and _LOGITS_NAME in var.name
  source = view.source_of(tensor)
  return source.type in _VARIABLE_OPS and _LOGITS_NAME in source.name


def _find_logits(mask, view, channels):
  """Breadth-first search up from the mask for the gate's logits."""
  queue = collections.deque([mask])
  seen = {mask.name}
  visited = 0
  while queue and visited < _MAX_SEARCH_OPS:
    tensor = queue.popleft()
    if _is_logits(tensor, view, channels):
      return tensor
    visited += 1
    for t in tensor.op.inputs:
      if t.name not in seen:
        seen.add(t.name)
        queue.append(t)
  return None


def find_gate(op, view):
  """The `Gate` if `op` (a Mul) multiplies an activation by a gate mask."""
  if len(op.inputs) != 2 or not op.outputs:
    return None
  out = op.outputs[0]
  rank = op_handler.rank(out)
  channels = view.channels(out)
  if not rank or rank < 2 or channels is None:
    return None
  for act_index in (0, 1):
    act, mask = op.inputs[act_index], op.inputs[1 - act_index]
    if (op_handler.rank(act) != rank or view.channels(act) != channels
        or not _is_channel_vector(mask, channels)
        or _is_channel_vector(act, channels)):
      continue
    logits = _find_logits(mask, view, channels)
    if logits is not None:
      return Gate(act_index, logits)
  return None


class LogisticSigmoidSourceOpHandler(grouping_op_handlers.ElementwiseOpHandler):
  """`Mul`: a gate source when it applies a gate mask, else elementwise.

  The gate's output channels are its activation's channels (tied) and carry
  a `LogisticSigmoidRegularizer` over the logits.

  Args:
    alive_threshold, regularize_on_mask, mask_as_alive_vector: see
      `LogisticSigmoidRegularizer`.
    regularizer_cls: defaults to `LogisticSigmoidRegularizer`.
  """

  def __init__(self, alive_threshold=0.1, regularize_on_mask=True,
               mask_as_alive_vector=True, regularizer_cls=None):
    if regularizer_cls is None:
      from morph_net.op_regularizers import logistic_sigmoid_regularizer  # pylint: disable=g-import-not-at-top
      regularizer_cls = logistic_sigmoid_regularizer.LogisticSigmoidRegularizer
    self.setting = (float(alive_threshold), bool(regularize_on_mask),
                    bool(mask_as_alive_vector))
    self.regularizer_cls = regularizer_cls

  def data_inputs(self, op, view):
    gate = find_gate(op, view)
    if gate is None:
      return super().data_inputs(op, view)
    return [gate.activation_index]

  def analyze(self, op, ctx):
    gate = find_gate(op, ctx.view)
    if gate is None:
      super().analyze(op, ctx)
      return
    ctx.tie(op.outputs[0], op.inputs[gate.activation_index])
    ctx.add_source(op, op.outputs[0], self.regularizer_cls,
                   ctx.view.param(gate.logits), self.setting)


def logistic_sigmoid_op_handler_dict(alive_threshold=0.1,
                                     regularize_on_mask=True,
                                     mask_as_alive_vector=True):
  """The table for LogisticSigmoid regularizers: gates are the sources."""
  table = op_handlers.default_op_handler_dict()
  table['Mul'] = LogisticSigmoidSourceOpHandler(
      alive_threshold, regularize_on_mask, mask_as_alive_vector)
  return table
