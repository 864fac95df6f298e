"""GatherV2 / ResourceGather: embedding lookups and gathers of activations.

* From a weight (an embedding table [V, D] looked up by integer ids): the
  output's D channels are new, like a layer's output; a lookup costs no
  FLOPs and reads no activation, so nothing is walked or counted.
* From an activation, along an axis other than the channel axis (tokens,
  positions): output channel i is input channel i.
* From an activation along the channel axis with constant indices: output
  channel j is input channel indices[j] (with channels on several axes,
  indices pick along one of them).
"""

import numpy as np

from morph_net.framework import errors
from morph_net.framework import op_handler
from morph_net.framework import op_types


class GatherOpHandler(op_handler.OpHandler):
  """GatherV2(params, indices, axis) and ResourceGather(resource, indices).

  Channels may span several axes (heads of attention scores, as DeBERTa's
  relative-position gathers have them): an axis that is not gathered keeps
  its place, counted past the indices' axes that replace the gathered one.
  """

  handles_channel_axes = True

  def data_inputs(self, op, view):
    if op_types.is_embedding_lookup(op, view):
      return []
    return [0] if op_handler.is_float(op.inputs[0]) else []

  def analyze(self, op, ctx):
    if not self.data_inputs(op, ctx.view):
      return  # an embedding lookup: new channels, no cost
    params, out = op.inputs[0], op.outputs[0]
    rank = op_handler.rank(params)
    axis = ctx.view.static_value(op.inputs[2])
    if axis is None or not rank or op_handler.rank(out) is None:
      raise errors.UnsupportedOpError(
          'Op %r gathers from activation %r along an axis that is not known '
          'statically, so its channels cannot be matched. Gather along a '
          'constant axis.' % (op.name, params.name))
    axis = int(axis) % rank
    axes = [a % rank for a in ctx.channel_axes(params)]
    added = op_handler.rank(out) - rank  # index axes replacing `axis`
    if axis not in axes:
      ctx.set_channel_axes(out, [
          (a if a < axis else a + added) - op_handler.rank(out)
          for a in axes])
      ctx.tie(out, params)
      return
    indices = ctx.view.static_value(op.inputs[1])
    if indices is None or np.ndim(indices) != 1 or op.get_attr(
        'batch_dims'):
      raise errors.UnsupportedOpError(
          'Op %r gathers channels of %r with indices that are not a constant '
          'vector, so its output channels cannot be matched to its input '
          'channels.' % (op.name, params.name))
    shape = ctx.view.shape(params)
    ctx.nodes(params)  # raises if the channel count is not static
    ctx.set_channel_axes(out, [a - rank for a in axes])
    index = np.arange(ctx.channels(params)).reshape([shape[a] for a in axes])
    index = np.take(index, np.asarray(indices, np.int64),
                    axis=axes.index(axis))
    ctx.tie_map(out, params, index.ravel())
