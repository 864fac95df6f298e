"""Vectorized cost and regularization term over all compute ops.

At construction, every compute op's input and output channels are mapped to
channel classes and its coefficients are computed (see resource_function),
all as numpy arrays. Each call then runs a fixed handful of TF ops, however
large the network:
    a_in[o] = sum of alive over op o's input channels (one gather and one
              segment sum; the same for a_out, r_in, r_out)
    cost = sum_o B (k_bi a_in a_out + k_in a_in + k_out a_out)
    term = sum_o B (k_bi (a_in r_out + a_out r_in) + t_in r_in + t_out r_out)
Alive counts carry no gradient; the term is differentiable in the sources.
A grouped conv contributes one bilinear row per group (block g of its input
times block g of its output); rows are summed back onto their op.

The same coefficients evaluate in numpy over every channel class of the
network (`evaluate`, `per_op`): that is how reports, `structure_cost` and
expansion cost a structure, so they cannot disagree with the regularizer.
"""

import numpy as np
import tensorflow as tf

from morph_net.framework import errors
from morph_net.network_regularizers import resource_function


# (manager, hardware spec, batch_size=) -> the latency calculator; set by
# `latency_calculator` (which imports this module) through
# `register_spec_calculator`.
_SPEC_CALCULATOR = [None]


def register_spec_calculator(build):
  _SPEC_CALCULATOR[0] = build


