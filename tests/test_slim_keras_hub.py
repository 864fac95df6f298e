"""slim_model through layers with prunable sublayers (blocks).

Width rules (`register_width_rule(cls, sublayers=..., output=...)`) say how a
block's config sets its sublayers' widths; attention keeps whole heads, and
weight transfer copies the surviving heads / units / channels of every
sublayer. A transferred slim model computes the same function as the full
one when the removed parts contributed nothing (their value projection or
first MLP layer is zero), which is what the tests check.
"""

import keras
import numpy as np
import pytest

from conftest import benchmark
from morph_net import keras as morph_keras
from morph_net.keras import _structure
from morph_net.keras import _width_rules


def _heads_alive(width, head_size, heads):
  alive = np.zeros(width, bool)
  for h in heads:
    alive[h * head_size:(h + 1) * head_size] = True
  return alive


def _zero_dead_value_heads(mha, alive):
  """A head whose value projection is zero adds nothing to the output."""
  kernel, bias = mha.value_dense.get_weights()
  dead = ~alive.reshape(kernel.shape[1:])
  kernel[:, dead] = 0.0
  bias[dead] = 0.0
  mha.value_dense.set_weights([kernel, bias])


def _attention_model():
  inputs = keras.Input((5, 16))
  mha = keras.layers.MultiHeadAttention(num_heads=4, key_dim=4, name='mha')
  x = keras.layers.Add()([inputs, mha(inputs, inputs)])
  outputs = keras.layers.Dense(3, name='head')(
      keras.layers.GlobalAveragePooling1D()(x))
  return keras.Model(inputs, outputs), mha


def test_multi_head_attention_keeps_whole_heads_and_their_weights(tmp_path):
  keras.utils.set_random_seed(0)
  model, mha = _attention_model()
  keys = [k for k in _structure.Analysis(model).entries
          if k.split('/')[-1] in ('query', 'key', 'value')]
  assert len(keys) == 3
  alive = _heads_alive(16, 4, [0, 2])
  _zero_dead_value_heads(mha, alive)
  slim = morph_keras.slim_model(model, {k: alive for k in keys},
                                transfer_weights=True)
  new = slim.get_layer('mha')
  assert (new.num_heads, new.key_dim) == (2, 4)
  x = np.random.RandomState(1).normal(size=(2, 5, 16)).astype('float32')
  np.testing.assert_allclose(slim(x), model(x), rtol=1e-5, atol=1e-5)
  # Its config says 2 heads, so the slim model saves and loads as it is.
  slim.save(str(tmp_path / 'slim.keras'))
  loaded = keras.models.load_model(str(tmp_path / 'slim.keras'))
  np.testing.assert_allclose(loaded(x), slim(x), rtol=1e-6, atol=1e-6)
  assert morph_keras.structure_cost(model, {k: 8 for k in keys}) < (
      morph_keras.structure_cost(model, {}))


def test_multi_head_attention_counts_must_be_whole_heads():
  model, _ = _attention_model()
  keys = [k for k in _structure.Analysis(model).entries
          if k.split('/')[-1] in ('query', 'key', 'value')]
  with pytest.raises(ValueError, match='whole heads|multiple'):
    morph_keras.slim_model(model, {k: 6 for k in keys})


def test_expansion_keeps_attention_counts_in_whole_heads():
  model, _ = _attention_model()
  keys = [k for k in _structure.Analysis(model).entries
          if k.split('/')[-1] in ('query', 'key', 'value')]
  full = morph_keras.structure_cost(model, {})
  small = {k: 4 for k in keys}  # one head of 4
  for target in (0.6 * full, 0.8 * full):
    grown = morph_keras.expand_structure(model, small, target_cost=target)
    assert all(grown[k] % 4 == 0 for k in keys), grown
    assert morph_keras.structure_cost(model, grown) <= target
    slim = morph_keras.slim_model(model, grown)
    assert slim.get_layer('mha').num_heads == grown[keys[0]] // 4


class _Mlp(keras.layers.Layer):
  """A custom block: Dense up, Dense down, residual."""

  def __init__(self, hidden, width, **kwargs):
    super().__init__(**kwargs)
    self.hidden, self.width = hidden, width
    self.up = keras.layers.Dense(hidden, activation='relu', name='up')
    self.down = keras.layers.Dense(width, name='down')

  def call(self, x):
    return x + self.down(self.up(x))

  def get_config(self):
    return dict(super().get_config(), hidden=self.hidden, width=self.width)


def _mlp_model():
  inputs = keras.Input((6,))
  x = _Mlp(8, 6, name='mlp')(inputs)
  return keras.Model(inputs, keras.layers.Dense(2, name='head')(x))


