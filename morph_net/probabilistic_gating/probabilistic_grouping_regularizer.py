"""Grouping of tied gates: a group is on if any member gate is on.

With independent gates of probabilities p_i, P(group on) = 1 - prod(1 - p_i).
Alive is the OR of the members' alive vectors, as for every grouping.
"""

import tensorflow as tf

from morph_net.framework import grouping_regularizers

# log(1 - p) is -inf at p = 1. Shrinking p by (1 - eps) keeps it finite
# without a clip, whose zero gradient would stop hard (0/1) sampled masks.
_EPS = 1e-6


def _log_off(p):
  return tf.math.log1p(-(1.0 - _EPS) * p)


class ProbabilisticGroupingRegularizer(
    grouping_regularizers.MaxGroupingRegularizer):
  """Group probability 1 - prod(1 - p_i) of the members' vectors.

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
