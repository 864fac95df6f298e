"""Target-cost control, exact zeros and the warnings (morph_net.keras.budget).

Network (sklearn's 8x8 digits): conv1 3x3 SAME -> 16, BN, ReLU; conv2 3x3
SAME -> 32, BN, ReLU; global average pool; Dense 10. Seed FLOPs:
2*64*9*(1*16 + 16*32) + 2*32*10 = 608,896.
"""

import os
import statistics
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import benchmark
from conftest import conv_bn_model
import morph_net.keras as mk
from morph_net.keras import budget
from morph_net.keras import cycles
from morph_net.network_regularizers import flop_regularizer

target_cost = benchmark('target_cost')

SEED_FLOPS = 2 * 64 * 9 * (1 * 16 + 16 * 32) + 2 * 32 * 10


def build_model(seed=0):
  return target_cost.build_model(seed)  # the same net as the benchmark's


def _compile(trainer, optimizer):
  trainer.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(
      from_logits=True), metrics=['accuracy'])


def _assert_guarantees(run):
  """What holds on every trajectory, whatever the CPU's rounding (the
  README's guarantees for target_cost and exact zeros)."""
  # Reached from above: a structure at or under T was exported, and it
  # costs at most T once slimmed.
  assert run['slim'] is not None and run['slim'] <= 1.0 + 1e-9, run
  # Exact zeros: every gamma at or under the alive threshold is 0.0, or
  # has been 0.0 at some step since it was last above the threshold.
  assert run['zeros_violations'] == 0, run
  # The strength is never negative nor zero (clipped to [1e-3, 1e6] x its
  # start), and was raised (the seed costs 2.5 x T).
  lowest, highest = run['strength']
  assert lowest >= 1e-3 * (1 - 1e-6) and 1.0 < highest <= 1e6, run


def test_target_cost_guarantees_hold_on_a_trajectory(digits):
  run = target_cost.run('sgd', 0, 15, digits)
  _assert_guarantees(run)
  assert run['lowest'] <= 1.0  # the cost itself went under T


# Runs (of 8 seeds) that end in [0.85, 1.05] x T. Measured on 2-core AMD
# EPYC machines, 1 and 2 intra-op threads, oneDNN on and off (README,
# "A budget, not a knob"): the fewest were SGD 2/8, momentum 6/8, Nesterov
# 5/8, Adam 6/8. One conv1 channel is 0.16 x T here, so the band holds one
# or two structures, and which one a run ends on flips with the CPU's
# rounding: the floors leave room for that.
MIN_IN_BAND = {'sgd': 1, 'momentum': 4, 'nesterov': 3, 'adam': 4}
# Every run measured ended in [0.78, 1.41] x T.
LOOSE_BAND = (0.6, 1.5)


@pytest.mark.slow
@pytest.mark.parametrize('optimizer', sorted(target_cost.OPTIMIZERS))
def test_target_cost_lands_over_seeds(digits, optimizer):
  """The controller judged as the benchmark judges it: over 8 seeds, most
  runs end in the band; every run keeps the per-trajectory guarantees."""
  runs = [target_cost.run(optimizer, seed, 15, digits) for seed in range(8)]
  for run in runs:
    _assert_guarantees(run)
  ends = [round(r['end'], 3) for r in runs]
  assert sum(target_cost.in_band(r) for r in runs) >= MIN_IN_BAND[
      optimizer], ends
  assert sum(LOOSE_BAND[0] <= e <= LOOSE_BAND[1] for e in ends) >= 6, ends
  # No deep undershoot on the way, for the typical run.
  assert statistics.median(r['lowest'] for r in runs) >= 0.6, [
      r['lowest'] for r in runs]


