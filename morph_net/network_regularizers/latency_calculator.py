"""Roofline latency: per op, max(compute time, memory time).

compute time = FLOPs / peak compute; memory time = bytes moved / bandwidth,
with bytes = input activations + output activations (x batch size) + weights,
each linear in the alive channels of its tensor (weights bilinear in the
op's input and output). The units follow MorphNet: FLOPs / (GFLOP/s) and
bytes / (GB/s), i.e. nanoseconds. The term of each op follows whichever bound
is larger with the current alive channels.

Ops counted, as in MorphNet: convolutions and matmuls (compute and memory),
and Add, AddV2, AddN, ConcatV2, FusedBatchNorm*, Mul, Relu, Relu6, Sum
(memory only). A ConcatV2 reads as much as it writes. An elementwise op with a
single activation input (a bias or scale vector on the other side) is part of
a layer's arithmetic and is not counted, except the unfused BatchNorm scale
that Keras 3 traces, which stands for the BatchNorm: so a Keras model and the
same network built with FusedBatchNorm cost the same.

Two refinements for specs measured on a device (`morph_net.keras.profile`):
depthwise (linear) convs compute at `depthwise_compute` GFLOP/s instead of
`peak_compute` (a CPU runs them far below its dense peak), and every op whose
output keeps at least one alive channel costs `op_overhead` ns more (launch
and dispatch time). The overhead is piecewise constant in the alive counts:
the term leaves it out (it has no gradient), and the cost drops by it only
when an op's output loses its last channel, i.e. when the op disappears
from the slim network (a branch removed, a residual block collapsed).
"""

import numpy as np
import tensorflow as tf

from morph_net.framework import errors
from morph_net.framework import patterns
from morph_net.network_regularizers import cost_calculator
from morph_net.network_regularizers import resource_function

MEMORY_OPS = resource_function.MEMORY_OPS


