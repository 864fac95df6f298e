"""How the regularizers of tied channels combine into one.

Alive is always the OR of the members' alive vectors. The regularization
vector is their element-wise max (default) or L2 norm. Each class works on a
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
  """Element-wise L2 norm of the members' regularization vectors."""

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