@pytest.mark.slow
@pytest.mark.parametrize('optimizer', ['momentum', 'adam'])
def test_target_cost_lands_with_gates_over_seeds(digits, optimizer):
  """FiGS gates (add_gates) under the gate step, judged as
  benchmarks/target_cost.py --family figs judges them: most runs end in the
  band, every exported structure is at or under the target, and the
  typical run does not undershoot deeply."""
  runs = [target_cost.run(optimizer, seed, 15, digits, family='figs')
          for seed in range(8)]
  ends = [round(r['end'], 3) for r in runs]
  assert sum(target_cost.in_band(r) for r in runs) >= 6, ends
  assert all(r['slim'] is not None and r['slim'] <= 1.0 for r in runs), [
      r['slim'] for r in runs]
  assert statistics.median(r['lowest'] for r in runs) >= 0.5, [
      r['lowest'] for r in runs]


def _simulated_plant(forecast):
  """A plant whose cost falls toward 100 / (1 + strength) with a lag (the
  sources take time to reach zero); T = 40 is its equilibrium at strength
  1.5. The controller sees whole units, like alive counts, and with
  `forecast` also the lag model's cost `horizon` steps ahead."""
  strength = tf.Variable(1.0)
  control = budget.StrengthController(target_cost=40.0)
  control.build(1.0)
  cost = tf.Variable(100.0)
  lag = 0.02

  @tf.function
  def step():
    equilibrium = 100.0 / (1.0 + strength)
    cost.assign_add(lag * (equilibrium - cost))
    ahead = cost + (1.0 - (1.0 - lag) ** control.horizon) * (
        equilibrium - cost)
    control.update(strength, tf.math.ceil(cost),
                   tf.math.ceil(ahead) if forecast else None)
    return tf.math.ceil(cost), tf.identity(strength)

  trace = [step() for _ in range(2500)]
  return (np.asarray([float(c) for c, _ in trace]),
          np.asarray([float(s) for _, s in trace]))


@pytest.mark.parametrize('forecast', [True, False],
                         ids=['forecast', 'stall_gated'])
def test_controller_does_not_overshoot_far_and_strength_stays_positive(
    forecast):
  costs, strengths = _simulated_plant(forecast)
  assert np.all(strengths > 0)
  assert costs.min() >= 0.85 * 40.0  # no big overshoot below the target
  # converged into the band [(1 - tolerance) T, T] and held there
  assert np.all((costs[-500:] <= 40.0) & (costs[-500:] >= 0.9 * 40.0))


def test_controller_never_drives_strength_negative_or_zero():
  strength = tf.Variable(1e-3)
  control = budget.StrengthController(target_cost=10.0, min_ratio=1e-2)
  control.build(1e-3)

  @tf.function
  def step():
    control.update(strength, tf.constant(1.0))

  for _ in range(500):  # always far under the target: strength falls
    step()
  assert float(strength.numpy()) == pytest.approx(1e-5, rel=1e-3)


@pytest.mark.parametrize('optimizer,scale', [
    (lambda: keras.optimizers.SGD(0.05), 20.0),
    # Momentum 0.9 steps 10x further per gradient (lr / (1 - m)): the same
    # product strength x effective step as SGD(0.05) at 20 / seed FLOPs.
    # With the decoupled step lr x strength (no momentum gain) this kills
    # no channel in 3 epochs (measured: cost stays 1.0 x seed).
    (lambda: keras.optimizers.SGD(0.05, momentum=0.9), 2.0),
    (lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True), 2.0),
], ids=['sgd', 'momentum', 'nesterov'])
def test_exact_zeros_make_dead_gammas_exactly_zero(digits, optimizer, scale):
  """With a fixed strength (nothing relaxes it), under plain SGD and under
  heavy-ball momentum, the penalty kills channels and gammas under the
  alive threshold are 0.0 (or on their way up from 0.0)."""
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  trainer = mk.add_regularizer(model, reg, strength=scale / SEED_FLOPS,
                               exact_zeros=True, monitor=False)
  _compile(trainer, optimizer())
  layers = [model.get_layer(n) for n in ('bn1', 'bn2')]
  steps = target_cost.StepLog(reg.cost_name, [l.gamma for l in layers], 1e-2)
  trainer.fit(digits[0][:512], digits[1][:512], batch_size=32, epochs=3,
              verbose=0, callbacks=[steps])
  gammas = np.concatenate([l.gamma.numpy() for l in layers])
  dead = np.abs(gammas) <= 1e-2
  assert dead.sum() >= 5  # the step did kill channels
  # ... exactly: after every step, each one under the threshold was 0.0
  # since it last was above it (a channel reviving from 0 passes through
  # (0, threshold]), and most sit at 0.0 now.
  assert steps.violations == 0
  assert np.mean(gammas[dead] == 0.0) >= 0.5, gammas[dead]
  assert float(reg.get_cost()) < SEED_FLOPS


