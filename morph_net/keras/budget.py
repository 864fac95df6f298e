"""A budget, not a knob: reach a target cost without a strength sweep.

Four pieces, wired in by `add_regularizer(model, reg, target_cost=T)` (or
`exact_zeros=True`); each is usable on its own in a custom training loop.

* `StrengthController` adapts the strength multiplicatively (never
  negative nor zero) so that a forecast of the cost a few steps ahead stays
  in [(1 - tolerance) T, T]: it raises the strength while the forecast is
  above T, lowers it while the forecast is under the band, and holds it in
  between; see its docstring for the rates and what it guarantees. It does
  not guarantee that every step is at or under T: export with
  `StructureExporterCallback.max_cost = T` (see `only_at_or_under`) to keep
  only structures that are.
* `CostForecast` is that forecast: the regularizer's own cost evaluated on
  the sources as they will be in `horizon` steps if every channel kept
  shrinking at the smaller of its measured rate and the penalty's rate.
  The alive count alone cannot steer: it does not move while the sources
  travel toward the threshold and then drops at once.
* `ProximalStep` (exact zeros) applies the term after each update as a
  proximal (soft-threshold) step, and sets a channel falling under the
  alive threshold to exactly 0, so alive counts do not depend on how much
  the sources oscillate (see `morph_net.keras._proximal`).
* `BudgetMonitor` (a callback, added by `RegularizedModel.fit`) warns, once
  per kind, when sources hover within a factor 2 of the alive threshold,
  when a fixed strength x term dominates the task loss, or when the cost
  has not moved after `patience` steps; each warning says what to change.
"""

import contextlib
import math
import numbers

import tensorflow as tf

from morph_net.keras import _proximal
from morph_net.keras._budget_monitor import BudgetMonitor
from morph_net.keras._proximal import ProximalStep
from morph_net.keras._proximal import supports_exact_zeros

__all__ = ['BudgetMonitor', 'BudgetStep', 'CostForecast', 'ProximalStep',
           'StrengthController', 'only_at_or_under', 'supports_exact_zeros']


def _positive(name, value):
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
      not math.isfinite(value) or value <= 0):
    raise ValueError('%s must be a finite number > 0, got %r.'
                     % (name, value))
  return float(value)


def _fraction(name, value):
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
      not 0.0 <= value < 1.0):
    raise ValueError('%s must be a number in [0, 1), got %r.' % (name, value))
  return float(value)


class StrengthController:
  """Multiplicative control of the strength toward a target cost.

  After every optimizer step, with F the forecast cost (`CostForecast`)
  and e = F / T - 1:

  * e > 0 (even if every channel kept shrinking as now, the cost would
    stay above T): strength *= exp(rate * clip(e, 0.5, 1));
  * e < -tolerance (channels on their way out would take the cost under
    the band, or it is under already): strength *= exp(down_rate *
    max(e, -1)), so channels about to die are kept and those the task
    needs can come back;
  * otherwise the strength is held.

  Without a forecast (sources that `CostForecast` does not support, e.g.
  group lasso kernels read through an index map) F is the cost itself,
  and the strength rises only after the cost has made no new low for
  `patience` steps (a cost that is still falling shows that the current
  strength is working).

  The strength is multiplied, never incremented, and clipped to [min_ratio,
  max_ratio] x its initial value: it is never negative nor zero.

  Args:
    target_cost: T, in the regularizer's unit (e.g. FLOPs per example).
    rate: the largest increase of log(strength) per step.
    down_rate: the largest decrease of log(strength) per step.
    tolerance: the band [(1 - tolerance) T, T] in which it holds.
    horizon: how many steps ahead the forecast looks.
    patience: steps without a new lowest cost before the strength rises
      (only without a forecast).
    min_ratio, max_ratio: the strength is clipped to these multiples of the
      initial strength.

  >>> import tensorflow as tf
  >>> strength = tf.Variable(1.0)
  >>> control = StrengthController(target_cost=100.0, rate=0.1)
  >>> _ = control.update(strength, 300.0, forecast=300.0)  # above: x e^0.1
  >>> round(float(strength.numpy()), 4)
  1.1052
  >>> _ = control.update(strength, 300.0, forecast=95.0)  # in the band
  >>> round(float(strength.numpy()), 4)
  1.1052
  >>> _ = control.update(strength, 300.0, forecast=80.0)  # x e^(0.3 * -0.2)
  >>> round(float(strength.numpy()), 4)
  1.0408
  """

  def __init__(self, target_cost, rate=0.03, down_rate=0.3, tolerance=0.1,
               horizon=10, patience=20, min_ratio=1e-3, max_ratio=1e6):
    self.target_cost = _positive('target_cost', target_cost)
    self.rate = _positive('rate', rate)
    self.down_rate = _positive('down_rate', down_rate)
    self.tolerance = _fraction('tolerance', tolerance)
    self.horizon = _positive('horizon', horizon)
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
        tf.Variable(math.inf, dtype=tf.float32, trainable=False,
                    name='morph_net_lowest_cost'),
        tf.Variable(0, dtype=tf.int64, trainable=False,
                    name='morph_net_steps_since_lowest'))
    self._limits = (initial_strength * self.min_ratio,
                    initial_strength * self.max_ratio)

  def state_variables(self):
    """The state a resumed run needs (saved by `RegularizedModel`)."""
    return list(self._state or ())

  def update(self, strength, cost, forecast=None):
    """One step: moves `strength` (a variable) given the current `cost` and
    the `forecast` cost (None: no forecast, see the class docstring)."""
    if self._state is None:
      self.build(float(tf.convert_to_tensor(strength).numpy()))
    lowest, since = self._state
    cost = tf.cast(cost, tf.float32)
    since_new = tf.where(cost < lowest, tf.zeros_like(since), since + 1)
    if forecast is None:
      error = cost / self.target_cost - 1.0
      may_rise = since_new >= self.patience
    else:
      error = tf.cast(forecast, tf.float32) / self.target_cost - 1.0
      may_rise = True
    up = tf.where(may_rise, self.rate * tf.clip_by_value(error, 0.5, 1.0),
                  0.0)
    down = self.down_rate * tf.maximum(error, -1.0)
    log_change = tf.where(error > 0.0, up,
                          tf.where(error < -self.tolerance, down, 0.0))
    value = tf.cast(tf.convert_to_tensor(strength), tf.float32)
    new = tf.clip_by_value(value * tf.exp(log_change), *self._limits)
    lowest.assign(tf.minimum(lowest, cost))
    since.assign(since_new)
    return strength.assign(tf.cast(new, strength.dtype))


