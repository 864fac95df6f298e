"""A budget, not a knob: reach a target cost without a strength sweep.

Three pieces, wired in by `add_regularizer(model, reg, target_cost=T)` (or
`exact_zeros=True`); each is usable on its own in a custom training loop.

* `StrengthController` adapts the strength multiplicatively (never
  negative nor zero): it raises it only while the cost is above T and has
  made no new low for `patience` steps, holds it while the cost is still
  falling, and lowers it while the cost is under T; see its docstring for
  the rates and what it guarantees. It does not guarantee that every step
  is at or under T: export with `StructureExporterCallback.max_cost = T`
  (see `only_at_or_under`) to keep only structures that are.
* `ProximalStep` makes dead channels exactly zero. The term is taken out of
  the optimizer's gradient (the loss value still includes it) and applied
  after each update as a proximal step of size eta * strength, eta the
  optimizer's current learning rate: per channel, source <- source *
  max(0, 1 - eta * strength * w_c / r_c), with r_c the channel's
  regularization (|gamma|, or the RMS norm of a filter) and w_c its weight
  in the term (d term / d r_c). For BatchNorm gammas this is the soft
  threshold sign(g) max(|g| - eta strength w, 0): under plain SGD the
  update is ISTA (the exact proximal gradient method); under heavy-ball
  momentum eta is the optimizer's effective step lr (1 - m^t) / (1 - m);
  under Adam it is decoupled, like AdamW's weight decay. A dead channel
  stays at exactly 0 until the task gradient outweighs the penalty, so
  alive counts no longer depend on how much the sources oscillate.
  Supported sources: BatchNorm gammas (Gamma regularizers) and group lasso
  with l1_fraction=0; LogisticSigmoid gates have no zero to snap to.
* `BudgetMonitor` (a callback, added by `RegularizedModel.fit`) warns, once
  per kind, when sources hover within a factor 2 of the alive threshold,
  when strength x term dominates the task loss, or when the cost has not
  moved after `patience` steps; each warning says what to change.
"""

import math
import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf

from morph_net.keras import _distribute
from morph_net.op_regularizers import gamma_l1_regularizer
from morph_net.op_regularizers import group_lasso_regularizer

__all__ = ['BudgetMonitor', 'ProximalStep', 'StrengthController',
           'only_at_or_under', 'supports_exact_zeros']


def _positive(name, value):
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
      not math.isfinite(value) or value <= 0):
    raise ValueError('%s must be a finite number > 0, got %r.'
                     % (name, value))
  return float(value)


class StrengthController:
  """Stall-gated multiplicative control of the strength toward a target.

  After every optimizer step, with e = cost / T - 1:

  * e > 0 and the cost has not reached a new low for `patience` steps:
    strength *= exp(rate * clip(e, 0.1, 1)) (a stalled cost above T means
    the current strength has done what it can);
  * e > 0 and the cost is still falling: the strength is held (raising it
    now would overshoot: the sources are still on their way to zero);
  * e < 0: strength *= exp(down_rate * max(e, -1)) (under T: relax, so the
    channels the task needs can come back).

  The strength is multiplied, never incremented, and clipped to [min_ratio,
  max_ratio] x its initial value: it is never negative nor zero.

  Args:
    target_cost: T, in the regularizer's unit (e.g. FLOPs per example).
    rate: the largest increase of log(strength) per step.
    down_rate: the largest decrease of log(strength) per step.
    patience: steps without a new lowest cost before the strength rises.
    min_ratio, max_ratio: the strength is clipped to these multiples of the
      initial strength.

  >>> import tensorflow as tf
  >>> strength = tf.Variable(1.0)
  >>> control = StrengthController(target_cost=100.0, rate=0.1, patience=0)
  >>> _ = control.update(strength, tf.constant(300.0))  # far above: x e^0.1
  >>> round(float(strength.numpy()), 4)
  1.1052
  >>> _ = control.update(strength, tf.constant(90.0))  # under: x e^-0.005
  >>> round(float(strength.numpy()), 4)
  1.0997
  """

  def __init__(self, target_cost, rate=0.02, down_rate=0.05, patience=20,
               min_ratio=1e-3, max_ratio=1e6):
    self.target_cost = _positive('target_cost', target_cost)
    self.rate = _positive('rate', rate)
    self.down_rate = _positive('down_rate', down_rate)
    if (isinstance(patience, bool) or not isinstance(patience, numbers.Integral)
        or patience < 0):
      raise ValueError('patience must be an integer >= 0, got %r.'
                       % (patience,))
    self.patience = int(patience)
    self.min_ratio = _positive('min_ratio', min_ratio)
    self.max_ratio = _positive('max_ratio', max_ratio)
    self._state = None
    self._limits = None

  def build(self, initial_strength):
    """Creates the state; `initial_strength` must be > 0."""
    initial_strength = _positive('the initial strength', initial_strength)
    self._state = (
        tf.Variable(np.inf, dtype=tf.float32, trainable=False,
                    name='morph_net_lowest_cost'),
        tf.Variable(0, dtype=tf.int64, trainable=False,
                    name='morph_net_steps_since_lowest'))
    self._limits = (initial_strength * self.min_ratio,
                    initial_strength * self.max_ratio)

  def update(self, strength, cost):
    """One step: moves `strength` (a variable) given the current `cost`."""
    if self._state is None:
      self.build(float(tf.convert_to_tensor(strength).numpy()))
    lowest, since = self._state
    cost = tf.cast(cost, tf.float32)
    error = cost / self.target_cost - 1.0
    new_low = cost < lowest
    since_new = tf.where(new_low, tf.zeros_like(since), since + 1)
    stalled = since_new >= self.patience
    up = tf.where(stalled, self.rate * tf.clip_by_value(error, 0.1, 1.0), 0.0)
    down = self.down_rate * tf.maximum(error, -1.0)
    log_change = tf.where(error > 0.0, up, tf.minimum(down, 0.0))
    value = tf.cast(tf.convert_to_tensor(strength), tf.float32)
    new = tf.clip_by_value(value * tf.exp(log_change), *self._limits)
    return tf.group(lowest.assign(tf.minimum(lowest, cost)),
                    since.assign(since_new),
                    strength.assign(tf.cast(new, strength.dtype)))


