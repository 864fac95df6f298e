"""L1 on BatchNorm gammas: regularization |gamma|, alive |gamma| > threshold."""

import numpy as np
import tensorflow as tf

from morph_net.op_regularizers import _checks


def read(param):
  """The current float32 value of a variable or tensor."""
  value = tf.convert_to_tensor(param)
  return tf.cast(value, tf.float32) if value.dtype != tf.float32 else value


class GammaL1Regularizer:
  """Regularizer of one BatchNorm's channels.

  Args:
    gamma: the gamma variable or tensor, shape [C].
    gamma_threshold: channels with |gamma| above it are alive; a finite
      number >= 0.

  Raises:
    ValueError: `gamma_threshold` is negative, NaN or infinite.
    NonFiniteSourceError: (eager reads) gamma holds NaN or inf.

  >>> import tensorflow as tf
  >>> reg = GammaL1Regularizer(tf.constant([0.5, -0.001, 2.0]), 0.01)
  >>> reg.regularization_vector.numpy().tolist()
  [0.5, 0.0010000000474974513, 2.0]
  >>> reg.alive_vector.numpy().tolist()
  [True, False, True]
  """

  def __init__(self, gamma, gamma_threshold):
    self._gamma = gamma
    self._threshold = _checks.check_threshold('gamma_threshold',
                                              gamma_threshold)

  @property
  def regularization_vector(self):
    value = read(self._gamma)
    value = _checks.check_finite(value, [self._gamma],
                                 [int(value.shape[0])], 'gamma')
    return tf.abs(value)

  @property
  def alive_vector(self):
    return self.regularization_vector > self._threshold

  @staticmethod
  def num_channels(param, setting):
    # Called once per source while the network is analyzed: the place to
    # reject a threshold that would make every channel dead (NaN) or alive.
    _checks.check_threshold('gamma_threshold', setting)
    return int(param.shape[0])

  @staticmethod
  def batch_vectors(params, thresholds):
    """Concatenated (regularization, alive) vectors of many gammas at once.

    One concat, one abs and one compare for a whole network: this is what
    a training step evaluates.
    """
    values = [read(p) for p in params]
    # Gammas are 1-D already; reshaping each would add an op per BatchNorm.
    values = [v if v.shape.rank == 1 else tf.reshape(v, [-1]) for v in values]
    gammas = tf.concat(values, axis=0) if len(values) > 1 else values[0]
    gammas = _checks.check_finite(
        gammas, params, [int(v.shape[0]) for v in values], 'gamma')
    reg = tf.abs(gammas)
    if len(set(thresholds)) == 1:
      return reg, reg > thresholds[0]
    sizes = [int(p.shape[0]) for p in params]
    limits = np.repeat(np.asarray(thresholds, np.float32), sizes)
    return reg, reg > limits
