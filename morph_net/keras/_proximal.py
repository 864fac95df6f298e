"""Exact zeros: the term applied as a proximal step after each update.

`ProximalStep` takes the regularization term out of the optimizer's
gradient (the logged loss still includes it) and applies it after each
update as a proximal step of size eta x strength, eta the optimizer's
current learning rate: per channel, source <- source x max(0, 1 - eta x
strength x w_c / r_c), with r_c the channel's regularization (|gamma|, or
the RMS norm of a filter) and w_c its weight in the term (d term / d r_c).
For BatchNorm gammas this is the soft threshold sign(g) max(|g| - eta
strength w, 0): under plain SGD the update is ISTA (the exact proximal
gradient method); under heavy-ball momentum eta is the optimizer's
effective step lr (1 - m^t) / (1 - m); under Adam (and AdamW, Nadam) the
step is taken in Adam's own metric: channel c's step is divided by
sqrt(v_hat_c), the root of Adam's second moment of its task gradient,
relative to that root's RMS over all channels (`_adam_metric`).
The decoupled step (AdamW's decay) would balance the penalty against
Adam's normalized step, about 1 for any channel with a steady gradient
whatever it is worth, and channels died together.

On top of the soft threshold, a channel whose norm falls from above the
alive threshold to at or under it is set to exactly 0 in that step (a hard
threshold on the way down only). Without it a dying channel can linger in
(0, threshold] and, where the network is scale-invariant in its sources
(a BatchNorm gamma feeding another BatchNorm), hover there: the alive count
is then set by noise. A channel reviving from 0 passes through (0,
threshold] freely.

Supported sources: BatchNorm gammas (Gamma regularizers) and group lasso
with l1_fraction=0. LogisticSigmoid gates have no zero to snap to: their
logits leave the optimizer altogether (`GateStep`). The gradient of the
task loss that reaches them through their training masks is collected
during the step (`activation_gating.task_gradients_diverted`), and after
the update each logit takes one step down the regularized loss,
task gradient + strength x term gradient, divided by one running RMS of
that gradient over all gates, times `gate_rate`. One scale for every gate
keeps the balance of the two gradients, so a gate settles where its
channel's value to the task equals strength x its cost weight (the
optimality condition of task + strength x term) under any optimizer; the
scale only sets the speed, in logits per step. Inside Adam every logit
would move by about the learning rate whatever its channel costs, and
inside SGD the logits would move far slower than the weights (their
gradients are 1e-4..1e-3).
"""

import contextlib

import numpy as np
import tensorflow as tf

from morph_net.framework import sources
from morph_net.keras import _distribute
from morph_net.keras._gate_step import DEFAULT_GATE_RATE
from morph_net.keras._gate_step import GateStep
from morph_net.keras._adam_metric import adam_channel_roots
from morph_net.keras._adam_metric import adam_preconditioners
from morph_net.keras._adam_metric import optimizer_of
from morph_net.op_regularizers import gamma_l1_regularizer
from morph_net.op_regularizers import group_lasso_regularizer
from morph_net.op_regularizers import logistic_sigmoid_regularizer



def source_kind(source, proximal=True):
  """'gamma', 'group_lasso', 'gate' or None.

  With `proximal`, only the sources the decoupled step handles: gammas,
  group lasso with l1_fraction=0 (both shrunk by their proximal step) and
  logistic-sigmoid gates (moved by the term's gradient). Otherwise also
  group lasso with any l1_fraction (its norms scale with their channel).
  Group lasso read through an index map is never a kind here.
  """
  cls = source.regularizer_cls
  if issubclass(cls, gamma_l1_regularizer.GammaL1Regularizer):
    return 'gamma'
  if issubclass(cls, group_lasso_regularizer.GroupLassoRegularizer):
    setting = source.setting
    if (isinstance(setting, tuple) and len(setting) == 3
        and not (proximal and setting[1])
        and not isinstance(setting[2], np.ndarray)):  # not an index map
      return 'group_lasso'
  if issubclass(cls, logistic_sigmoid_regularizer.LogisticSigmoidRegularizer):
    return 'gate'
  return None


def every_source_has_a_kind(regularizer, proximal=True):
  """Whether `regularizer` has sources, each a variable of a `source_kind`."""
  manager = getattr(regularizer, 'op_regularizer_manager', None)
  sources = getattr(manager, 'sources', None)
  if not sources:
    return False
  return all(source_kind(s, proximal) is not None and
             isinstance(s.param, tf.Variable) for s in sources)


