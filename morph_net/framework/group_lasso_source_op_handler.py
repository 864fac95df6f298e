"""Conv and matmul kernels as regularizer sources (the GroupLasso family).

The op keeps its compute role (new output channels, bilinear cost) and its
output channels get a group-lasso regularizer over its kernel. BatchNorms are
plain passthroughs in this family.
"""

from morph_net.framework import conv_op_handlers
from morph_net.framework import op_handlers

# Kernel axis holding output channels, by op type.
_OUT_AXIS = {'Conv2D': -1, 'Conv3D': -1, 'Conv2DBackpropInput': -2,
             'Conv3DBackpropInputV2': -2}


class _SourceMixin:
  """Declares the op's kernel as the source of its output channels."""

  def __init__(self, threshold, l1_fraction=0.0, regularizer_cls=None):
    if regularizer_cls is None:
      from morph_net.op_regularizers import group_lasso_regularizer  # pylint: disable=g-import-not-at-top
      regularizer_cls = group_lasso_regularizer.GroupLassoRegularizer
    if not 0.0 <= float(l1_fraction) <= 1.0:
      raise ValueError('l1_fraction must be in [0, 1], got %r.'
                       % (l1_fraction,))
    self.threshold = float(threshold)
    self.l1_fraction = float(l1_fraction)
    self.regularizer_cls = regularizer_cls

  def _add_source(self, op, ctx, weight_index, out_axis):
    weight = op.inputs[weight_index]
    # The axis counts from the end: a Conv1D kernel variable is rank 3 while
    # the traced Conv2D sees it expanded to rank 4.
    param = ctx.view.param(weight)
    ctx.add_source(op, op.outputs[0], self.regularizer_cls,
                   param,
                   (self.threshold, self.l1_fraction, out_axis))


class ConvSourceOpHandler(_SourceMixin,
                          conv_op_handlers.OutputNonPassthroughOpHandler):
  """Conv2D, Conv3D, transposed convs with a group-lasso source."""

  def __init__(self, threshold, l1_fraction=0.0, regularizer_cls=None):
    _SourceMixin.__init__(self, threshold, l1_fraction, regularizer_cls)

  def analyze(self, op, ctx):
    super().analyze(op, ctx)
    # A depthwise conv (groups == input channels) follows its input, like
    # DepthwiseConv2dNative, so its kernel is no source.
    if not conv_op_handlers.is_depthwise(op, ctx):
      self._add_source(op, ctx, 1, _OUT_AXIS[op.type])


class MatMulSourceOpHandler(_SourceMixin, conv_op_handlers.MatMulOpHandler):
  """MatMul (Dense) with a group-lasso source; respects transpose_b."""

  def __init__(self, threshold, l1_fraction=0.0, regularizer_cls=None):
    _SourceMixin.__init__(self, threshold, l1_fraction, regularizer_cls)

  def analyze(self, op, ctx):
    super().analyze(op, ctx)
    if op.get_attr('transpose_a') or not self._has_weight(op, ctx.view):
      return
    self._add_source(op, ctx, 1, -2 if op.get_attr('transpose_b') else -1)


def group_lasso_op_handler_dict(threshold, l1_fraction=0.0):
  """The table for GroupLasso regularizers: conv/matmul kernels are sources."""
  table = op_handlers.default_op_handler_dict()
  conv = ConvSourceOpHandler(threshold, l1_fraction)
  for op_type in _OUT_AXIS:
    table[op_type] = conv
  table['MatMul'] = MatMulSourceOpHandler(threshold, l1_fraction)
  return table
