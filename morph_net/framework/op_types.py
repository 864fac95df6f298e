"""TF op types by role, and the predicates that read them.

Handlers, the pattern pass, the data-flow rules, the cost functions and the
Keras width rules all ask the same questions: is this tensor a weight, is
this op the network's input, is this a batch norm, which input of a conv is
its kernel, is this conv depthwise. Each answer is written here once.

>>> 'FusedBatchNormV3' in BATCH_NORMS
True
>>> CONV_LAYOUTS['Conv2DBackpropInput'].activation_index
2
>>> kernel_channel_axes(transposed=True)
(-1, -2)
>>> is_depthwise(False, groups=8, kernel_shape=[3, 3, 1, 8])
True
"""

import collections

__all__ = [
    'BATCH_NORMS', 'CONSTANT_OPS', 'CONV_LAYOUTS', 'CONVS', 'ConvLayout',
    'DEPTHWISE_CONVS', 'INPUT_OPS', 'TRANSPOSED_CONVS', 'VARIABLE_OPS',
    'WEIGHT_SOURCES', 'is_depthwise', 'is_input', 'is_weight',
    'kernel_channel_axes',
]

# Ops that hold a variable (resource handles and TF1 reference variables).
VARIABLE_OPS = ('VarHandleOp', 'VariableV2', 'Variable')
CONSTANT_OPS = ('Const',)
# Where a weight's value is made: a variable or a constant.
WEIGHT_SOURCES = CONSTANT_OPS + VARIABLE_OPS
# The data fed to a network (a PlaceholderWithDefault is fed like any other).
INPUT_OPS = ('Placeholder', 'PlaceholderWithDefault')
BATCH_NORMS = ('FusedBatchNorm', 'FusedBatchNormV2', 'FusedBatchNormV3')
CONVS = ('Conv2D', 'Conv3D')
DEPTHWISE_CONVS = ('DepthwiseConv2dNative',)
TRANSPOSED_CONVS = ('Conv2DBackpropInput', 'Conv3DBackpropInputV2')


def kernel_channel_axes(transposed=False):
  """(input-channel axis, output-channel axis) of a conv or dense kernel:
  [..., in, out], or [..., out, in] for a transposed conv."""
  return (-1, -2) if transposed else (-2, -1)


ConvLayout = collections.namedtuple('ConvLayout', [
    'activation_index',  # the input holding the activation
    'weight_index',  # the input holding the kernel
    'spatial_dims',  # leading kernel axes that are spatial
    'positions_on_output',  # cost counts the output's positions (else the
                            # input's: a transposed conv's smaller side)
    'out_axis',  # kernel axis holding the output channels
])


def _layout(op_type, spatial_dims):
  transposed = op_type in TRANSPOSED_CONVS
  return ConvLayout(activation_index=2 if transposed else 0, weight_index=1,
                    spatial_dims=spatial_dims,
                    positions_on_output=not transposed,
                    out_axis=kernel_channel_axes(transposed)[1])


CONV_LAYOUTS = {
    'Conv2D': _layout('Conv2D', 2),
    'Conv3D': _layout('Conv3D', 3),
    'DepthwiseConv2dNative': _layout('DepthwiseConv2dNative', 2),
    'Conv2DBackpropInput': _layout('Conv2DBackpropInput', 2),
    'Conv3DBackpropInputV2': _layout('Conv3DBackpropInputV2', 3),
}


def is_weight(tensor, view):
  """A parameter (a variable's value or a constant), not an activation.

  Args:
    tensor: a graph tensor.
    view: the `GraphView` that resolves variables and forwarding ops.
  """
  return (view.variable(tensor) is not None
          or view.source_of(tensor).type in WEIGHT_SOURCES)


def is_input(op):
  """A placeholder the data is fed through."""
  return op.type in INPUT_OPS


def is_depthwise(depthwise_type, groups, kernel_shape):
  """Whether a conv's output channels follow its input channels.

  Args:
    depthwise_type: the conv is of a depthwise type (op or layer class).
    groups: its channel groups (1 for a plain conv).
    kernel_shape: its kernel's shape ([..., in per group, out]), or None.

  Returns:
    True for a depthwise conv, or a grouped conv whose kernel reads one
    input channel per group (groups == input channels, as in ConvNeXt).
  """
  if depthwise_type:
    return True
  return bool(groups > 1 and kernel_shape is not None
              and list(kernel_shape)[-2] == 1)


def is_embedding_lookup(op, view):
  """A gather from a weight: an embedding table looked up by ids."""
  if op.type == 'ResourceGather':
    return True
  return (op.type in ('GatherV2', 'Gather') and bool(op.inputs) and
          is_weight(op.inputs[0], view))
