"""transfer_weights keeps the channels the analysis says survive, wherever
the slim plan's own walk cannot see which ones they are (found by probing:
each case below transferred the first n channels, or the producer's, and
the slim model computed other outputs)."""

import warnings

import keras
import numpy as np
import pytest

import morph_net.keras as mk


@keras.saving.register_keras_serializable('test_transfer_order')
class _ConvBlock(keras.layers.Layer):
  """A custom layer without a width rule: narrowed in place."""

  def __init__(self, filters=4, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.conv = keras.layers.Conv2D(filters, 3, padding='same', name='conv')

  def call(self, x):
    return keras.ops.relu(self.conv(x))

  def get_config(self):
    return dict(super().get_config(), filters=self.filters)


def _kill(conv, dead):
  """Zeroes output channels `dead` of a conv (kernel and bias)."""
  kernel, bias = conv.get_weights()
  kernel[..., dead], bias[dead] = 0.0, 0.0
  conv.set_weights([kernel, bias])


def _distinct_bn(bn, dead=()):
  """Per-channel values that differ, so a wrong slice shows; the dead
  channels' gamma and beta zeroed."""
  c = bn.gamma.shape[0]
  gamma = np.arange(1.0, c + 1, dtype=np.float32)
  beta = np.linspace(0.1, 0.4, c).astype(np.float32)
  gamma[list(dead)], beta[list(dead)] = 0.0, 0.0
  bn.set_weights([gamma, beta, np.linspace(0.5, 0.8, c).astype(np.float32),
                  np.linspace(1.0, 2.5, c).astype(np.float32)])


def _assert_same_outputs(full, slim, shape):
  x = np.random.RandomState(0).normal(size=(2,) + shape).astype('float32')
  np.testing.assert_allclose(np.asarray(slim(x)), np.asarray(full(x)),
                             atol=1e-5)


@pytest.mark.parametrize('kind', ['custom block', 'TimeDistributed'])
def test_layers_after_a_layer_narrowed_in_place_keep_the_alive_channels(kind):
  keras.utils.set_random_seed(0)
  if kind == 'custom block':
    shape = (4, 4, 2)
    inputs = keras.Input(shape)
    block = _ConvBlock(4, name='blk')
    x, conv = block(inputs), block.conv
    pool = keras.layers.GlobalAveragePooling2D()
  else:
    shape = (3, 4, 4, 2)
    inputs = keras.Input(shape)
    block = keras.layers.TimeDistributed(
        keras.layers.Conv2D(4, 3, padding='same', name='conv'), name='td')
    x, conv = keras.layers.ReLU()(block(inputs)), block.layer
    pool = keras.layers.GlobalAveragePooling3D()
  x = keras.layers.BatchNormalization(name='bn')(x)
  model = keras.Model(inputs, keras.layers.Dense(2, name='out')(pool(x)))
  _kill(conv, [1])
  _distinct_bn(model.get_layer('bn'), dead=[1])
  key = [k for k in mk.analysis_of(model).entries if k.endswith('conv')][0]
  alive = np.array([True, False, True, True])
  slim = mk.slim_model(model, {key: alive}, transfer_weights=True)
  # The BatchNorm after the block keeps channels 0, 2, 3 (it took 0, 1, 2).
  np.testing.assert_array_equal(slim.get_layer('bn').get_weights()[2],
                                model.get_layer('bn').get_weights()[2][alive])
  np.testing.assert_array_equal(slim.get_layer('out').get_weights()[0],
                                model.get_layer('out').get_weights()[0][alive])
  _assert_same_outputs(model, slim, shape)


@pytest.mark.parametrize('dead', [1, 4])
def test_a_lambda_reversing_the_channels_transfers_the_reversed_rows(dead):
  keras.utils.set_random_seed(0)
  inputs = keras.Input((3, 3, 2))
  x = keras.layers.Conv2D(6, 1, name='c1')(inputs)
  x = keras.layers.Lambda(lambda t: t[..., ::-1], name='rev')(x)
  x = keras.layers.Conv2D(3, 1, name='c2')(x)
  model = keras.Model(inputs, keras.layers.Dense(2, name='out')(
      keras.layers.GlobalAveragePooling2D()(x)))
  _kill(model.get_layer('c1'), [dead])
  alive = np.ones(6, bool)
  alive[dead] = False
  slim = mk.slim_model(model, {'c1': alive}, transfer_weights=True)
  rows = [p for p in range(6) if 5 - p != dead]  # position p holds 5 - p
  np.testing.assert_array_equal(
      slim.get_layer('c2').get_weights()[0],
      model.get_layer('c2').get_weights()[0][:, :, rows, :])
  _assert_same_outputs(model, slim, (3, 3, 2))


def test_a_roll_of_pruned_channels_refuses_the_transfer():
  """Rolled over 5 channels instead of 6, the survivors land in another
  order than in the full model: no slice of weights is right."""
  keras.utils.set_random_seed(0)
  inputs = keras.Input((3, 3, 2))
  x = keras.layers.Conv2D(6, 1, name='c1')(inputs)
  x = keras.layers.Lambda(lambda t: keras.ops.roll(t, 2, axis=-1),
                          name='roll')(x)
  x = keras.layers.Conv2D(3, 1, name='c2')(x)
  model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
  alive = np.array([1, 1, 1, 1, 0, 1], bool)
  with pytest.raises(NotImplementedError, match=r"roll.*\(Roll\).*without "
                     'transfer_weights'):
    mk.slim_model(model, {'c1': alive}, transfer_weights=True)
  slim = mk.slim_model(model, {'c1': alive})  # fresh weights: fine
  assert slim.get_layer('c1').filters == 5
  # A roll along space moves no channel: transferred.
  inputs = keras.Input((3, 3, 2))
  x = keras.layers.Conv2D(6, 1, name='c1')(inputs)
  x = keras.layers.Lambda(lambda t: keras.ops.roll(t, 1, axis=1))(x)
  spatial = keras.Model(inputs, keras.layers.Conv2D(3, 1, name='c2')(x))
  _kill(spatial.get_layer('c1'), [4])
  _assert_same_outputs(spatial, mk.slim_model(spatial, {'c1': alive},
                                              transfer_weights=True),
                       (3, 3, 2))


def _normed(norm):
  keras.utils.set_random_seed(0)
  inputs = keras.Input((4, 4, 2))
  x = keras.layers.Conv2D(4, 1, name='c1')(inputs)
  x = norm(x)
  x = keras.layers.Conv2D(3, 1, name='c2')(x)
  return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


@pytest.mark.parametrize('norm', [
    lambda: keras.layers.LayerNormalization(name='ln'),
    lambda: keras.layers.Softmax(name='softmax'),
    lambda: keras.layers.Lambda(
        lambda t: t - keras.ops.mean(t, axis=-1, keepdims=True),
        name='center')])
def test_a_mean_or_softmax_over_pruned_channels_is_warned(norm):
  """Over fewer channels a LayerNorm's statistics (or a softmax's sum)
  change even where the pruned channel was zero: the slim model's outputs
  differ, and slim_model says so."""
  model = _normed(norm())
  _kill(model.get_layer('c1'), [1])
  alive = np.array([1, 0, 1, 1], bool)
  with pytest.warns(UserWarning, match='over fewer channels'):
    slim = mk.slim_model(model, {'c1': alive}, transfer_weights=True)
  x = np.random.RandomState(0).normal(size=(2, 4, 4, 2)).astype('float32')
  assert np.abs(np.asarray(slim(x)) - np.asarray(model(x))).max() > 1e-3


@pytest.mark.parametrize('norm', [
    lambda: keras.layers.UnitNormalization(name='unit'),
    lambda: keras.layers.ReLU(name='relu')])
def test_channelwise_layers_and_an_l2_norm_transfer_without_a_warning(norm):
  model = _normed(norm())
  _kill(model.get_layer('c1'), [1])
  alive = np.array([1, 0, 1, 1], bool)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    slim = mk.slim_model(model, {'c1': alive}, transfer_weights=True)
  _assert_same_outputs(model, slim, (4, 4, 2))