def test_plain_gradient_leaves_dead_gammas_nonzero(digits):
  """The contrast: without the proximal step, L1 oscillates around 0."""
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  trainer = mk.add_regularizer(model, reg, strength=20.0 / SEED_FLOPS,
                               monitor=False)
  _compile(trainer, keras.optimizers.SGD(0.05))
  trainer.fit(digits[0][:512], digits[1][:512], batch_size=32, epochs=3,
              verbose=0)
  gammas = np.concatenate([model.get_layer(n).gamma.numpy()
                           for n in ('bn1', 'bn2')])
  small = np.abs(gammas) < 0.2
  assert small.any() and np.all(gammas[small] != 0.0)


def _two_gates(seed=0):
  from morph_net.probabilistic_gating import activation_gating  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((4,))
  x = keras.layers.Dense(8, name='wide_in')(inputs)
  x = activation_gating.LogisticSigmoidGating(name='g1')(x)
  x = keras.layers.Dense(32, name='hidden')(x)
  x = activation_gating.LogisticSigmoidGating(name='g2')(x)
  return keras.Model(inputs, keras.layers.Dense(2, name='out')(x))


@pytest.mark.parametrize('decoupled', [True, False])
def test_gates_move_by_their_cost_weight_only_when_decoupled(decoupled):
  """FLOPs per channel: g1's 2 x (4 + 32) = 72, g2's 2 x (8 + 2) = 20.
  Inside Adam both logits fall by about the learning rate per step;
  decoupled (exact_zeros=True: the gate step after the update, with no
  task gradient here) g1's fall about 72/20 times faster than g2's (a
  little more as g1 nears 0, where sigmoid' is larger)."""
  model = _two_gates()
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(
      model, regularize_on_mask=False)
  assert budget.supports_exact_zeros(reg)
  trainer = mk.add_regularizer(model, reg, strength=2e-2,
                               exact_zeros=decoupled, monitor=False)
  trainer.compile(keras.optimizers.Adam(1e-2), 'mse')
  before = [model.get_layer(n).mask_logits.numpy().copy()
            for n in ('g1', 'g2')]
  x = np.zeros((64, 4), 'float32')  # no data: only the term moves gates
  trainer.fit(x, np.zeros((64, 2), 'float32'), batch_size=16,
              epochs=1 if decoupled else 3, verbose=0)
  fall = [float(np.mean(b - model.get_layer(n).mask_logits.numpy()))
          for b, n in zip(before, ('g1', 'g2'))]
  assert fall[0] > 0 and fall[1] > 0, fall
  ratio = fall[0] / fall[1]
  if decoupled:
    assert 2.5 < ratio < 5.0, fall
  else:
    assert 0.7 < ratio < 1.4, fall


@pytest.mark.parametrize('kwargs', [{}, {'strength': 1e-3,
                                         'target_cost': 1e5}])
def test_exactly_one_of_strength_and_target(kwargs):
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  with pytest.raises(ValueError, match='exactly one of strength'):
    mk.add_regularizer(model, reg, **kwargs)


@pytest.mark.parametrize('target', [0, -1.0, float('nan'), 'big'])
def test_bad_target_raises(target):
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  with pytest.raises(ValueError, match='target_cost'):
    mk.add_regularizer(model, reg, target_cost=target)


def _warnings_of(fit):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    fit()
  return [str(w.message) for w in caught if 'morph_net (' in str(w.message)]


