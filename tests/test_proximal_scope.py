"""The proximal step (exact zeros) moves what the optimizer moves, when it
moves it (found by probing): not a frozen layer's weights, not on the
micro-steps of gradient accumulation, not on a step the loss-scale
optimizer skipped."""

import keras
import numpy as np
import pytest

from conftest import conv_bn_model
import morph_net.keras as mk
from morph_net.network_regularizers import flop_regularizer


def _cnn(seed=0):
  """conv1 (4) -> bn1 -> conv2 (6) -> bn2 -> GAP -> Dense 3, 8x8x2."""
  return conv_bn_model((8, 8, 2), (4, 6), 3, seed=seed)


def _data(n=32):
  rng = np.random.RandomState(0)
  return rng.rand(n, 8, 8, 2).astype('float32'), rng.randint(0, 3, n)


def _loss():
  return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.mark.parametrize('family,layer,weight', [
    ('gamma', 'bn1', 'gamma'), ('grouplasso', 'conv1', 'kernel')])
def test_a_frozen_layer_is_left_alone(family, layer, weight):
  model = _cnn()
  model.get_layer(layer).trainable = False
  reg = (flop_regularizer.GammaFlopsRegularizer(model, 0.05)
         if family == 'gamma' else
         flop_regularizer.GroupLassoFlopsRegularizer(model, 0.01))
  before = getattr(model.get_layer(layer), weight).numpy().copy()
  trainer = mk.add_regularizer(model, reg, monitor=False,
                               target_cost=0.3 * float(reg.get_cost()))
  trainer.compile(keras.optimizers.SGD(0.1), _loss())
  x, y = _data()
  trainer.fit(x, y, epochs=4, batch_size=8, verbose=0)
  np.testing.assert_array_equal(
      getattr(model.get_layer(layer), weight).numpy(), before)


def _penalty_drop(accumulate):
  """bn1's gammas: drop with the penalty minus drop without, after 2
  optimizer updates (2 batches of 16, or 8 micro-batches of 4 with
  accumulation over 4)."""
  drops = []
  for strength in (0.0, 2e-6):
    model = _cnn()
    reg = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
    trainer = mk.add_regularizer(model, reg, strength=strength,
                                 exact_zeros=True, monitor=False)
    trainer.compile(keras.optimizers.SGD(
        0.01, gradient_accumulation_steps=4 if accumulate else None),
                    _loss())
    start = model.get_layer('bn1').gamma.numpy().copy()
    x, y = _data()
    trainer.fit(x, y, epochs=1, batch_size=4 if accumulate else 16,
                shuffle=False, verbose=0)
    assert int(trainer.optimizer.iterations.numpy()) == 2
    drops.append(start - model.get_layer('bn1').gamma.numpy())
  return drops[1] - drops[0]


def test_gradient_accumulation_takes_one_proximal_step_per_update():
  plain = _penalty_drop(False)
  assert np.all(plain > 0)
  np.testing.assert_allclose(_penalty_drop(True), plain, rtol=1e-3)


def test_a_step_the_loss_scale_optimizer_skips_shrinks_nothing():
  keras.mixed_precision.set_global_policy('mixed_float16')
  try:
    model = _cnn()
    reg = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
    trainer = mk.add_regularizer(model, reg, strength=1e-4,
                                 exact_zeros=True, monitor=False)
    # A loss scale so large that the float16 gradients overflow.
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.01), initial_scale=2.0 ** 60)
    trainer.compile(optimizer, _loss())
    gamma = model.get_layer('bn1').gamma.numpy().copy()
    kernel = model.get_layer('conv1').kernel.numpy().copy()
    x, y = _data(8)
    trainer.fit(x, y, epochs=1, batch_size=8, verbose=0)
  finally:
    keras.mixed_precision.set_global_policy('float32')
  assert int(optimizer.iterations.numpy()) == 0  # skipped
  np.testing.assert_array_equal(model.get_layer('conv1').kernel.numpy(),
                                kernel)
  np.testing.assert_array_equal(model.get_layer('bn1').gamma.numpy(), gamma)
