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

from morph_net.op_regularizers import _checks
from morph_net.op_regularizers import gamma_l1_regularizer
from morph_net.probabilistic_gating import activation_gating


def check_alive_threshold(value):
  """`value` as a float; ValueError unless it is a probability in [0, 1]."""
  return _checks.check_threshold('alive_threshold', value, upper=1.0)


def _per_channel(values, sizes, dtype):
  return np.repeat(np.asarray(values, dtype), sizes)


def _sampled_masks(logits, samples, records, sizes):
  """The step's masks of all gates, in a few ops (dummy noise where the
  gate has no sample; those channels are not selected)."""
  noises, temperatures = [], []
  for sample, size in zip(samples, sizes):
    if sample is None:
      noises.append(tf.zeros([size]))
      temperatures.append(tf.ones([size]))
    else:
      noise, temperature = sample
      noises.append(tf.cast(noise, tf.float32))
      temperatures.append(tf.fill([size], tf.cast(temperature, tf.float32)))
  z = logits + tf.concat(noises, 0)
  relaxed = tf.sigmoid(z / tf.concat(temperatures, 0))
  straight = [r is not None and r.straight_through for r in records]
  if not any(straight):
    return relaxed
  hard = tf.cast(z > 0, tf.float32)
  return tf.where(tf.constant(_per_channel(straight, sizes, bool)),
                  relaxed + tf.stop_gradient(hard - relaxed), relaxed)


def gate_vectors(params, settings, variables=None):
  """(regularization, alive) of many gates, concatenated; see the module.

  `variables`, if given, are the gates' logit variables and `params` the
  values to read in their place (a what-if, see
  `OpRegularizerManager.substituted_sources`); a gate's record and sample
  are found from its variable.
  """
  values = [gamma_l1_regularizer.read(p) for p in params]
  if variables is None:
    variables = params
  sizes = [int(v.shape[0]) for v in values]
  logits = tf.concat(values, 0) if len(values) > 1 else values[0]
  logits = _checks.check_finite(logits, params, sizes, 'gate logits')
  prob = tf.sigmoid(logits)
  records = [activation_gating.gate_record(v) for v in variables]
  first = np.zeros(sum(sizes), bool)
  offsets = np.cumsum([0] + sizes[:-1])
  first[[o for o, r in zip(offsets, records)
         if r is not None and r.keep_first]] = True

  thresholds = [t for t, _, _ in settings]
  on_mask = [m for _, _, m in settings]
  by_prob = prob >= _per_channel(thresholds, sizes, np.float32)
  if all(on_mask):
    alive = logits > 0
  elif not any(on_mask):
    alive = by_prob
  else:
    alive = tf.where(tf.constant(_per_channel(on_mask, sizes, bool)),
                     logits > 0, by_prob)
  if first.any():
    alive = tf.logical_or(alive, tf.constant(first))

  reg = prob
  samples = [activation_gating.current_sample(v) if r else None
             for v, (_, r, _) in zip(variables, settings)]
  if any(s is not None for s in samples):
    mask = _sampled_masks(logits, samples, records, sizes)
    if first.any():
      mask = tf.where(tf.constant(first), tf.ones_like(mask), mask)
    use = _per_channel([s is not None for s in samples], sizes, bool)
    reg = mask if use.all() else tf.where(tf.constant(use), mask, prob)
  return reg, alive


class LogisticSigmoidRegularizer:
  """Regularizer of one gate's channels.

  Args:
    mask_logits: the gate's logits (a variable, or a tensor in graph mode).
    alive_threshold: with `mask_as_alive_vector=False`, channels whose
      probability is at least this are alive; a probability, in [0, 1].
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
    self._setting = (check_alive_threshold(alive_threshold),
                     bool(regularize_on_mask), bool(mask_as_alive_vector))

  @property
  def regularization_vector(self):
    return gate_vectors([self._logits], [self._setting])[0]

  @property
  def alive_vector(self):
    return gate_vectors([self._logits], [self._setting])[1]

  @staticmethod
  def num_channels(param, setting):
    # Called once per source during the analysis: validate its settings.
    check_alive_threshold(setting[0])
    return int(param.shape[0])

  # The manager passes `variables` when it reads other values (what-ifs).
  takes_variables = True

  @staticmethod
  def batch_vectors(params, settings, variables=None):
    """Concatenated (regularization, alive) vectors of many gates.

    Args:
      params: the gates' logits.
      settings: per gate, (alive_threshold, regularize_on_mask,
        mask_as_alive_vector).
      variables: the logit variables, when `params` are other values.
    """
    return gate_vectors(params, settings, variables)
