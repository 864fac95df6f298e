"""The gates' own step: logits out of the optimizer, task + term balanced.

With target_cost (or exact_zeros=True) a FiGS regularizer's gate logits are
stepped by `_gate_step.GateStep`, not by the optimizer: the task gradient
that reaches them through their masks is collected during the training
step, and each logit moves down task + strength x term gradient, scaled by
one running RMS for all gates.
"""

import keras
import numpy as np
import pytest

import morph_net.keras as mk
from morph_net.keras import budget
from morph_net.keras import gates as gates_lib
from morph_net.network_regularizers import flop_regularizer
from morph_net.probabilistic_gating import activation_gating

L = keras.layers
USEFUL = 4  # the target is x0 + x1 + x2 + x3; x4-x7 do not matter


def _probe_model():
  """x (8 features) -> hidden (8, channel c copies x_c; frozen) -> gate ->
  out (sums channels 0-3). Every hidden channel costs the same FLOPs, and
  each of 0-3 carries a part of the target no other channel has."""
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8,))
  hidden = L.Dense(8, name='hidden', trainable=False)  # no re-routing
  x = activation_gating.LogisticSigmoidGating(
      name='gate', straight_through=True, temperature=0.5)(hidden(inputs))
  out = L.Dense(1, name='out')
  model = keras.Model(inputs, out(x))
  hidden.set_weights([np.eye(8, dtype='float32'), np.zeros(8, 'float32')])
  out.set_weights([(np.arange(8) < USEFUL).astype('float32')[:, None],
                   np.zeros(1, 'float32')])
  return model


def _data(n=512):
  x = np.random.RandomState(1).normal(size=(n, 8)).astype('float32')
  return x, x[:, :USEFUL].sum(axis=1, keepdims=True)


def _logits(model):
  return model.get_layer('gate').mask_logits.numpy()


def _shrunk(optimizer, **compile_kwargs):
  """The probe model after 12 epochs toward 0.55 x its cost; (model,
  regularizer, start cost)."""
  model = _probe_model()
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(model)
  start = float(reg.get_cost())
  trainer = mk.add_regularizer(model, reg, target_cost=0.55 * start,
                               monitor=False)
  trainer.compile(optimizer, 'mse', **compile_kwargs)
  x, y = _data()
  trainer.fit(x, y, batch_size=32, epochs=12, verbose=0)
  return model, reg, start


def _momentum():
  return keras.optimizers.SGD(1e-2, momentum=0.9)


@pytest.mark.parametrize('optimizer', ['adam', 'momentum'])
def test_gates_close_what_the_task_can_spare_at_equal_cost(optimizer):
  """Same cost per channel: only the task tells the gates apart. Toward
  half the cost the gates of the channels the target does not read close
  and the ones it reads stay open, under Adam and under SGD + momentum."""
  model, reg, start = _shrunk(keras.optimizers.Adam(1e-2)
                              if optimizer == 'adam' else _momentum())
  logits = _logits(model)
  assert np.all(logits[:USEFUL] > 0), logits
  assert np.all(logits[USEFUL:] < 0), logits
  assert float(reg.get_cost()) <= 0.55 * start * 1.05


def test_the_optimizer_never_steps_the_logits():
  """The logits' gradient to the optimizer is zero (the task's part goes
  to the gate step): Adam's moments for them stay 0, while the gate step
  moves them."""
  model = _probe_model()
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(model)
  trainer = mk.add_regularizer(model, reg, strength=1e-3, exact_zeros=True,
                               monitor=False)
  opt = keras.optimizers.Adam(1e-2)
  trainer.compile(opt, 'mse')
  before = _logits(model).copy()
  x, y = _data(128)
  trainer.fit(x, y, batch_size=32, epochs=1, verbose=0)
  assert not np.allclose(_logits(model), before)
  logit_var = model.get_layer('gate').mask_logits
  moments = [v.numpy() for v in opt.variables
             if v.shape == logit_var.shape and 'mask_logits' in v.path]
  assert moments, [v.path for v in opt.variables]
  for m in moments:
    np.testing.assert_array_equal(m, 0.0)


def test_the_diversion_ends_with_the_regularized_step():
  """After the regularized fit, the inner model's own fit trains its
  logits through the optimizer again, and no gate is left diverted."""
  model = _probe_model()
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(model)
  trainer = mk.add_regularizer(model, reg, strength=1e-3, exact_zeros=True,
                               monitor=False)
  trainer.compile(keras.optimizers.SGD(1e-2), 'mse')
  x, y = _data(128)
  trainer.fit(x, y, batch_size=32, epochs=1, verbose=0)
  record = activation_gating.gate_record(model.get_layer('gate').mask_logits)
  assert record.diverted_to is None
  model.compile(keras.optimizers.Adam(1e-1), 'mse')
  before = _logits(model).copy()
  model.fit(x, y, batch_size=32, epochs=1, verbose=0)
  assert not np.allclose(_logits(model), before)


