"""BatchNorm as a regularizer source: |gamma| says which channels live.

Two forms are recognized:
* `FusedBatchNorm*` (tf.compat.v1, tf_keras): gamma is input 1.
* The unfused lowering that Keras 3 and `tf.nn.batch_normalization` trace:
  `x * (rsqrt(var + eps) * gamma) + (beta - mean * ...)`. The `Mul` whose
  rank-1 operand is `Rsqrt(...) * gamma` is the source.
"""

from morph_net.framework import grouping_op_handlers
from morph_net.framework import op_handler

_SEE_THROUGH = ('Cast', 'Identity')


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


def unfused_gamma(mul_op):
  """The gamma tensor if `mul_op` is the unfused BatchNorm scale, else None."""
  for scale in mul_op.inputs:
    if op_handler.rank(scale) != 1:
      continue
    scale_op = _see_through(scale).op
    if scale_op.type != 'Mul':
      continue
    a, b = (_see_through(t) for t in scale_op.inputs)
    if a.op.type == 'Rsqrt':
      return scale_op.inputs[1]
    if b.op.type == 'Rsqrt':
      return scale_op.inputs[0]
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
