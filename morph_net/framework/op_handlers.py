"""The op-handler table: TF op type -> handler.

Supporting a new op type is one entry here (or in the dict you pass to a
manager or regularizer): e.g. an activation that passes channels through is
`table['MyAct'] = GroupingOpHandler()`. Each manager copies the table it is
given, so overrides never leak between managers. The same table serves every
regularizer family: which ops carry regularizers is decided by the family
from the pattern pass (`patterns.py`), not by swapping handlers.
"""

from morph_net.framework import axis_op_handlers as axis_ops
from morph_net.framework import conv_op_handlers
from morph_net.framework import einsum_op_handler
from morph_net.framework import gather_op_handler
from morph_net.framework import grouping_op_handlers as grouping
from morph_net.framework import op_handler
from morph_net.framework import op_types
from morph_net.framework import recurrent
from morph_net.framework import reshape_op_handler

_FAMILIES = (
    (op_handler.TerminalOpHandler(), op_types.INPUT_OPS
     + op_types.WEIGHT_SOURCES + (
         'ReadVariableOp', 'RandomUniform', 'RandomStandardNormal',
         'TruncatedNormal')),
    (grouping.GroupingOpHandler(), op_types.BATCH_NORMS + (
        'Relu', 'Relu6', 'Elu', 'Selu', 'LeakyRelu', 'Sigmoid', 'Tanh',
        'Softplus', 'Softsign', 'Softmax', 'LogSoftmax', 'Identity',
        'Snapshot', 'StopGradient', 'PreventGradient', 'EnsureShape',
        'CheckNumerics', 'Cast', 'MaxPool', 'AvgPool',
        'MaxPool3D', 'AvgPool3D', 'Neg', 'Abs', 'Square', 'Sqrt', 'Rsqrt',
        'Exp', 'Expm1', 'Log', 'Log1p', 'Erf', 'Erfc', 'Reciprocal',
        'ClipByValue', 'Round', 'Floor', 'Ceil', 'Sign', 'ResizeBilinear',
        'ResizeNearestNeighbor', 'ResizeBicubic', 'ResizeArea',
        # Around a dilated conv (patterns.SpaceToBatch gives its positions).
        'SpaceToBatchND', 'BatchToSpaceND')),
    (grouping.BiasAddOpHandler(), ('BiasAdd',)),
    (grouping.IdentityNOpHandler(), ('IdentityN',)),
    (grouping.ElementwiseOpHandler(), (
        'Add', 'AddV2', 'Sub', 'Mul', 'Maximum', 'Minimum', 'RealDiv', 'Div',
        'DivNoNan', 'SquaredDifference', 'Pow', 'SelectV2', 'Select',
        'AddN')),
    (grouping.ReductionOpHandler(), ('Mean', 'Max', 'Min', 'Sum', 'Prod')),
    (grouping.PadOpHandler(), ('Pad', 'PadV2', 'MirrorPad')),
    (grouping.TransposeOpHandler(), ('Transpose',)),
    (axis_ops.SliceOpHandler(), ('StridedSlice', 'Slice')),
    (grouping.SameChannelsOpHandler(), (
        'Squeeze', 'ExpandDims', 'Tile', 'BroadcastTo')),
    (reshape_op_handler.ReshapeOpHandler(), ('Reshape',)),
    (axis_ops.ConcatOpHandler(), ('ConcatV2',)),
    (conv_op_handlers.OutputNonPassthroughOpHandler(),
     op_types.CONVS + op_types.TRANSPOSED_CONVS),
    (conv_op_handlers.DepthwiseConvOpHandler(), op_types.DEPTHWISE_CONVS),
    (conv_op_handlers.MatMulOpHandler(), ('MatMul',)),
    (einsum_op_handler.EinsumOpHandler(), (
        'Einsum', 'BatchMatMulV2', 'BatchMatMulV3', 'BatchMatMul')),
    (axis_ops.SplitOpHandler(), ('Split', 'SplitV')),
    (axis_ops.PackOpHandler(), ('Pack',)),
    (axis_ops.UnpackOpHandler(), ('Unpack',)),
    (axis_ops.RollOpHandler(), ('Roll', 'ReverseV2')),
    (gather_op_handler.GatherOpHandler(), ('GatherV2', 'ResourceGather')),
    (grouping.SpaceToDepthOpHandler(),
     ('SpaceToDepth', 'DepthToSpace')),
    # Refused with the reason and the fix (unroll=True): loops and their
    # TensorList plumbing, fused cuDNN RNNs.
    (recurrent.RecurrentLoopOpHandler(), recurrent.LOOP_OP_TYPES),
)


def default_op_handler_dict():
  """A fresh copy of the op-handler table."""
  table = {}
  for handler, family_types in _FAMILIES:
    for op_type in family_types:
      table[op_type] = handler
  return table
