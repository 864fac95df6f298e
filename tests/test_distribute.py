"""MorphNet under tf.distribute, XLA and mixed precision.

Replicas must not multiply the strength: N replicas of a step on the same
global batch give the weights one device gives, with `fit`
(`add_regularizer`) and with a custom loop (`strategy.run` +
`tf.nn.scale_regularization_loss`), under `MirroredStrategy` on 2 logical
CPUs and `MultiWorkerMirroredStrategy` with 2 workers on 127.0.0.1.

Logical devices must be configured before TensorFlow starts, so those runs
happen in subprocesses that execute this very file (`python
tests/test_distribute.py mirrored|worker ...`); each prints one JSON line of
final weights. The subprocesses start together (one module fixture) and are
killed in `finally` whatever happens; every wait is bounded.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

GLOBAL_BATCH = 8
STEPS = 3
LEARNING_RATE = 0.1
# Large enough that a doubled term moves the gammas visibly (the bug this
# file guards against doubled it with 2 replicas).
STRENGTH = 2e-4
WAIT_S = 300  # generous: the CI machine may be shared
TOLERANCE = dict(rtol=1e-4, atol=1e-6)


# ------------------------------------------------------- shared by all runs
def _build(keras):
  """Conv + (synchronized) BatchNorm + ReLU + Dense, deterministic weights.

  Synchronized BatchNorm: its batch statistics are over the global batch,
  so N replicas see the statistics one device sees and the updates can be
  compared exactly.
  """
  inputs = keras.Input((6, 6, 3))
  x = keras.layers.Conv2D(8, 3, padding='same', use_bias=False,
                          name='conv')(inputs)
  x = keras.layers.BatchNormalization(synchronized=True, name='bn')(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, keras.layers.Dense(3, name='head')(x))
  rng = np.random.default_rng(0)
  values = []
  for w in model.weights:
    if w.path.endswith(('gamma', 'moving_variance')):
      values.append(rng.uniform(0.5, 1.5, w.shape).astype(np.float32))
    else:
      values.append(0.3 * rng.standard_normal(w.shape).astype(np.float32))
  model.set_weights(values)
  return model


def _data():
  rng = np.random.default_rng(1)
  n = GLOBAL_BATCH * STEPS
  x = rng.standard_normal((n, 6, 6, 3)).astype(np.float32)
  y = rng.integers(0, 3, (n,)).astype(np.int32)
  return x, y


def _weights(model):
  return {w.path: np.asarray(w.numpy()).tolist()
          for w in model.trainable_weights}


def _fit(tf, keras, strategy):
  """`add_regularizer` + `fit`, optionally under `strategy`."""
  import morph_net.keras  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
  scope = strategy.scope() if strategy else _null()
  with scope:
    model = _build(keras)
    reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
    trainer = morph_net.keras.add_regularizer(model, reg, STRENGTH)
    trainer.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE),
                    loss=keras.losses.SparseCategoricalCrossentropy(
                        from_logits=True))
  x, y = _data()
  history = trainer.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1,
                        shuffle=False, verbose=0)
  del tf
  return {'weights': _weights(model),
          'loss': history.history['loss'][-1],
          'cost': history.history['FLOPs'][-1],
          'eager_cost': float(reg.get_cost())}


# Gammas that the proximal step zeroes within the 3 steps (threshold 1e-2),
# so the cost moves and the controller has something to follow.
BUDGET_GAMMAS = (0.011, 0.015, 0.02, 0.03, 0.8, 1.0, 1.2, 0.9)


def _fit_budget(tf, keras, strategy, mode):
  """A target_cost or exact_zeros fit; its trajectory, step by step.

  'target': the controller (rate 0.2) toward a quarter of the initial cost:
  its forecast is far above that from the first step, so the strength
  changes every step; the proximal step is on (the default with
  target_cost), and so are the forecast's running averages. 'target_adam':
  the same under Adam (the proximal step reads Adam's second moments).
  'exact_zeros': a fixed strength, proximal step only.
  """
  import morph_net.keras  # pylint: disable=g-import-not-at-top
  from morph_net.keras import budget  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
  try:
    with strategy.scope() if strategy else _null():
      model = _build(keras)
      gamma = model.get_layer('bn').gamma
      gamma.assign(np.asarray(BUDGET_GAMMAS, np.float32))
      reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
      if mode in ('target', 'target_adam'):
        control = budget.StrengthController(0.25 * float(reg.get_cost()),
                                            rate=0.2, patience=0)
        trainer = morph_net.keras.add_regularizer(
            model, reg, target_cost=control, monitor=False)
      else:
        trainer = morph_net.keras.add_regularizer(
            model, reg, strength=5e-4, exact_zeros=True, monitor=False)
      optimizer = (keras.optimizers.Adam(0.01) if mode == 'target_adam'
                   else keras.optimizers.SGD(LEARNING_RATE))
      trainer.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
  except Exception as e:  # pylint: disable=broad-except
    return {'error': '%s: %s' % (type(e).__name__, e)}
  steps = []

  class Record(keras.callbacks.Callback):

    def on_train_batch_end(self, batch, logs=None):
      steps.append({'strength': trainer.strength,
                    'logged_strength': float(logs.get('strength', -1.0)),
                    'cost': float(logs['FLOPs']),
                    'gamma': np.asarray(gamma.numpy()).tolist()})

  x, y = _data()
  try:
    trainer.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False,
                verbose=0, callbacks=[Record()])
  except Exception as e:  # pylint: disable=broad-except
    return {'error': '%s: %s' % (type(e).__name__, e)}
  del tf
  return {'steps': steps, 'weights': _weights(model),
          'eager_cost': float(reg.get_cost())}


def _custom_loop(tf, keras, strategy, strength=STRENGTH):
  """The README recipe: `strategy.run` over per-replica slices."""
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
  strategy = strategy or tf.distribute.get_strategy()
  with strategy.scope():
    model = _build(keras)
    reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
    optimizer = keras.optimizers.SGD(LEARNING_RATE)
    optimizer.build(model.trainable_variables)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(
      from_logits=True, reduction=None)
  per_replica = GLOBAL_BATCH // strategy.num_replicas_in_sync

  def replica_step(images, labels):
    with tf.GradientTape() as tape:
      per_example = loss_fn(labels, model(images, training=True))
      loss = tf.nn.compute_average_loss(per_example,
                                        global_batch_size=GLOBAL_BATCH)
      loss += tf.nn.scale_regularization_loss(
          strength * reg.get_regularization_term())
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  @tf.function
  def train_step(x, y):
    def shard(values):
      return strategy.experimental_distribute_values_from_function(
          lambda ctx: values[ctx.replica_id_in_sync_group * per_replica:
                             (ctx.replica_id_in_sync_group + 1) *
                             per_replica])
    losses = strategy.run(replica_step, args=(shard(x), shard(y)))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

  x, y = _data()
  for step in range(STEPS):
    batch = slice(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
    train_step(tf.constant(x[batch]), tf.constant(y[batch]))
  return {'weights': _weights(model), 'eager_cost': float(reg.get_cost())}


class _null:

  def __enter__(self):
    return self

  def __exit__(self, *args):
    return False


def _import_tf(logical_cpus=None):
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if logical_cpus:
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
  import keras  # pylint: disable=g-import-not-at-top
  return tf, keras


def _main(argv):
  """Subprocess entry: prints one JSON line of results."""
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  os.pardir))
  mode = argv[0]
  if mode == 'mirrored':
    tf, keras = _import_tf(logical_cpus=2)
    mirrored = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    out = {'replicas': mirrored.num_replicas_in_sync,
           'fit_1': _fit(tf, keras, None),
           'fit_2': _fit(tf, keras, mirrored),
           'loop_1': _custom_loop(tf, keras, None),
           'loop_2': _custom_loop(tf, keras, mirrored),
           'loop_1_no_term': _custom_loop(tf, keras, None, strength=0.0)}
    for mode in ('target', 'exact_zeros', 'target_adam'):
      out['%s_1' % mode] = _fit_budget(tf, keras, None, mode)
      out['%s_2' % mode] = _fit_budget(tf, keras, mirrored, mode)
  elif mode == 'worker':
    # TF_CONFIG is set by the parent.
    tf, keras = _import_tf()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    out = {'replicas': strategy.num_replicas_in_sync,
           'loop': _custom_loop(tf, keras, strategy)}
  else:
    raise SystemExit('unknown mode %r' % mode)
  print('RESULT ' + json.dumps(out), flush=True)


# ----------------------------------------------------------------- pytest
def _free_ports(n):
  sockets = []
  try:
    for _ in range(n):
      s = socket.socket()
      s.bind(('127.0.0.1', 0))
      sockets.append(s)
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def _start(args, env_extra=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  env.update(env_extra or {})
  return subprocess.Popen([sys.executable, os.path.abspath(__file__)] + args,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env)


def _result(proc, name, deadline):
  try:
    out, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError('%s did not finish in %d s; stderr tail:\n%s'
                         % (name, WAIT_S, err[-3000:])) from None
  lines = [l for l in out.splitlines() if l.startswith('RESULT ')]
  assert proc.returncode == 0 and lines, (
      '%s failed (exit %s); stderr tail:\n%s'
      % (name, proc.returncode, err[-3000:]))
  return json.loads(lines[-1][len('RESULT '):])


def _runs():
  ports = _free_ports(2)
  cluster = {'worker': ['127.0.0.1:%d' % p for p in ports]}
  procs = {}
  try:
    procs['mirrored'] = _start(['mirrored'])
    for i in range(2):
      config = {'cluster': cluster, 'task': {'type': 'worker', 'index': i}}
      procs['worker%d' % i] = _start(['worker'],
                                     {'TF_CONFIG': json.dumps(config)})
    deadline = time.time() + WAIT_S
    return {name: _result(p, name, deadline) for name, p in procs.items()}
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.kill()
      p.wait(timeout=10)


def _assert_same_weights(a, b, what):
  assert sorted(a) == sorted(b), what
  for path in a:
    np.testing.assert_allclose(np.asarray(a[path]), np.asarray(b[path]),
                               err_msg='%s: %s' % (what, path), **TOLERANCE)


@pytest.fixture(scope='module')
def runs():
  return _runs()


def test_the_term_moves_the_gammas_enough_to_tell_a_doubled_strength(runs):
  with_term = np.asarray(runs['mirrored']['loop_1']['weights']['bn/gamma'])
  without = np.asarray(
      runs['mirrored']['loop_1_no_term']['weights']['bn/gamma'])
  # A doubled strength would move them by this much again: far beyond
  # TOLERANCE.
  assert np.abs(with_term - without).max() > 100 * TOLERANCE['atol']


def test_fit_with_two_mirrored_replicas_matches_one_device(runs):
  mirrored = runs['mirrored']
  assert mirrored['replicas'] == 2
  _assert_same_weights(mirrored['fit_2']['weights'],
                       mirrored['fit_1']['weights'], 'fit, 2 replicas')
  # The logged loss is the same too (Keras unscales it for the log), and
  # the cost is the regularizer's.
  assert mirrored['fit_2']['loss'] == pytest.approx(
      mirrored['fit_1']['loss'], rel=1e-4)
  assert mirrored['fit_2']['cost'] == mirrored['fit_2']['eager_cost']


def test_custom_loop_with_two_mirrored_replicas_matches_one_device(runs):
  mirrored = runs['mirrored']
  _assert_same_weights(mirrored['loop_2']['weights'],
                       mirrored['loop_1']['weights'], 'custom loop')
  # fit and the custom loop minimize the same loss.
  _assert_same_weights(mirrored['fit_1']['weights'],
                       mirrored['loop_1']['weights'], 'fit vs custom loop')


@pytest.mark.parametrize('mode', ['target', 'exact_zeros', 'target_adam'])
def test_budget_trajectory_with_two_mirrored_replicas_matches_one_device(
    runs, mode):
  one, two = runs['mirrored']['%s_1' % mode], runs['mirrored']['%s_2' % mode]
  assert 'error' not in one, one
  assert 'error' not in two, two
  assert len(one['steps']) == len(two['steps']) == STEPS
  for step, (a, b) in enumerate(zip(one['steps'], two['steps'])):
    what = '%s, step %d' % (mode, step + 1)
    assert b['strength'] == pytest.approx(a['strength'], rel=1e-6), what
    assert b['cost'] == a['cost'], what
    np.testing.assert_allclose(b['gamma'], a['gamma'], err_msg=what,
                               **TOLERANCE)
  _assert_same_weights(two['weights'], one['weights'], mode)
  assert two['eager_cost'] == one['eager_cost']


def test_budget_trajectory_on_one_device_is_not_trivial(runs):
  """What the comparison above compares: the strength moves every step
  under target_cost, and gammas reach exactly 0 (the cost falls)."""
  target = runs['mirrored']['target_1']
  strengths = [s['strength'] for s in target['steps']]
  assert all(b > a for a, b in zip(strengths, strengths[1:])), strengths
  for mode in ('target', 'exact_zeros'):
    steps = runs['mirrored']['%s_1' % mode]['steps']
    assert steps[-1]['cost'] < steps[0]['cost'], mode
    assert sum(g == 0.0 for g in steps[-1]['gamma']) >= 3, mode


def test_two_multi_worker_workers_agree_with_each_other_and_one_device(runs):
  workers = [runs['worker0'], runs['worker1']]
  assert [w['replicas'] for w in workers] == [2, 2]
  _assert_same_weights(workers[0]['loop']['weights'],
                       workers[1]['loop']['weights'], 'worker 0 vs 1')
  _assert_same_weights(workers[0]['loop']['weights'],
                       runs['mirrored']['loop_1']['weights'],
                       'multi-worker vs one device')


# ------------------------------------------- XLA and mixed precision, here
def _term_gradient(reg, gamma):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.GradientTape() as tape:
    term = reg.get_regularization_term()
  return tape.gradient(term, gamma.value).numpy()


def test_jit_compiled_cost_and_term_match_eager():
  tf, keras = _import_tf()
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
  model = _build(keras)
  gamma = model.get_layer('bn').gamma
  gamma.assign(np.where(np.arange(8) < 3, 1e-3, 1.0).astype(np.float32))
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)

  @tf.function(jit_compile=True)
  def compiled():
    with tf.GradientTape() as tape:
      term = reg.get_regularization_term()
    return reg.get_cost(), term, tape.gradient(term, gamma.value)

  cost, term, grad = compiled()
  # 5 of 8 channels alive: conv 2*36*9*3*5, head 2*5*3.
  assert float(cost) == 2 * 36 * 9 * 3 * 5 + 2 * 5 * 3
  assert float(cost) == float(reg.get_cost())
  np.testing.assert_allclose(float(term),
                             float(reg.get_regularization_term()), rtol=1e-6)
  np.testing.assert_allclose(grad.numpy(), _term_gradient(reg, gamma),
                             rtol=1e-6)


@pytest.mark.parametrize('policy,jit_compile', [
    ('float32', True), ('mixed_float16', False),
    pytest.param('mixed_float16', True, marks=pytest.mark.slow)])
def test_fit_step_adds_exactly_lr_strength_term_gradient(policy, jit_compile):
  """One SGD step: gamma(strength) - gamma(0) = -lr * strength * dterm/dgamma.

  The task gradient is the same in both runs, so the difference isolates
  the term, whatever precision the task loss is computed in.
  """
  _, keras = _import_tf()
  import morph_net.keras  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
  x, y = _data()
  x, y = x[:GLOBAL_BATCH], y[:GLOBAL_BATCH]
  strength = 1e-4
  keras.mixed_precision.set_global_policy(policy)
  try:
    gammas, logs = [], []
    for s in (strength, 0.0):
      model = _build(keras)
      gamma = model.get_layer('bn').gamma
      reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
      expected = _term_gradient(reg, gamma)
      cost = float(reg.get_cost())
      trainer = morph_net.keras.add_regularizer(model, reg, s)
      initial = gamma.numpy()
      # Under mixed_float16 Keras wraps SGD in a LossScaleOptimizer.
      trainer.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE),
                      jit_compile=jit_compile,
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
      history = trainer.fit(x, y, batch_size=GLOBAL_BATCH, verbose=0)
      # The logs hold cost and term after the step (the updated gammas).
      assert history.history['FLOPs'][-1] == cost == float(reg.get_cost())
      assert history.history['regularization_term'][-1] == pytest.approx(
          float(reg.get_regularization_term()), rel=1e-5)
      # The step was applied (a loss-scale overflow would have skipped it).
      assert np.abs(gamma.numpy() - initial).max() > 1e-4
      gammas.append(gamma.numpy())
  finally:
    keras.mixed_precision.set_global_policy('float32')
  assert model.compute_dtype == ('float16' if policy == 'mixed_float16'
                                 else 'float32')
  np.testing.assert_allclose(gammas[0] - gammas[1],
                             -LEARNING_RATE * strength * expected,
                             rtol=2e-3, atol=1e-7)


def _budget_fit_here(keras, mode, jit_compile, policy):
  """(strength, cost, gammas) after a budget fit in this process."""
  import morph_net.keras  # pylint: disable=g-import-not-at-top
  from morph_net.keras import budget  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy(policy)
  try:
    model = _build(keras)
    gamma = model.get_layer('bn').gamma
    gamma.assign(np.asarray(BUDGET_GAMMAS, np.float32))
    reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
    if mode == 'target':
      trainer = morph_net.keras.add_regularizer(
          model, reg, monitor=False, target_cost=budget.StrengthController(
              0.25 * float(reg.get_cost()), rate=0.2, patience=0))
    else:
      trainer = morph_net.keras.add_regularizer(
          model, reg, strength=5e-4, exact_zeros=True, monitor=False)
    trainer.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE),
                    jit_compile=jit_compile,
                    loss=keras.losses.SparseCategoricalCrossentropy(
                        from_logits=True))
    x, y = _data()
    history = trainer.fit(x, y, batch_size=GLOBAL_BATCH, shuffle=False,
                          verbose=0)
  finally:
    keras.mixed_precision.set_global_policy('float32')
  assert history.history['FLOPs'][-1] == float(reg.get_cost())
  return trainer.strength, float(reg.get_cost()), gamma.numpy()


@pytest.mark.parametrize('mode', ['target', 'exact_zeros'])
@pytest.mark.parametrize('policy,jit_compile', [
    ('float32', True), ('mixed_float16', False),
    pytest.param('mixed_float16', True, marks=pytest.mark.slow)])
def test_budget_step_under_xla_and_mixed_precision_matches_float32(
    mode, policy, jit_compile):
  """The controller and the proximal step give the float32 eager-step
  trajectory: same strength, cost and exact zeros; gammas within float16
  noise of the task gradient."""
  _, keras = _import_tf()
  strength, cost, gammas = _budget_fit_here(keras, mode, False, 'float32')
  got = _budget_fit_here(keras, mode, jit_compile, policy)
  assert got[0] == pytest.approx(strength, rel=1e-6)
  assert got[1] == cost
  np.testing.assert_array_equal(got[2] == 0.0, gammas == 0.0)
  assert (gammas == 0.0).sum() >= 3
  np.testing.assert_allclose(got[2], gammas, atol=1e-4 if
                             policy == 'mixed_float16' else 1e-6)


if __name__ == '__main__':
  _main(sys.argv[1:])