class CostCalculator:
  """Evaluates cost and term for a manager with a coefficient function.

  Args:
    manager: an `OpRegularizerManager`.
    coeff_fn: Compute -> `resource_function.Coefficients`.
    batch_size: B, multiplies every op's cost.
    op_filter: optional predicate on Compute entries that count.

  The original's construction of a latency cost,
  `CostCalculator(manager, resource_function.latency_function_factory(
  hardware, batch_size))`, gives the latency regularizers' own calculator
  (`latency_calculator.LatencyCalculator`: a roofline is a max of two
  bounds, not coefficients).
  """

  def __new__(cls, *args, **kwargs):
    if cls is not CostCalculator:  # a subclass, e.g. CostModel
      return super().__new__(cls)
    return cls._latency_calculator(*args, **kwargs) or super().__new__(cls)

  @staticmethod
  def _latency_calculator(manager, coeff_fn, batch_size=1, op_filter=None):
    spec = getattr(coeff_fn, 'hardware_spec', None)
    if spec is None:
      return None
    if op_filter is not None:
      raise ValueError('A latency CostCalculator takes no op_filter; pass '
                       'the ops to get_cost(ops) instead.')
    return _SPEC_CALCULATOR[0](manager, spec,
                               batch_size=coeff_fn.batch_size * batch_size)

  def __init__(self, manager, coeff_fn, batch_size=1, op_filter=None):
    if getattr(coeff_fn, 'op_level_only', False):
      raise ValueError(
          '%s is an op-level function (op, is_regularization, alive and '
          'regularization counts, ...); CostCalculator takes a function of '
          'a Compute entry: resource_function.flop_function, '
          'model_size_function, activation_count_function, or '
          'latency_function_factory(hardware, batch_size) for latency.'
          % getattr(coeff_fn, '__name__', coeff_fn))
    self._manager = manager
    computes = [c for c in manager.compute_ops
                if op_filter is None or op_filter(c)]
    self._computes = computes
    self._names = [c.op.name for c in computes]
    n = len(computes)
    self._num_ops = n
    # Columns: bilinear, cost_in, cost_out, term_in, term_out.
    self._coeff = np.array([tuple(with_path(manager, coeff_fn, c))
                            for c in computes],
                           dtype=np.float64).reshape([n, 5]) * batch_size
    self._pairs = PairSums(manager, computes)
    self._label_pairs = None  # built on first numpy evaluation

  @property
  def compute_ops(self):
    return list(self._computes)

  @property
  def manager(self):
    return self._manager

  def per_op(self, label_alive):
    """{op name: cost} for given alive channels (numpy, no TF ops).

    Args:
      label_alive: float vector over every channel class of the network
        (`manager.num_labels`, indexed by `manager.channel_labels`): 1 for
        an alive channel, 0 for a dead one. Fractions (and values > 1) are
        allowed for planning: a layer slimmed to n of its C channels can
        give each of them n / C; every tensor's sum is then its width.
    """
    label_alive = np.asarray(label_alive, np.float64)
    if label_alive.shape != (self._manager.num_labels,):
      raise ValueError('label_alive must have one entry per channel class '
                       '(%d), got shape %s.' % (self._manager.num_labels,
                                                label_alive.shape))
    if self._label_pairs is None:
      self._label_pairs = PairSums(self._manager, self._computes,
                                   self._manager.channel_labels)
    a_in, a_out, _, _, bil, _ = self._label_pairs.numpy(label_alive)
    per_op = _cost_per_op(self._coeff.T, a_in, a_out, bil)
    return dict(zip(self._names, per_op.tolist()))

  def evaluate(self, label_alive):
    """The total cost for given alive channels (see `per_op`)."""
    return float(sum(self.per_op(label_alive).values()))

  def full_cost(self):
    """The cost with every channel alive (the network as built)."""
    return self.evaluate(np.ones(self._manager.num_labels))

  def _weights(self, ops):
    """Per-op coefficient columns, zeroed for ops not in `ops`. No ops
    (None or an empty list, as in the original MorphNet) means all."""
    coeff = self._coeff
    if ops is not None and len(ops):
      wanted = {op.name if hasattr(op, 'name') else str(op) for op in ops}
      coeff = coeff * np.array([[n in wanted] for n in self._names])
    return coeff.T

  def _sums(self, dtype):
    return self._pairs(*self._manager.class_vectors(), dtype)

  def _in_graph(self, fn):
    return in_graph(self._manager, fn)

  def get_cost(self, ops=None):
    """Resource cost with the current alive channels (float64 scalar)."""
    coeff = self._weights(ops)

    def build():
      if not self._num_ops:
        return tf.constant(0.0, tf.float64)
      a_in, a_out, _, _, bil, _ = self._sums(tf.float64)
      return tf.reduce_sum(_cost_per_op(coeff, a_in, a_out, bil))

    return self._in_graph(build)

  def get_regularization_term(self, ops=None):
    """The differentiable resource-weighted sparsity term (float32)."""
    coeff = self._weights(ops).astype(np.float32)

    def build():
      if not self._num_ops:
        return tf.constant(0.0, tf.float32)
      _, _, r_in, r_out, _, bil_term = self._sums(tf.float32)
      k_bi, _, _, t_in, t_out = coeff
      return tf.reduce_sum(k_bi * bil_term + t_in * r_in + t_out * r_out)

    return self._in_graph(build)

  def per_op_costs(self):
    """{op name: cost} with the current alive channels (numpy, eager)."""
    a_in, a_out, _, _, bil, _ = (np.asarray(x)
                                 for x in self._sums(tf.float64))
    per_op = _cost_per_op(self._coeff.T, a_in, a_out, bil)
    return dict(zip(self._names, per_op.tolist()))


def _cost_per_op(coeff, a_in, a_out, bilinear):
  """The cost of each op: k_bi sum(a_in a_out) + k_in a_in + k_out a_out
  (numpy or TF), from its coefficient columns (k_bi, k_in, k_out, ...)."""
  k_bi, k_in, k_out = coeff[0], coeff[1], coeff[2]
  return k_bi * bilinear + k_in * a_in + k_out * a_out


def in_graph(manager, fn):
  """fn() in the graph the manager analyzed (a tf.compat.v1 graph), or
  eagerly for a Keras model or tf.function."""
  view = manager.view
  if view.eager:
    return fn()
  with view.graph.as_default():
    return fn()