class _Holder:
  strength = 1.0


def test_no_dominating_warning_under_a_target():
  """Under a target the strength is the controller's: a penalty 1000x the
  task loss at the target is no mistake (the same numbers with a fixed
  strength are warned about)."""
  model = _one_bn_model([0.5, 0.5])
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  cost = float(reg.get_cost())
  logs = {'FLOPs': cost, 'regularization_term': 1000.0, 'loss': 1000.1}

  def warned(target):
    monitor = budget.BudgetMonitor(reg, 'FLOPs', 'regularization_term',
                                   target_cost=target)
    monitor.set_model(_Holder())
    monitor.on_train_begin()
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      for step in range(3):
        monitor.on_train_batch_end(step, dict(logs))
    return [str(w.message) for w in caught if '(dominating)' in str(w.message)]

  assert not warned(cost)  # at the target
  assert len(warned(None)) == 1  # fixed strength 1.0, far above 1 / cost


def test_warns_when_cost_stalls(digits):
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  trainer = mk.add_regularizer(model, reg, strength=1e-9 / SEED_FLOPS)
  _compile(trainer, keras.optimizers.SGD(0.05))
  monitor = budget.BudgetMonitor(reg, 'FLOPs', 'regularization_term',
                                 patience=20)
  messages = _warnings_of(lambda: trainer.fit(
      digits[0][:640], digits[1][:640], batch_size=32, epochs=1, verbose=0,
      callbacks=[monitor]))
  stalled = [m for m in messages if '(stalled)' in m]
  assert len(stalled) == 1 and 'target_cost' in stalled[0]


def test_warns_when_term_dominates(digits):
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  trainer = mk.add_regularizer(model, reg, strength=1e3 / SEED_FLOPS)
  _compile(trainer, keras.optimizers.SGD(1e-4))
  messages = _warnings_of(lambda: trainer.fit(
      digits[0][:64], digits[1][:64], batch_size=32, epochs=1, verbose=0))
  dominating = [m for m in messages if '(dominating)' in m]
  assert len(dominating) == 1 and 'lower the strength' in dominating[0]


def test_the_recommended_strength_is_not_called_dominating(digits):
  """strength = 1 / initial cost (the README's recipe) never gets the
  'lower the strength' advice, even where its penalty exceeds the task loss;
  ten times that does."""
  def dominating(scale):
    model = build_model()
    reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
    trainer = mk.add_regularizer(model, reg, strength=scale / SEED_FLOPS,
                                 monitor=False)
    _compile(trainer, keras.optimizers.SGD(1e-4))
    monitor = budget.BudgetMonitor(reg, 'FLOPs', 'regularization_term',
                                   dominance=0.01)
    messages = _warnings_of(lambda: trainer.fit(
        digits[0][:64], digits[1][:64], batch_size=32, epochs=1, verbose=0,
        callbacks=[monitor]))
    return [m for m in messages if '(dominating)' in m]

  assert not dominating(1.0)
  assert len(dominating(10.0)) == 1


def test_warns_when_sources_hover(digits):
  """Adam at lr ~ threshold: dead gammas hover at +-lr (the issue's case)."""
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  trainer = mk.add_regularizer(model, reg, strength=50.0 / SEED_FLOPS)
  _compile(trainer, keras.optimizers.Adam(1e-2))
  monitor = budget.BudgetMonitor(reg, 'FLOPs', 'regularization_term',
                                 check_every=2, dominance=1e9)
  messages = _warnings_of(lambda: trainer.fit(
      digits[0], digits[1], batch_size=32, epochs=4, verbose=0,
      callbacks=[monitor]))
  hovering = [m for m in messages if '(hovering)' in m]
  assert len(hovering) == 1 and 'exact_zeros=True' in hovering[0]