def _kind(source):
  """'gamma', 'group_lasso' or None (no proximal step for this source)."""
  cls = source.regularizer_cls
  if issubclass(cls, gamma_l1_regularizer.GammaL1Regularizer):
    return 'gamma'
  if issubclass(cls, group_lasso_regularizer.GroupLassoRegularizer):
    setting = source.setting
    if (isinstance(setting, tuple) and len(setting) == 3 and not setting[1]
        and not isinstance(setting[2], np.ndarray)):  # not an index map
      return 'group_lasso'
  return None


def supports_exact_zeros(regularizer):
  """Whether every source of `regularizer` admits the proximal step."""
  manager = getattr(regularizer, 'op_regularizer_manager', None)
  sources = getattr(manager, 'sources', None)
  if not sources:
    return False
  return all(_kind(s) is not None and isinstance(s.param, tf.Variable)
             for s in sources)


def _threshold(source):
  setting = source.setting
  return float(setting[0] if isinstance(setting, tuple) else setting)


def _channel_norms(kind, value, axis):
  """r_c: |gamma|, or the RMS over the other axes of a kernel."""
  if kind == 'gamma':
    return tf.abs(value)
  value, axis = group_lasso_regularizer.by_channel(value, axis)
  keep = group_lasso_regularizer.out_axes(value.shape.rank, axis)
  axes = [a for a in range(value.shape.rank) if a not in keep]
  norms = tf.sqrt(tf.reduce_mean(tf.square(value), axis=axes))
  return tf.reshape(norms, [-1])


def _broadcast(vector, value, axis):
  """A per-output-channel vector shaped to broadcast against the kernel."""
  keep = group_lasso_regularizer.out_axes(value.shape.rank, axis)
  shape = [value.shape[a] if a in keep else 1
           for a in range(value.shape.rank)]
  return tf.reshape(vector, shape)


