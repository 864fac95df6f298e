"""Handlers for ops whose output channels are their input channels.

Activations, BiasAdd, pooling, casts and identities pass channels through;
elementwise binary ops tie every same-rank input whose channel axis is not
broadcast; reductions, pads, squeezes and transposes pass channels through
when they leave the channel axis alone and are leaves otherwise.

Channels on several axes (attention heads) pass through activations and
elementwise ops, move with a transpose, and lose the axes a reduction
removes (a mean over a head's dims keeps the head axis).
"""

import numpy as np

from morph_net.framework import errors
from morph_net.framework import op_handler


class GroupingOpHandler(op_handler.OpHandler):
  """Output i is input 0's channel i (Relu, BiasAdd, MaxPool, Cast, ...)."""

  handles_channel_axes = True

  def data_inputs(self, op, view):
    del view
    return [0] if op.inputs and op_handler.is_float(op.inputs[0]) else []

  def analyze(self, op, ctx):
    ctx.tie(op.outputs[0], op.inputs[0])


class BiasAddOpHandler(GroupingOpHandler):
  """BiasAdd: output = input 0's channels; the bias is a parameter unless
  it depends on the data. Keras traces `x + y` of two [1, 1, 1, C]
  activations (batch 1, 1x1 resolution) as BiasAdd(x, Squeeze(y)): then
  y is a residual branch, walked and tied."""

  def data_inputs(self, op, view):
    inputs = super().data_inputs(op, view)
    if (inputs and len(op.inputs) > 1 and op_handler.is_float(op.inputs[1])
        and view.depends_on_input(op.inputs[1])):
      inputs.append(1)
    return inputs

  def analyze(self, op, ctx):
    ctx.tie(op.outputs[0], op.inputs[0])
    if 1 in ctx.data_inputs(op, self):
      ctx.tie(op.outputs[0], op.inputs[1])


class IdentityNOpHandler(op_handler.OpHandler):
  """IdentityN (e.g. a custom-gradient swish): output i is input i."""

  handles_channel_axes = True

  def analyze(self, op, ctx):
    for inp, out in zip(op.inputs, op.outputs):
      if op_handler.is_float(inp) and ctx.view.channels(inp) is not None:
        ctx.tie(out, inp)


_CONSTANT_LIKE = ('ZerosLike', 'OnesLike')


class ElementwiseOpHandler(op_handler.OpHandler):
  """Add, Mul, Maximum, ... with broadcasting.

  Inputs of the output's rank are activations and are followed; those with
  the output's channel count are tied to it (a residual add, an SE block's
  [N, 1, 1, C] gate). Lower-rank inputs ([C] biases, scalars) are parameters,
  and so are ZerosLike/OnesLike outputs (constants shaped like an
  activation: `where(mask, x, zeros_like(x))` must not tie x's channels
  through the zeros' last axis).
  """

  def data_inputs(self, op, view):
    out = op.outputs[0]
    out_rank = op_handler.rank(out)
    return [i for i, t in enumerate(op.inputs)
            if op_handler.is_float(t) and out_rank is not None
            and op_handler.rank(t) == out_rank
            and t.op.type not in _CONSTANT_LIKE
            and not _is_parameter(t, out, view)]

  handles_channel_axes = True

  def analyze(self, op, ctx):
    out = op.outputs[0]
    inputs = [op.inputs[i] for i in ctx.data_inputs(op, self)]
    out_shape = ctx.view.shape(out)
    if out_shape is None:
      return
    rank = len(out_shape)
    full = [t for t in inputs if ctx.view.shape(t) == out_shape]
    axes = sorted({a for t in full for a in ctx.channel_axes(t)})
    if axes and axes != [-1]:
      ctx.set_channel_axes(out, axes)
    if ctx.channels(out) is None:
      return  # unknown width: a leaf
    out_axes = ctx.channel_axes(out)
    for t in inputs:
      shape = ctx.view.shape(t)
      if shape is None or len(shape) != rank:
        continue
      if all(shape[a] == 1 and out_shape[a] != 1 for a in out_axes):
        continue  # broadcast over every channel axis: a gate, a mask
      t_axes = ctx.channel_axes(t)
      if t_axes == out_axes:
        if ctx.channels(t) == ctx.channels(out):
          ctx.tie(out, t)
      elif all(shape[a] in (1, out_shape[a]) for a in out_axes):
        ctx.tie_axes(out, list(out_axes), t, list(t_axes))


