"""Training a Keras 3 model with a MorphNet regularizer: `fit` as usual.

`add_regularizer` wraps a model so that `compile`/`fit` minimize

    task loss + strength * regularizer.get_regularization_term()

and report the regularizer's cost (e.g. 'FLOPs') and the term
('regularization_term') in the progress bar and in the `History`.
`morph_net.keras.callbacks.StructureExporterCallback` writes the learned
structure (alive channel counts, JSON) and TensorBoard scalars while training.

Example:

```python
reg = flop_regularizer.GammaFlopsRegularizer(model, gamma_threshold=1e-2)
trainer = morph_net.keras.add_regularizer(
    model, reg, strength=1.0 / float(reg.get_cost()))
trainer.compile(optimizer='adam', loss='sparse_categorical_crossentropy',
                metrics=['accuracy'])
trainer.fit(x, y, epochs=5, callbacks=[
    morph_net.keras.StructureExporterCallback(reg, '/tmp/run', 100)])
model.save('/tmp/run/model.keras')  # or trainer.save(...): same file
```

Only the TensorFlow backend is supported: the regularizer crawls a traced
TensorFlow graph and evaluates with TensorFlow ops.
"""

import contextlib
import warnings

import keras
import tensorflow as tf

from morph_net.framework import keras_trace
from morph_net.keras import _checks
from morph_net.keras import _floor
from morph_net.keras import _saving
from morph_net.keras import _state_file
from morph_net.keras import budget as budget_lib
from morph_net.network_regularizers import combined as combined_lib
from morph_net.tools import summaries

REGULARIZATION_TERM_NAME = summaries.REGULARIZATION_TERM_NAME