class ProximalStep:
  """The proximal (soft-threshold) step of the term on its sources.

  Args:
    regularizer: a network regularizer whose sources all support it
      (`supports_exact_zeros`).

  Raises:
    ValueError: a source is not a BatchNorm gamma or a group lasso kernel
      with l1_fraction=0, or is not a variable.
  """

  def __init__(self, regularizer):
    if not supports_exact_zeros(regularizer):
      kinds = sorted({s.regularizer_cls.__name__ for s in getattr(
          regularizer.op_regularizer_manager, 'sources', [])})
      raise ValueError(
          'exact_zeros needs every source to be a BatchNorm gamma (Gamma '
          'regularizers) or a group lasso kernel (l1_fraction=0, channels '
          'on kernel axes); this regularizer has %s. Use exact_zeros=False '
          '(plain gradient on the term).' % (', '.join(kinds) or 'no sources'))
    self._regularizer = regularizer
    self._sources = list(regularizer.op_regularizer_manager.sources)
    self._kinds = [_kind(s) for s in self._sources]
    self._axes = [0 if k == 'gamma' else s.setting[2]
                  for s, k in zip(self._sources, self._kinds)]
    self._weights = None

  @property
  def variables(self):
    """The source variables the step acts on."""
    return [s.param for s in self._sources]

  def _term_weights(self):
    """w_c = d term / d r_c, by Euler: sum_c-elements(p * dterm/dp) / r_c.

    The term is linear in the regularization vectors and each r_c is
    1-homogeneous in its channel's elements, so the product sum is w_c r_c.
    Where r_c = 0 (or a tied member that is not its group's max) the
    gradient is zero and the last known weight is kept.
    """
    params = self.variables
    with tf.GradientTape() as tape:
      tape.watch(params)
      term = tf.cast(self._regularizer.get_regularization_term(), tf.float32)
    grads = tape.gradient(term, params)
    weights = []
    for p, g, kind, axis in zip(params, grads, self._kinds, self._axes):
      value = tf.cast(tf.convert_to_tensor(p), tf.float32)
      norms = _channel_norms(kind, value, axis)
      if g is None:
        weights.append(tf.zeros_like(norms))
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
    return weights

  def build(self):
    """Creates the weight cache (eagerly, once)."""
    if self._weights is not None:
      return
    initial = _distribute.in_replica_context(self._term_weights)
    self._weights = [tf.Variable(w, trainable=False, name='morph_net_w_%d' % i)
                     for i, w in enumerate(initial)]

  def apply(self, step, optimizer=None):
    """Shrinks the sources by `step` (= learning rate x strength).

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
    ops = []
    for p, cache, w, kind, axis in zip(self.variables, self._weights,
                                       self._term_weights(), self._kinds,
                                       self._axes):
      w = tf.where(w > 0, w, cache)
      ops.append(cache.assign(w))
      value = tf.cast(tf.convert_to_tensor(p), tf.float32)
      norms = _channel_norms(kind, value, axis)
      # prox of t r_c: scale the channel by max(0, 1 - t / r_c)
      # (the soft threshold for a scalar gamma).
      scale = tf.maximum(0.0, 1.0 - tf.math.divide_no_nan(step * w, norms))
      if kind != 'gamma':
        scale = _broadcast(scale, value, axis)
      ops.append(p.assign(tf.cast(value * scale, p.dtype)))
    return tf.group(*ops)


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

  Adam-family first moments are averages of gradients, not displacements,
  and Adam's step is bounded by ~ learning rate whatever the gradient's
  size: the decoupled step (gain 1, like AdamW's weight decay) returns a
  gamma to 0 once strength x w_c >= ~1, which the controller reaches.
  """
  inner = getattr(optimizer, 'inner_optimizer', optimizer)  # loss scaling
  if inner is None or not any(k.__name__ in ('SGD', 'RMSprop')
                              for k in type(inner).__mro__):
    return 0.0
  momentum = float(getattr(inner, 'momentum', 0.0) or 0.0)
  return momentum if 0.0 < momentum < 1.0 else 0.0


def only_at_or_under(callback, max_cost):
  """Makes a `StructureExporterCallback` skip structures costing > max_cost.

  Returns the callback (its `max_cost` attribute set).
  """
  callback.max_cost = _positive('max_cost', max_cost)
  return callback


class BudgetStep:
  """What `RegularizedModel.train_step` runs after each optimizer update."""

  def __init__(self, regularizer, controller=None, proximal=None):
    self.regularizer = regularizer
    self.controller = controller
    self.proximal = proximal

  def build(self, strength):
    if self.proximal is not None:
      self.proximal.build()
    if self.controller is not None:
      self.controller.build(float(strength.numpy()))

  def after_update(self, strength, learning_rate, optimizer=None):
    """Proximal step, then strength update from the new cost."""
    if self.proximal is not None:
      self.proximal.apply(tf.cast(learning_rate, tf.float32) *
                          tf.cast(strength, tf.float32), optimizer)
    if self.controller is not None:
      self.controller.update(strength, self.regularizer.get_cost())


def _source_values(regularizer):
  """[(norms r_c as numpy, threshold)] per source, or None if unknown."""
  out = []
  for s in regularizer.op_regularizer_manager.sources:
    kind = _kind(s)
    if kind is None and not issubclass(
        s.regularizer_cls, group_lasso_regularizer.GroupLassoRegularizer):
      return None
    axis = 0 if kind == 'gamma' else s.setting[2]
    value = tf.cast(tf.convert_to_tensor(s.param), tf.float32)
    out.append((_channel_norms(kind or 'group_lasso', value, axis).numpy(),
                _threshold(s)))
  return out


