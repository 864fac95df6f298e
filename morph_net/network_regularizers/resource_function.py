"""Per-op cost coefficients.

Every compute op's cost and term are bilinear-plus-linear in the alive
counts (a) and regularization sums (r) of its input and output groups:
    cost = B (k_bi a_in a_out + k_in a_in + k_out a_out)
    term = B (k_bi (a_in r_out + a_out r_in) + t_in r_in + t_out r_out)
A resource is a function Compute -> `Coefficients`. A compute entry (see
`framework.channel_graph.Compute`) knows its kernel elements and the spatial
positions it is applied at.

The original MorphNet's op-level form works too: each function also takes a
`tf.Operation` with the original's arguments, e.g.
`flop_function(op, is_regularization, num_alive_inputs, num_alive_outputs,
reg_inputs, reg_outputs, batch_size=1)`, and returns that op's cost (or
term) from the same coefficients (see `_op_level`). Spatial sizes unknown
statically are read with `tf.shape` when the value is computed.
"""

import collections

import numpy as np
import tensorflow as tf

from morph_net.framework import channel_graph
from morph_net.framework import errors
from morph_net.framework import op_types
from morph_net.framework import patterns
from morph_net.framework import shapes
from morph_net.network_regularizers import hardware

Coefficients = collections.namedtuple(
    'Coefficients', ['bilinear', 'cost_in', 'cost_out', 'term_in',
                     'term_out'])


def _bilinear_or_depthwise(compute, k):
  if compute.linear:
    # Depthwise: cost follows the output channels; the term counts both
    # sides (usually one group), as in MorphNet.
    return Coefficients(0.0, 0.0, k, k, k)
  return Coefficients(k, 0.0, 0.0, 0.0, 0.0)


def flop_coeff(compute, *args, **kwargs):
  """FLOPs = 2 x positions x kernel elements (one multiply, one add)."""
  if isinstance(compute, tf.Operation):
    return _op_coeff(flop_coeff, compute, *args, **kwargs)
  return 2.0 * positions(compute) * compute.kernel_size


def flop_function(compute, *args, **kwargs):
  if isinstance(compute, tf.Operation):
    return _op_level(flop_function, compute, *args, **kwargs)
  return _bilinear_or_depthwise(compute, flop_coeff(compute))


def num_weights_coeff(compute, *args, **kwargs):
  """Weights = kernel elements (1 for a MatMul) per input-output pair."""
  if isinstance(compute, tf.Operation):
    return _op_coeff(num_weights_coeff, compute, *args, **kwargs)
  return float(compute.kernel_size)


_NOTHING = Coefficients(0.0, 0.0, 0.0, 0.0, 0.0)


def model_size_function(compute, *args, **kwargs):
  if isinstance(compute, tf.Operation):
    # Weights do not scale with the batch.
    return _op_level(model_size_function, compute, *args, **kwargs,
                     per_batch=False)
  if compute.weight_index is None or compute.shared:
    return _NOTHING  # activations' product; a weight counted at first use
  return _bilinear_or_depthwise(compute, num_weights_coeff(compute))


def activation_count_function(compute, *args, **kwargs):
  """Activations: the output channel count of every conv and matmul
  (products of two activations, e.g. attention scores, are not counted)."""
  if isinstance(compute, tf.Operation):
    # One example's activations, as the original counts them.
    return _op_level(activation_count_function, compute, *args, **kwargs,
                     per_batch=False)
  if compute.weight_index is None:
    return _NOTHING
  return Coefficients(0.0, 0.0, 1.0, 0.0, 1.0)


def positions(compute):
  """Spatial positions of a compute op, or an error saying what to do."""
  if compute.positions is None:
    raise errors.UnknownShapeError(
        'FLOPs of op %r (type %s) are undefined: the spatial size of its '
        'input/output %s is not known statically. Build the model with a '
        'fixed input size (e.g. keras.Input((224, 224, 3))) or pass '
        'input_signature with the spatial dims set.'
        % (compute.op.name, compute.op.type, compute.output.shape))
  return compute.positions


# ----------------------------------------------------- the op-level form
PEAK_COMPUTE = hardware.PEAK_COMPUTE  # GFLOP/s, by hardware name
MEMORY_BANDWIDTH = hardware.MEMORY_BANDWIDTH  # GB/s