def test_no_hover_warning_with_exact_zeros(digits):
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  trainer = mk.add_regularizer(model, reg, strength=50.0 / SEED_FLOPS,
                               exact_zeros=True)
  _compile(trainer, keras.optimizers.SGD(0.05))
  monitor = budget.BudgetMonitor(reg, 'FLOPs', 'regularization_term',
                                 check_every=2, dominance=1e9)
  messages = _warnings_of(lambda: trainer.fit(
      digits[0][:960], digits[1][:960], batch_size=32, epochs=2, verbose=0,
      callbacks=[monitor]))
  assert not [m for m in messages if '(hovering)' in m]


def test_only_at_or_under_skips_costlier_structures(digits, tmp_path):
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  trainer = mk.add_regularizer(model, reg, strength=0.0)
  _compile(trainer, keras.optimizers.SGD(0.0))
  exporter = budget.only_at_or_under(mk.StructureExporterCallback(
      reg, str(tmp_path), 1, summary_subdir=None), 0.5 * SEED_FLOPS)
  trainer.fit(digits[0][:64], digits[1][:64], batch_size=32, epochs=1,
              verbose=0, callbacks=[exporter])
  learned = os.path.join(str(tmp_path), 'learned_structure')
  assert not os.path.isdir(learned) or not os.listdir(learned)
  assert cycles.last_structure(str(tmp_path)) == (None, None)


def test_only_at_or_under_prices_a_dead_layer_as_the_slim_model_keeps_it(
    digits, tmp_path):
  """Every channel of the first layer dead: the regularizer prices it and
  the layer it feeds at 0, but slim_model keeps one of its channels (the
  output would be cut off), so the structure costs more than the target
  and is not exported as under it (found by probing)."""
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  bn = model.get_layer('bn1')
  bn.gamma.assign(np.zeros(bn.gamma.shape, np.float32))
  target = 1.5 * float(reg.get_cost())
  counts = {'conv1': 0, 'conv2': model.get_layer('conv2').filters}
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    assert mk.structure_cost(model, counts) > target
  trainer = mk.add_regularizer(model, reg, strength=0.0)
  _compile(trainer, keras.optimizers.SGD(0.0))
  exporter = budget.only_at_or_under(mk.StructureExporterCallback(
      reg, str(tmp_path), 1, summary_subdir=None), target)
  trainer.fit(digits[0][:64], digits[1][:64], batch_size=32, epochs=1,
              verbose=0, callbacks=[exporter])
  assert exporter.saved_paths == []
  assert cycles.last_structure(str(tmp_path)) == (None, None)


def _one_bn_model(gammas):
  """conv1 3x3 -> bn1 (the gammas given) -> ReLU -> GAP -> Dense 3."""
  model = conv_bn_model((8, 8, 1), (len(gammas),), 3)
  model.get_layer('bn1').gamma.assign(np.asarray(gammas, np.float32))
  return model


def _cost_with(reg, gamma, values):
  """The regularizer's cost with `values` assigned to the gamma."""
  saved = gamma.numpy()
  gamma.assign(np.asarray(values, np.float32))
  try:
    return float(reg.get_cost())
  finally:
    gamma.assign(saved)


def test_substituted_sources_cost_what_if_values_and_restore():
  model = _one_bn_model([1.0, 0.5, 0.2, 0.005])
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  gamma = model.get_layer('bn1').gamma
  manager = reg.op_regularizer_manager
  now = float(reg.get_cost())
  what_if = [0.0, 0.0, 0.3, 0.0]  # one channel alive instead of three
  with manager.substituted_sources([(gamma, tf.constant(what_if))]):
    inside = float(reg.get_cost())
    with pytest.raises(RuntimeError, match='do not nest'):
      with manager.substituted_sources([]):
        pass
  assert inside == _cost_with(reg, gamma, what_if) and inside < now
  assert float(reg.get_cost()) == now  # the variables were not touched


def _forecast_while_falling(forecast, variable, start, per_step, steps=3):
  """Builds `forecast`, then moves `variable` down from `start` by
  `per_step` a step; the last forecast."""
  variable.assign(start)
  forecast.build()
  for k in range(1, steps + 1):
    variable.assign(start - per_step * k)
    value = float(forecast())
  return value