class BudgetMonitor(keras.callbacks.Callback):
  """Warns when the regularizer is not doing what the user expects.

  Checked every `check_every` steps; each warning is given once per `fit`:

  * hovering: more than `hover_fraction` of the channels have moved in or
    out of the alive set since the last check while within a factor 2 of
    the alive threshold (under plain gradients an L1 source oscillates
    around 0 with amplitude ~ learning rate x strength x cost weight, so the
    count is set by noise, not by the data);
  * dominating: strength x term exceeds `dominance` x the task loss, with
    a fixed strength above the recommended 1 / initial cost (the
    larger of the current one and the one at the first step);
  * stalled: the cost has not moved after `patience` steps.

  Args:
    regularizer: the network regularizer.
    cost_name, term_name: the log keys of the cost and the term.
    check_every, patience, hover_fraction, dominance: see above.
    target_cost: T, if the strength is controlled (changes the advice).
  """

  def __init__(self, regularizer, cost_name, term_name, check_every=25,
               patience=300, hover_fraction=0.05, dominance=10.0,
               target_cost=None):
    super().__init__()
    self._regularizer = regularizer
    self._cost_name = cost_name
    self._term_name = term_name
    self.check_every = int(check_every)
    self.patience = int(patience)
    self.hover_fraction = float(hover_fraction)
    self.dominance = float(dominance)
    self.target_cost = target_cost
    self.warned = set()  # kinds warned in this fit

  def _warn(self, kind, message):
    if kind in self.warned:
      return
    self.warned.add(kind)
    warnings.warn('morph_net (%s): %s' % (kind, message), RuntimeWarning,
                  stacklevel=2)

  def on_train_begin(self, logs=None):
    self.warned = set()
    self._step = 0
    self._first_cost = None
    self._first_task = None
    self._last_alive = None
    self._flips = None

  def on_train_batch_end(self, batch, logs=None):
    logs = logs or {}
    self._step += 1
    cost = logs.get(self._cost_name)
    if cost is None:
      return
    cost = float(cost)
    if self._first_cost is None:
      self._first_cost = cost
    strength = float(self.model.strength) if hasattr(
        self.model, 'strength') else None
    term, loss = logs.get(self._term_name), logs.get('loss')
    if strength is not None and term is not None and loss is not None:
      penalty = strength * float(term)
      task = float(loss) - penalty
      if self._first_task is None:
        self._first_task = max(task, 1e-12)
      # Against the task loss at the start of fit: a well-fit task's loss
      # goes to ~0, which says nothing about the penalty being too large.
      task = max(task, self._first_task)
      # Under a target the penalty is large by design while shrinking; it
      # is a problem only if it still dominates once the target is met.
      holding = self.target_cost is None or cost <= 1.05 * self.target_cost
      # The recommended scale (strength <= 1 / initial cost) is no mistake:
      # starting from a well-trained network its penalty dwarfs the task
      # loss by design, and advising "1 / initial cost" would be circular.
      recommended = (self.target_cost is None and
                     strength * self._first_cost <= 1.01)
      if (holding and not recommended
          and penalty > self.dominance * max(task, 1e-12)):
        self._warn('dominating', (
            'strength x regularization term (%.4g) is more than %g x the '
            'task loss (%.4g): the regularizer, not the data, is training '
            'the network and will remove most channels. %s' % (
                penalty, self.dominance, task,
                'The target is more than this task can give up: raise '
                'target_cost (the strength is %.3g at the target).'
                % strength if self.target_cost else
                'Lower the strength (e.g. to 1 / initial cost) or pass '
                'target_cost instead.')))
    if self._step % self.check_every == 0:
      self._check_hover()
    if self._step == self.patience and cost == self._first_cost and (
        self.target_cost is None or cost > self.target_cost):
      self._warn('stalled', (
          'the cost (%.4g) has not moved in %d steps. The strength is too '
          'small for this learning rate, or the alive threshold is below '
          'the sources\' oscillation: pass target_cost=... (the strength is '
          'then adapted), use exact_zeros=True, raise the strength, or '
          'raise the threshold.' % (cost, self.patience)))

  def _check_hover(self):
    values = _source_values(self._regularizer)
    if values is None:
      return
    alive = np.concatenate([r > t for r, t in values])
    near = np.concatenate([(r > t / 2) & (r <= 2 * t) for r, t in values])
    if self._last_alive is not None and len(alive):
      # A channel on its way to zero crosses once; one that hovers goes
      # back and forth.
      self._flips += (alive != self._last_alive) & near
      hovering = self._flips >= 2
      if hovering.mean() > self.hover_fraction:
        self._warn('hovering', (
            '%d of %d channels went back and forth across the alive '
            'threshold, within a factor 2 of it: the alive count is '
            'set by the sources\' oscillation, not by the data. Use '
            'exact_zeros=True (proximal step: dead channels become exactly '
            '0), or lower the learning rate, or raise the threshold above '
            'the oscillation amplitude (~ learning rate for Adam).'
            % (int(hovering.sum()), len(alive))))
    else:
      self._flips = np.zeros(len(alive), np.int64)
    self._last_alive = alive