class RegularizedModel(keras.Model):
  """A Keras model that adds `strength * regularization term` to its loss.

  Create it with `add_regularizer`. It calls the wrapped model, so
  `predict`, `evaluate`, `__call__` and `summary` behave like the wrapped
  model's; `compile` and `fit` are Keras' own, with two changes:

  * the loss minimized (and reported as 'loss', in training and in
    evaluation, like Keras' own weight regularizers) is the compiled loss
    plus `strength * regularizer.get_regularization_term()`;
  * the logs of every train/test step also hold the regularizer's current
    cost under `regularizer.cost_name` (e.g. 'FLOPs'; 'val_FLOPs' during
    validation) and the unscaled term under `term_name`. They are values
    after the step's forward pass (not averages over the epoch), so the
    `History` holds the cost at the end of each epoch.

  Saving: `save`, `save_weights` and `load_weights` act on the wrapped
  model, so `RegularizedModel.save('m.keras')` writes the plain model
  (loadable with `keras.models.load_model` without morph_net, without the
  regularizer, the strength or the optimizer state of this wrapper).
  `save_weights` also writes the optimizer state, as plain Keras does, and
  `load_weights` restores it (see `save_weights`).
  `keras.callbacks.ModelCheckpoint` therefore also writes the wrapped model.
  Several regularizers: pass a `CombinedRegularizer` (or a list of
  regularizers / (regularizer, weight) pairs); wrapping a RegularizedModel
  again is refused (the inner wrapper's term would be dropped).
  The wrapper itself is not serializable: rebuild it with `add_regularizer`
  after loading.

  Args:
    model: the Keras model to train (the one the regularizer was built on).
    regularizer: a morph_net network regularizer built from `model`.
    strength: float >= 0, the multiplier of the regularization term. It is
      held in a variable: set `RegularizedModel.strength` at any time (e.g.
      from a callback) without retracing. None with `target_cost`.
    term_name: the log key of the unscaled regularization term.
    cost_name: the log key of the cost; `regularizer.cost_name` if None.
    name: the wrapper's name; '<model name>_morph_net' if None.
    target_cost: instead of a strength, the cost to reach (a number, or a
      `budget.StrengthController` for its rates): the strength starts at
      1 / initial cost and is adapted after every step (`budget` module).
    exact_zeros: apply the term as a proximal step after each update, so
      dead sources are exactly 0 (`budget.ProximalStep`). None: on with
      `target_cost` when every source supports it, off with a fixed
      strength (it changes what a tuned strength means under Adam).
    monitor: `fit` adds a `budget.BudgetMonitor` (warnings) if True.

  Raises:
    ValueError: `strength` is negative, not finite or not a number, or the
      two log keys collide.
    TypeError: `model` is not a Keras model or `regularizer` is not a
      network regularizer.
    RuntimeError: the Keras backend is not TensorFlow.
  """

  def __init__(self, model, regularizer, strength=None, term_name=None,
               cost_name=None, name=None, target_cost=None,
               exact_zeros=None, monitor=True, **kwargs):
    _checks.check_backend()
    if not isinstance(model, keras.Model):
      raise TypeError('model must be a keras.Model, got %s.'
                      % type(model).__name__)
    _check_not_nested(model)
    if isinstance(regularizer, (list, tuple)):  # several: one weighted sum
      regularizer = combined_lib.CombinedRegularizer(regularizer)
    _checks.check_regularizer(regularizer)
    strength, budget_step = _budget_step(regularizer, strength, target_cost,
                                         exact_zeros)
    term_name = term_name or REGULARIZATION_TERM_NAME
    cost_name = cost_name or regularizer.cost_name
    if term_name == cost_name or 'loss' in (term_name, cost_name):
      raise ValueError(
          'The cost and term log keys must differ from each other and from '
          "'loss'; got cost_name=%r, term_name=%r." % (cost_name, term_name))
    super().__init__(name=name or '%s_morph_net' % model.name, **kwargs)
    self.inner_model = model
    self._morph_net_regularizer = regularizer
    self._term_name = term_name
    self._cost_name = cost_name
    self._strength = keras.Variable(
        strength, dtype='float32', trainable=False, name='morph_net_strength')
    self._budget_step = budget_step  # None: plain strength x term
    self._monitor = monitor
    self._floor = None
    if budget_step is not None and budget_step.controller is not None:
      # A target under the cost floor would drive the strength up forever.
      self._floor = _floor.check_target(regularizer,
                                        budget_step.controller.target_cost)
    if budget_step is not None:
      budget_step.build(self._strength)
    if getattr(model, 'built', False):
      self.built = True
    _warn_if_detached(model, regularizer)

  @property
  def regularizer(self):
    """The network regularizer."""
    return self._morph_net_regularizer

  @property
  def strength(self):
    """The current strength (a Python float)."""
    return float(self._strength.numpy())

  @strength.setter
  def strength(self, value):
    self._strength.assign(_checks.check_strength(value))

  @property
  def cost_name(self):
    """The log key of the cost (e.g. 'FLOPs')."""
    return self._cost_name

  @property
  def term_name(self):
    """The log key of the regularization term."""
    return self._term_name

  def call(self, inputs, training=None, mask=None):
    """Calls the wrapped model."""
    if mask is not None:
      return self.inner_model(inputs, training=training, mask=mask)
    return self.inner_model(inputs, training=training)

  def compute_output_shape(self, input_shape):
    return self.inner_model.compute_output_shape(input_shape)

  def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                   training=True):
    """The compiled loss plus strength x the regularization term."""
    loss = super().compute_loss(x=x, y=y, y_pred=y_pred,
                                sample_weight=sample_weight,
                                training=training)
    term = tf.cast(self._morph_net_regularizer.get_regularization_term(),
                   loss.dtype)
    if self._budget_step is not None and self._budget_step.proximal:
      term = tf.stop_gradient(term)  # applied by the proximal step instead
    # Under tf.distribute every replica adds the term and the gradients are
    # summed: divide by the replicas in sync, as Keras 3 divides its own
    # losses and add_loss terms (keras.src.losses.loss.
    # scale_loss_for_distribution), so N replicas learn with the strength
    # one device does (tests/test_distribute.py).
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss + tf.cast(self._strength / replicas, loss.dtype) * term

  @property
  def target_cost(self):
    """The target cost, or None when the strength is fixed."""
    step = self._budget_step
    return step.controller.target_cost if step and step.controller else None

  def train_step(self, data):
    """Keras' step, then the proximal step and the strength update."""
    if self._budget_step is None:
      return super().train_step(data)
    # Under gradient accumulation `iterations` is a tensor: read it anew.
    before = tf.identity(self.optimizer.iterations)
    with self._budget_step.diverting():  # gates: task gradient to GateStep
      logs = super().train_step(data)
    trainable = {id(keras_trace.tf_variable(v))
                 for v in self.trainable_variables}
    forecast = self._budget_step.after_update(
        self._strength, self.optimizer.learning_rate, self.optimizer,
        applied=tf.not_equal(self.optimizer.iterations, before),
        frozen=self._budget_step.frozen_sources(trainable))
    logs = dict(logs)
    logs['strength'] = tf.identity(self._strength)
    if forecast is not None:  # what the controller steered by
      logs[self._cost_name + '_forecast'] = forecast
    if self._budget_step.controller is not None:  # the cost after the step
      logs[self._cost_name] = tf.cast(
          self._morph_net_regularizer.get_cost(), tf.float32)
    return logs

  def fit(self, *args, **kwargs):
    """`keras.Model.fit`, with a `budget.BudgetMonitor` added (warnings)
    and, with a target cost, a `FloorMonitor` (warns when the lowest
    reachable cost changes or the target moves under it)."""
    if self._monitor and len(args) < 6:
      callbacks = list(kwargs.get('callbacks') or [])
      if not any(isinstance(c, budget_lib.BudgetMonitor) for c in callbacks):
        callbacks.append(budget_lib.BudgetMonitor(
            self._morph_net_regularizer, self._cost_name, self._term_name,
            target_cost=self.target_cost, exact_zeros=bool(
                self._budget_step and self._budget_step.proximal)))
      controller = self._budget_step and self._budget_step.controller
      if controller is not None and not any(
          isinstance(c, _floor.FloorMonitor) for c in callbacks):
        callbacks.append(_floor.FloorMonitor(
            self._morph_net_regularizer, controller, self._floor))
      kwargs['callbacks'] = callbacks
    return super().fit(*args, **kwargs)

  def compute_metrics(self, x, y, y_pred, sample_weight=None):
    """The compiled metrics plus the regularizer's cost and term."""
    results = super().compute_metrics(x, y, y_pred,
                                      sample_weight=sample_weight)
    results = dict(results)
    reg = self._morph_net_regularizer
    results[self._cost_name] = tf.cast(reg.get_cost(), tf.float32)
    results[self._term_name] = tf.cast(reg.get_regularization_term(),
                                       tf.float32)
    if hasattr(reg, 'logged_values'):  # CombinedRegularizer: every part
      results.update(reg.logged_values())
    return results

  def save(self, filepath, overwrite=True, zipped=None, **kwargs):
    """Saves the wrapped model (not the wrapper) with `keras.Model.save`,
    atomically.

    A local '.keras' or '.h5' file is written beside `filepath` and renamed
    over it (`morph_net.keras._saving`): an interrupted save (Ctrl-C, a
    killed job, a full disk) leaves the file that was there, never half a
    model. Other destinations (a directory with `zipped=False`, remote
    URLs) are passed to Keras as they are.

    Args:
      filepath: a '.keras' (or '.h5') path.
      overwrite: whether to replace an existing file; if False and it
        exists, FileExistsError is raised (Keras would prompt on stdin).
      zipped: see `keras.Model.save`.
      **kwargs: passed to `keras.Model.save` of the wrapped model.

    Raises:
      FileExistsError: `overwrite` is False and `filepath` exists.
      OSError: the write failed (the message names `filepath`).
    """
    if zipped is not None:
      kwargs['zipped'] = zipped
    return _saving.save(self.inner_model.save, filepath, overwrite,
                        _saving.MODEL_SUFFIXES, **kwargs)

  def save_weights(self, filepath, overwrite=True, **kwargs):
    """Saves the wrapped model's weights and this wrapper's optimizer.

    A '.weights.h5' file is written atomically, like `save`: what plain
    Keras writes for the wrapped model compiled with this optimizer (any
    model of its architecture loads it). Beside it, `<file>.morph_net_
    state.json` holds the strength and `target_cost`'s state. With both,
    `load_weights` restores the optimizer (step count, Adam's moments) and
    that state: `BackupAndRestore` and `ModelCheckpoint(save_weights_only=
    True)` resume where they stopped.
    """
    with self._optimizer_on_inner_model():
      result = _saving.save(self.inner_model.save_weights, filepath,
                            overwrite, _saving.WEIGHTS_SUFFIXES, **kwargs)
    _state_file.save(filepath, self._state_variables(), self._iterations())
    return result

  def load_weights(self, filepath, skip_mismatch=False, **kwargs):
    """Loads `save_weights` files: the wrapped model's weights and, if the
    file holds it, the optimizer state (built first if need be)."""
    optimizer = getattr(self, 'optimizer', None)
    if optimizer is not None and not optimizer.built:
      optimizer.build(self.trainable_variables)
    with self._optimizer_on_inner_model(), warnings.catch_warnings():
      # Plain-model files hold no optimizer: Keras' warning is noise here.
      warnings.filterwarnings(
          'ignore', message='Skipping variable loading for optimizer.*'
          'saved optimizer has 0 variables')
      result = self.inner_model.load_weights(
          filepath, skip_mismatch=skip_mismatch, **kwargs)
    _state_file.load(filepath, self._state_variables(), self._iterations(),
                     needed=self.target_cost is not None)
    return result

  def _state_variables(self):
    """The strength and the budget step's state (`_state_file`)."""
    step = self._budget_step
    return [self._strength] + (step.state_variables() if step else [])

  def _iterations(self):
    optimizer = getattr(self, 'optimizer', None)
    return 0 if optimizer is None else int(optimizer.iterations.numpy())

  @contextlib.contextmanager
  def _optimizer_on_inner_model(self):
    """Keras saves a model's `optimizer` attribute with its weights: lend
    the wrapper's to the wrapped model for the duration."""
    optimizer = getattr(self, 'optimizer', None)
    inner = self.inner_model
    if optimizer is None:
      yield
      return
    had = 'optimizer' in inner.__dict__
    previous = inner.__dict__.get('optimizer')
    inner.optimizer = optimizer
    try:
      yield
    finally:
      if had:
        inner.optimizer = previous
      else:
        del inner.optimizer

  def get_config(self):
    raise NotImplementedError(
        'RegularizedModel is not serializable; save the wrapped model '
        '(RegularizedModel.save does) and call add_regularizer again after '
        'loading it.')