class LatencyCalculator:
  """Vectorized roofline latency over a manager's ops.

  Args:
    manager: an `OpRegularizerManager`.
    peak_compute: GFLOP/s of the target hardware.
    memory_bandwidth: GB/s of the target hardware.
    batch_size: examples per inference.
    op_overhead: ns per op whose output has an alive channel (cost only).
    depthwise_compute: GFLOP/s of depthwise convs; None: `peak_compute`.
  """

  @classmethod
  def from_spec(cls, manager, spec, batch_size=1):
    """The calculator of a `hardware.HardwareSpec` (all of its fields)."""
    return cls(manager, spec.peak_compute, spec.memory_bandwidth, batch_size,
               op_overhead=spec.op_overhead,
               depthwise_compute=spec.depthwise_compute)

  def __init__(self, manager, peak_compute, memory_bandwidth, batch_size=1,
               op_overhead=0.0, depthwise_compute=None):
    self._manager = manager
    self._op_overhead = float(op_overhead)
    depthwise_compute = depthwise_compute or peak_compute
    self._rates = (float(peak_compute), float(depthwise_compute),
                   float(memory_bandwidth))
    computes = {c.op.name: c for c in manager.compute_ops}
    ops = [op for op in manager.ops
           if op.name in computes or _moves_activations(op, manager)]
    self._names = [op.name for op in ops]
    n = len(ops)
    self._num_ops = n
    # Bilinear pairs (compute ops): flops and weight bytes per alive pair.
    flop_bi = np.zeros(n)
    flop_lin = np.zeros(n)  # depthwise: FLOPs per alive output channel
    weight_bi = np.zeros(n)
    weight_lin = np.zeros(n)
    # Linear memory terms: (op index, tensor, bytes per alive channel).
    terms = []
    out_term = np.zeros(n, np.int32)  # each op's output tensor's term
    for i, op in enumerate(ops):
      c = computes.get(op.name)
      out = op.outputs[0]
      if c is not None:
        k = cost_calculator.with_path(
            manager, resource_function.flop_coeff, c) * batch_size
        w_bytes = (0 if c.weight_index is None else
                   c.kernel_size * c.op.inputs[c.weight_index].dtype.size)
        if c.linear:
          flop_lin[i], weight_lin[i] = k, w_bytes
        else:
          flop_bi[i], weight_bi[i] = k, w_bytes
        # The compute entry knows its activations' positions per example
        # (a dilated conv's differ from its tensors' static shapes).
        tensors = [(c.input, c.in_positions), (out, c.out_positions)]
      else:
        inputs = ([out] if op.type == 'ConcatV2' else
                  [t for t in op.inputs if manager.has_channels(t)])
        tensors = [(t, manager.positions(t)) for t in inputs + [out]]
      for t, positions in tensors:
        if positions is None:
          raise errors.UnknownShapeError(
              'Latency needs the static size of %r (shape %s), read by op '
              '%r. Build the model with a fixed input size.\nPath from the '
              'output: %s' % (t.name, t.shape, op.name, manager.path_to(op)))
        per_channel = positions * t.dtype.size * batch_size
        terms.append((i, manager.class_indices(t), per_channel))
      out_term[i] = len(terms) - 1  # the output comes last
    self._out_term = out_term
    self._flop = (flop_bi / peak_compute, flop_lin / depthwise_compute)
    self._weight = (weight_bi / memory_bandwidth,
                    weight_lin / memory_bandwidth)
    self._pairs = cost_calculator.PairSums(
        manager, [computes.get(op.name) for op in ops])
    self._term_idx, self._term_seg = _flatten([t[1] for t in terms])
    self._term_op = np.array([t[0] for t in terms], np.int32)
    self._term_coeff = np.array([t[2] for t in terms], np.float64)
    self._term_coeff /= memory_bandwidth
    self._num_terms = len(terms)

  def _sum(self, vector, idx, seg, count):
    return tf.math.unsorted_segment_sum(tf.gather(vector, idx), seg, count)

  def _times(self, reg, alive, dtype):
    """(compute cost, memory cost, compute term, memory term) per op."""
    cast = lambda x: tf.cast(x, dtype)
    _, a_out, r_in, r_out, bilinear, bilinear_term = self._pairs(
        reg, alive, dtype)
    a_t = cast(self._sum(alive, self._term_idx, self._term_seg,
                         self._num_terms))
    r_t = cast(self._sum(reg, self._term_idx, self._term_seg,
                         self._num_terms))
    coeff = self._term_coeff.astype(dtype.as_numpy_dtype)
    mem_lin = tf.math.unsorted_segment_sum(coeff * a_t, self._term_op,
                                           self._num_ops)
    mem_lin_term = tf.math.unsorted_segment_sum(coeff * r_t, self._term_op,
                                                self._num_ops)
    f_bi, f_lin = (x.astype(dtype.as_numpy_dtype) for x in self._flop)
    w_bi, w_lin = (x.astype(dtype.as_numpy_dtype) for x in self._weight)
    compute = f_bi * bilinear + f_lin * a_out
    memory = mem_lin + w_bi * bilinear + w_lin * a_out
    compute_term = f_bi * bilinear_term + f_lin * (r_in + r_out)
    memory_term = (mem_lin_term + w_bi * bilinear_term
                   + w_lin * (r_in + r_out))
    return compute, memory, compute_term, memory_term

  def _overheads(self, alive, dtype):
    """op_overhead per op whose output has an alive channel, else 0."""
    a_t = self._sum(alive, self._term_idx, self._term_seg, self._num_terms)
    out_alive = tf.gather(tf.cast(a_t, dtype), self._out_term)
    return tf.where(out_alive > 0, tf.cast(self._op_overhead, dtype),
                    tf.zeros([], dtype))

  def _in_graph(self, fn):
    return cost_calculator.in_graph(self._manager, fn)

  def _mask(self, ops, dtype):
    if ops is None or not len(ops):  # no ops: all of them (as CostCalculator)
      return None
    wanted = {op.name if hasattr(op, 'name') else str(op) for op in ops}
    return np.array([n in wanted for n in self._names], dtype)

  def get_cost(self, ops=None):
    mask = self._mask(ops, np.float64)

    def build():
      if not self._num_ops:
        return tf.constant(0.0, tf.float64)
      reg, alive = self._manager.class_vectors()
      compute, memory, _, _ = self._times(reg, alive, tf.float64)
      per_op = tf.maximum(compute, memory)
      if self._op_overhead:
        per_op += self._overheads(alive, tf.float64)
      return tf.reduce_sum(per_op if mask is None else per_op * mask)

    return self._in_graph(build)

  def get_regularization_term(self, ops=None):
    mask = self._mask(ops, np.float32)

    def build():
      if not self._num_ops:
        return tf.constant(0.0, tf.float32)
      reg, alive = self._manager.class_vectors()
      compute, memory, c_term, m_term = self._times(reg, alive, tf.float32)
      per_op = tf.where(memory > compute, m_term, c_term)
      return tf.reduce_sum(per_op if mask is None else per_op * mask)

    return self._in_graph(build)

  def per_op_costs(self):
    """{op name: roofline time + op_overhead if alive} (ns)."""
    reg, alive = self._manager.class_vectors()
    compute, memory, _, _ = self._times(reg, alive, tf.float64)
    per_op = (np.maximum(np.asarray(compute), np.asarray(memory))
              + np.asarray(self._overheads(alive, tf.float64)))
    return dict(zip(self._names, per_op.tolist()))

  def roofline_parts(self):
    """(FLOPs, bytes, is depthwise, output alive) per op, numpy arrays.

    With the current alive channels, in the calculator's op order: what a
    latency model is fitted on (`morph_net.keras.profile`).
    """
    reg, alive = self._manager.class_vectors()
    compute, memory, _, _ = self._times(reg, alive, tf.float64)
    peak, depthwise, bandwidth = self._rates
    linear = self._flop[1] > 0
    flops = np.asarray(compute) * np.where(linear, depthwise, peak)
    a_t = self._sum(alive, self._term_idx, self._term_seg, self._num_terms)
    out_alive = np.asarray(tf.gather(a_t, self._out_term)) > 0
    return flops, np.asarray(memory) * bandwidth, linear, out_alive


