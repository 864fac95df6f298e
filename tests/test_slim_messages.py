"""Clear answers where slimming used to fail obscurely or say nothing."""

import warnings

import keras
import numpy as np
import pytest

import morph_net.keras as mk
from morph_net.framework import errors
from morph_net.tools import analyze

L = keras.layers


def _mlp():
  inputs = keras.Input((4,))
  hidden = L.Dense(8, name='hidden')(inputs)
  return keras.Model(inputs, L.Dense(2, name='out')(hidden))


def test_a_true_count_is_refused_with_what_to_give():
  with pytest.raises(ValueError, match=r"'hidden': True is neither a count "
                     r'nor an alive vector.*boolean vector of its 8'):
    mk.slim_model(_mlp(), {'hidden': True})


def test_expand_warns_when_it_cannot_reach_its_target():
  model = _mlp()
  full = mk.structure_cost(model, {})
  with pytest.warns(RuntimeWarning, match='0 channels.*nothing to scale'):
    counts = mk.expand_structure(model, {'hidden': 0}, target_cost=full)
  assert counts == {'hidden': 0}
  # A reachable target lands within 2% and says nothing.
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    counts = mk.expand_structure(model, {'hidden': 3}, target_cost=0.5 * full)
  assert 0.98 * 0.5 * full <= mk.structure_cost(model, counts) <= 0.5 * full


def test_expand_says_a_short_landing_upward_is_granularity():
  # FLOPs = 12 h; 71 lies between h = 5 (60) and h = 6 (72). The warning
  # said the counts "cannot grow further" whenever they grew at all.
  with pytest.warns(RuntimeWarning, match='next step up') as caught:
    counts = mk.expand_structure(_mlp(), {'hidden': 1}, target_cost=71)
  assert counts == {'hidden': 5}
  assert not any('cannot grow' in str(w.message) for w in caught)


def test_a_lambda_layer_slims_without_unsafe_deserialization():
  inputs = keras.Input((4,))
  x = L.Dense(8, name='hidden')(inputs)
  x = L.Lambda(lambda t: t * 2.0, name='double')(x)
  model = keras.Model(inputs, L.Dense(2, name='out')(x))
  slim = mk.slim_model(model, {'hidden': 3})
  assert slim.get_layer('double').output.shape[-1] == 3
  assert analyze.analyze(slim).flops == mk.structure_cost(model,
                                                          {'hidden': 3})
  x = np.ones((2, 4), 'float32')
  assert slim(x).shape == (2, 2)


def test_channels_first_models_are_refused_naming_the_layer():
  inputs = keras.Input((3, 8, 8))
  x = L.Conv2D(4, 3, data_format='channels_first', name='cf')(inputs)
  model = keras.Model(inputs, L.Flatten()(x))
  with pytest.raises(errors.UnsupportedOpError,
                     match="'cf'.*channels_first.*channels_last"):
    mk.structure_cost(model, {})


def _embedding_stream():
  """Token ids -> Embedding -> LayerNorm -> + Dense branch -> LayerNorm ->
  pooled -> Dense 'head': a residual stream started by a table."""
  ids = keras.Input((6,), dtype='int32')
  stream = keras.layers.LayerNormalization(name='ln0')(
      keras.layers.Embedding(20, 8, name='table')(ids))
  branch = keras.layers.Dense(8, name='branch')(
      keras.layers.Dense(16, activation='relu', name='inner')(stream))
  x = keras.layers.LayerNormalization(name='ln1')(
      keras.layers.Add()([stream, branch]))
  pooled = keras.layers.GlobalAveragePooling1D()(x)
  return keras.Model(ids, keras.layers.Dense(3, name='head')(pooled))


def test_a_stream_started_by_an_embedding_keeps_its_width():
  """slim_model narrows no embedding table, so the layers adding into its
  stream are fixed like the data's: not regularized, refused by name, and
  a regularizer's structure leaves them whole (it built a model whose
  residual add failed, [.., 12] vs [.., 16], on keras-hub's BERT)."""
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
  model = _embedding_stream()
  with pytest.raises(ValueError, match='embedding lookup'):
    mk.slim_model(model, {'branch': 6})
  reg = flop_regularizer.GroupLassoFlopsRegularizer(model, 1e-3)
  for name in ('branch', 'inner'):  # both lose half their channels
    kernel = model.get_layer(name).kernel
    value = kernel.numpy()
    value[:, ::2] = 0.0
    kernel.assign(value)
  slim = mk.slim_model(model, reg)
  assert slim.get_layer('inner').units == 8  # the branch's inside: pruned
  assert slim.get_layer('branch').units == 8  # the stream: whole
  out = slim.predict(np.zeros((2, 6), 'int32'), verbose=0)
  assert out.shape == (2, 3)


