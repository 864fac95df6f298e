"""Group lasso on conv/matmul weights: one group per output channel.

norm_c = (1 - f) * RMS(w[..., c]) + f * mean|w[..., c]|, f = l1_fraction;
a channel is alive when its norm exceeds the threshold.
"""

import numpy as np
import tensorflow as tf

from morph_net.op_regularizers import _checks
from morph_net.op_regularizers import gamma_l1_regularizer


def check_l1_fraction(l1_fraction):
  """Raises ValueError unless l1_fraction is a number in [0, 1]."""
  return _checks.check_threshold('l1_fraction', l1_fraction, upper=1.0)


def out_axes(rank, out_axis):
  """The kernel axes holding output channels, as non-negative ints.

  `out_axis` is one axis, or a tuple of trailing axes whose row-major
  flattening is the output's channel axis (an attention projection's
  [C, heads, head_dim] kernel: out_axis=(-2, -1)).
  """
  axes = out_axis if isinstance(out_axis, (tuple, list)) else (out_axis,)
  return tuple(sorted(int(a) % rank for a in axes))


def num_out_channels(shape, out_axis):
  """Output channels of a kernel of static `shape`."""
  if isinstance(out_axis, np.ndarray):
    return int(out_axis.shape[0])
  return int(np.prod([shape[a] for a in out_axes(len(shape), out_axis)]))


def by_channel(w, out_axis):
  """(w, out_axis) with an index-map `out_axis` applied: row c of the
  int array holds the flat indices of channel c's weights (a kernel that
  the op reads transposed: see einsum_op_handler._variable_out_axis), so
  the result is [C, K] with channels on axis 0. Other axes pass as given."""
  if isinstance(out_axis, np.ndarray):
    return tf.gather(tf.reshape(w, [-1]), out_axis), 0
  return w, out_axis


def _out_axis_of(weight, reduce_dims):
  """The one kernel axis that `reduce_dims` leaves (the output channels)."""
  rank = weight.shape.rank
  kept = sorted(set(range(rank)) - {int(d) % rank for d in reduce_dims})
  if len(kept) != 1:
    raise ValueError(
        'reduce_dims=%r leaves kernel axes %s of a rank-%d kernel; it must '
        'leave exactly one, the output channels (or pass out_axis=...).'
        % (tuple(reduce_dims), kept, rank))
  return kept[0] - rank


def channel_norms(weight, out_axis, l1_fraction=0.0, floor=1e-30):
  """Per output channel c: (1 - f) RMS(w[..., c]) + f mean|w[..., c]|, f =
  l1_fraction, over every axis but the channel axes; a flat vector.

  The one definition of a group lasso channel's norm: the regularizer, the
  alive counts, the budget controller and the training monitor all read
  it. `floor` bounds the mean square below (sqrt has an infinite slope at
  0: an all-zero filter would give NaN gradients); 0 gives exact zeros.
  """
  w, out_axis = by_channel(gamma_l1_regularizer.read(weight), out_axis)
  rank = w.shape.rank
  keep = out_axes(rank, out_axis)
  axes = [a for a in range(rank) if a not in keep]
  mean_square = tf.reduce_mean(tf.square(w), axis=axes)
  norms = tf.sqrt(tf.maximum(mean_square, floor) if floor else mean_square)
  if l1_fraction:
    norms = (1.0 - l1_fraction) * norms + l1_fraction * tf.reduce_mean(
        tf.abs(w), axis=axes)
  return tf.reshape(norms, [-1])


class GroupLassoRegularizer:
  """Regularizer of one conv/matmul's output channels.

  Args:
    weight_tensor: the kernel (variable or tensor).
    threshold: channels whose norm exceeds it are alive; a finite number
      >= 0.
    l1_fraction: mix of mean |w| into the RMS norm, in [0, 1].
    out_axis: the kernel axis of output channels (-1 for Conv2D/MatMul,
      -2 for transposed convs), a tuple of trailing axes flattened into
      the output's channels (see `out_axes`), or an int array [C_out, K]
      whose row c holds the flat kernel indices of channel c's weights.
    reduce_dims: the original MorphNet's way to say it: the kernel axes a
      channel's norm reduces over, e.g. (0, 1, 2) for Conv2D, (0, 1, 3) for
      a transposed conv, (0,) for MatMul. Every axis but one; that one is
      `out_axis` (give one or the other).

  Raises:
    ValueError: `threshold` is negative, NaN or infinite, `l1_fraction` is
      not in [0, 1], or `reduce_dims` leaves other than one kernel axis.
    NonFiniteSourceError: (eager reads) a kernel norm is NaN or inf.

  >>> import tensorflow as tf
  >>> w = tf.constant([[3.0, 0.0], [4.0, 0.0]])  # [in=2, out=2]
  >>> reg = GroupLassoRegularizer(w, threshold=0.1)
  >>> [round(v, 4) for v in reg.regularization_vector.numpy().tolist()]
  [3.5355, 0.0]
  >>> reg.alive_vector.numpy().tolist()
  [True, False]
  """

  def __init__(self, weight_tensor, threshold, l1_fraction=0.0, out_axis=-1,
               reduce_dims=None):
    check_l1_fraction(l1_fraction)
    if reduce_dims is not None:
      out_axis = _out_axis_of(weight_tensor, reduce_dims)
    self._weight = weight_tensor
    self._threshold = _checks.check_threshold('threshold', threshold)
    self._l1_fraction = float(l1_fraction)
    self._out_axis = out_axis

  @property
  def regularization_vector(self):
    norms = channel_norms(self._weight, self._out_axis, self._l1_fraction)
    norms = _checks.check_finite(norms, [self._weight],
                                 [int(norms.shape[0])], 'kernel norm')
    return norms

  @property
  def alive_vector(self):
    return self.regularization_vector > self._threshold

  @staticmethod
  def num_channels(param, setting):
    # Called once per source during the analysis: validate its settings.
    _checks.check_threshold('threshold', setting[0])
    check_l1_fraction(setting[1])
    return num_out_channels(param.shape.as_list(), setting[2])

  @staticmethod
  def batch_vectors(params, settings):
    """Concatenated (regularization, alive) of many kernels.

    Args:
      params: kernels (variables or tensors).
      settings: per kernel, a tuple (threshold, l1_fraction, out_axis).
    """
    regs = [channel_norms(p, axis, f) for p, (_, f, axis) in zip(params, settings)]
    reg = tf.concat(regs, 0) if len(regs) > 1 else regs[0]
    reg = _checks.check_finite(reg, params, [int(r.shape[0]) for r in regs],
                               'kernel norm')
    thresholds = [t for t, _, _ in settings]
    if len(set(thresholds)) == 1:
      return reg, reg > thresholds[0]
    sizes = [num_out_channels(p.shape.as_list(), axis)
             for p, (_, _, axis) in zip(params, settings)]
    return reg, reg > np.repeat(np.asarray(thresholds, np.float32), sizes)
