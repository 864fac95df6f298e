"""Families validate their settings up front; GroupLasso reads multi-axis
kernels; layer keys follow the innermost owner of each weight."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net import framework
from morph_net.network_regularizers import families
from morph_net.op_regularizers import group_lasso_regularizer

L = keras.layers


@pytest.mark.parametrize('make', [
    lambda: families.gamma(float('nan')),
    lambda: families.group_lasso(-1.0),
    lambda: families.logistic_sigmoid(alive_threshold=1.5),
])
def test_bad_thresholds_fail_when_the_family_is_made(make):
  with pytest.raises(ValueError, match='threshold'):
    make()


def test_group_lasso_norms_of_a_heads_kernel_flatten_heads_and_dims():
  kernel = np.zeros([4, 2, 3], np.float32)  # [C_in, heads, head_dim]
  kernel[:, 1, 2] = 2.0
  reg = group_lasso_regularizer.GroupLassoRegularizer(
      tf.constant(kernel), 0.1, out_axis=(-2, -1))
  norms = reg.regularization_vector.numpy()
  assert norms.shape == (6,)
  assert norms[5] == pytest.approx(2.0)  # head 1, dim 2 -> channel 1*3+2
  assert np.all(norms[:5] < 1e-6)
  assert group_lasso_regularizer.GroupLassoRegularizer.num_channels(
      tf.constant(kernel), (0.1, 0.0, (-2, -1))) == 6


def test_a_layer_reached_through_two_parents_is_keyed_by_itself():
  inputs = keras.Input((4,))
  x = L.Dense(8, name='d1')(inputs)
  encoder = keras.Model(inputs, L.Dense(6, name='d2')(x), name='encoder')
  # A second functional model over the encoder's layers (as keras-hub's
  # DeepLabV3 does with its image encoder's pyramid outputs).
  features = keras.Model(encoder.inputs, encoder.layers[1].output,
                         name='features')

  class Wrapper(keras.Model):

    def __init__(self):
      super().__init__()
      self.features = features
      self.encoder = encoder
      self.head = L.Dense(2, name='head')

    def call(self, x):
      return self.head(self.features(x))

  model = Wrapper()
  model(np.zeros([1, 4], np.float32))
  manager = framework.OpRegularizerManager(model)
  assert list(manager.layers()) == ['d1', 'head']