def test_forecast_projects_measured_shrink_capped_by_the_penalty():
  """Norms falling 0.01 a step, 10 steps ahead: the forecast is the cost of
  the gammas 0.1 lower (one channel then under the threshold); with the
  penalty moving them only 0.001 a step, nothing is forecast to die."""
  start = np.asarray([1.0, 0.5, 0.105, 0.2], np.float32)
  model = _one_bn_model(start)
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  gamma = model.get_layer('bn1').gamma
  forecast = budget.CostForecast(reg, horizon=10)
  uncapped = _forecast_while_falling(forecast, gamma, start, 0.01)
  now = start - 0.03
  expected = _cost_with(reg, gamma, np.maximum(now - 0.1, 0.0))
  assert uncapped == pytest.approx(expected)
  assert uncapped < float(reg.get_cost())  # channel 2 (0.075) dies
  gamma.assign(now - 0.01)
  capped = float(forecast([tf.fill([4], 0.001)]))
  assert capped == float(reg.get_cost())


def test_forecast_ignores_channels_that_only_fluctuate():
  """A norm going up and down by 0.02 around 0.05 has no downward trend:
  with z = 2 standard errors it is not taken for a dying channel."""
  start = np.asarray([1.0, 0.05], np.float32)
  model = _one_bn_model(start)
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  gamma = model.get_layer('bn1').gamma
  forecast = budget.CostForecast(reg, horizon=20)
  forecast.build()
  for k in range(41):
    gamma.assign(start + np.asarray([0.0, 0.02 if k % 2 else -0.02],
                                    np.float32))
    value = float(forecast())
  assert value == float(reg.get_cost())
  fooled = budget.CostForecast(reg, horizon=20, z=0.0)
  fooled.build()
  for k in range(41):
    gamma.assign(start + np.asarray([0.0, 0.02 if k % 2 else -0.02],
                                    np.float32))
    value = float(fooled())
  assert value < float(reg.get_cost())  # the last step down read as a trend


def test_proximal_step_snaps_channels_falling_under_the_threshold():
  """Soft threshold by 0.001; a gamma crossing 1e-2 downward becomes 0.0,
  one already under it (dead, maybe reviving) only gets the soft step."""
  model = _one_bn_model([0.5, 0.0105, 0.004, 0.0])
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  gamma = model.get_layer('bn1').gamma
  prox = budget.ProximalStep(reg)
  prox.build()
  # w: the term's slope in |gamma|, the same for each channel of one
  # BatchNorm; apply(step / w) soft-thresholds the gammas by `step`.
  with tf.GradientTape() as tape:
    term = reg.get_regularization_term()
  w = float(tape.gradient(term, gamma)[0])
  prox.apply(0.001 / w)
  np.testing.assert_allclose(gamma.numpy(), [0.499, 0.0, 0.003, 0.0],
                             atol=1e-6)
  assert gamma.numpy()[1] == 0.0
  gamma.assign([0.499, 0.0, 0.003, 0.002])  # the task lifts channel 3
  prox.apply(1e-4 / w)
  np.testing.assert_allclose(gamma.numpy(), [0.4989, 0.0, 0.0029, 0.0019],
                             atol=1e-6)


def test_target_cost_of_a_combined_regularizer_steers_by_its_forecast(digits):
  """The forecast reads every part's sources: logged, never above the cost
  (it only removes channels), and under it while channels are dying."""
  from morph_net.network_regularizers import model_size_regularizer  # pylint: disable=g-import-not-at-top
  model = build_model()
  flops = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  size = model_size_regularizer.GammaModelSizeRegularizer(model, 1e-2)
  parts = [(flops, 1.0 / float(flops.get_cost())),
           (size, 1.0 / float(size.get_cost()))]
  trainer = mk.add_regularizer(model, parts, target_cost=1.0,
                               monitor=False)
  _compile(trainer, keras.optimizers.SGD(0.05))
  logs = trainer.fit(digits[0][:640], digits[1][:640], batch_size=32,
                     epochs=6, verbose=0).history
  cost = np.asarray(logs['combined_cost'])
  forecast = np.asarray(logs['combined_cost_forecast'])
  assert np.all(forecast <= cost + 1e-6)
  assert cost[-1] < 2.0  # shrinking toward the target (from 2.0)


