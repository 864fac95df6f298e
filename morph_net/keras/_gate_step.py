"""The gates' own step: LogisticSigmoid gate logits stepped outside the
optimizer by their task gradient (collected through their masks) plus the
strength times their cost weight, scaled by the gates' running RMS (see
`_proximal`'s module docstring).

Private to `morph_net.keras`.
"""

import contextlib
import warnings

import numpy as np
import tensorflow as tf

from morph_net.probabilistic_gating import activation_gating

# Logits per step of a gate whose gradient is at the gates' RMS.
DEFAULT_GATE_RATE = 0.05


class GateStep:
  """The gates' own step (see `_proximal`'s module docstring).

  Args:
    logits: the gates' logit variables.
    gate_rate: logits per step of a gate whose regularized-loss gradient is
      at the running RMS of all gates' (a number > 0).
  """

  def __init__(self, logits, gate_rate=DEFAULT_GATE_RATE):
    rate = float(gate_rate)
    if not (np.isfinite(rate) and rate > 0):
      raise ValueError('gate_rate must be a finite number > 0, got %r.'
                       % (gate_rate,))
    self.rate = rate
    self._logits = list(logits)
    self._sizes = [int(np.prod(v.shape)) for v in self._logits]
    self._slots = None
    self.active = False

  def build(self):
    """The task-gradient slots (eagerly, once). Under a strategy with
    several replicas the gates stay in the optimizer (the slots would need
    cross-replica sums) and `active` stays False."""
    if self._slots is not None:
      return
    self._slots = []
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
      return
    _warn_if_cold(self._logits)
    self._slots = [tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False,
                               name='morph_net_gate_task_gradient')
                   for v in self._logits]
    self._square = tf.Variable(0.0, trainable=False,
                               name='morph_net_gate_mean_square')
    self._count = tf.Variable(0.0, trainable=False, name='morph_net_gate_steps')
    self.active = True

  def state_variables(self):
    """The state a resumed run needs (saved by `RegularizedModel`)."""
    return self._slots + [self._square, self._count] if self.active else []

  def diverting(self):
    self.build()
    if not self.active:
      return contextlib.nullcontext()
    return activation_gating.task_gradients_diverted(
        list(zip(self._logits, self._slots)))

  def apply(self, term_gradients, strength, optimizer=None, applied=None):
    """Steps every gate by -rate x (task + strength x term gradient) / RMS
    and clears the slots. Returns, per gate, what the term alone moved its
    logits this step (rate x strength x term gradient / RMS).

    Under a `keras.optimizers.LossScaleOptimizer` the collected gradient is
    of the scaled loss: it is divided by the scale, and a step whose scaled
    gradient overflowed (the optimizer skips it too) moves no gate. On a
    step the optimizer did not apply (`applied` False: a micro-step of
    `gradient_accumulation_steps`) the slots keep collecting and no gate
    moves; on the step it does, the gates take the mean of the collected
    gradients, as the optimizer does.
    """
    task = tf.concat([tf.reshape(s.read_value(), [-1])
                      for s in self._slots], 0)
    loss_scale = getattr(optimizer, 'dynamic_scale', None)
    if loss_scale is not None:
      task = task / tf.cast(loss_scale, tf.float32)
    if applied is not None:  # the slots hold the sum over the micro-steps
      inner = getattr(optimizer, 'inner_optimizer', optimizer)
      task = task / float(getattr(inner, 'gradient_accumulation_steps',
                                  None) or 1)
    finite = tf.reduce_all(tf.math.is_finite(task))
    keep = tf.constant(False) if applied is None else tf.logical_and(
        finite, tf.logical_not(applied))  # collecting: no step yet
    finite = tf.logical_and(finite, tf.logical_not(keep))
    task = tf.where(finite, task, tf.zeros_like(task))
    total = [t + strength * tf.reshape(w, [-1])
             for t, w in zip(tf.split(task, self._sizes), term_gradients)]
    decay = 0.99
    count = self._count.assign_add(tf.where(finite, 1.0, 0.0))
    square = self._square.assign(tf.where(
        finite, decay * self._square + (1.0 - decay) * tf.reduce_mean(
            tf.square(tf.concat(total, 0))), self._square))
    rms = tf.sqrt(tf.math.divide_no_nan(square, 1.0 - tf.pow(decay, count)))
    scale = tf.where(finite, tf.math.divide_no_nan(self.rate, rms), 0.0)
    moves = []
    for v, slot, g, w in zip(self._logits, self._slots, total,
                             term_gradients):
      v.assign(tf.cast(tf.convert_to_tensor(v) -
                       tf.cast(tf.reshape(scale * g, v.shape), v.dtype),
                       v.dtype))
      slot.assign(tf.where(keep, slot, tf.zeros_like(slot)))
      moves.append(scale * strength * tf.reshape(w, [-1]))
    return moves


# Under this temperature a sampled mask passes the task's gradient in few
# steps (at logit 2.5 and 0.1, in about 1 step in 15; at 0.001, 1 in 1,000).
COLD_TEMPERATURE = 0.1


def _warn_if_cold(logits):
  """Warns once for gates (Keras layers) that sample too cold for the gate
  step to see the task."""
  cold = []
  for v in logits:
    rec = activation_gating.gate_record(v)
    layer = rec.layer() if rec is not None and rec.layer else None
    if (layer is not None and layer.annealing_schedule is None and
        layer.temperature < COLD_TEMPERATURE):
      cold.append('%s (%g)' % (layer.name, layer.temperature))
  if cold:
    warnings.warn(
        'Gates %s sample at a temperature under %g: the task\'s gradient '
        'reaches their logits in few steps, so the gate step follows the '
        'cost alone. Build them with add_gates (straight-through at 0.5) or '
        'LogisticSigmoidGating(straight_through=True, temperature=0.5).'
        % (', '.join(cold), COLD_TEMPERATURE), stacklevel=4)
