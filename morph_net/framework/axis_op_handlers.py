"""Ops that join, cut or shift tensors along axes.

ConcatV2, Split/SplitV, Pack (`ops.stack`), Unpack (`ops.unstack`), Roll,
ReverseV2, Slice and StridedSlice act along axes. Along an axis that holds
no channels (tokens, space, the batch) every piece has the whole's
channels: a passthrough per piece.
Along a channel axis the pieces are blocks of the whole's channels
(`ctx.tie_blocks`): a CSP block's split and concat, a rotary embedding's
rotate-half (split the head dims, stack the halves, reshape back), a
concat of attention heads.

A stack's new axis holds channels when it sits at or after the channel
axes (stacking halves of a head, [.., d/2] -> [.., 2, d/2]); before them it
is a new token/space axis, like stacking frames.
"""

import numpy as np

from morph_net.framework import errors
from morph_net.framework import op_handler


def _axis(op, ctx, index_or_attr, rank):
  """The op's axis (negative), from an input index or an attribute."""
  if isinstance(index_or_attr, str):
    value = op.get_attr(index_or_attr)
  else:
    value = ctx.view.static_value(op.inputs[index_or_attr])
  if value is None or not rank:
    raise errors.UnsupportedOpError(
        'Op %r (%s) works along an axis that is not known statically (rank '
        '%s), so its channels cannot be matched. Use a constant axis.'
        % (op.name, op.type, rank))
  return int(value) % rank - rank


def _common_axes(op, ctx, tensors, walked):
  """The channel axes the walked pieces share; constant pieces (a class
  token) take them on."""
  walked = {t.name for t in walked}
  axes = ({ctx.channel_axes(t) for t in tensors if t.name in walked}
          or {ctx.channel_axes(tensors[0])})
  if len(axes) != 1:
    raise errors.UnsupportedOpError(
        'Op %r (%s) joins tensors whose channels are on different axes %s; '
        'their channels cannot be matched.' % (op.name, op.type,
                                               sorted(axes)))
  axes = axes.pop()
  for t in tensors:
    if t.name not in walked and ctx.channel_axes(t) != axes:
      ctx.set_channel_axes(t, axes)
  return axes


def _pieces_along(ctx, whole, pieces, axis, axes):
  """Ties pieces (same rank as whole, channel axes `axes`) laid along axis."""
  if axis not in axes:
    for t in pieces:
      ctx.tie(whole, t)
    return
  names = list(axes)
  offsets = np.cumsum([0] + [ctx.view.shape(t)[axis] for t in pieces[:-1]])
  ctx.tie_blocks(whole, names, pieces, names, axis, offsets.tolist())


class ConcatOpHandler(op_handler.OpHandler):
  """ConcatV2: along a channel axis, output channels are the inputs' in
  order; along any other axis every input has the output's channels."""

  handles_channel_axes = True

  def data_inputs(self, op, view):
    del view
    return [i for i, t in enumerate(op.inputs[:-1]) if op_handler.is_float(t)]

  def analyze(self, op, ctx):
    out = op.outputs[0]
    inputs = list(op.inputs[:-1])
    walked = [op.inputs[i] for i in ctx.data_inputs(op, self)]
    rank = op_handler.rank(out)
    if ctx.view.static_value(op.inputs[-1]) is None or rank is None:
      return  # unknown axis: treat as a leaf
    axis = _axis(op, ctx, len(op.inputs) - 1, rank)
    axes = _common_axes(op, ctx, inputs, walked)
    ctx.set_channel_axes(out, axes)
    if axes == (-1,) and axis == -1:
      ctx.tie_concat(out, inputs)  # also for counts a handler overrode
    else:
      _pieces_along(ctx, out, inputs, axis, axes)


# op type -> (index of the value input, index of the split_dim input).
_SPLIT_LAYOUT = {
    'Split': (1, 0),  # Split(split_dim, value)
    'SplitV': (0, 2),  # SplitV(value, size_splits, split_dim)
}


