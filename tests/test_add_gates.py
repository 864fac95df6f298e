"""add_gates: FiGS gates on any functional model in one call."""

import keras
import numpy as np
import pytest

import morph_net.keras as mk
from morph_net.network_regularizers import flop_regularizer
from morph_net.probabilistic_gating import activation_gating

L = keras.layers


def _resnet():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3))
  x = L.Conv2D(8, 3, padding='same', name='stem')(inputs)
  x = L.ReLU()(L.BatchNormalization(name='stem_bn')(x))
  y = L.Conv2D(16, 3, padding='same', name='c1')(x)
  y = L.ReLU()(L.BatchNormalization(name='c1_bn')(y))
  y = L.Conv2D(8, 3, padding='same', name='c2')(y)
  x = L.ReLU()(L.Add()([x, L.BatchNormalization(name='c2_bn')(y)]))
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(3, name='out')(x))


def _train_a_little(model):
  x = np.random.RandomState(0).normal(size=(32, 8, 8, 3)).astype('float32')
  model.compile('adam', keras.losses.SparseCategoricalCrossentropy(
      from_logits=True))
  model.fit(x, np.arange(32) % 3, epochs=1, verbose=0)
  return x


def test_gated_copy_computes_the_same_outputs_and_keeps_the_original():
  model = _resnet()
  x = _train_a_little(model)  # trained: its weights are copied
  gated = mk.add_gates(model)
  names = sorted(l.name for l in gated.layers
                 if isinstance(l, activation_gating.LogisticSigmoidGating))
  # After each prunable layer's BatchNorm + ReLU; c2's channels are tied to
  # the residual sum (gated through the stem), out is the task's width.
  assert names == ['c1_gate', 'c2_gate', 'stem_gate']
  np.testing.assert_allclose(gated(x, training=False), model(x,
                                                             training=False),
                             atol=1e-6)
  assert all(not isinstance(l, activation_gating.LogisticSigmoidGating)
             for l in model.layers)


def test_gates_regularize_and_fold_away_at_slim_time():
  model = _resnet()
  gated = mk.add_gates(model, layers=['c1'])
  assert [l.name for l in gated.layers if 'gate' in l.name] == ['c1_gate']
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(
      gated, regularize_on_mask=False)
  gate = gated.get_layer('c1_gate')
  logits = gate.mask_logits.numpy()
  logits[1:7] = -3.0  # 6 of 16 closed (a gate keeps its first channel)
  gate.mask_logits.assign(logits)
  slim = mk.slim_model(gated, reg)
  assert slim.get_layer('c1').filters == 10
  assert not any('gate' in l.name for l in slim.layers)
  assert mk.structure_cost(slim, {}) == mk.structure_cost(gated, reg)


def test_bad_requests_are_refused():
  model = _resnet()
  with pytest.raises(ValueError, match="'out'"):
    mk.add_gates(model, layers=['out'])
  with pytest.raises(ValueError, match='log_odds_init'):
    mk.add_gates(model, log_odds_init=-1.0)

  class Sub(keras.Model):

    def call(self, x):
      return x

  with pytest.raises(NotImplementedError, match='gated_relu_activation'):
    mk.add_gates(Sub())


def test_soft_masks_at_inference_are_refused():
  """They would multiply every open channel by sigmoid(log_odds_init)."""
  with pytest.raises(ValueError, match='soft_mask_for_inference'):
    mk.add_gates(_resnet(), soft_mask_for_inference=True)


def test_a_gated_model_gets_no_second_gate():
  gated = mk.add_gates(_resnet())
  again = mk.add_gates(gated)
  assert sorted(l.name for l in again.layers if 'gate' in l.name) == [
      'c1_gate', 'c2_gate', 'stem_gate']


def _mlp_with(middle):
  inputs = keras.Input((4,))
  h = L.Dense(8, activation='relu', name='d1')(inputs)
  return keras.Model(inputs, L.Dense(2, name='out')(middle(h)))


def test_layers_it_cannot_gate_are_named_never_skipped_silently():
  block_in = keras.Input((8,))
  block = keras.Model(block_in, L.Dense(8, activation='relu', name='inner')(
      block_in), name='block')
  nested = _mlp_with(block)
  with pytest.raises(ValueError, match="'inner' cannot be gated: it is "
                     'inside a nested model'):
    mk.add_gates(nested, layers=['inner'])
  with pytest.warns(UserWarning, match="no gate for 'inner'"):
    gated = mk.add_gates(nested)
  assert [l.name for l in gated.layers if 'gate' in l.name] == ['d1_gate']

  inputs = keras.Input((4,))
  shared = L.Dense(8, activation='relu', name='shared')
  h = L.Add()([shared(inputs), shared(L.Rescaling(2.0)(inputs))])
  twice = keras.Model(inputs, L.Dense(2, name='out')(h))
  with pytest.raises(ValueError, match="'shared' cannot be gated: it is "
                     'called 2 times'):
    mk.add_gates(twice, layers=['shared'])
  with pytest.warns(UserWarning, match="no gate for 'shared'"):
    mk.add_gates(twice)


def test_a_lambda_layer_is_copied_without_unsafe_deserialization():
  model = _mlp_with(L.Lambda(lambda t: t * 0.5, name='half'))
  gated = mk.add_gates(model)
  x = np.ones((2, 4), 'float32')
  np.testing.assert_allclose(gated(x), model(x), atol=1e-6)
  assert gated.get_layer('d1_gate') is not None
