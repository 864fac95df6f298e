"""Reshape: passthrough, splitting/merging channel axes, or a leaf.

* Only axes before the channel axes merged or split ([N, 1, 1, C] -> [N, C]):
  passthrough.
* The trailing axes merged into one ([N, H, W, C] -> [N, H*W*C], Flatten;
  attention's [N, T, H, d] -> [N, T, H*d]): merged feature m is the channel
  its row-major coordinates fall on. With channels on the last axis only,
  that is channel m % C, so every copy of a channel shares its group and a
  Dense after Flatten costs H*W*alive_C inputs; with channels (h, j) on the
  last two axes it is the same channel, one to one.
* Channel axes reshaped among themselves ([N, T, H*d] -> [N, T, H, d], a
  head split; [N, T, H, d] -> [N, T, K, G, d], query heads grouped by
  key/value head): the new axes all hold channels, one to one in row-major
  order (so a head split keeps heads whole for the attention that follows).
* Anything else mixes channels across axes: a leaf.
"""

import numpy as np

from morph_net.framework import op_handler


class ReshapeOpHandler(op_handler.ValueOpHandler):

  handles_channel_axes = True

  def analyze(self, op, ctx):
    inp, out = op.inputs[0], op.outputs[0]
    in_shape, out_shape = ctx.view.shape(inp), ctx.view.shape(out)
    if not in_shape or not out_shape or ctx.channels(inp) is None:
      return
    per_row = [None if None in shape[1:] else int(np.prod(shape[1:]))
               for shape in (in_shape, out_shape)]
    dense = (min(len(in_shape), len(out_shape)) == 2  # Dense on N-D input
             and in_shape[-1] == out_shape[-1])
    if None not in per_row and per_row[0] != per_row[1] and not dense:
      op_handler.moves_examples(op, ctx, 'reshapes into or out of the batch '
                                'axis (%s -> %s)' % (in_shape, out_shape))
    in_axes = [a % len(in_shape) for a in ctx.channel_axes(inp)]
    first = in_axes[0]
    # Only axes before the channel axes change: the same channel axes.
    tail = len(in_shape) - first
    if (len(out_shape) >= tail and in_shape[first:] == out_shape[-tail:]
        and None not in in_shape[first:]):
      ctx.set_channel_axes(out, [a - len(in_shape) for a in in_axes])
      ctx.tie(out, inp)
      return
    prefix = _common_prefix(in_shape, out_shape)
    if prefix < 1:
      return  # the batch axis takes part: channels mix across examples
    in_tail, out_tail = in_shape[prefix:], out_shape[prefix:]
    if None in in_tail or None in out_tail:
      return
    kept = [a for a in in_axes if a < prefix]
    moved = [a for a in in_axes if a >= prefix]
    if not moved:  # only position axes after them are reshaped
      ctx.set_channel_axes(out, [a - len(out_shape) for a in kept])
      ctx.tie(out, inp)
      return
    if len(out_tail) == 1 and len(in_tail) > 1:  # merge
      ctx.set_channel_axes(out, [a - len(out_shape) for a in kept] + [-1])
      self._tie_merge(ctx, out, inp, in_shape, in_axes, prefix)
    elif moved == list(range(prefix, len(in_shape))):
      # Only channel axes are reshaped (a head split [T, H*d] -> [T, H, d],
      # grouped-query heads [T, H, d] -> [T, K, G, d]): the row-major order
      # of the channels is unchanged, one to one.
      ctx.set_channel_axes(
          out, [a - len(out_shape) for a in kept]
          + list(range(-len(out_tail), 0)))
      ctx.tie(out, inp)

  @staticmethod
  def _tie_merge(ctx, out, inp, in_shape, in_axes, prefix):
    """Merged feature m of the output <- the input channel it came from."""
    out_dims = [in_shape[a] for a in in_axes if a < prefix] + [
        int(np.prod(in_shape[prefix:], dtype=np.int64))]
    coords = np.indices(out_dims).reshape(len(out_dims), -1)
    tail_coords = np.unravel_index(coords[-1], in_shape[prefix:])
    in_coords = []
    k = 0
    for a in in_axes:
      if a < prefix:
        in_coords.append(coords[k])
        k += 1
      else:
        in_coords.append(tail_coords[a - prefix])
    mapping = np.ravel_multi_index(in_coords, [in_shape[a] for a in in_axes])
    ctx.tie_map(out, inp, mapping)


def _common_prefix(in_shape, out_shape):
  """How many leading axes match one to one (the batch may be unknown)."""
  prefix = 0
  while (prefix < min(len(in_shape), len(out_shape)) - 1
         and in_shape[prefix] == out_shape[prefix]):
    prefix += 1
  return prefix
