"""The proximal step under Adam, taken in Adam's own metric
(morph_net.keras._adam_metric.adam_preconditioners)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import morph_net.keras as mk
from morph_net.keras import _adam_metric
from morph_net.keras import budget
from morph_net.network_regularizers import flop_regularizer

from conftest import conv_bn_model


def _term_slope(reg, gamma):
  """w: d term / d |gamma_c| (the same for every channel of one BN)."""
  with tf.GradientTape() as tape:
    term = reg.get_regularization_term()
  return float(tape.gradient(term, gamma)[0])


def test_preconditioners_are_rms_over_root_capped():
  roots = [tf.constant([2.0, 1.0]), None, tf.constant([0.5, 0.0])]
  factors = _adam_metric.adam_preconditioners(roots, cap=10.0)
  rms = np.sqrt(np.mean([4.0, 1.0, 0.25, 0.0]))
  assert factors[1] is None
  np.testing.assert_allclose(factors[0].numpy(), [rms / 2.0, rms], rtol=1e-6)
  np.testing.assert_allclose(factors[2].numpy(), [rms / 0.5, 10.0],
                             rtol=1e-6)
  # No gradient seen anywhere yet: the decoupled step.
  zero = _adam_metric.adam_preconditioners([tf.zeros(3)])
  np.testing.assert_array_equal(zero[0].numpy(), np.ones(3))
  assert _adam_metric.adam_preconditioners([None, None]) == [None, None]


@pytest.mark.parametrize('wrap', [False, True])
def test_adam_step_divides_by_each_channel_s_root_second_moment(wrap):
  model = conv_bn_model((8, 8, 1), (4,), 3)
  gamma = model.get_layer('bn1').gamma
  gamma.assign([0.5, 0.5, 0.5, 0.5])
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  w = _term_slope(reg, gamma)
  adam = keras.optimizers.Adam(1e-3)
  adam.build(model.trainable_variables)
  adam.iterations.assign(100000)  # bias correction 1 - 0.999^t = 1
  index = adam._get_variable_index(gamma)  # pylint: disable=protected-access
  adam._velocities[index].assign([4e-6, 1e-6, 0.25e-6, 0.0])  # pylint: disable=protected-access
  optimizer = keras.optimizers.LossScaleOptimizer(adam) if wrap else adam
  prox = budget.ProximalStep(reg)
  shrinks = prox.apply(0.01 / w, optimizer)
  roots = np.array([2e-3, 1e-3, 0.5e-3, 0.0])
  rms = np.sqrt(np.mean(roots ** 2))
  factors = rms / np.maximum(roots, rms / _adam_metric.ADAM_METRIC_CAP)
  np.testing.assert_allclose(gamma.numpy(), 0.5 - 0.01 * factors, rtol=1e-5)
  np.testing.assert_allclose(shrinks[0].numpy(), 0.01 * factors,
                             rtol=1e-5)


def test_sgd_step_is_unchanged():
  model = conv_bn_model((8, 8, 1), (3,), 3)
  gamma = model.get_layer('bn1').gamma
  gamma.assign([0.5, 0.5, 0.5])
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  w = _term_slope(reg, gamma)
  sgd = keras.optimizers.SGD(1e-3)
  sgd.build(model.trainable_variables)
  budget.ProximalStep(reg).apply(0.01 / w, sgd)
  np.testing.assert_allclose(gamma.numpy(), [0.49] * 3, rtol=1e-5)


def _value_model():
  """x (2) -> identity Dense -> BN (no beta) -> sum: y_hat = g . x_hat.
  Only the two gammas train."""
  inputs = keras.Input((2,))
  h = keras.layers.Dense(2, use_bias=False, kernel_initializer='identity',
                         trainable=False, name='mix')(inputs)
  h = keras.layers.BatchNormalization(center=False, name='bn')(h)
  out = keras.layers.Dense(1, use_bias=False, kernel_initializer='ones',
                           trainable=False, name='out')(h)
  return keras.Model(inputs, out)


@pytest.mark.parametrize('strength_times_w', [0.8, 1.3])
def test_under_adam_what_survives_follows_value_not_the_strength(
    strength_times_w):
  """y = 3 x0 + 0.3 x1 + noise: channel 0 is worth 10x channel 1, and their
  costs are equal. With the L1 penalty at strength x w between the two
  values (in units of the gradient's spread), channel 1 goes and channel 0
  stays. The decoupled step (AdamW's) did neither: at 0.8 it left channel 1
  hovering off 0 (3.5e-4) and channel 0 at 1.47, at 1.3 it removed both.
  It balances the penalty against Adam's normalized step, which is near 1
  for any channel with a steady gradient, whatever the channel is worth."""
  keras.utils.set_random_seed(0)
  rng = np.random.RandomState(0)
  x = rng.normal(size=(4096, 2)).astype(np.float32)
  y = (3.0 * x[:, :1] + 0.3 * x[:, 1:] +
       rng.normal(size=(4096, 1))).astype(np.float32)
  model = _value_model()
  gamma = model.get_layer('bn').gamma
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  w = _term_slope(reg, gamma)
  trainer = mk.add_regularizer(model, reg, strength=strength_times_w / w,
                               exact_zeros=True, monitor=False)
  trainer.compile(keras.optimizers.Adam(0.01), 'mse')
  trainer.fit(x, y, batch_size=32, epochs=4, verbose=0)
  g = gamma.numpy()
  assert g[1] == 0.0, g
  assert g[0] > 1.0, g