def _check_not_nested(model):
  if isinstance(model, RegularizedModel):
    raise TypeError(
        'model is already a RegularizedModel (regularizer %s): wrapping it '
        'again would train only the outer regularizer and drop the inner '
        "one's term. Combine them in one wrapper instead: add_regularizer("
        'plain_model, CombinedRegularizer([(reg_a, strength_a), (reg_b, '
        'strength_b)]), strength=1.0), or pass the list [(reg_a, strength_a)'
        ', (reg_b, strength_b)] as the regularizer.'
        % getattr(model.regularizer, 'name', type(model.regularizer).__name__))


def _warn_if_detached(model, regularizer):
  """Warns if the term has no gradient w.r.t. the model's variables."""
  variables = model.trainable_variables
  if not variables:
    return
  try:
    with tf.GradientTape() as tape:
      term = regularizer.get_regularization_term()
    grads = tape.gradient(term, [keras_trace.tf_variable(v)
                                 for v in variables])
  except Exception:  # pylint: disable=broad-except
    return  # Graph-mode regularizers etc.: nothing to check eagerly.
  if all(g is None for g in grads):
    warnings.warn(
        'The regularization term does not depend on any trainable variable '
        'of model %r: training will not shrink it. Build the regularizer '
        'from this very model (not a clone), and check that it has '
        'regularized layers (e.g. BatchNormalization with scale=True for '
        'Gamma regularizers).' % model.name, stacklevel=3)


