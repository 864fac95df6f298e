"""Vectorized cost and regularization term over all compute ops.

At construction, every compute op's input and output channels are mapped to
channel classes and its coefficient is computed, all as numpy arrays. Each
call then runs a fixed handful of TF ops, however large the network:
    alive_in[o] = sum of alive over op o's input channels (one gather and
                  one segment sum; same for alive_out, reg_in, reg_out)
    cost = sum_o B k_o alive_in[o] alive_out[o]          (bilinear ops)
         + sum_o B k_o alive_out[o]                      (depthwise)
    term = sum_o B k_o (alive_in reg_out + alive_out reg_in)  (bilinear)
         + sum_o B k_o (reg_in + reg_out)                     (depthwise)
Alive counts carry no gradient; the term is differentiable in the sources.
"""

import numpy as np
import tensorflow as tf


class CostCalculator:
  """Evaluates cost and term for a manager with a coefficient function.

  Args:
    manager: an `OpRegularizerManager`.
    coeff_fn: Compute -> float coefficient k (see resource_function).
    batch_size: B, multiplies every op's cost.
    op_filter: optional predicate on Compute entries that count.
  """

  def __init__(self, manager, coeff_fn, batch_size=1, op_filter=None):
    self._manager = manager
    computes = [c for c in manager.compute_ops
                if op_filter is None or op_filter(c)]
    self._computes = computes
    self._names = [c.op.name for c in computes]
    n = len(computes)
    self._num_ops = n
    self._coeff = np.array([coeff_fn(c) * batch_size for c in computes],
                           dtype=np.float64)
    self._linear = np.array([c.linear for c in computes], dtype=bool)
    ins = [manager.class_indices(c.input) for c in computes]
    outs = [manager.class_indices(c.output) for c in computes]
    self._in_idx, self._in_seg = _flatten(ins)
    self._out_idx, self._out_seg = _flatten(outs)

  @property
  def compute_ops(self):
    return list(self._computes)

  def _weights(self, ops):
    """Per-op coefficients, zeroed for ops not in `ops` (if given)."""
    coeff = self._coeff
    if ops is not None:
      wanted = {op.name if hasattr(op, 'name') else str(op) for op in ops}
      coeff = coeff * np.array([n in wanted for n in self._names])
    return coeff

  def _sums(self, vector, idx, seg):
    return tf.math.unsorted_segment_sum(
        tf.gather(vector, idx), seg, self._num_ops)

  def _io(self):
    reg, alive = self._manager.class_vectors()
    return (self._sums(alive, self._in_idx, self._in_seg),
            self._sums(alive, self._out_idx, self._out_seg),
            self._sums(reg, self._in_idx, self._in_seg),
            self._sums(reg, self._out_idx, self._out_seg))

  def _in_graph(self, fn):
    view = self._manager.view
    if view.eager:
      return fn()
    with view.graph.as_default():
      return fn()

  def get_cost(self, ops=None):
    """Resource cost with the current alive channels (float64 scalar)."""
    coeff = self._weights(ops)

    def build():
      if not self._num_ops:
        return tf.constant(0.0, tf.float64)
      alive_in, alive_out, _, _ = self._io()
      alive_in = tf.cast(alive_in, tf.float64)
      alive_out = tf.cast(alive_out, tf.float64)
      per_op = tf.where(self._linear, alive_out, alive_in * alive_out)
      return tf.reduce_sum(coeff * per_op)

    return self._in_graph(build)

  def get_regularization_term(self, ops=None):
    """The differentiable resource-weighted sparsity term (float32)."""
    coeff = self._weights(ops).astype(np.float32)

    def build():
      if not self._num_ops:
        return tf.constant(0.0, tf.float32)
      alive_in, alive_out, reg_in, reg_out = self._io()
      bilinear = alive_in * reg_out + alive_out * reg_in
      per_op = tf.where(self._linear, reg_in + reg_out, bilinear)
      return tf.reduce_sum(coeff * per_op)

    return self._in_graph(build)

  def per_op_costs(self):
    """{op name: cost} with the current alive channels (numpy, eager)."""
    alive_in, alive_out, _, _ = self._io()
    alive_in = np.asarray(alive_in, np.float64)
    alive_out = np.asarray(alive_out, np.float64)
    per_op = np.where(self._linear, alive_out, alive_in * alive_out)
    return dict(zip(self._names, (self._coeff * per_op).tolist()))


def _flatten(index_lists):
  if not index_lists:
    return np.zeros([0], np.int32), np.zeros([0], np.int32)
  idx = np.concatenate(index_lists).astype(np.int32)
  seg = np.repeat(np.arange(len(index_lists)),
                  [len(x) for x in index_lists]).astype(np.int32)
  return idx, seg