def _dynamic_positions(tensor):
  """Positions between the batch and channel axes: static when known,
  else read with tf.shape when the cost is computed."""
  static = shapes.positions(tensor.shape.as_list())
  if static is not None:
    return static
  return tf.cast(tf.reduce_prod(tf.shape(tensor)[1:-1]), tf.float32)


def op_compute(op):
  """The `Compute` entry of one conv or matmul op on its own, or None.

  Positions come from the op's own tensors (see `_dynamic_positions`); the
  channel grouping of a network is not consulted. A regularizer's analysis
  builds the same entries with the network's grouping and dilation facts.
  """
  if op.type == 'MatMul':  # [rows, C_in] x [C_in, C_out]: one position
    return channel_graph.Compute(op, op.inputs[0], op.outputs[0], 1, 1,
                                 in_positions=1, out_positions=1)
  layout = op_types.CONV_LAYOUTS.get(op.type)
  if layout is None:
    return None
  act, out = op.inputs[layout.activation_index], op.outputs[0]
  weight = op.inputs[layout.weight_index]
  kernel = weight.shape.as_list()[:layout.spatial_dims]
  in_positions, out_positions = _dynamic_positions(act), _dynamic_positions(
      out)
  dilated = patterns.dilated_output(op)  # on space-to-batch sub-images
  if dilated is not None:
    in_positions *= int(np.prod(dilated[0]))
    out_positions = _dynamic_positions(dilated[1])
  return channel_graph.Compute(
      op, act, out,
      out_positions if layout.positions_on_output else in_positions,
      int(np.prod(kernel, dtype=np.int64)),
      linear=op.type in op_types.DEPTHWISE_CONVS,
      weight_index=layout.weight_index,
      in_positions=in_positions, out_positions=out_positions)


def is_flop_op(op):
  """True for the ops that cost FLOPs: convolutions and matmuls."""
  if not isinstance(op, tf.Operation):
    raise ValueError('Expected a tf.Operation, got %r.' % (op,))
  return op_compute(op) is not None


def _op_coeff(coeff_fn, op):
  compute = op_compute(op)
  return 0.0 if compute is None else coeff_fn(compute)


def _op_level(resource, op, is_regularization, num_alive_inputs,
              num_alive_outputs, reg_inputs, reg_outputs, batch_size=1,
              per_batch=True):
  """An op's cost or term from the `Coefficients` of `resource`:
  cost = B (k_bi a_in a_out + k_in a_in + k_out a_out) and
  term = B (k_bi (a_in r_out + a_out r_in) + t_in r_in + t_out r_out),
  B = batch_size if `per_batch` else 1."""
  compute = op_compute(op)
  if compute is None:
    return 0.0
  c = resource(compute)
  a_in, a_out = num_alive_inputs, num_alive_outputs
  if is_regularization:
    value = (c.bilinear * (a_in * reg_outputs + a_out * reg_inputs)
             + c.term_in * reg_inputs + c.term_out * reg_outputs)
  else:
    value = c.bilinear * a_in * a_out + c.cost_in * a_in + c.cost_out * a_out
  return value * batch_size if per_batch else value


# Ops that move activations without computing on them: the roofline counts
# their memory traffic (see `latency_calculator`).
MEMORY_OPS = frozenset(('Add', 'AddV2', 'AddN', 'ConcatV2', 'Mul', 'Relu',
                        'Relu6', 'Sum') + op_types.BATCH_NORMS)


def _moved_inputs(op):
  """The activations a memory op reads: a ConcatV2 reads as much as it
  writes, a batch norm or Sum its first input, an elementwise op its
  activation-shaped operands (not a [C] scale or bias)."""
  if op.type == 'ConcatV2':
    return [op.outputs[0]]
  if op.type in ('Sum',) + op_types.BATCH_NORMS:
    return [op.inputs[0]]
  return [t for t in op.inputs if t.dtype.is_floating
          and t.shape.rank is not None and t.shape.rank >= 2]