def _budget_step(regularizer, strength, target_cost, exact_zeros):
  """(initial strength, budget.BudgetStep or None) from the arguments."""
  if (strength is None) == (target_cost is None):
    raise ValueError(
        'Pass exactly one of strength (a fixed multiplier of the term) and '
        'target_cost (the cost to reach; the strength is then adapted); got '
        'strength=%r, target_cost=%r.' % (strength, target_cost))
  controller = None
  target_cost = _checks.as_number(target_cost)  # e.g. tf.constant(100.)
  if target_cost is not None:
    controller = target_cost
    if not isinstance(controller, budget_lib.StrengthController):
      controller = budget_lib.StrengthController(target_cost)
    initial = float(regularizer.get_cost())
    if not initial > 0:
      raise ValueError('target_cost needs a regularizer whose initial cost '
                       'is > 0; got %r.' % initial)
    strength = 1.0 / initial
  strength = _checks.check_strength(strength)
  if exact_zeros is None:
    exact_zeros = (controller is not None and
                   budget_lib.supports_exact_zeros(regularizer))
  proximal = budget_lib.ProximalStep(regularizer) if exact_zeros else None
  if controller is None and proximal is None:
    return strength, None
  return strength, budget_lib.BudgetStep(regularizer, controller, proximal)


def add_regularizer(model, regularizer, strength=None, term_name=None,
                    cost_name=None, target_cost=None, exact_zeros=None,
                    monitor=True):
  """Returns a model that trains `model` with a MorphNet regularizer.

  Compile and fit the returned model as usual; it minimizes
  `loss + strength * regularizer.get_regularization_term()` and reports
  `regularizer.cost_name` (e.g. 'FLOPs') and 'regularization_term' in the
  progress bar and the `History`. The weights trained are `model`'s own, so
  after `fit` use (and save) `model` directly; the returned model's `save`
  also saves `model`. See `RegularizedModel`.

  Args:
    model: a Keras 3 model (functional, sequential or subclassed).
    regularizer: a morph_net network regularizer built from `model`, e.g.
      `GammaFlopsRegularizer(model, gamma_threshold=0.01)`.
    strength: float >= 0; a good start is `1 / float(regularizer.get_cost())`.
      Exactly one of `strength` and `target_cost`.
    term_name: log key of the term; 'regularization_term' if None.
    cost_name: log key of the cost; `regularizer.cost_name` if None.
    target_cost: the cost to reach (e.g. 0.4 x the initial FLOPs); the
      strength is adapted after every step (`morph_net.keras.budget`), and
      the logs also hold 'strength' and, where the sources allow a
      forecast, '<cost_name>_forecast' (what the controller steers by).
    exact_zeros: proximal step on the sources (exact zeros); None: on with
      `target_cost` where supported, else off.
    monitor: add a `budget.BudgetMonitor` to `fit` (warnings).

  Returns:
    A `RegularizedModel` wrapping `model`.

  Raises:
    ValueError: `strength` is negative, not finite or not a number; both or
      neither of `strength` and `target_cost`; `target_cost` under the
      lowest cost the network can reach (the message names it and what
      holds it up); `exact_zeros=True` with sources that do not support
      it.
    TypeError: `model` is not a Keras model or `regularizer` is not a
      network regularizer.
    RuntimeError: the Keras backend is not TensorFlow.
  """
  return RegularizedModel(model, regularizer, strength, term_name=term_name,
                          cost_name=cost_name, target_cost=target_cost,
                          exact_zeros=exact_zeros, monitor=monitor)