def _is_parameter(tensor, out, view):
  """A [1, ..., 1, C] operand of a batched output: a reshaped parameter.

  Keras reshapes BatchNorm statistics to [1, 1, 1, C] when the axis is
  explicit. An activation has the output's batch dim (unknown in traced
  models), so a static batch of 1 against a larger/unknown one is a weight.
  At a batch of 1 both have batch 1: then a parameter is what depends
  neither on the data nor on the batch size (`view.depends_on_input`).
  """
  t_batch = tensor.shape.as_list()[0] if tensor.shape.rank else None
  o_batch = out.shape.as_list()[0] if out.shape.rank else None
  if t_batch == 1 and o_batch == 1:
    # A graph with no data at all cannot tell them apart: an operand of
    # the output's rank is then an activation, as in any other graph.
    return view.fed_by_data() and not view.depends_on_input(tensor,
                                                            shapes=True)
  return t_batch == 1 and o_batch != 1


def _keeps_last_axis(axes, rank):
  return rank is not None and all(int(a) % rank != rank - 1 for a in axes)


class ReductionOpHandler(op_handler.ValueOpHandler):
  """Mean/Max/Sum: passthrough over spatial axes, a leaf over channels.

  With channels on several axes, the output keeps the channel axes that
  are not reduced, and each channel is tied to its projection on them.
  """

  handles_channel_axes = True

  def analyze(self, op, ctx):
    inp, out = op.inputs[0], op.outputs[0]
    axes = ctx.view.static_value(op.inputs[1])
    rank = op_handler.rank(inp)
    if axes is None or rank is None:
      return
    axes = [axes] if getattr(axes, 'ndim', 0) == 0 else list(axes)
    reduced = {int(a) % rank for a in axes}
    channel_axes = [a % rank for a in ctx.channel_axes(inp)]
    if not ctx.has_channel_axes(inp):
      if _keeps_last_axis(axes, rank) and (
          ctx.view.channels(out) == ctx.view.channels(inp)):
        ctx.tie(out, inp)
      return
    kept = [a for a in channel_axes if a not in reduced]
    if not kept:
      return  # every channel axis reduced: a leaf
    keep_dims = op.get_attr('keep_dims')
    out_rank = op_handler.rank(out)
    position = {a: (a if keep_dims else a - sum(r < a for r in reduced))
                for a in kept}
    ctx.set_channel_axes(out, [position[a] - out_rank for a in kept])
    ctx.tie_axes(out, kept, inp, channel_axes)


class PadOpHandler(op_handler.ValueOpHandler):
  """Pad/MirrorPad: passthrough unless the channel axis is padded."""

  handles_channel_axes = True

  def analyze(self, op, ctx):
    inp, out = op.inputs[0], op.outputs[0]
    in_shape, out_shape = ctx.view.shape(inp), ctx.view.shape(out)
    if in_shape is None or out_shape is None:
      return
    if all(in_shape[a] == out_shape[a] for a in ctx.channel_axes(inp)):
      ctx.tie(out, inp)


class TransposeOpHandler(op_handler.ValueOpHandler):
  """Transpose: the channel axes move with the permutation.

  Channels go wherever the permutation puts them (NHWC -> NCHW puts them on
  axis -3; attention's [B, T, H, d] -> [B, H, T, d] keeps heads (h, j)); a
  reorder of the channel axes themselves is a channel permutation (a
  channel shuffle). Ops after it that read channels only from the last
  axis refuse such a tensor (see `OpHandler.handles_channel_axes`).
  """

  handles_channel_axes = True

  def analyze(self, op, ctx):
    inp, out = op.inputs[0], op.outputs[0]
    perm = ctx.view.static_value(op.inputs[1])
    rank = op_handler.rank(inp)
    if perm is None or not rank:
      return
    perm = [int(p) % rank for p in perm]
    if perm[0] != 0:
      op_handler.moves_examples(op, ctx, 'moves the batch axis (perm %s)'
                                % perm)
    in_axes = [a % rank for a in ctx.channel_axes(inp)]
    out_axes = sorted(perm.index(a) for a in in_axes)
    ctx.set_channel_axes(out, [a - rank for a in out_axes])
    ctx.tie_axes(out, [perm[a] for a in out_axes], inp, in_axes)