@pytest.mark.parametrize('exact_zeros', [False, True])
def test_hover_warning_counts_the_channels_and_fits_exact_zeros(exact_zeros):
  """Half the gammas go back and forth across 1e-2 between checks: the
  warning counts them, and advises exact_zeros=True only where it is off."""
  model = _one_bn_model([1.0, 1.0, 0.015, 0.015])
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  gamma = model.get_layer('bn1').gamma
  monitor = budget.BudgetMonitor(reg, 'FLOPs', 'regularization_term',
                                 check_every=1, exact_zeros=exact_zeros)

  def wander():  # the steps of a fit, as Keras calls its callbacks
    monitor.on_train_begin()
    for k in range(4):
      low = 0.008 if k % 2 else 0.015
      gamma.assign([1.0, 1.0, low, low])
      monitor.on_train_batch_end(k, {'FLOPs': float(reg.get_cost())})

  hovering = [m for m in _warnings_of(wander) if '(hovering)' in m]
  assert len(hovering) == 1
  assert '2 of 4' in hovering[0]
  assert ('exact_zeros=True' in hovering[0]) == (not exact_zeros)


def test_substituted_sources_refuses_graph_mode_regularizers():
  """A tf.compat.v1 graph's costs are graph tensors: a what-if on live
  values cannot be expressed there, so it says so instead of mixing graphs."""
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 1])
    kernel = tf.compat.v1.get_variable('k', initializer=tf.ones([3, 3, 1, 4]))
    gamma = tf.compat.v1.get_variable('g', initializer=tf.ones([4]))
    beta = tf.compat.v1.get_variable('b', initializer=tf.zeros([4]))
    net = tf.nn.conv2d(images, kernel, 1, 'SAME', name='conv')
    net = tf.compat.v1.nn.fused_batch_norm(net, gamma, beta, name='bn')[0]
    logits = tf.matmul(tf.reduce_mean(tf.nn.relu(net), [1, 2]),
                       tf.ones([4, 2]), name='logits')
    reg = flop_regularizer.GammaFlopsRegularizer([logits.op], 1e-2)
    with pytest.raises(NotImplementedError, match='tf.compat.v1 graph'):
      with reg.op_regularizer_manager.substituted_sources([]):
        pass


def test_stall_under_a_target_names_what_does_not_respond(digits):
  """Gates sampling at the layer's default temperature (0.001) pass the
  task's and the term's gradient in few steps: the cost does not move, the
  controller keeps raising the strength, and the warning names the
  temperature instead of advising target_cost."""
  from morph_net.probabilistic_gating import activation_gating  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 1))
  x = keras.layers.Conv2D(16, 3, padding='same', name='conv')(inputs)
  x = activation_gating.LogisticSigmoidGating(name='gate')(
      keras.layers.ReLU()(x))
  x = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, keras.layers.Dense(10, name='logits')(x))
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(model)
  trainer = mk.add_regularizer(model, reg, target_cost=0.4 * float(
      reg.get_cost()), monitor=False)
  _compile(trainer, keras.optimizers.Adam(1e-2))
  monitor = budget.BudgetMonitor(reg, 'FLOPs', 'regularization_term',
                                 patience=100, target_cost=trainer.target_cost)
  messages = _warnings_of(lambda: trainer.fit(
      digits[0][:1280], digits[1][:1280], batch_size=32, epochs=3,
      verbose=0, callbacks=[monitor]))
  stalled = [m for m in messages if '(stalled)' in m]
  assert len(stalled) == 1, messages
  assert 'temperature=0.5' in stalled[0]
  assert 'pass target_cost' not in stalled[0]
  assert trainer.strength > 2.0 / float(reg.get_cost())  # it was raised