def supports_exact_zeros(regularizer):
  """Whether every source of `regularizer` admits the proximal step."""
  return every_source_has_a_kind(regularizer)


def channel_axis(source, kind):
  return 0 if kind in ('gamma', 'gate') else source.setting[2]


def l1_fraction(source, kind):
  """The mean-|w| share of a group lasso source's norm (0 otherwise)."""
  return float(source.setting[1]) if kind == 'group_lasso' else 0.0


def channel_norms(kind, value, axis, l1_fraction=0.0):  # pylint: disable=redefined-outer-name
  """r_c: |gamma|, a kernel's group lasso norm (the regularizer's own
  definition, `group_lasso_regularizer.channel_norms`), or a gate's logits
  as they are."""
  if kind == 'gate':
    return tf.reshape(value, [-1])
  if kind == 'gamma':
    return tf.abs(value)
  return group_lasso_regularizer.channel_norms(value, axis, l1_fraction,
                                               floor=0.0)


def scaled(kind, value, axis, scale):
  """`value` with channel c multiplied by scale[c]."""
  if kind == 'gamma':
    return value * scale
  keep = group_lasso_regularizer.out_axes(value.shape.rank, axis)
  shape = [value.shape[a] if a in keep else 1
           for a in range(value.shape.rank)]
  return value * tf.reshape(scale, shape)