def test_a_block_without_a_rule_is_narrowed_in_place_with_transfer():
  """No rule: the block keeps its class and config; its `up` sublayer is
  replaced by a narrower one holding the surviving units."""
  model = _mlp_model()
  alive = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
  up = model.get_layer('mlp').up
  kernel, bias = up.get_weights()
  kernel[:, ~alive], bias[~alive] = 0.0, 0.0  # dead units output relu(0)
  up.set_weights([kernel, bias])
  slim = morph_keras.slim_model(model, {'up': alive}, transfer_weights=True)
  block = slim.get_layer('mlp')
  assert isinstance(block, _Mlp) and block.hidden == 8  # its config
  assert block.up.units == 4 and block.down.kernel.shape == (4, 6)
  x = np.random.RandomState(0).normal(size=(3, 6)).astype('float32')
  np.testing.assert_allclose(slim(x), model(x), atol=1e-5)


def test_a_registered_block_rule_slims_and_transfers():
  model = _mlp_model()
  try:
    _width_rules.register_width_rule(_Mlp, sublayers={'up': 'hidden'},
                                     output='input')
    alive = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
    slim = morph_keras.slim_model(model, {'up': alive},
                                  transfer_weights=True)
  finally:
    _width_rules._BLOCKS.pop(_Mlp)  # pylint: disable=protected-access
  block = slim.get_layer('mlp')
  assert block.hidden == 4 and block.up.units == 4
  x = np.random.RandomState(0).normal(size=(3, 6)).astype('float32')
  kernel, bias = model.get_layer('mlp').up.get_weights()
  np.testing.assert_allclose(block.up.get_weights()[0], kernel[:, alive])
  np.testing.assert_allclose(block.up.get_weights()[1], bias[alive])
  assert slim(x).shape == (3, 2)


class _BrokenConfigMlp(_Mlp):
  """get_config reads an attribute that is never set (as keras-hub 0.32's
  DeiTEncoder does), and `scale` is kept under another name."""

  def __init__(self, hidden, width, scale=1.0, **kwargs):
    super().__init__(hidden, width, **kwargs)
    self._scale = scale

  def get_config(self):
    return dict(super().get_config(), scale=self.scale)


def test_a_block_whose_get_config_raises_is_rebuilt_with_a_warning():
  inputs = keras.Input((6,))
  x = _BrokenConfigMlp(8, 6, scale=2.0, name='mlp')(inputs)
  model = keras.Model(inputs, keras.layers.Dense(2, name='head')(x))
  try:
    _width_rules.register_width_rule(_BrokenConfigMlp,
                                     sublayers={'up': 'hidden'},
                                     output='input')
    with pytest.warns(RuntimeWarning, match=r'scale.*defaults'):
      slim = morph_keras.slim_model(model, {'up': 3})
  finally:
    _width_rules._BLOCKS.pop(_BrokenConfigMlp)  # pylint: disable=protected-access
  assert slim.get_layer('mlp').up.units == 3
  assert slim(np.zeros((1, 6), np.float32)).shape == (1, 2)


def test_einsum_channels_over_several_axes_shrink_by_whole_blocks():
  layer = keras.layers.EinsumDense('abc,cde->abde', output_shape=(None, 4, 2))
  config = layer.get_config()
  _width_rules.set_width(config, layer, 4)
  assert tuple(config['output_shape']) == (None, 2, 2)
  with pytest.raises(ValueError, match='multiple of 2'):
    _width_rules.set_width(layer.get_config(), layer, 3)


def test_tf_keras_models_get_a_plain_message_with_the_conversion():
  tf_keras = pytest.importorskip('tf_keras')
  model = tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,),
                                                     name='d')])
  with pytest.raises(NotImplementedError,
                     match='slimming supports Keras 3 models.*load_model'):
    morph_keras.slim_model(model, {})


def _label_vectors(zoo, model, seed):
  """Alive vectors for the halved structure's layers that respect the
  analysis' ties: one random choice per channel label (so whole heads),
  at least one channel alive per layer."""
  analysis = _structure.Analysis(model)
  keys = zoo.half_structure(model)
  chosen = np.random.RandomState(seed).rand(analysis.num_labels) < 0.5
  for key in keys:
    labels = analysis.out_labels[key][0]
    if not chosen[labels].any():
      chosen[labels[0]] = True
  return analysis, {k: chosen[analysis.out_labels[k][0]] for k in keys}


def _assert_slim_costs_structure(zoo, slim, model, vectors, data):
  """The slim model's independently counted FLOPs = structure_cost."""
  counts = {k: int(v.sum()) for k, v in vectors.items()}
  assert zoo.independent_counts(slim, data)[0] == pytest.approx(
      morph_keras.structure_cost(model, counts), rel=zoo.TOLERANCE)


