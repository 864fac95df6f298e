"""slim_model on custom layers with no width rule: narrowed in place.

A custom layer whose `call` chains its sublayers is copied, and each of its
weighted sublayers is replaced by a narrower copy; its own code runs
unchanged. The slim model's FLOPs by an independent forward-pass count equal
`structure_cost` and `analyze(slim)`; it trains, and a `.keras` round trip
reproduces its outputs (the surgery is re-applied at load).
"""

import keras
import numpy as np
import pytest

from conftest import benchmark
import morph_net.keras as mk
from morph_net.network_regularizers import flop_regularizer
from morph_net.tools import analyze

keras_hub_zoo = benchmark('keras_hub_zoo')

L = keras.layers


@keras.saving.register_keras_serializable('morph_net_tests')
class ConvBlock(L.Layer):
  """Conv-BN-ReLU-Conv-BN plus the input, as users write it: one `filters`
  for both convs, so no config can make the first narrower."""

  def __init__(self, filters, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.conv1 = L.Conv2D(filters, 3, padding='same', use_bias=False,
                          name='conv1')
    self.bn1 = L.BatchNormalization(name='bn1')
    self.conv2 = L.Conv2D(filters, 3, padding='same', use_bias=False,
                          name='conv2')
    self.bn2 = L.BatchNormalization(name='bn2')

  def call(self, x, training=None):
    y = keras.ops.relu(self.bn1(self.conv1(x), training=training))
    return keras.ops.relu(x + self.bn2(self.conv2(y), training=training))

  def get_config(self):
    return dict(super().get_config(), filters=self.filters)


@keras.saving.register_keras_serializable('morph_net_tests')
class SeqBlock(L.Layer):
  """A custom layer holding a keras.Sequential and a projection."""

  def __init__(self, hidden, out, **kwargs):
    super().__init__(**kwargs)
    self.hidden, self.out = hidden, out
    self.body = keras.Sequential([L.Dense(hidden, activation='relu'),
                                  L.Dense(hidden, activation='relu')])
    self.proj = L.Dense(out, name='proj')

  def call(self, x):
    return self.proj(self.body(x))

  def get_config(self):
    return dict(super().get_config(), hidden=self.hidden, out=self.out)


@keras.saving.register_keras_serializable('morph_net_tests')
class Outer(L.Layer):
  """A custom layer holding custom layers (in a list)."""

  def __init__(self, filters, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.blocks = [ConvBlock(filters, name='b0'),
                   ConvBlock(filters, name='b1')]

  def call(self, x):
    for block in self.blocks:
      x = block(x)
    return x

  def get_config(self):
    return dict(super().get_config(), filters=self.filters)


@keras.saving.register_keras_serializable('morph_net_tests')
class Heads(L.Layer):
  """Splits its projection into heads by a number from its config."""

  def __init__(self, heads, size, **kwargs):
    super().__init__(**kwargs)
    self.heads, self.size = heads, size
    self.proj = L.Dense(heads * size, name='proj')

  def call(self, x):
    y = self.proj(x)
    y = keras.ops.reshape(y, (-1, self.heads, self.size))
    return keras.ops.reshape(keras.ops.mean(y, axis=1) * 1.0,
                             (-1, self.size))

  def get_config(self):
    return dict(super().get_config(), heads=self.heads, size=self.size)


def _conv_block_model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3))
  x = L.Conv2D(8, 3, padding='same', name='stem')(inputs)
  for i in range(3):
    x = ConvBlock(8, name='block%d' % i)(x)
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(4, name='logits')(x))


def _images(n=4, size=8, channels=3):
  return np.random.RandomState(1).normal(
      size=(n, size, size, channels)).astype('float32')


def _flops(model, x):
  return keras_hub_zoo.independent_counts(model, x)[0] / len(x)


