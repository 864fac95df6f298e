"""Split and SplitV (`tf.split`, `keras.ops.split`): one input, k outputs.

Splitting the channel (last) axis: output k's channels are the contiguous
slice [start_k, start_k + C_k) of the input's channels, so a CSP block
(split, two branches, concat) keeps each slice's channels tied to the
producer's. Splitting any other axis: every output has the input's channels
(a passthrough per output).
"""

import numpy as np

from morph_net.framework import errors
from morph_net.framework import op_handler

# op type -> (index of the value input, index of the split_dim input).
_LAYOUT = {
    'Split': (1, 0),  # Split(split_dim, value)
    'SplitV': (0, 2),  # SplitV(value, size_splits, split_dim)
}


class SplitOpHandler(op_handler.OpHandler):
  """Split / SplitV: outputs are channel slices, or passthroughs."""

  def data_inputs(self, op, view):
    del view
    return [_LAYOUT[op.type][0]]

  def analyze(self, op, ctx):
    value_index, dim_index = _LAYOUT[op.type]
    value = op.inputs[value_index]
    rank = op_handler.rank(value)
    axis = ctx.view.static_value(op.inputs[dim_index])
    if axis is None or not rank:
      raise errors.UnsupportedOpError(
          'Op %r (%s) splits %r along an axis that is not known statically '
          '(rank %s), so its outputs cannot be matched to its input '
          'channels. Split along a constant axis.'
          % (op.name, op.type, value.name, rank))
    if int(axis) % rank != rank - 1:
      for out in op.outputs:
        ctx.tie(out, value)
      return
    sizes = [ctx.channels(out) for out in op.outputs]
    if None in sizes or sum(sizes) != ctx.channels(value):
      raise errors.ChannelMismatchError(
          'Op %r (%s) splits the %s channels of %r into %s, which do not add '
          'up.' % (op.name, op.type, ctx.channels(value), value.name, sizes))
    start = 0
    for out, size in zip(op.outputs, sizes):
      ctx.tie_map(out, value, np.arange(start, start + size))
      start += size