def test_vit_transfer_keeps_surviving_heads_and_mlp_units():
  """A keras-hub ViT (nested custom layers, four levels deep) slimmed with
  transfer computes what the full model computes when the dropped heads'
  value projections and MLP units are zero."""
  pytest.importorskip('keras_hub')
  zoo = benchmark('keras_hub_zoo')
  keras.utils.set_random_seed(0)
  model, data, _ = zoo.vit()
  analysis = _structure.Analysis(model)
  vectors = {}
  for key in zoo.half_structure(model):
    layer = analysis.layer(key)
    width = analysis.width(key)
    if key.split('/')[-1] in ('query', 'key', 'value'):
      vectors[key] = _heads_alive(width, layer.kernel.shape[-1], [1])
    else:  # the MLP's first Dense: keep the even units
      vectors[key] = np.arange(width) % 2 == 0
      kernel, bias = layer.get_weights()
      kernel[:, ~vectors[key]] = 0.0
      bias[~vectors[key]] = 0.0
      layer.set_weights([kernel, bias])
  for key, alive in vectors.items():
    if key.endswith('/value'):
      mha = analysis.layer(key.rsplit('/', 1)[0] + '/query')
      kernel, bias = analysis.layer(key).get_weights()
      dead = ~alive.reshape(kernel.shape[1:])
      kernel[:, dead] = 0.0
      bias[dead] = 0.0
      analysis.layer(key).set_weights([kernel, bias])
      assert mha is not None
  slim = morph_keras.slim_model(model, vectors, transfer_weights=True)
  np.testing.assert_allclose(slim(data, training=False),
                             model(data, training=False), rtol=1e-4,
                             atol=1e-5)
  _assert_slim_costs_structure(zoo, slim, model, vectors, data)


@pytest.mark.parametrize('name', ['bert', 'mobilenetv3'])
def test_keras_hub_backbones_slim_with_transfer(name):
  """Alive vectors that respect the analysis' ties (one random choice per
  channel label, so whole heads) transfer through every nested layer."""
  pytest.importorskip('keras_hub')
  zoo = benchmark('keras_hub_zoo')
  keras.utils.set_random_seed(0)
  model, data, _ = zoo.BUILDERS[name]()
  analysis, vectors = _label_vectors(zoo, model, seed=1)
  slim = morph_keras.slim_model(model, vectors, transfer_weights=True)
  slim(data, training=False)  # it runs
  _assert_slim_costs_structure(zoo, slim, model, vectors, data)


def _zero_dead_outputs(layer, alive):
  """Zeroes the kernel columns and bias entries of a Dense / EinsumDense
  whose (flattened) output channels are dead."""
  weights = layer.get_weights()
  kernel = weights[0].reshape(weights[0].shape[0], -1)
  kernel[:, ~alive] = 0.0
  weights[0] = kernel.reshape(weights[0].shape)
  for i in range(1, len(weights)):
    bias = weights[i].reshape(-1)
    bias[~alive] = 0.0
    weights[i] = bias.reshape(weights[i].shape)
  layer.set_weights(weights)


@pytest.mark.parametrize('name', ['qwen3', 'mistral', 'llama', 'qwen', 'phi3'])
def test_grouped_query_decoders_slim_by_whole_heads_with_transfer(name):
  """Grouped-query decoders (grouped-query attention, rotary embeddings, a
  gated MLP): alive vectors chosen per channel label (a key/value head and
  its query heads are one label set) slim to a model that computes the full
  model's outputs when the dropped heads and units were zero, and whose
  FLOPs equal structure_cost."""
  pytest.importorskip('keras_hub')
  zoo = benchmark('keras_hub_zoo')
  keras.utils.set_random_seed(0)
  model, data, _ = zoo.MORE[name]()
  analysis, vectors = _label_vectors(zoo, model, seed=3)
  for key, alive in vectors.items():
    _zero_dead_outputs(analysis.layer(key), alive)
  slim = morph_keras.slim_model(model, vectors, transfer_weights=True)
  # The query heads per key/value head stay whole.
  queries = {k: int(v.sum()) for k, v in vectors.items()
             if k.endswith('query')}
  values = {k: int(v.sum()) for k, v in vectors.items()
            if k.endswith('value')}
  assert len(queries) == len(values) == 2
  assert all(q == 2 * v for q, v in zip(queries.values(), values.values()))
  assert sum(queries.values()) < 2 * 16
  np.testing.assert_allclose(slim(data, training=False),
                             model(data, training=False), rtol=1e-4,
                             atol=1e-5)
  _assert_slim_costs_structure(zoo, slim, model, vectors, data)