class HeldSublayers(keras.Model):
  """stem -> a -> b -> fc, with a and b held where `mode` says."""

  def __init__(self, mode='attr', keep_mode=True, **kwargs):
    super().__init__(**kwargs)
    self.mode, self._keep_mode = mode, keep_mode
    self.stem = L.Conv2D(6, 3, padding='same', name='stem')
    a = L.Conv2D(6, 3, padding='same', name='a')
    b = L.Conv2D(5, 3, padding='same', name='b')
    if mode == 'attr':
      self.a, self.b = a, b
    elif mode == 'list':
      self.convs = [a, b]
    else:
      self.convs = {'a': a, 'b': b}
    self.pool = L.GlobalAveragePooling2D()
    self.fc = L.Dense(3, name='fc')

  def call(self, x):
    if self.mode == 'attr':
      a, b = self.a, self.b
    elif self.mode == 'list':
      a, b = self.convs
    else:
      a, b = self.convs['a'], self.convs['b']
    return self.fc(self.pool(b(a(self.stem(x)))))

  def get_config(self):
    config = super().get_config()
    if self._keep_mode:
      config['mode'] = self.mode
    return config


def _held(mode, keep_mode=True):
  keras.utils.set_random_seed(0)
  model = HeldSublayers(mode, keep_mode)
  model(np.zeros((1, 8, 8, 3), 'float32'))
  kernel, bias = model.stem.get_weights()
  kernel[..., 4:], bias[4:] = 0.0, 0.0  # stem channels 4, 5 are dead
  model.stem.set_weights([kernel, bias])
  return model


@pytest.mark.parametrize('mode', ['attr', 'list'])
def test_a_subclassed_model_transfers_what_it_holds_in_attributes_or_lists(
    mode):
  model = _held(mode)
  x = np.random.RandomState(0).rand(2, 8, 8, 3).astype('float32')
  slim = mk.slim_model(model, {'stem': np.arange(6) < 4},
                       transfer_weights=True)
  np.testing.assert_allclose(slim(x), model(x), atol=1e-5)


def test_sublayers_in_a_dict_are_refused_not_reinitialized():
  # They were rebuilt fresh and random, silently, with transfer_weights.
  with pytest.raises(NotImplementedError,
                     match=r"'a', 'b' in a container slim_model does not"):
    mk.slim_model(_held('dict'), {'stem': np.arange(6) < 4},
                  transfer_weights=True)


def test_a_config_that_does_not_rebuild_the_model_is_refused():
  # Without 'mode' in its config the copy held a and b as attributes and
  # ran them fresh and random, silently.
  with pytest.raises(NotImplementedError,
                     match=r'built again from its config.*convs\[0\]'):
    mk.slim_model(_held('list', keep_mode=False),
                  {'stem': np.arange(6) < 4}, transfer_weights=True)


def _prelu_net(shared_axes):
  inputs = keras.Input((6, 6, 3))
  x = L.Conv2D(8, 3, padding='same', name='c1')(inputs)
  x = L.PReLU(shared_axes=shared_axes, name='prelu',
              alpha_initializer=keras.initializers.RandomUniform(0.1, 0.9))(x)
  x = L.Conv2D(4, 3, name='c2')(x)
  return keras.Model(inputs, L.Dense(3, name='fc')(
      L.GlobalAveragePooling2D()(x)))


def test_a_prelu_with_one_alpha_a_channel_slims_and_transfers():
  keras.utils.set_random_seed(0)
  model = _prelu_net([1, 2])  # alpha (1, 1, 8): a channel vector
  kernel, bias = model.get_layer('c1').get_weights()
  kernel[..., 4:], bias[4:] = 0.0, 0.0
  model.get_layer('c1').set_weights([kernel, bias])
  slim = mk.slim_model(model, {'c1': np.arange(8) < 4},
                       transfer_weights=True)
  assert slim.get_layer('prelu').get_weights()[0].shape == (1, 1, 4)
  x = np.random.RandomState(1).rand(2, 6, 6, 3).astype('float32')
  np.testing.assert_allclose(slim(x), model(x), atol=1e-5)


def test_a_prelu_with_an_alpha_per_position_is_refused_by_name():
  with pytest.raises(NotImplementedError, match=r"'prelu' \(PReLU\)"):
    mk.slim_model(_prelu_net(None), {'c1': 4})