def get_input_activation(op):
  """The activation a conv or matmul op reads (not its weight).

  Transposed convs read it as their third input, every other conv and
  matmul as their first.

  Raises:
    ValueError: `op` is not a conv or matmul.
  """
  compute = resource_function.op_compute(op)
  if compute is None:
    raise ValueError('get_input_activation takes a conv or matmul op; %r '
                     'is a %s.' % (op.name, op.type))
  return compute.input


def with_path(manager, fn, compute):
  """fn(compute), with the path from the output added to shape errors."""
  try:
    return fn(compute)
  except errors.UnknownShapeError as e:
    raise errors.UnknownShapeError('%s\nPath from the output: %s' % (
        e, manager.path_to(compute.op))) from None


class PairSums:
  """Per compute op: alive and regularization sums of its input and output
  channels, and the bilinear products summed over the op's groups.

  Everything is precomputed as index arrays; a call runs a few gathers and
  segment sums over the manager's current class vectors.
  """

  def __init__(self, manager, computes, index_fn=None):
    """`computes`: Compute entries; None for an op with no bilinear part.
    `index_fn`: tensor -> index per channel into the vectors summed;
    `manager.class_indices` (regularized classes) if None."""
    index_fn = index_fn or manager.class_indices
    self._num_ops = len(computes)
    ins, outs, row_op = [], [], []
    empty = np.zeros([0], np.int64)
    for i, c in enumerate(computes):
      if c is None:
        ins.append(empty)
        outs.append(empty)
        row_op.append(i)
        continue
      ins.extend(np.split(index_fn(c.input), c.groups))
      outs.extend(np.split(index_fn(c.output), c.groups))
      row_op.extend([i] * c.groups)
    self._num_rows = len(row_op)
    self._row_op = np.array(row_op, np.int32)
    self._in_idx, self._in_seg = flatten_indices(ins)
    self._out_idx, self._out_seg = flatten_indices(outs)

  def _rows(self, vector, idx, seg, dtype):
    return tf.cast(tf.math.unsorted_segment_sum(
        tf.gather(vector, idx), seg, self._num_rows), dtype)

  def __call__(self, reg, alive, dtype):
    """(a_in, a_out, r_in, r_out, sum a_in a_out, sum a_in r_out +
    a_out r_in) per op, as `dtype` tensors, from the class vectors."""
    a_in = self._rows(alive, self._in_idx, self._in_seg, dtype)
    a_out = self._rows(alive, self._out_idx, self._out_seg, dtype)
    r_in = self._rows(reg, self._in_idx, self._in_seg, dtype)
    r_out = self._rows(reg, self._out_idx, self._out_seg, dtype)
    rows = (a_in, a_out, r_in, r_out, a_in * a_out, a_in * r_out + a_out * r_in)
    if self._num_rows == self._num_ops:  # no grouped op: rows are ops
      return rows
    return tuple(tf.math.unsorted_segment_sum(x, self._row_op, self._num_ops)
                 for x in rows)

  def numpy(self, alive):
    """(a_in, a_out, -, -, sum a_in a_out, -) per op, in numpy float64."""
    def rows(idx, seg):
      return np.bincount(seg, weights=alive[idx], minlength=self._num_rows)
    a_in = rows(self._in_idx, self._in_seg)
    a_out = rows(self._out_idx, self._out_seg)
    per_op = [np.bincount(self._row_op, weights=x, minlength=self._num_ops)
              for x in (a_in, a_out, a_in * a_out)]
    return per_op[0], per_op[1], None, None, per_op[2], None


def flatten_indices(index_lists):
  """Concatenated indices and the segment (list number) of each."""
  if not index_lists:
    return np.zeros([0], np.int32), np.zeros([0], np.int32)
  idx = np.concatenate(index_lists).astype(np.int32)
  seg = np.repeat(np.arange(len(index_lists)),
                  [len(x) for x in index_lists]).astype(np.int32)
  return idx, seg