def _assert_one_cost(model, structure, slim, x):
  """The slim model costs what structure_cost said, by an independent
  count of its forward pass and by its own analysis."""
  expected = mk.structure_cost(model, structure)
  assert analyze.analyze(slim).flops == pytest.approx(expected, rel=1e-9)
  assert _flops(slim, x) == pytest.approx(expected, rel=1e-9)
  return expected


def _assert_reloads(slim, x, tmp_path):
  path = str(tmp_path / 'slim.keras')
  slim.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(loaded(x), slim(x), atol=1e-5)
  assert [tuple(w.shape) for w in loaded.weights] == [
      tuple(w.shape) for w in slim.weights]
  return loaded


def test_conv_blocks_without_a_rule_slim_and_keep_residuals_tied(tmp_path):
  model = _conv_block_model()
  structure = {'block0/conv1': 3, 'block1/conv1': 5, 'block2/conv1': 2,
               'stem': 6}
  slim = mk.slim_model(model, structure)
  x = _images()
  cost = _assert_one_cost(model, structure, slim, x)
  assert cost < mk.structure_cost(model, {})
  for i, inner in enumerate((3, 5, 2)):
    block = slim.get_layer('block%d' % i)
    assert isinstance(block, ConvBlock) and block.filters == 8  # its config
    assert block.conv1.filters == inner  # ... its narrowed sublayers
    # The residual channels stay tied to the stem's 6.
    assert block.conv2.filters == 6 and block.bn2.gamma.shape == (6,)
  _assert_reloads(slim, x, tmp_path)
  slim.compile('sgd', keras.losses.SparseCategoricalCrossentropy(
      from_logits=True))
  loss = slim.train_on_batch(x, np.arange(4) % 4)
  assert np.isfinite(loss)


def test_naming_one_residual_member_sets_the_others():
  model = _conv_block_model()
  slim = mk.slim_model(model, {'block1/conv2': 5})
  assert slim.get_layer('stem').filters == 5
  assert all(slim.get_layer('block%d' % i).conv2.filters == 5
             for i in range(3))


def test_transfer_through_a_narrowed_block_reproduces_outputs():
  """Dead channels (gamma and beta 0 after a ReLU that follows) carry
  nothing: the slim model with transferred weights computes the same."""
  model = _conv_block_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  for i in range(3):
    bn = model.get_layer('block%d' % i).bn1
    gamma, beta, mean, var = bn.get_weights()
    dead = np.arange(8) % (i + 2) == 0
    gamma[dead], beta[dead] = 0.0, 0.0
    bn.set_weights([gamma, beta, mean, var])
  slim = mk.slim_model(model, reg, transfer_weights=True)
  x = _images()
  np.testing.assert_allclose(slim(x), model(x), atol=1e-5)
  assert slim.get_layer('block0').conv1.filters == 4  # 8 - 4 dead
  assert float(reg.get_cost()) == pytest.approx(_flops(slim, x), rel=1e-9)


def test_custom_layer_holding_a_sequential(tmp_path):
  keras.utils.set_random_seed(0)
  inputs = keras.Input((6,))
  x = SeqBlock(8, 5, name='seq')(inputs)
  model = keras.Model(inputs, L.Dense(2, name='out')(x))
  first, second = [l.name for l in model.get_layer('seq').body.layers]
  structure = {first: 3, second: 4, 'proj': 2}
  slim = mk.slim_model(model, structure)
  x = np.random.RandomState(0).normal(size=(3, 6)).astype('float32')
  expected = _assert_one_cost(model, structure, slim, x)
  assert expected == 2 * (6 * 3 + 3 * 4 + 4 * 2 + 2 * 2)
  _assert_reloads(slim, x, tmp_path)


