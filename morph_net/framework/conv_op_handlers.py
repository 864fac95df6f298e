"""Handlers for ops that cost resources: convolutions and matmuls.

Their output channels are new (not their input's), and each records a
compute entry that network regularizers turn into a cost:
FLOPs = 2 x positions x kernel_size x alive_in x alive_out (bilinear), or
2 x positions x kernel_size x alive_out for depthwise convs (linear).
"""

import numpy as np

from morph_net.framework import errors
from morph_net.framework import op_handler
from morph_net.framework import op_types
from morph_net.framework import patterns

def _activation_positions(op, ctx, act, out):
  """Per-example positions of a conv's input and output activations.

  A dilated conv runs on SpaceToBatchND sub-images (`patterns.SpaceToBatch`):
  its static output shape holds prod(block) sub-images per example, so its
  real output is the BatchToSpaceND result and its input is prod(block)
  times the sub-image positions.
  """
  fact = ctx.facts.first(op, patterns.SpaceToBatch) if ctx.facts else None
  in_pos, out_pos = ctx.view.positions(act), ctx.view.positions(out)
  if fact is not None:
    out_pos = ctx.view.positions(fact.output)
    if in_pos is not None:
      in_pos *= int(np.prod(fact.block))
  return in_pos, out_pos


def _kernel_size(weight, spatial_dims):
  shape = weight.shape.as_list()
  return int(np.prod(shape[:spatial_dims], dtype=np.int64))


def conv_groups(op, ctx):
  """How many channel groups a Conv2D/Conv3D has (1 for a plain conv).

  A grouped conv's kernel holds in_channels / groups input channels; the
  graph has no groups attribute, so the count comes from the shapes.
  """
  if op.type not in op_types.CONVS:
    return 1
  c_in = ctx.channels(op.inputs[0])
  k_in = op.inputs[1].shape.as_list()[-2]
  if c_in is None or k_in is None or c_in == k_in:
    return 1
  if c_in % k_in:
    raise errors.ChannelMismatchError(
        'Conv %r reads %d input channels but its kernel has %d, which does '
        'not divide them into groups.' % (op.name, c_in, k_in))
  return c_in // k_in


def is_depthwise(op, ctx):
  """A depthwise conv, or a grouped conv with one input channel per group."""
  return op_types.is_depthwise(op.type in op_types.DEPTHWISE_CONVS,
                               conv_groups(op, ctx),
                               op.inputs[1].shape.as_list())


def _analyze_depthwise(op, ctx, mult):
  """Output channel j is input channel j // mult; linear cost."""
  act, weight, out = op.inputs[0], op.inputs[1], op.outputs[0]
  c_in = ctx.channels(act)
  if c_in is not None and mult == 1:
    ctx.tie(out, act)
  elif c_in is not None:
    ctx.tie_map(out, act, np.arange(c_in * mult) // mult)
  in_pos, out_pos = _activation_positions(op, ctx, act, out)
  ctx.add_compute(op, act, out, positions=out_pos,
                  kernel_size=_kernel_size(weight, len(weight.shape) - 2),
                  linear=True, weight_index=1, in_positions=in_pos,
                  out_positions=out_pos)


class OutputNonPassthroughOpHandler(op_handler.OpHandler):
  """Conv2D, Conv3D, transposed convs: new output channels, bilinear cost.

  Grouped convs (Keras `groups=`) are recognized from the kernel shape:
  with one input channel per group the conv is a depthwise conv (its output
  follows its input, linear cost); otherwise the cost sums over groups.
  """

  def data_inputs(self, op, view):
    del view
    return [op_types.CONV_LAYOUTS[op.type].activation_index]

  def analyze(self, op, ctx):
    layout = op_types.CONV_LAYOUTS[op.type]
    act = op.inputs[layout.activation_index]
    weight = op.inputs[layout.weight_index]
    groups = conv_groups(op, ctx)
    if is_depthwise(op, ctx):
      _analyze_depthwise(op, ctx, ctx.channels(op.outputs[0]) // groups)
      return
    in_pos, out_pos = _activation_positions(op, ctx, act, op.outputs[0])
    ctx.add_compute(op, act, op.outputs[0],
                    positions=out_pos if layout.positions_on_output
                    else in_pos,
                    kernel_size=_kernel_size(weight, layout.spatial_dims),
                    weight_index=layout.weight_index,
                    groups=groups, out_axis=layout.out_axis,
                    in_positions=in_pos, out_positions=out_pos)


class DepthwiseConvOpHandler(op_handler.ValueOpHandler):
  """DepthwiseConv2dNative: output channel j comes from input j // mult.

  With a depth multiplier > 1 each input channel feeds `mult` output
  channels; they share the input channel's group.
  """

  def analyze(self, op, ctx):
    _analyze_depthwise(op, ctx, op.inputs[1].shape.as_list()[-1])


class MatMulOpHandler(op_handler.OpHandler):
  """MatMul (Dense): new output channels, bilinear cost.

  A Keras Dense on an N-D input is traced as Reshape([-1, C]) + MatMul; the
  cost then counts every position of the N-D input. A product of two
  activations (no weight) is a leaf.
  """

  def data_inputs(self, op, view):
    if op_types.is_weight(op.inputs[1], view):
      return [0]
    return [0, 1]

  def analyze(self, op, ctx):
    act, weight = op.inputs[0], op.inputs[1]
    weighted = op_types.is_weight(weight, ctx.view)
    if (op_types.is_weight(act, ctx.view) and not weighted) or (
        weighted and op.get_attr('transpose_a')):
      raise errors.UnsupportedOpError(
          'MatMul %r has its weight as the first operand, or a transposed '
          'activation (transpose_a): its output channels are not on the '
          'last axis of a [batch, channels] activation, so they cannot be '
          'counted or pruned. Write it as tf.matmul(x, w) with x [batch, '
          'in] and w [in, out] (transpose_b=True for a w of [out, in]).'
          % op.name)
    if op.get_attr('transpose_a') or not weighted:
      return
    in_axis, out_axis = op_types.kernel_channel_axes(
        op.get_attr('transpose_b'))
    c_in = weight.shape.as_list()[in_axis]
    positions = 1
    producer = act.op
    if producer.type == 'Reshape':
      nd_input = producer.inputs[0]
      if (op_handler.rank(nd_input) and op_handler.rank(nd_input) > 2
          and ctx.view.channels(nd_input) == c_in):
        # Dense over the last axis of an N-D tensor.
        positions = ctx.view.positions(nd_input)
        ctx.set_channels(act, c_in)
        ctx.tie(act, nd_input)
    if ctx.view.channels(act) is None:
      ctx.set_channels(act, c_in)
    ctx.add_compute(op, act, op.outputs[0], positions=positions,
                    kernel_size=1, weight_index=1, out_axis=out_axis,
                    in_positions=positions, out_positions=positions)
