"""BatchNorm as a regularizer source: |gamma| says which channels live.

Two forms are recognized:
* `FusedBatchNorm*` (tf.compat.v1, tf_keras): gamma is input 1.
* The unfused lowering that Keras 3 and `tf.nn.batch_normalization` trace:
  `x * (rsqrt(var + eps) * gamma) + (beta - mean * ...)`. The `Mul` whose
  broadcast operand is `Rsqrt(...) * gamma` is the source. Keras reshapes
  the parameters to [1, 1, 1, C] when `axis` is given explicitly (ResNet,
  DenseNet, Inception), so the scale may be rank 1 or a [1, ..., 1, C]
  broadcast of a Reshape of gamma.
"""

from morph_net.framework import grouping_op_handlers
from morph_net.framework import op_handler

_SEE_THROUGH = ('Cast', 'Identity', 'Reshape', 'ExpandDims')


class BatchNormSourceOpHandler(op_handler.OpHandler):
  """FusedBatchNorm{,V2,V3}: passthrough, and a gamma source."""

  def __init__(self, gamma_threshold, regularizer_cls):
    self.gamma_threshold = float(gamma_threshold)
    self.regularizer_cls = regularizer_cls

  def data_inputs(self, op, view):
    del view
    return [0]

  def analyze(self, op, ctx):
    ctx.tie(op.outputs[0], op.inputs[0])
    ctx.add_source(op, op.outputs[0], self.regularizer_cls,
                   ctx.view.param(op.inputs[1]), self.gamma_threshold)


def _see_through(tensor):
  op = tensor.op
  while op.type in _SEE_THROUGH and op.inputs:
    tensor = op.inputs[0]
    op = tensor.op
  return tensor


def _is_channel_vector(tensor):
  """[C] or [1, ..., 1, C]: a per-channel parameter broadcast."""
  shape = tensor.shape
  if shape.rank is None or shape.rank == 0:
    return False
  return all(d == 1 for d in shape.as_list()[:-1])


def _is_activation(tensor, out):
  """Same shape as the output and not a [1, ..., 1, C] broadcast."""
  return (tensor.shape.rank == out.shape.rank and tensor.shape.rank
          and not _is_channel_vector(out))


def unfused_gamma(mul_op):
  """The gamma tensor if `mul_op` is the unfused BatchNorm scale, else None.

  The result is rank 1 (Reshapes to [1, ..., 1, C] are seen through), so in
  graph mode it can be the regularizer's parameter directly. The `Mul` that
  folds the scale into the mean (`mean * scale`, all [1, ..., 1, C]) is not
  a source: its other operand is no activation.
  """
  if len(mul_op.inputs) != 2:
    return None
  x, y = mul_op.inputs
  for scale, other in ((x, y), (y, x)):
    if not _is_channel_vector(scale) or not _is_activation(
        other, mul_op.outputs[0]):
      continue
    scale_op = _see_through(scale).op
    if scale_op.type != 'Mul':
      continue
    a, b = (_see_through(t) for t in scale_op.inputs)
    gamma = b if a.op.type == 'Rsqrt' else a if b.op.type == 'Rsqrt' else None
    if gamma is not None and op_handler.rank(gamma) == 1:
      return gamma
  return None


class UnfusedBatchNormSourceOpHandler(grouping_op_handlers.ElementwiseOpHandler):
  """`Mul` that ties channels like any elementwise op, and is a gamma source
  when it is the scale step of an unfused BatchNorm."""

  def __init__(self, gamma_threshold, regularizer_cls):
    self.gamma_threshold = float(gamma_threshold)
    self.regularizer_cls = regularizer_cls

  def analyze(self, op, ctx):
    super().analyze(op, ctx)
    gamma = unfused_gamma(op)
    if gamma is not None and op_handler.rank(op.outputs[0]) and (
        ctx.view.channels(op.outputs[0]) == gamma.shape[0]):
      ctx.add_source(op, op.outputs[0], self.regularizer_cls,
                     ctx.view.param(gamma), self.gamma_threshold)