def _gated(keep_first=False):
  """conv 3x3 -> LogisticSigmoidGating (4 gates) -> GAP -> Dense 3; the
  regularizer and the gate's logits."""
  from morph_net.probabilistic_gating import activation_gating  # pylint: disable=g-import-not-at-top
  inputs = keras.Input((8, 8, 1))
  x = keras.layers.Conv2D(4, 3, padding='same', name='conv')(inputs)
  x = activation_gating.LogisticSigmoidGating(
      keep_first_channel_alive=keep_first, name='gate')(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, keras.layers.Dense(3, name='logits')(x))
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(model)
  return reg, model.get_layer('gate').mask_logits


def test_forecast_of_gates_lowers_their_logits():
  """Gate logits falling 0.1 a step, 10 steps ahead: those under 1.0 are
  forecast closed (alive: logit > 0), read through the gate's own rule."""
  reg, logits = _gated()
  start = np.asarray([3.0, 1.2, 2.0, 0.9], np.float32)
  value = _forecast_while_falling(budget.CostForecast(reg, horizon=10),
                                  logits, start, 0.1)
  assert value == pytest.approx(_cost_with(reg, logits, start - 0.3 - 1.0))
  assert value < float(reg.get_cost())  # 0.9 and 0.6 close within 10 steps


def test_forecast_keeps_a_gate_s_first_channel_alive():
  """What-if logits are read through the gate's record (found from its
  variable): a gate that keeps channel 0 keeps it in the forecast too."""
  reg, logits = _gated(keep_first=True)
  start = np.asarray([0.5, 3.0, 3.0, 3.0], np.float32)
  value = _forecast_while_falling(budget.CostForecast(reg, horizon=10),
                                  logits, start, 0.1)
  assert value == float(reg.get_cost())


def test_controller_and_monitor_read_the_regularizers_norm_with_l1_fraction():
  """With l1_fraction = 0.5 a group lasso channel's norm is 0.5 RMS(w) +
  0.5 mean|w| (hand-computed here): the regularizer, the cost forecast and
  the training monitor read that one number, so their alive sets agree."""
  from morph_net.keras import _budget_monitor  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import model_size_regularizer  # pylint: disable=g-import-not-at-top
  from morph_net.tools import structure_exporter  # pylint: disable=g-import-not-at-top
  inputs = keras.Input((4,))
  hidden = keras.layers.Dense(3, name='hidden')(inputs)
  model = keras.Model(inputs, keras.layers.Dense(2, name='out')(hidden))
  kernel = np.asarray([[0.6, 0.0, 1.0], [-0.6, 0.0, 0.0],
                       [0.6, 0.02, 0.0], [-0.6, 0.0, 0.0]], np.float32)
  model.get_layer('hidden').kernel.assign(kernel)
  expected = 0.5 * np.sqrt(np.mean(kernel ** 2, axis=0)) + 0.5 * np.mean(
      np.abs(kernel), axis=0)
  # Channel 2: RMS 0.5, mean|w| 0.25 -> 0.375, under the threshold 0.4;
  # RMS alone (0.5) would call it alive.
  np.testing.assert_allclose(expected, [0.6, 0.0075, 0.375], rtol=1e-6)
  reg = model_size_regularizer.GroupLassoModelSizeRegularizer(
      model, 0.4, l1_fraction=0.5)
  counts = structure_exporter.StructureExporter(
      reg.op_regularizer_manager).get_alive_counts()
  assert counts['hidden'] == 1
  index = [i for i, s in enumerate(reg.op_regularizer_manager.sources)
           if 'hidden' in s.op.name]
  assert len(index) == 1
  monitored, threshold = _budget_monitor._source_values(reg)[index[0]]
  np.testing.assert_allclose(monitored, expected, rtol=1e-6)
  assert threshold == 0.4
  forecast = budget.CostForecast(reg, horizon=10)
  _, forecast_norms = forecast._values()[index[0]]
  np.testing.assert_allclose(forecast_norms.numpy(), expected, rtol=1e-6)