def test_custom_layers_inside_custom_layers(tmp_path):
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 4))
  x = Outer(4, name='outer')(inputs)
  x = L.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, L.Dense(2, name='out')(x))
  reg = flop_regularizer.GroupLassoFlopsRegularizer(model, 1e-3)
  keys = [k for k in reg.op_regularizer_manager.layers()
          if k.startswith('outer/')]
  first = [k for k in keys if k.endswith('/conv1')]
  assert first == ['outer/b0/conv1', 'outer/b1/conv1']
  structure = {k: 2 for k in first}
  slim = mk.slim_model(model, structure)
  x = _images(channels=4)
  _assert_one_cost(model, structure, slim, x)
  assert [b.conv1.filters for b in slim.get_layer('outer').blocks] == [2, 2]
  _assert_reloads(slim, x, tmp_path)


def test_a_call_that_reads_a_width_from_its_config_names_the_layer():
  inputs = keras.Input((6,))
  x = Heads(2, 4, name='heads')(inputs)
  model = keras.Model(inputs, L.Dense(2, name='out')(x))
  with pytest.raises(NotImplementedError) as info:
    mk.slim_model(model, {'proj': 6})
  message = str(info.value)
  assert "'heads'" in message and 'Heads' in message
  assert 'register_width_rule' in message


def test_a_slim_model_of_core_layers_only_is_a_plain_functional_model():
  inputs = keras.Input((4,))
  x = L.Dense(8, name='hidden')(inputs)
  model = keras.Model(inputs, L.Dense(2, name='out')(x))
  slim = mk.slim_model(model, {'hidden': 3})
  assert type(slim) is keras.Model or type(slim).__name__ == 'Functional'


@keras.saving.register_keras_serializable('morph_net_tests')
class ResNet(keras.Model):
  """A subclassed model of three ConvBlocks, as users write it."""

  def __init__(self, filters=8, classes=4, **kwargs):
    super().__init__(**kwargs)
    self.filters, self.classes = filters, classes
    self.stem = L.Conv2D(filters, 3, padding='same', name='stem')
    self.blocks = [ConvBlock(filters, name='block%d' % i) for i in range(3)]
    self.pool = L.GlobalAveragePooling2D()
    self.head = L.Dense(classes, name='logits')

  def call(self, x, training=None):
    x = self.stem(x)
    for block in self.blocks:
      x = block(x, training=training)
    return self.head(self.pool(x))

  def get_config(self):
    return dict(super().get_config(), filters=self.filters,
                classes=self.classes)


def test_a_subclassed_model_of_conv_blocks_slims_in_place(tmp_path):
  keras.utils.set_random_seed(0)
  model = ResNet(name='resnet')
  x = _images()
  model(x)  # built: its input shape is known
  structure = {'block0/conv1': 3, 'block1/conv1': 5, 'block2/conv1': 2,
               'block1/conv2': 6}
  slim = mk.slim_model(model, structure)
  cost = _assert_one_cost(model, structure, slim, x)
  assert cost < mk.structure_cost(model, {})
  inner = slim.get_layer('resnet')
  assert isinstance(inner, ResNet)
  assert [b.conv1.filters for b in inner.blocks] == [3, 5, 2]
  # The residual channels stay tied: naming one block's conv2 sets the
  # stem and every block's conv2.
  assert inner.stem.filters == 6
  assert [b.conv2.filters for b in inner.blocks] == [6, 6, 6]
  _assert_reloads(slim, x, tmp_path)
  slim.compile('adam', keras.losses.SparseCategoricalCrossentropy(
      from_logits=True))
  assert np.isfinite(slim.train_on_batch(x, np.arange(4) % 4))


def test_a_subclassed_model_transfers_its_surviving_channels():
  keras.utils.set_random_seed(0)
  model = ResNet(name='resnet')
  x = _images()
  model(x)
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  bn = model.blocks[1].bn1
  gamma, beta, mean, var = bn.get_weights()
  gamma[::2], beta[::2] = 0.0, 0.0
  bn.set_weights([gamma, beta, mean, var])
  slim = mk.slim_model(model, reg, transfer_weights=True)
  assert slim.get_layer('resnet').blocks[1].conv1.filters == 4
  np.testing.assert_allclose(slim(x), model(x), atol=1e-5)