class SameChannelsOpHandler(op_handler.ValueOpHandler):
  """Squeeze, ExpandDims, Tile, BroadcastTo: the channel axes carry over.

  An added or dropped unit axis moves the channel axes it precedes (the
  key/value heads that `ops.repeat` expands as [B, T, H, 1, d] keep heads
  on axes (-3, -1)); Tile and BroadcastTo keep their rank's axes, counted
  from the end. A Tile along a channel axis repeats the channels (k copies
  of each channel are that channel); any other change of a channel axis's
  size is a leaf.
  """

  handles_channel_axes = True

  def analyze(self, op, ctx):
    inp, out = op.inputs[0], op.outputs[0]
    in_shape, out_shape = ctx.view.shape(inp), ctx.view.shape(out)
    if in_shape is None or out_shape is None:
      return
    mapping = _axis_map(op, ctx, len(in_shape), len(out_shape))
    axes = [a % len(in_shape) for a in ctx.channel_axes(inp)]
    if mapping is None or any(mapping.get(a) is None for a in axes):
      return
    names = [mapping[a] - len(out_shape) for a in axes]  # output axes
    grown = [(in_shape[a], out_shape[b], b) for a, b in zip(axes, names)
             if in_shape[a] != out_shape[b]]
    if grown:
      if op.type == 'Tile' and len(grown) == 1:
        _tile_along(ctx, out, inp, names, *grown[0])
      return
    if not ctx.has_channel_axes(inp) and names == [-1]:
      ctx.tie(out, inp)
      return
    ctx.set_channel_axes(out, names)
    labels = list(range(len(axes)))
    ctx.tie_axes(out, labels, inp, labels)


def _tile_along(ctx, out, inp, names, size, tiled, axis):
  """`out` is `inp` (same rank, channel axes `names`) repeated along the
  channel axis `axis`: copies laid end to end, copy j of a channel is that
  channel. A size that is not a whole multiple: a leaf."""
  if not size or tiled % size:
    return
  ctx.set_channel_axes(out, names)
  copies = tiled // size
  ctx.tie_blocks(out, names, [inp] * copies, names, axis,
                 [j * size for j in range(copies)])


def _axis_map(op, ctx, in_rank, out_rank):
  """{input axis: output axis} (non-negative) of a reshape-free op, or
  None when it cannot be read statically."""
  if op.type == 'ExpandDims':
    dim = ctx.view.static_value(op.inputs[1])
    if dim is None:
      return None
    dim = int(np.asarray(dim).reshape(-1)[0]) % out_rank
    return {a: a + (a >= dim) for a in range(in_rank)}
  if op.type == 'Squeeze':
    dims = [int(d) % in_rank for d in op.get_attr('squeeze_dims')]
    if not dims:
      shape = ctx.view.shape(op.inputs[0])
      dims = [a for a in range(in_rank) if shape[a] == 1]
    kept = [a for a in range(in_rank) if a not in dims]
    return {a: i for i, a in enumerate(kept)}
  # Tile, BroadcastTo: axes aligned from the end.
  return {a: a + out_rank - in_rank for a in range(in_rank)}


class SpaceToDepthOpHandler(op_handler.ValueOpHandler):
  """SpaceToDepth and DepthToSpace (NHWC, block b): channel k of the deep
  side is channel k mod C of the shallow side (C its channel count): a
  SpaceToDepth output holds b x b copies of every input channel (a conv
  after it reads b^2 x alive inputs); the b x b input channels that make
  one DepthToSpace output channel live or die with it."""

  def analyze(self, op, ctx):
    inp, out = op.inputs[0], op.outputs[0]
    shallow, deep = (inp, out) if op.type == 'SpaceToDepth' else (out, inp)
    c_shallow, c_deep = ctx.channels(shallow), ctx.channels(deep)
    if not c_shallow or not c_deep or c_deep % c_shallow:
      raise errors.ChannelMismatchError(
          'Op %r (%s) has %s channels on its deep side and %s on the '
          'other: not a whole number of blocks.'
          % (op.name, op.type, c_deep, c_shallow))
    k = np.arange(c_deep)
    ctx.tie_index(deep, k, shallow, k % c_shallow)