def test_a_gate_rate_that_is_not_a_positive_number_is_refused():
  model = _probe_model()
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(model)
  for bad in (0, -0.1, float('nan')):
    with pytest.raises(ValueError, match='gate_rate must be'):
      budget.ProximalStep(reg, gate_rate=bad)
  step = budget.ProximalStep(reg, gate_rate=0.2)
  assert step._gate_step.rate == 0.2  # pylint: disable=protected-access


def test_diverting_an_unknown_variable_is_refused():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='not the logits variable of a gate'):
    with activation_gating.task_gradients_diverted(
        [(tf.Variable([1.0]), tf.Variable([0.0]))]):
      pass


def test_add_gates_samples_straight_through_at_half_temperature():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((3,))
  hidden = L.Dense(4, name='hidden')(inputs)
  model = keras.Model(inputs, L.Dense(2, name='out')(hidden))
  gate = mk.add_gates(model).get_layer('hidden_gate')
  assert gate.straight_through and gate.temperature == pytest.approx(0.5)
  assert mk.add_gates(model).get_layer('hidden_gate').get_config()[
      'temperature'] == gates_lib.GATE_DEFAULTS['temperature']
  chosen = mk.add_gates(model, temperature=0.001,
                        straight_through=False).get_layer('hidden_gate')
  assert not chosen.straight_through
  assert chosen.temperature == pytest.approx(0.001)


def test_gates_sampling_too_cold_for_the_task_are_named():
  """At the layer's default temperature (0.001, the original's) the task
  gradient reaches a logit in about one step in a thousand: the gate step
  says so, naming the gates; add_gates' gates pass without a word."""
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8,))
  x = activation_gating.LogisticSigmoidGating(name='cold_gate')(
      L.Dense(8, name='hidden')(inputs))
  model = keras.Model(inputs, L.Dense(1, name='out')(x))
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(model)
  with pytest.warns(UserWarning, match=r'cold_gate \(0.001\)'):
    mk.add_regularizer(model, reg, target_cost=0.5 * float(reg.get_cost()),
                       monitor=False)
  gated = mk.add_gates(keras.Model(inputs, L.Dense(1, name='out2')(
      L.Dense(8, name='hidden2')(inputs))))
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(gated)
  import warnings  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    mk.add_regularizer(gated, reg, target_cost=0.5 * float(reg.get_cost()),
                       monitor=False)
  assert not [w for w in caught if 'temperature' in str(w.message)], [
      str(w.message) for w in caught]


@pytest.mark.parametrize('compile_kwargs', [{'run_eagerly': True},
                                            {'jit_compile': True}])
def test_the_gate_step_runs_eagerly_and_under_xla(compile_kwargs):
  """The task gradient is collected in an eager step and in an XLA-compiled
  one too: the gates of the spare channels close, the others stay open."""
  logits = _logits(_shrunk(_momentum(), **compile_kwargs)[0])
  assert np.all(logits[:USEFUL] > 0) and np.all(logits[USEFUL:] < 0), logits


def test_the_gate_step_unscales_a_loss_scale_optimizers_gradient():
  """Under a LossScaleOptimizer the collected gradient is of the scaled
  loss (x 32768 here): divided back, the gates learn what they learn
  without it."""
  logits = _logits(_shrunk(keras.optimizers.LossScaleOptimizer(
      _momentum()))[0])
  assert np.all(logits[:USEFUL] > 0) and np.all(logits[USEFUL:] < 0), logits
  assert np.all(np.isfinite(logits))


def test_under_gradient_accumulation_the_gates_step_once_per_update():
  """With gradient_accumulation_steps=4 the gates move on the 4th batch of
  every 4, by the mean of the 4 collected task gradients (they stepped on
  every batch), and still learn which channels matter."""
  model = _probe_model()
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(model)
  trainer = mk.add_regularizer(model, reg,
                               target_cost=0.55 * float(reg.get_cost()),
                               monitor=False)
  trainer.compile(keras.optimizers.SGD(0.05, momentum=0.9,
                                       gradient_accumulation_steps=4), 'mse')
  moved = []

  class Moves(keras.callbacks.Callback):

    def on_train_batch_begin(self, batch, logs=None):
      self.before = _logits(model)

    def on_train_batch_end(self, batch, logs=None):
      moved.append(bool(np.any(_logits(model) != self.before)))

  x, y = _data()
  trainer.fit(x[:128], y[:128], batch_size=8, epochs=1, verbose=0,
              shuffle=False, callbacks=[Moves()])
  assert moved == [False, False, False, True] * 4
  trainer.fit(x, y, batch_size=8, epochs=12, verbose=0)
  logits = _logits(model)
  assert np.all(logits[:USEFUL] > 0) and np.all(logits[USEFUL:] < 0), logits
