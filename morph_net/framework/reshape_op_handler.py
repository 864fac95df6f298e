"""Reshape: passthrough, splitting/merging channel axes, or a leaf.

* Only axes before the channel axes merged or split ([N, 1, 1, C] -> [N, C]):
  passthrough.
* Otherwise the axes after the longest common prefix are cut into blocks,
  the shortest runs of input and output axes with equal products. A block
  without channels is positions. In a block with channels every element
  keeps the channel it came from, and each output axis is, by the factors
  it takes from the input (a channel axis, a position axis, or a mixed
  axis's own factors, `ChannelGraphBuilder.axis_factors`):
  - channels only: a channel axis ([T, H*d] <-> [T, H, d], a head split
    or merge; [T, H, d] -> [T, K, G, d], query heads grouped by key/value
    head: one to one in row-major order, so heads stay whole);
  - positions only: a position axis;
  - both: a mixed channel axis, one node per coordinate (Flatten's
    [H, W, C] -> [H*W*C]: merged feature m is channel m % C, so a Dense
    after it costs H*W*alive_C inputs; Keras's einsum lowering merges query
    groups with tokens, [K, G, T, d] -> [K, G*T, d]). Its factors are
    recorded, so a reshape that splits it back ([K, G*T, S] ->
    [K, G, T, S]) makes the token factor a position axis again.
  An output axis that cuts through an input factor unevenly holds channels
  (a superset of the truth, never a missed tie).
* The batch axis taking part mixes examples: a leaf.
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
    if None in in_tail or None in out_tail or 0 in in_tail:
      return
    kept = [a for a in in_axes if a < prefix]
    if all(a in kept for a in in_axes):  # only positions after them
      ctx.set_channel_axes(out, [a - len(out_shape) for a in kept])
      ctx.tie(out, inp)
      return
    blocks = _blocks(in_tail, out_tail)
    if blocks is not None:
      _tie_blocks(ctx, inp, out, in_shape, out_shape, in_axes, prefix,
                  blocks)


def _tie_blocks(ctx, inp, out, in_shape, out_shape, in_axes, prefix, blocks):
  """Channel axes of `out` and the tie of every element to its channel."""
  rank_in, rank_out = len(in_shape), len(out_shape)
  factors_in = ctx.axis_factors(inp)
  out_axes, out_factors, with_channels = [], {}, []
  for ins, outs in blocks:
    factors = []
    for i in ins:
      a = prefix + i
      if a in in_axes:
        factors.extend(factors_in.get(a - rank_in, ((in_shape[a], True),)))
      else:
        factors.append((in_shape[a], False))
    if not any(holds for _, holds in factors):
      continue  # positions only
    with_channels.append((ins, outs))
    sizes = [out_shape[prefix + o] for o in outs]
    found = []
    for o, pieces in zip(outs, _refine(factors, sizes)):
      if pieces is None or all(holds for _, holds in pieces) and pieces:
        found.append(prefix + o)  # channels (or an uneven cut)
      elif any(holds for _, holds in pieces):
        found.append(prefix + o)
        out_factors[prefix + o] = pieces
    out_axes.extend(found or [prefix + outs[-1]])  # one channel: keep one
  out_axes = [a for a in in_axes if a < prefix] + out_axes
  ctx.set_channel_axes(out, [a - rank_out for a in out_axes])
  for a, pieces in out_factors.items():
    ctx.set_axis_factors(out, a - rank_out, pieces)
  # Every element of the kept channel axes x the blocks with channels:
  # the input channel it holds and the output channel it becomes.
  space = [a for a in in_axes if a < prefix] + [
      prefix + i for ins, _ in with_channels for i in ins]
  dims = [in_shape[a] for a in space]
  coords = dict(zip(space, np.unravel_index(
      np.arange(int(np.prod(dims, dtype=np.int64))), dims)))
  out_coords = {a: coords[a] for a in in_axes if a < prefix}
  for ins, outs in with_channels:
    flat = np.ravel_multi_index([coords[prefix + i] for i in ins],
                                [in_shape[prefix + i] for i in ins])
    parts = np.unravel_index(flat, [out_shape[prefix + o] for o in outs])
    out_coords.update(zip([prefix + o for o in outs], parts))
  index_in = np.ravel_multi_index([coords[a] for a in in_axes],
                                  [in_shape[a] for a in in_axes])
  index_out = np.ravel_multi_index([out_coords[a] for a in out_axes],
                                   [out_shape[a] for a in out_axes])
  pairs = np.unique(np.stack([index_out, index_in]), axis=1)
  ctx.tie_index(out, pairs[0], inp, pairs[1])


def _blocks(in_dims, out_dims):
  """The shortest runs of axes with equal products, [(ins, outs)]; unit
  axes at the end join the last run. None if the dims do not match."""
  blocks, i, j = [], 0, 0
  while i < len(in_dims) and j < len(out_dims):
    ins, outs = [i], [j]
    p_in, p_out = in_dims[i], out_dims[j]
    i, j = i + 1, j + 1
    while p_in != p_out:
      if p_in < p_out and i < len(in_dims):
        p_in *= in_dims[i]
        ins.append(i)
        i += 1
      elif p_out < p_in and j < len(out_dims):
        p_out *= out_dims[j]
        outs.append(j)
        j += 1
      else:
        return None
    blocks.append((ins, outs))
  rest_in, rest_out = list(range(i, len(in_dims))), list(range(j, len(out_dims)))
  if any(in_dims[k] != 1 for k in rest_in) or any(
      out_dims[k] != 1 for k in rest_out) or not blocks:
    return None
  blocks[-1][0].extend(rest_in)
  blocks[-1][1].extend(rest_out)
  return blocks


def _strides(sizes):
  strides, acc = [], 1
  for size in reversed(sizes):
    strides.append(acc)
    acc *= size
  return strides[::-1]


def _refine(factors, sizes):
  """Per output axis (row-major `sizes` over the row-major `factors`' flat
  space): its (size, holds_channels) pieces, or None if it cuts a factor
  unevenly. Unit pieces are left out, but a unit axis is one piece like
  the factor it sits in ([H*d] -> [1, H*d]: a head axis of one head);
  adjacent pieces alike are merged.

  >>> _refine([(2, True), (8, False)], [2, 8])
  [((2, True),), ((8, False),)]
  >>> _refine([(8, True)], [1, 8])
  [((1, True),), ((8, True),)]
  >>> _refine([(2, True), (8, False)], [16])
  [((2, True), (8, False))]
  """
  f_sizes = [size for size, _ in factors]
  f_strides, o_strides = _strides(f_sizes), _strides(sizes)
  total = int(np.prod(f_sizes, dtype=np.int64))
  bounds = sorted(set(f_strides) | set(o_strides) | {total})
  if any(b % a for a, b in zip(bounds, bounds[1:])):
    return [None] * len(sizes)
  result = []
  for size, stride in zip(sizes, o_strides):
    pieces = []
    for low, high in zip(bounds[::-1][1:], bounds[::-1]):
      if not stride <= low < stride * size:
        continue
      holds = next(h for (s, h), st in zip(factors, f_strides)
                   if st <= low < st * s)
      if pieces and pieces[-1][1] == holds:
        pieces[-1] = (pieces[-1][0] * (high // low), holds)
      else:
        pieces.append((high // low, holds))
    if not pieces:  # a unit axis: like the factor it sits in (or before)
      holds = next((h for (s, h), st in zip(factors, f_strides)
                    if st <= stride < st * s), factors[0][1])
      pieces = [(1, holds)]
    result.append(tuple(pieces))
  return result


def _common_prefix(in_shape, out_shape):
  """How many leading axes match one to one (the batch may be unknown)."""
  prefix = 0
  while (prefix < min(len(in_shape), len(out_shape)) - 1
         and in_shape[prefix] == out_shape[prefix]):
    prefix += 1
  return prefix