def memory_function(op, is_regularization, num_alive_inputs,
                    num_alive_outputs, reg_inputs, reg_outputs,
                    batch_size=1):
  """Bytes an op moves, as a float32 tensor (the term: regularization sums
  in place of alive counts, as `flop_function` does).

  A conv or matmul reads its input and writes its output activations (B x
  positions x channels each) and reads its weights (kernel elements x
  a_in x a_out; a depthwise conv one kernel per output channel). An op of
  `MEMORY_OPS` reads the activations of `_moved_inputs` (channels a_in)
  and writes its output (a_out). Any other op moves nothing here. All
  sizes are x the dtype size; spatial sizes unknown statically are read
  with tf.shape.
  """
  def build():
    return tf.cast(_memory(op, is_regularization, num_alive_inputs,
                           num_alive_outputs, reg_inputs, reg_outputs,
                           batch_size), tf.float32)

  if tf.executing_eagerly():
    return build()
  with op.graph.as_default():
    return build()


def _memory(op, is_regularization, a_in, a_out, reg_inputs, reg_outputs,
            batch_size):
  size = op.outputs[0].dtype.size if op.outputs else 0
  side_in, side_out = (reg_inputs, reg_outputs) if is_regularization else (
      a_in, a_out)
  compute = op_compute(op)
  if compute is None:
    if op.type not in MEMORY_OPS or not op.outputs:
      return 0.0
    read = sum(_dynamic_positions(t) for t in _moved_inputs(op))
    written = _dynamic_positions(op.outputs[0])
    return batch_size * size * (read * side_in + written * side_out)
  act_in = compute.in_positions * batch_size * size
  act_out = compute.out_positions * batch_size * size
  weights = compute.kernel_size * size
  if compute.linear:  # depthwise: one kernel per output channel
    return act_in * side_in + (act_out + weights) * side_out
  if is_regularization:
    pairs = a_in * reg_outputs + a_out * reg_inputs
  else:
    pairs = a_in * a_out
  return act_in * side_in + act_out * side_out + weights * pairs


def latency_function(op, is_regularization, num_alive_inputs,
                     num_alive_outputs, reg_inputs, reg_outputs, peak_compute,
                     memory_bandwidth, batch_size=1):
  """Roofline latency of one op: max(FLOPs / peak_compute, bytes /
  memory_bandwidth); the term follows whichever bound is larger."""
  counts = (num_alive_inputs, num_alive_outputs, reg_inputs, reg_outputs)
  compute_time = flop_function(op, False, *counts, batch_size) / peak_compute
  memory_time = memory_function(op, False, *counts,
                                batch_size) / memory_bandwidth
  if not is_regularization:
    return tf.maximum(compute_time, memory_time)
  compute_term = flop_function(op, True, *counts, batch_size) / peak_compute
  memory_term = memory_function(op, True, *counts,
                                batch_size) / memory_bandwidth
  return tf.where(memory_time > compute_time, memory_term, compute_term)


memory_function.op_level_only = True
latency_function.op_level_only = True


def latency_function_factory(hardware_name, batch_size):
  """`latency_function` bound to a hardware spec and batch size.

  Args:
    hardware_name: a name in `PEAK_COMPUTE`, a spec JSON path, or a
      `hardware.HardwareSpec` (see `hardware.get_hardware`).
    batch_size: examples per inference, > 0.

  Returns:
    fn(op, is_regularization, num_alive_inputs, num_alive_outputs,
    reg_inputs, reg_outputs).

  Raises:
    ValueError: batch_size is not positive, or the hardware is unknown.
  """
  if batch_size <= 0:
    raise ValueError('batch_size must be positive, got %r.' % (batch_size,))
  spec = hardware.get_hardware(hardware_name)

  def latency_for_hardware(op, is_regularization, num_alive_inputs,
                           num_alive_outputs, reg_inputs, reg_outputs):
    return latency_function(op, is_regularization, num_alive_inputs,
                            num_alive_outputs, reg_inputs, reg_outputs,
                            spec.peak_compute, spec.memory_bandwidth,
                            batch_size)

  # CostCalculator(manager, this) builds the latency calculator of `spec`.
  latency_for_hardware.hardware_spec = spec
  latency_for_hardware.batch_size = batch_size
  return latency_for_hardware