class SplitOpHandler(op_handler.OpHandler):
  """Split / SplitV: along a channel axis output k is the k-th block of the
  input's channels (a CSP block's halves, a rotary embedding's halves);
  along another axis every output is a passthrough."""

  handles_channel_axes = True

  def data_inputs(self, op, view):
    del view
    return [_SPLIT_LAYOUT[op.type][0]]

  def analyze(self, op, ctx):
    value_index, dim_index = _SPLIT_LAYOUT[op.type]
    value = op.inputs[value_index]
    axis = _axis(op, ctx, dim_index, op_handler.rank(value))
    axes = ctx.channel_axes(value)
    for out in op.outputs:
      ctx.set_channel_axes(out, axes)
    if axes != (-1,) or axis != -1:
      _pieces_along(ctx, value, list(op.outputs), axis, axes)
      return
    sizes = [ctx.channels(out) for out in op.outputs]
    if None in sizes or sum(sizes) != ctx.channels(value):
      raise errors.ChannelMismatchError(
          'Op %r (%s) splits the %s channels of %r into %s, which do not '
          'add up.' % (op.name, op.type, ctx.channels(value), value.name,
                       sizes))
    start = 0
    for out, size in zip(op.outputs, sizes):
      ctx.tie_map(out, value, np.arange(start, start + size))
      start += size


class PackOpHandler(op_handler.OpHandler):
  """Pack (`ops.stack`): inputs of rank r become one slice each of a new
  axis of the rank-(r+1) output."""

  handles_channel_axes = True

  def analyze(self, op, ctx):
    out = op.outputs[0]
    inputs = list(op.inputs)
    walked = [op.inputs[i] for i in ctx.data_inputs(op, self)]
    rank = op_handler.rank(out)
    axis = _axis(op, ctx, 'axis', rank)
    in_axes = _common_axes(op, ctx, inputs, walked)
    # An input axis a (negative in rank - 1) is axis a of the output if it
    # is after the new axis, a - 1 if before.
    names = [a if a > axis else a - 1 for a in in_axes]
    if axis >= min(names) - 1 and axis > -rank + 1:
      out_names = sorted(names + [axis])
      ctx.set_channel_axes(out, out_names)
      ctx.tie_blocks(out, out_names, inputs, names, axis,
                     list(range(len(inputs))))
      return
    ctx.set_channel_axes(out, names)
    for t in inputs:
      ctx.tie_axes(out, names, t, names)


class UnpackOpHandler(op_handler.ValueOpHandler):
  """Unpack (`ops.unstack`): output k is slice k of an axis of the input."""

  handles_channel_axes = True

  def analyze(self, op, ctx):
    inp = op.inputs[0]
    rank = op_handler.rank(inp)
    axis = _axis(op, ctx, 'axis', rank)
    in_axes = list(ctx.channel_axes(inp))
    names = [a for a in in_axes if a != axis]  # axes of inp, kept by outputs
    if not names:
      return  # the only channel axis is unstacked: outputs are leaves
    out_axes = [a if a > axis else a + 1 for a in names]
    for out in op.outputs:
      ctx.set_channel_axes(out, out_axes)
    if axis in in_axes:
      ctx.tie_blocks(inp, in_axes, list(op.outputs), names, axis,
                     list(range(len(op.outputs))))
    else:
      for out in op.outputs:
        ctx.tie_axes(out, names, inp, names)


class RollOpHandler(op_handler.ValueOpHandler):
  """Roll (Swin's shifted windows) and ReverseV2 (`keras.ops.flip`): a
  passthrough along space; rolling a channel axis by a constant shift, or
  reversing it, permutes the channels."""

  handles_channel_axes = True

  def analyze(self, op, ctx):
    inp, out = op.inputs[0], op.outputs[0]
    rank = op_handler.rank(inp)
    flip = op.type == 'ReverseV2'
    shift = 0 if flip else ctx.view.static_value(op.inputs[1])
    axis = ctx.view.static_value(op.inputs[1 if flip else 2])
    axes = ctx.channel_axes(inp)
    ctx.set_channel_axes(out, axes)
    if shift is None or axis is None or not rank:
      raise errors.UnsupportedOpError(
          'Op %r (%s) %s %r %salong axes not known statically, so its '
          'channels cannot be matched.' % (
              op.name, op.type, 'reverses' if flip else 'rolls', inp.name,
              '' if flip else 'by a shift or '))
    shifts = np.broadcast_to(np.atleast_1d(shift), np.shape(
        np.atleast_1d(axis)))
    moved = [(int(a) % rank - rank, int(s))
             for a, s in zip(np.atleast_1d(axis), shifts)]
    index = np.arange(ctx.channels(inp)).reshape(
        [ctx.view.shape(inp)[a] for a in axes])
    for a, s in moved:
      if a in axes:
        k = axes.index(a)
        index = np.flip(index, k) if flip else np.roll(index, s, axis=k)
    ctx.tie_map(out, inp, index.ravel())