class CostForecast:
  """The cost `horizon` steps ahead if every channel kept shrinking.

  Each source channel's norm r_c (|gamma|, or a filter's RMS; a gate's
  logit) is tracked after every step: an exponential average (weight
  `smoothing`) of its change per step, and of the change squared. Its downward speed is the
  average's lower confidence bound, max(0, -mean - z x its standard error),
  so that channels merely fluctuating near the threshold are not taken for
  dying ones; with the proximal step it is also capped by what the penalty
  alone moves the norm per step (step x w_c: lowering the strength slows a
  channel at once, its measured average would lag). The forecast scales
  every channel down by horizon x speed (lowers a gate's logit by it) and
  evaluates the regularizer's own
  cost on those values (`OpRegularizerManager.substituted_sources`), so
  ties, groups and every cost model are accounted for as in `get_cost`.

  Args:
    regularizer: a network regularizer whose sources `supports` accepts.
    horizon: steps ahead.
    smoothing: the averages' weight of the past, in [0, 1).
    z: standard errors subtracted from the measured speed.
  """

  def __init__(self, regularizer, horizon=10, smoothing=0.9, z=2.0):
    if not self.supports(regularizer):
      raise ValueError('CostForecast needs BatchNorm gamma, group lasso (on '
                       'kernel axes) or logistic-sigmoid gate sources of a '
                       'Keras model or a tf.function.')
    self._regularizer = regularizer
    self._manager = regularizer.op_regularizer_manager
    self._sources = list(self._manager.sources)
    self._kinds = [_proximal.source_kind(s, proximal=False)
                   for s in self._sources]
    self._axes = [_proximal.channel_axis(s, k)
                  for s, k in zip(self._sources, self._kinds)]
    self._l1 = [_proximal.l1_fraction(s, k)
                for s, k in zip(self._sources, self._kinds)]
    self.horizon = _positive('horizon', horizon)
    self.smoothing = _fraction('smoothing', smoothing)
    self.z = float(z)
    self._state = None

  @staticmethod
  def supports(regularizer):
    """Whether every source is a variable whose channels move toward death
    along one number each (a norm, or a gate's logit), and the costs read
    live variables (a Keras model or a tf.function)."""
    manager = getattr(regularizer, 'op_regularizer_manager', None)
    view = getattr(manager, 'view', None)
    return (_proximal.every_source_has_a_kind(regularizer, proximal=False)
            and hasattr(manager, 'substituted_sources') and
            (view is None or view.eager))

  def _values(self):
    """[(value, r)]: r the norms, or a gate's logits (its value)."""
    out = []
    for s, kind, axis, l1 in zip(self._sources, self._kinds, self._axes,
                                 self._l1):
      value = tf.cast(tf.convert_to_tensor(s.param), tf.float32)
      out.append((value, _proximal.channel_norms(kind, value, axis, l1)))
    return out

  def build(self):
    """Creates the state (eagerly, once)."""
    if self._state is not None:
      return
    norms = [n for _, n in self._values()]

    def zeros():
      return [tf.Variable(tf.zeros_like(n), trainable=False) for n in norms]

    self._state = ([tf.Variable(n, trainable=False) for n in norms],
                   zeros(), zeros(),
                   tf.Variable(0.0, trainable=False, name='morph_net_steps'))

  def state_variables(self):
    """The state a resumed run needs (saved by `RegularizedModel`)."""
    if self._state is None:
      return []
    norms, first, second, steps = self._state
    return list(norms) + list(first) + list(second) + [steps]

  def __call__(self, shrinks=None):
    """The forecast cost (float32) after this step's update.

    Args:
      shrinks: optional per-source vectors, what the penalty alone moves
        each channel's norm per step (`ProximalStep.apply`'s result).
    """
    self.build()
    previous, means, squares, count = self._state
    count.assign_add(1.0)
    b = self.smoothing
    debias = 1.0 - tf.pow(b, count)
    spread = math.sqrt((1.0 - b) / (1.0 + b))  # std error of the average
    values = []
    for i, (value, norms) in enumerate(self._values()):
      delta = norms - previous[i]
      mean = means[i].assign(b * means[i] + (1.0 - b) * delta) / debias
      square = squares[i].assign(
          b * squares[i] + (1.0 - b) * tf.square(delta)) / debias
      previous[i].assign(norms)
      sd = tf.sqrt(tf.maximum(square - tf.square(mean), 0.0))
      speed = tf.maximum(-mean - self.z * spread * sd, 0.0)
      if shrinks is not None:
        speed = tf.minimum(speed, shrinks[i])
      if self._kinds[i] == 'gate':  # logits fall linearly
        ahead = value - self.horizon * speed
      else:  # norms fall to at least 0: scale each channel
        scale = tf.maximum(0.0, 1.0 - tf.math.divide_no_nan(
            self.horizon * speed, norms))
        ahead = _proximal.scaled(self._kinds[i], value, self._axes[i],
                                 scale)
      param = self._sources[i].param
      values.append((param, tf.cast(ahead, param.dtype)))
    with self._manager.substituted_sources(values):
      return tf.cast(self._regularizer.get_cost(), tf.float32)


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
    self.forecast = None
    if controller is not None and CostForecast.supports(regularizer):
      self.forecast = CostForecast(regularizer, horizon=controller.horizon)

  def build(self, strength):
    if self.proximal is not None:
      self.proximal.build()
    if self.controller is not None:
      self.controller.build(float(strength.numpy()))
    if self.forecast is not None:
      self.forecast.build()

  def state_variables(self):
    """Every variable of the step's state, in a fixed order."""
    return [v for part in (self.proximal, self.controller, self.forecast)
            if part is not None for v in part.state_variables()]

  def diverting(self):
    """Context for the training step: see `ProximalStep.diverting`."""
    if self.proximal is None:
      return contextlib.nullcontext()
    return self.proximal.diverting()

  def after_update(self, strength, learning_rate, optimizer=None,
                   applied=None, frozen=()):
    """Proximal step, then strength update from the new cost.

    Args:
      strength: the strength variable.
      learning_rate: the optimizer's learning rate now.
      optimizer: the optimizer (its momentum and Adam's moments).
      applied: a boolean tensor, whether the optimizer updated the weights
        this step (not a micro-step of gradient accumulation, nor a step a
        loss-scale overflow skipped): on a step it did not, the proximal
        step, the gates' step (their task gradients keep collecting) and
        the strength stay put; None: it did.
      frozen: indices of the sources of layers not trainable: the proximal
        step leaves them alone.

    Returns the forecast cost (a float32 tensor), or None without one.
    """
    gain = 1.0 if applied is None else tf.cast(applied, tf.float32)
    shrinks = None
    if self.proximal is not None:
      shrinks = self.proximal.apply(tf.cast(learning_rate, tf.float32) *
                                    tf.cast(strength, tf.float32) * gain,
                                    optimizer, strength=strength,
                                    frozen=frozen, applied=applied)
    forecast = None
    if self.controller is not None:
      if self.forecast is not None:
        forecast = self.forecast(shrinks)
      before = tf.identity(strength)
      self.controller.update(strength, self.regularizer.get_cost(), forecast)
      if applied is not None:
        strength.assign(tf.where(applied, strength, before))
    return forecast

  def frozen_sources(self, trainable):
    """Indices of the proximal step's sources whose variable is not in
    `trainable` (ids of the tf.Variables training updates)."""
    if self.proximal is None:
      return ()
    return frozenset(i for i, v in enumerate(self.proximal.variables)
                     if id(v) not in trainable)
