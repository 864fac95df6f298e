"""Regularizer of a logistic-sigmoid gate's channels (FiGS).

Regularization: the probability p = sigmoid(mask_logits), or, with
`regularize_on_mask`, the mask sampled in this training step (rebuilt from
the step's recorded noise and the live logits, so it is differentiable);
with no sample in the current context it falls back to p.
Alive: 1[logits > 0], the deterministic inference mask, when
`mask_as_alive_vector`; else p >= alive_threshold. A gate that keeps its
first channel alive has channel 0 alive (and a constant mask) always.
"""

import numpy as np
import tensorflow as tf

from morph_net.op_regularizers import gamma_l1_regularizer
from morph_net.probabilistic_gating import activation_gating


def _gate_vectors(logits_param, alive_threshold, regularize_on_mask,
                  mask_as_alive_vector):
  logits = gamma_l1_regularizer.read(logits_param)
  prob = tf.sigmoid(logits)
  record = activation_gating.gate_record(logits_param)
  keep_first = record is not None and record.keep_first
  reg = prob
  if regularize_on_mask:
    sample = activation_gating.current_sample(logits_param)
    if sample is not None:
      noise, temperature = sample
      reg = activation_gating.sampled_mask(logits, noise, temperature,
                                           record.straight_through)
      if keep_first:
        reg = activation_gating.keep_first_channel(reg)
  alive = logits > 0 if mask_as_alive_vector else prob >= alive_threshold
  if keep_first:
    size = int(logits.shape[0])
    alive = tf.logical_or(alive, tf.constant(np.arange(size) == 0))
  return reg, alive


class LogisticSigmoidRegularizer:
  """Regularizer of one gate's channels.

  Args:
    mask_logits: the gate's logits (a variable, or a tensor in graph mode).
    alive_threshold: with `mask_as_alive_vector=False`, channels whose
      probability is at least this are alive.
    regularize_on_mask: regularize the sampled mask instead of p.
    mask_as_alive_vector: alive = deterministic mask (logits > 0).

  >>> import tensorflow as tf
  >>> reg = LogisticSigmoidRegularizer(tf.constant([2.0, -3.0, -1.0]),
  ...                                  alive_threshold=0.2,
  ...                                  regularize_on_mask=False,
  ...                                  mask_as_alive_vector=False)
  >>> [round(v, 3) for v in reg.regularization_vector.numpy().tolist()]
  [0.881, 0.047, 0.269]
  >>> reg.alive_vector.numpy().tolist()
  [True, False, True]
  """

  def __init__(self, mask_logits, alive_threshold=0.1,
               regularize_on_mask=True, mask_as_alive_vector=True):
    if len(mask_logits.shape) != 1:
      raise ValueError('mask_logits must be 1-D, got shape %s.'
                       % (mask_logits.shape,))
    self._logits = mask_logits
    self._setting = (float(alive_threshold), bool(regularize_on_mask),
                     bool(mask_as_alive_vector))

  @property
  def regularization_vector(self):
    return _gate_vectors(self._logits, *self._setting)[0]

  @property
  def alive_vector(self):
    return _gate_vectors(self._logits, *self._setting)[1]

  @staticmethod
  def num_channels(param, setting):
    del setting
    return int(param.shape[0])

  @staticmethod
  def batch_vectors(params, settings):
    """Concatenated (regularization, alive) vectors of many gates.

    Args:
      params: the gates' logits.
      settings: per gate, (alive_threshold, regularize_on_mask,
        mask_as_alive_vector).
    """
    pairs = [_gate_vectors(p, *s) for p, s in zip(params, settings)]
    if len(pairs) == 1:
      return pairs[0]
    return (tf.concat([r for r, _ in pairs], 0),
            tf.concat([a for _, a in pairs], 0))