class ProximalStep:
  """The proximal (soft-threshold) step of the term on its sources.

  Args:
    regularizer: a network regularizer whose sources all support it
      (`supports_exact_zeros`).

  Raises:
    ValueError: a source is not a BatchNorm gamma or a group lasso kernel
      with l1_fraction=0, or is not a variable.
  """

  def __init__(self, regularizer, gate_rate=DEFAULT_GATE_RATE):
    if not supports_exact_zeros(regularizer):
      kinds = sorted({s.regularizer_cls.__name__ for s in getattr(
          regularizer.op_regularizer_manager, 'sources', [])})
      raise ValueError(
          'exact_zeros needs every source to be a BatchNorm gamma (Gamma '
          'regularizers), a group lasso kernel (l1_fraction=0, channels on '
          'kernel axes) or a LogisticSigmoid gate; this regularizer has %s. '
          'Use exact_zeros=False (plain gradient on the term).'
          % (', '.join(kinds) or 'no sources'))
    self._regularizer = regularizer
    self._sources = list(regularizer.op_regularizer_manager.sources)
    self._kinds = [source_kind(s) for s in self._sources]
    self._axes = [channel_axis(s, k)
                  for s, k in zip(self._sources, self._kinds)]
    self._thresholds = [sources.threshold(s) for s in self._sources]
    # Scale-free sources are alive relative to their own scale (their
    # threshold is in units of the RMS of their norms).
    relative = getattr(regularizer.op_regularizer_manager,
                       'normalized_sources', frozenset())
    self._relative = [s.op.name in relative for s in self._sources]
    # Sources whose step Adam's metric scales: gammas and group lasso
    # measured absolutely (gates take GateStep's step).
    self._preconditioned = [k != 'gate' and not r
                            for k, r in zip(self._kinds, self._relative)]
    self._weights = None
    self._alive = None
    gates = [s.param for s, k in zip(self._sources, self._kinds)
             if k == 'gate']
    self._gate_step = GateStep(gates, gate_rate) if gates else None

  def diverting(self):
    """Context for building or tracing the training step: gates hand their
    task gradient to the gate step instead of the optimizer."""
    if self._gate_step is None:
      return contextlib.nullcontext()
    return self._gate_step.diverting()

  @property
  def variables(self):  # the source variables the step acts on
    return [s.param for s in self._sources]

  def _norms(self):
    return [channel_norms(k, tf.cast(tf.convert_to_tensor(p), tf.float32), a)
            for p, k, a in zip(self.variables, self._kinds, self._axes)]

  def _term_weights(self):
    """w_c = d term / d r_c (see `_term_gradients`)."""
    return self._term_gradients()[1]

  def _term_gradients(self):
    """(d term / d source variable, w_c) per source.

    w_c = d term / d r_c, by Euler: sum_c-elements(p * dterm/dp) / r_c.
    The term is linear in the regularization vectors and each r_c is
    1-homogeneous in its channel's elements, so the product sum is w_c r_c.
    Where r_c = 0 (or a tied member that is not its group's max) the
    gradient is zero and the last known weight is kept. (A gate's w is its
    gradient; a source measured relative to its own scale takes the
    gradient itself, see `apply`.)
    """
    params = self.variables
    with tf.GradientTape() as tape:
      tape.watch(params)
      term = tf.cast(self._regularizer.get_regularization_term(), tf.float32)
    grads = tape.gradient(term, params)
    grads = [None if g is None else tf.cast(tf.convert_to_tensor(g),
                                            tf.float32) for g in grads]
    weights = []
    for p, g, kind, axis in zip(params, grads, self._kinds, self._axes):
      value = tf.cast(tf.convert_to_tensor(p), tf.float32)
      norms = channel_norms(kind, value, axis)
      if g is None:
        weights.append(tf.zeros_like(norms))
        continue
      if kind == 'gate':  # d term / d logit, used as is
        weights.append(tf.reshape(tf.cast(g, tf.float32), [-1]))
        continue
      product = tf.cast(g, tf.float32) * value
      if kind == 'gamma':
        moment = product
      else:
        keep = group_lasso_regularizer.out_axes(value.shape.rank, axis)
        moment = tf.reshape(tf.reduce_sum(
            product, axis=[a for a in range(value.shape.rank)
                           if a not in keep]), [-1])
      weights.append(tf.math.divide_no_nan(moment, norms))
    return grads, weights

  def build(self):
    """Creates the weight cache and the alive flags (eagerly, once)."""
    if self._weights is not None:
      return
    if self._gate_step is not None:
      self._gate_step.build()
    initial = _distribute.in_replica_context(
        lambda: self._term_weights() + self._norms())
    n = len(self._sources)
    self._weights = [tf.Variable(w, trainable=False, name='morph_net_w_%d' % i)
                     for i, w in enumerate(initial[:n])]
    self._alive = [
        tf.Variable(tf.cast(r > self._limit(i, r), tf.float32),
                    trainable=False, name='morph_net_alive_%d' % i)
        for i, r in enumerate(initial[n:])]

  def state_variables(self):
    """The state a resumed run needs (saved by `RegularizedModel`)."""
    gates = self._gate_step.state_variables() if self._gate_step else []
    return list(self._weights or []) + list(self._alive or []) + gates

  def _limit(self, i, norms):
    """Source i's alive threshold on its norms (relative sources: times
    the RMS of their norms)."""
    if not self._relative[i]:
      return self._thresholds[i]
    return self._thresholds[i] * tf.sqrt(tf.reduce_mean(tf.square(norms))
                                         + 1e-24)

  def apply(self, step, optimizer=None, strength=None, frozen=(),
            applied=None):
    """Shrinks the sources by `step` (= learning rate x strength), but for
    the indices in `frozen` (of layers not trainable); gates take
    `GateStep`'s step with `strength` (or, without it or with a
    multi-replica strategy, the term's step `step` x w alone), on the
    steps the optimizer `applied` (a boolean tensor; None: this one).

    Returns the per-channel shrink of this step, step x w_c, one vector
    per source (what the penalty alone moves each norm per step).

    With a Keras optimizer that keeps a heavy-ball velocity v <- m v - lr g
    (SGD with momentum or Nesterov, RMSprop with momentum), the step is
    `step x (1 - m^t) / (1 - m)`, t the optimizer's iterations: the
    displacement the velocity gives a unit gradient held for t updates
    (1 / (1 - m) in steady state), i.e. the penalty gets the momentum the
    task gradient gets. The velocity holds only task gradients (the term is
    not in the loss's gradient), so:

    * a channel at rest away from 0 satisfies mean task gradient =
      -strength x w_c, the optimality condition of task + strength x term;
    * a channel at 0 stays there exactly while |v| <= the step, i.e. while
      the velocity's average of the task gradient is <= strength x w_c:
      ISTA's condition, on the averaged gradient instead of one batch's.

    With `step` alone (the decoupled step of plain SGD), alive channels get
    (1 - m) x the penalty and a dead one leaves 0 as soon as its averaged
    gradient exceeds (1 - m) x strength x w_c: at m = 0.9 dead gammas sat
    at 1e-4..3e-3 instead of 0. Zeroing the velocity of zeroed entries was
    tried and measured worse: each restart from rest follows one batch's
    gradient, so noisy batches keep pushing dead channels off 0.
    """
    self.build()
    step = tf.cast(step, tf.float32) * _momentum_gain(optimizer)
    shrinks = []
    grads, weights = self._term_gradients()
    metric = self._adam_metric(optimizer)
    gate_moves = None
    if (self._gate_step is not None and self._gate_step.active and
        strength is not None):
      gate_moves = self._gate_step.apply(
          [w for w, k in zip(weights, self._kinds) if k == 'gate'],
          tf.cast(strength, tf.float32), optimizer, applied=applied)
    for i, (p, cache, alive, g, w, kind, axis) in enumerate(zip(
        self.variables, self._weights, self._alive, grads, weights,
        self._kinds, self._axes)):
      if i in frozen or self._relative[i]:
        shrinks.append(tf.zeros_like(cache) if i in frozen else
                       self._relative_step(i, p, alive, g, step))
        continue
      if kind == 'gate':
        if gate_moves is not None:
          shrinks.append(gate_moves.pop(0))
          continue
        # No collected task gradient (several replicas): the term's
        # gradient step alone, outside the optimizer, so that each gate
        # moves by its own cost weight.
        shrinks.append(step * w)
        p.assign(tf.cast(tf.cast(tf.convert_to_tensor(p), tf.float32)
                         - tf.reshape(step * w, p.shape), p.dtype))
        continue
      w = tf.where(w > 0, w, cache)
      cache.assign(w)
      t = step * w if metric[i] is None else step * w * metric[i]
      shrinks.append(t)
      value = tf.cast(tf.convert_to_tensor(p), tf.float32)
      norms = channel_norms(kind, value, axis)
      limit = self._limit(i, norms)
      # prox of t r_c: scale the channel by max(0, 1 - t / r_c)
      # (the soft threshold for a scalar gamma) ...
      scale = tf.maximum(0.0, 1.0 - tf.math.divide_no_nan(t, norms))
      # ... and a channel falling under the alive threshold goes to 0.
      under = norms * scale <= limit
      scale = tf.where(under & (alive > 0.5), 0.0, scale)
      alive.assign(tf.cast(~under, tf.float32))
      p.assign(tf.cast(scaled(kind, value, axis, scale), p.dtype))
    return shrinks

  def _adam_metric(self, optimizer):
    """Per source, the channels' step factors in an Adam-family
    optimizer's own metric, or None (see `adam_preconditioners`)."""
    if not any(self._preconditioned):
      return [None] * len(self._sources)
    return adam_preconditioners(adam_channel_roots(optimizer, [
        (p, kind, axis) if on else None for p, kind, axis, on in zip(
            self.variables, self._kinds, self._axes, self._preconditioned)]))

  def _relative_step(self, i, p, alive, grad, step):
    """A source measured relative to its own scale (`normalized_sources`):
    its term is scale-free (0-homogeneous), so it has no soft threshold; the
    step is the term's gradient, which moves mass between the channels and
    leaves the layer's scale alone, and a channel falling under threshold x
    the layer's RMS norm goes to exactly 0. Returns how much each channel's
    norm fell."""
    kind, axis = self._kinds[i], self._axes[i]
    value = tf.cast(tf.convert_to_tensor(p), tf.float32)
    before = channel_norms(kind, value, axis)
    if grad is not None:
      value = value - step * grad
    norms = channel_norms(kind, value, axis)
    under = norms <= self._limit(i, norms)
    scale = tf.where(under & (alive > 0.5), 0.0, tf.ones_like(norms))
    alive.assign(tf.cast(~under, tf.float32))
    p.assign(tf.cast(scaled(kind, value, axis, scale), p.dtype))
    return tf.maximum(before - norms * scale, 0.0)


def _momentum_gain(optimizer):
  """(1 - m^t) / (1 - m) for a heavy-ball optimizer at iteration t, else 1."""
  momentum = _momentum_of(optimizer)
  if not momentum:
    return tf.constant(1.0)
  inner = getattr(optimizer, 'inner_optimizer', optimizer)
  t = tf.cast(inner.iterations, tf.float32)
  return (1.0 - tf.pow(momentum, tf.maximum(t, 1.0))) / (1.0 - momentum)


def _momentum_of(optimizer):
  """The momentum m of a heavy-ball Keras optimizer (SGD, RMSprop), else 0.

  Adam-family first moments are averages of gradients, not displacements:
  their gain is 1, and the step is taken in Adam's metric instead
  (`adam_preconditioners`).
  """
  inner = optimizer_of(optimizer, ('SGD', 'RMSprop'))
  if inner is None:
    return 0.0
  momentum = float(getattr(inner, 'momentum', 0.0) or 0.0)
  return momentum if 0.0 < momentum < 1.0 else 0.0