def roofline_ns(flops, memory, linear, alive, peak_compute, memory_bandwidth,
                op_overhead=0.0, depthwise_compute=None):
  """The roofline time (ns) of ops given as `roofline_parts` arrays: per op
  max(FLOPs / its rate, bytes / bandwidth), plus op_overhead per op whose
  output has an alive channel; depthwise (`linear`) ops compute at
  depthwise_compute (peak_compute if None). GFLOP/s and GB/s are FLOPs and
  bytes per ns. `LatencyCalculator.get_cost` is this sum, in TF."""
  rate = np.where(linear, depthwise_compute or peak_compute, peak_compute)
  return float(np.maximum(np.asarray(flops) / rate,
                          np.asarray(memory) / memory_bandwidth).sum()
               + op_overhead * np.asarray(alive).sum())


_ELEMENTWISE = frozenset(['Add', 'AddV2', 'Mul', 'Sub'])


def _moves_activations(op, manager):
  if op.type not in MEMORY_OPS or not op.outputs:
    return False
  if not manager.has_channels(op.outputs[0]):
    return False
  if op.type in _ELEMENTWISE:
    return (sum(manager.has_channels(t) for t in op.inputs) >= 2
            or manager.facts.first(op, patterns.BatchNormScale) is not None
            or manager.facts.first(op, patterns.BatchNormUnscaled) is not None)
  return True


_flatten = cost_calculator.flatten_indices


# CostCalculator(manager, resource_function.latency_function_factory(...)),
# the original's construction, builds this calculator.
cost_calculator.register_spec_calculator(LatencyCalculator.from_spec)
