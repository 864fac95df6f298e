"""Layers without sublayers whose config holds their input's width (a
per-channel weight built from a config field, e.g. ConvNeXt's LayerScale):
a rule's `input_field` sets that field from the slim input width, the
weight is sliced to the surviving channels, and without a rule the error
names the layer, the field and the rule to register."""

import keras
import numpy as np
import pytest

import morph_net.keras as mk
from morph_net.keras import _width_rules
from morph_net.tools import analyze


class ChannelScale(keras.layers.Layer):
  """x * w, w of shape [dim] built from the config (not the input)."""

  def __init__(self, dim, **kwargs):
    super().__init__(**kwargs)
    self.dim = dim
    self.w = self.add_weight(shape=(dim,), initializer='ones', name='w')

  def call(self, x):
    return x * self.w

  def get_config(self):
    return dict(super().get_config(), dim=self.dim)


def _model():
  inputs = keras.Input((6, 6, 3))
  x = keras.layers.Conv2D(8, 3, padding='same', name='c1')(inputs)
  x = ChannelScale(8, name='scale')(x)
  x = keras.layers.Conv2D(4, 1, name='c2')(x)
  model = keras.Model(inputs, x)
  model.get_layer('scale').w.assign(np.arange(8, dtype=np.float32))
  return model


@pytest.fixture
def unregister():
  yield
  key = '%s.%s' % (ChannelScale.__module__, ChannelScale.__qualname__)
  _width_rules._BLOCKS.pop(key, None)  # pylint: disable=protected-access


def test_without_a_rule_the_error_names_the_field_and_the_rule():
  with pytest.raises(NotImplementedError) as info:
    mk.slim_model(_model(), {'c1': 5})
  message = str(info.value)
  for part in ("'scale'", 'ChannelScale', 'new input width 5', 'was 8',
               'dim=8', "input_field='dim'", 'register_width_rule'):
    assert part in message, (part, message)


def test_with_the_rule_the_field_follows_and_the_weight_is_sliced(unregister):
  del unregister
  mk.register_width_rule(
      '%s.%s' % (ChannelScale.__module__, ChannelScale.__qualname__),
      input_field='dim', output='input')
  model = _model()
  alive = np.array([1, 0, 1, 1, 0, 0, 1, 1], bool)
  slim = mk.slim_model(model, {'c1': alive}, transfer_weights=True)
  scale = slim.get_layer('scale')
  assert scale.dim == 5
  np.testing.assert_array_equal(scale.w.numpy(), [0, 2, 3, 6, 7])
  assert analyze.analyze(slim).flops == mk.structure_cost(model, {'c1': 5})
  data = np.random.RandomState(0).rand(2, 6, 6, 3).astype(np.float32)
  # The slim model computes what the seed computes on the kept channels.
  full = keras.Model(model.inputs, model.get_layer('scale').output)(data)
  kept = keras.Model(slim.inputs, scale.output)(data)
  np.testing.assert_allclose(np.asarray(kept),
                             np.asarray(full)[..., alive], rtol=1e-5,
                             atol=1e-6)


def test_convnext_layer_scale_follows_the_stream():
  """ConvNeXt's stage-0 residual stream 96 -> 48: every LayerScale on it
  takes projection_dim 48 and its surviving gammas; costs agree."""
  model = keras.applications.ConvNeXtTiny(weights=None,
                                          input_shape=(32, 32, 3))
  scale = model.get_layer('convnext_tiny_stage_0_block_0_layer_scale')
  scale.gamma.assign(np.arange(96, dtype=np.float32))
  analysis = mk.analysis_of(model)
  keep = np.zeros(96, bool)
  keep[::2] = True
  stream = ['convnext_tiny_stem_conv'] + [
      'convnext_tiny_stage_0_block_%d_pointwise_conv_2' % i for i in range(3)]
  # The stream's LayerNorms normalize over fewer channels: warned.
  with pytest.warns(UserWarning, match='LayerNormalization'):
    slim = mk.slim_model(analysis, {k: keep for k in stream},
                         transfer_weights=True)
  new = slim.get_layer('convnext_tiny_stage_0_block_0_layer_scale')
  assert new.get_config()['projection_dim'] == 48
  np.testing.assert_array_equal(new.gamma.numpy(), np.arange(0, 96, 2))
  assert analyze.analyze(slim).flops == mk.structure_cost(
      analysis, {k: 48 for k in stream})
