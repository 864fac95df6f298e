"""Handlers for ops whose output channels are their input channels.

Activations, BiasAdd, pooling, casts and identities pass channels through;
elementwise binary ops tie every same-rank input whose channel axis is not
broadcast; reductions, pads, squeezes and transposes pass channels through
when they leave the channel axis alone and are leaves otherwise.
"""

from morph_net.framework import op_handler


class GroupingOpHandler(op_handler.OpHandler):
  """Output i is input 0's channel i (Relu, BiasAdd, MaxPool, Cast, ...)."""

  def data_inputs(self, op, view):
    del view
    return [0] if op.inputs and op_handler.is_float(op.inputs[0]) else []

  def analyze(self, op, ctx):
    ctx.tie(op.outputs[0], op.inputs[0])


class IdentityNOpHandler(op_handler.OpHandler):
  """IdentityN (e.g. a custom-gradient swish): output i is input i."""

  def analyze(self, op, ctx):
    for inp, out in zip(op.inputs, op.outputs):
      if op_handler.is_float(inp) and ctx.view.channels(inp) is not None:
        ctx.tie(out, inp)


class ElementwiseOpHandler(op_handler.OpHandler):
  """Add, Mul, Maximum, ... with broadcasting.

  Inputs of the output's rank are activations and are followed; those with
  the output's channel count are tied to it (a residual add, an SE block's
  [N, 1, 1, C] gate). Lower-rank inputs ([C] biases, scalars) are parameters.
  """

  def data_inputs(self, op, view):
    del view
    out = op.outputs[0]
    out_rank = op_handler.rank(out)
    return [i for i, t in enumerate(op.inputs)
            if op_handler.is_float(t) and out_rank is not None
            and op_handler.rank(t) == out_rank and not _is_parameter(t, out)]

  def analyze(self, op, ctx):
    out = op.outputs[0]
    channels = ctx.view.channels(out)
    if channels is None:
      return  # unknown width: a leaf
    for i in ctx.data_inputs(op, self):
      if ctx.view.channels(op.inputs[i]) == channels:
        ctx.tie(out, op.inputs[i])


def _is_parameter(tensor, out):
  """A [1, ..., 1, C] operand of a batched output: a reshaped parameter.

  Keras reshapes BatchNorm statistics to [1, 1, 1, C] when the axis is
  explicit. An activation has the output's batch dim (unknown in traced
  models), so a static batch of 1 against a larger/unknown one is a weight.
  """
  t_batch = tensor.shape[0] if tensor.shape.rank else None
  o_batch = out.shape[0] if out.shape.rank else None
  return t_batch == 1 and o_batch != 1


def _keeps_last_axis(axes, rank):
  return rank is not None and all(int(a) % rank != rank - 1 for a in axes)


class ReductionOpHandler(op_handler.OpHandler):
  """Mean/Max/Sum: passthrough over spatial axes, a leaf over channels."""

  def data_inputs(self, op, view):
    del view
    return [0]

  def analyze(self, op, ctx):
    axes = ctx.view.static_value(op.inputs[1])
    rank = op_handler.rank(op.inputs[0])
    if axes is None:
      return
    axes = [axes] if getattr(axes, 'ndim', 0) == 0 else list(axes)
    if _keeps_last_axis(axes, rank) and (
        ctx.view.channels(op.outputs[0]) == ctx.view.channels(op.inputs[0])):
      ctx.tie(op.outputs[0], op.inputs[0])


class PadOpHandler(op_handler.OpHandler):
  """Pad/MirrorPad: passthrough unless the channel axis is padded."""

  def data_inputs(self, op, view):
    del view
    return [0]

  def analyze(self, op, ctx):
    if ctx.view.channels(op.outputs[0]) == ctx.view.channels(op.inputs[0]):
      ctx.tie(op.outputs[0], op.inputs[0])


class TransposeOpHandler(op_handler.OpHandler):
  """Transpose: passthrough when the channel axis stays last."""

  def data_inputs(self, op, view):
    del view
    return [0]

  def analyze(self, op, ctx):
    perm = ctx.view.static_value(op.inputs[1])
    rank = op_handler.rank(op.inputs[0])
    if perm is not None and rank and int(perm[-1]) == rank - 1:
      ctx.tie(op.outputs[0], op.inputs[0])


def _int_list(value):
  return None if value is None else [int(v) for v in list(value)]


class SliceOpHandler(op_handler.OpHandler):
  """StridedSlice / Slice (Cropping2D, spatial crops): passthrough when the
  channel axis is taken whole, a leaf otherwise."""

  def data_inputs(self, op, view):
    del view
    return [0]

  def analyze(self, op, ctx):
    inp, out = op.inputs[0], op.outputs[0]
    rank = op_handler.rank(inp)
    c_in = ctx.view.channels(inp)
    if (not rank or rank != op_handler.rank(out) or c_in is None
        or ctx.view.channels(out) != c_in):
      return
    begin = _int_list(ctx.view.static_value(op.inputs[1]))
    if op.type == 'Slice':
      size = _int_list(ctx.view.static_value(op.inputs[2]))
      whole = (begin is not None and size is not None and len(begin) == rank
               and begin[-1] == 0 and size[-1] in (-1, c_in))
    else:
      strides = _int_list(ctx.view.static_value(op.inputs[3]))
      masks = [op.get_attr(m) for m in ('ellipsis_mask', 'new_axis_mask',
                                        'shrink_axis_mask')]
      whole = (begin is not None and strides is not None and not any(masks)
               and len(begin) == rank and strides[-1] == 1
               and (begin[-1] == 0 or op.get_attr('begin_mask') >> (rank - 1)
                    & 1))
    if whole:
      ctx.tie(out, inp)


class SameChannelsOpHandler(op_handler.OpHandler):
  """Squeeze, ExpandDims, resizes: passthrough if the channel count holds.

  Dropping or adding a unit axis before the channel axis keeps channels in
  place; an op that changes the last axis' size is treated as a leaf.
  """

  def data_inputs(self, op, view):
    del view
    return [0]

  def analyze(self, op, ctx):
    c_out = ctx.view.channels(op.outputs[0])
    if c_out is not None and c_out == ctx.view.channels(op.inputs[0]):
      ctx.tie(op.outputs[0], op.inputs[0])
