"""How the regularizers of tied channels combine into one.

Alive is always the OR of the members' alive vectors. The regularization
vector is their element-wise max (default) or L2 norm, or for gates the
probability that any member is on. Each class works on a
list of op regularizers (as in MorphNet) and, for the vectorized per-step
path, on all channels of a network at once via `segment_reduce`.
"""

import tensorflow as tf


class MaxGroupingRegularizer:
  """Element-wise max of the members' regularization vectors."""

  def __init__(self, regularizers_to_group):
    if not regularizers_to_group:
      raise ValueError('regularizers_to_group must not be empty.')
    self._regs = list(regularizers_to_group)

  @property
  def regularization_vector(self):
    return self.reduce(tf.stack([r.regularization_vector for r in self._regs]))

  @property
  def alive_vector(self):
    return tf.reduce_any(tf.stack([r.alive_vector for r in self._regs]), 0)

  @staticmethod
  def reduce(stacked):
    return tf.reduce_max(stacked, axis=0)

  @staticmethod
  def segment_reduce(values, segment_ids, num_segments):
    return tf.math.unsorted_segment_max(values, segment_ids, num_segments)


class L2GroupingRegularizer(MaxGroupingRegularizer):
  """Element-wise L2 norm of the members' regularization vectors.

  Args:
    regularizers_to_group: the tied channels' op regularizers.
    threshold: optional (the original MorphNet's argument): a channel is
      alive when the group's L2 norm exceeds it, instead of when any member
      is alive. Applies to this list-based object; inside a manager, alive
      is the OR of the members' alive vectors.

  >>> import tensorflow as tf
  >>> class R:
  ...   def __init__(self, v):
  ...     self.regularization_vector = tf.constant(v)
  ...     self.alive_vector = tf.constant(v) > 1.0
  >>> g = L2GroupingRegularizer([R([3.0, 0.6]), R([4.0, 0.8])], threshold=0.9)
  >>> [round(v, 4) for v in g.regularization_vector.numpy().tolist()]
  [5.0, 1.0]
  >>> g.alive_vector.numpy().tolist()
  [True, True]
  """

  def __init__(self, regularizers_to_group, threshold=None):
    super().__init__(regularizers_to_group)
    self._threshold = threshold

  @property
  def alive_vector(self):
    if self._threshold is None:
      return super().alive_vector
    return self.regularization_vector > self._threshold

  @staticmethod
  def reduce(stacked):
    return _safe_sqrt(tf.reduce_sum(tf.square(stacked), axis=0))

  @staticmethod
  def segment_reduce(values, segment_ids, num_segments):
    return _safe_sqrt(tf.math.unsorted_segment_sum(
        tf.square(values), segment_ids, num_segments))


def _safe_sqrt(x):
  # sqrt has an infinite slope at 0; a zero group would give NaN gradients.
  return tf.sqrt(tf.maximum(x, 1e-30))


# log(1 - p) is -inf at p = 1. Shrinking p by (1 - eps) keeps it finite
# without a clip, whose zero gradient would stop hard (0/1) sampled masks.
_EPS = 1e-6


def _log_off(p):
  return tf.math.log1p(-(1.0 - _EPS) * p)


class ProbabilisticGroupingRegularizer(MaxGroupingRegularizer):
  """Tied gates: with independent gates of probabilities p_i, the group is on
  with probability 1 - prod(1 - p_i).

  >>> import tensorflow as tf
  >>> class R:
  ...   def __init__(self, p):
  ...     self.regularization_vector = tf.constant(p)
  ...     self.alive_vector = tf.constant(p) > 0.5
  >>> g = ProbabilisticGroupingRegularizer([R([0.5, 0.0]), R([0.5, 0.2])])
  >>> [round(v, 4) for v in g.regularization_vector.numpy().tolist()]
  [0.75, 0.2]
  >>> g.alive_vector.numpy().tolist()
  [False, False]
  """

  @staticmethod
  def reduce(stacked):
    return 1.0 - tf.exp(tf.reduce_sum(_log_off(stacked), axis=0))

  @staticmethod
  def segment_reduce(values, segment_ids, num_segments):
    # Empty segments sum to 0, so their group probability is 0.
    return 1.0 - tf.exp(tf.math.unsorted_segment_sum(
        _log_off(values), segment_ids, num_segments))
