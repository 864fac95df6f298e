"""GatherV2 / ResourceGather: embedding lookups and gathers of activations.

* From a weight (an embedding table [V, D] looked up by integer ids): the
  output's D channels are new, like a layer's output; a lookup costs no
  FLOPs and reads no activation, so nothing is walked or counted.
* From an activation, along an axis other than the channel axis (tokens,
  positions): output channel i is input channel i.
* From an activation along the channel axis with constant indices: output
  channel j is input channel indices[j].
"""

import numpy as np

from morph_net.framework import errors
from morph_net.framework import op_handler

_WEIGHT_SOURCES = ('Const', 'VarHandleOp', 'VariableV2', 'Variable')


def _is_weight(tensor, view):
  return (view.variable(tensor) is not None
          or view.source_of(tensor).type in _WEIGHT_SOURCES)


class GatherOpHandler(op_handler.OpHandler):
  """GatherV2(params, indices, axis) and ResourceGather(resource, indices)."""

  def data_inputs(self, op, view):
    if op.type == 'ResourceGather' or _is_weight(op.inputs[0], view):
      return []
    return [0] if op_handler.is_float(op.inputs[0]) else []

  def analyze(self, op, ctx):
    if not self.data_inputs(op, ctx.view):
      return  # an embedding lookup: new channels, no cost
    params, out = op.inputs[0], op.outputs[0]
    rank = op_handler.rank(params)
    axis = ctx.view.static_value(op.inputs[2])
    if axis is None or not rank:
      raise errors.UnsupportedOpError(
          'Op %r gathers from activation %r along an axis that is not known '
          'statically, so its channels cannot be matched. Gather along a '
          'constant axis.' % (op.name, params.name))
    if int(axis) % rank != rank - 1:
      ctx.tie(out, params)
      return
    indices = ctx.view.static_value(op.inputs[1])
    if indices is None or np.ndim(indices) != 1:
      raise errors.UnsupportedOpError(
          'Op %r gathers channels of %r with indices that are not a constant '
          'vector, so its output channels cannot be matched to its input '
          'channels.' % (op.name, params.name))
    ctx.tie_map(out, params, np.asarray(indices, np.int64))