def _int_list(value):
  return None if value is None else [int(v) for v in np.ravel(value)]


class SliceOpHandler(op_handler.ValueOpHandler):
  """Slice / StridedSlice: along axes without channels a passthrough (a
  crop, the class token `x[:, 0]`); along a channel axis the output's
  channels are the selected ones (GPT-NeoX's q/k/v thirds of a fused
  projection, a rotary embedding's even and odd dims). A channel axis
  reduced to one index disappears, a new unit axis (`x[..., None]`) holds
  none; with every channel axis reduced the output is a leaf."""

  handles_channel_axes = True

  def analyze(self, op, ctx):
    inp, out = op.inputs[0], op.outputs[0]
    shape = ctx.view.shape(inp)
    picks = _selection(op, ctx.view, shape)
    if picks is None or len(ctx.view.shape(out) or ()) != sum(
        not isinstance(p, int) for p in picks):
      return  # unknown bounds: a leaf
    rank = len(shape)
    axes = [a + rank for a in ctx.channel_axes(inp)]
    if any(shape[a] is None for a in axes):
      return
    position, axis, k = {}, 0, 0  # input axis -> output axis
    for pick in picks:
      if pick is None:  # a new unit axis
        k += 1
        continue
      if not isinstance(pick, int):
        position[axis] = k
        k += 1
      axis += 1
    out_axes = [position[a] - k for a in axes if a in position]
    if not out_axes:
      return  # one channel picked from each channel axis: a leaf
    ctx.set_channel_axes(out, out_axes)
    picks = [p for p in picks if p is not None]
    index = np.arange(ctx.channels(inp)).reshape([shape[a] for a in axes])
    for k in reversed(range(len(axes))):
      pick = picks[axes[k]]
      index = np.take(index, pick if isinstance(pick, int)
                      else np.arange(shape[axes[k]])[pick], axis=k)
    ctx.tie_map(out, inp, index.ravel())


def _selection(op, view, shape):
  """Per index of the spec: a `slice` (an input axis kept), an int (an
  input axis reduced) or None (a new unit axis); None instead of the list
  when the bounds are unknown."""
  if shape is None:
    return None
  rank = len(shape)
  begin = _int_list(view.static_value(op.inputs[1]))
  if begin is None:
    return None
  if op.type == 'Slice':
    size = _int_list(view.static_value(op.inputs[2]))
    if size is None:
      return None
    return [slice(b, None if s == -1 else b + s) for b, s in zip(begin, size)]
  end = _int_list(view.static_value(op.inputs[2]))
  strides = _int_list(view.static_value(op.inputs[3]))
  if end is None or strides is None:
    return None
  mask = {m: op.get_attr(m + '_mask') for m in (
      'begin', 'end', 'ellipsis', 'new_axis', 'shrink_axis')}
  new = [mask['new_axis'] >> i & 1 for i in range(len(begin))]
  picks = []
  for i, (b, e, s) in enumerate(zip(begin, end, strides)):
    if mask['ellipsis'] >> i & 1:
      picks += [slice(None)] * (rank - (len(begin) - 1 - sum(new)))
    elif new[i]:
      picks.append(None)
    elif mask['shrink_axis'] >> i & 1:
      picks.append(b)  # negative: from the end (np.take on channel axes)
    else:
      picks.append(slice(None if mask['begin'] >> i & 1 else b,
                         None if mask['end'] >> i & 1 else e, s))
  consumed = sum(p is not None for p in picks)
  picks += [slice(None)] * (rank - consumed)
  return picks if consumed <= rank else None
