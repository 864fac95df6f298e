"""Stages chained: random counts -> expand_structure -> slim_model.

Whatever counts a user starts from, `expand_structure`'s output honors every
constraint the analysis knows (split shares, whole heads, grouped-conv
groups, residual ties), so `slim_model` accepts it, and the slim model costs
what `structure_cost` said: by an independent count of its forward pass and
by its own analysis.
"""

import keras
import numpy as np
import pytest

from conftest import benchmark
import morph_net.keras as mk
from morph_net.tools import analyze
from test_slim_custom_layers import ConvBlock
from test_slim_custom_layers import ResNet
from test_slim_custom_layers import SeqBlock

keras_hub_zoo = benchmark('keras_hub_zoo')

L = keras.layers


def _csp():
  inputs = keras.Input((8, 8, 3))
  h = L.Conv2D(16, 3, padding='same', name='exp')(inputs)
  a, b = keras.ops.split(h, 2, axis=-1)
  b = L.Add()([b, L.Conv2D(8, 3, padding='same', name='dark')(
      L.Conv2D(4, 1, name='dark_in')(b))])
  y = L.Conv2D(12, 1, name='transition')(L.Concatenate()([a, b]))
  y = L.GlobalAveragePooling2D()(y)
  return keras.Model(inputs, L.Dense(3, name='out')(y)), (8, 8, 3)


def _grouped():
  inputs = keras.Input((8, 8, 4))
  x = L.Conv2D(16, 1, name='c1')(inputs)
  x = L.Conv2D(16, 3, padding='same', groups=4, name='grouped')(x)
  x = L.Conv2D(8, 1, name='c2')(x)
  y = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(3, name='out')(y)), (8, 8, 4)


def _attention():
  inputs = keras.Input((6, 8))
  x = L.Dense(8, name='embed')(inputs)
  y = L.MultiHeadAttention(2, 4, name='mha')(x, x)
  x = L.Add()([x, y])
  x = L.Dense(16, activation='relu', name='up')(x)
  x = L.Dense(8, name='down')(x)
  y = L.GlobalAveragePooling1D()(x)
  return keras.Model(inputs, L.Dense(3, name='out')(y)), (6, 8)


def _custom_blocks():
  inputs = keras.Input((8, 8, 3))
  x = L.Conv2D(8, 3, padding='same', name='stem')(inputs)
  x = ConvBlock(8, name='b0')(x)
  x = ConvBlock(8, name='b1')(x)
  y = L.GlobalAveragePooling2D()(x)
  y = SeqBlock(8, 6, name='mlp')(y)
  return keras.Model(inputs, L.Dense(3, name='out')(y)), (8, 8, 3)


def _subclassed():
  model = ResNet(name='resnet')
  model(np.zeros((1, 8, 8, 3), 'float32'))
  return model, (8, 8, 3)


_MODELS = {'csp': _csp, 'grouped': _grouped, 'attention': _attention,
           'custom_blocks': _custom_blocks, 'subclassed': _subclassed}


@pytest.mark.parametrize('name', sorted(_MODELS))
def test_expanded_random_structures_slim_to_their_cost(name):
  keras.utils.set_random_seed(0)
  model, shape = _MODELS[name]()
  analysis = mk.analysis_of(model)
  full = mk.structure_cost(analysis, {})
  x = np.random.RandomState(0).normal(size=(2,) + shape).astype('float32')
  keys = list(analysis.entries)
  assert keys
  rng = np.random.RandomState(1)
  for trial in range(3):
    random = {k: int(rng.randint(1, analysis.width(k) + 1)) for k in keys
              if not analysis.is_fixed(k)}
    target = float(rng.uniform(0.4, 0.9)) * full
    counts = mk.expand_structure(analysis, random, target_cost=target)
    expected = mk.structure_cost(analysis, counts)
    assert expected <= target
    slim = mk.slim_model(analysis, counts)
    counted = keras_hub_zoo.independent_counts(slim, x)[0] / len(x)
    assert counted == pytest.approx(expected, rel=1e-9), (trial, counts)
    assert analyze.analyze(slim).flops == pytest.approx(expected, rel=1e-9)


def test_exported_counts_of_a_split_layer_slim():
  """5 alive channels of a conv whose output splits into two halves: the
  exporter writes 6 (whole shares), which slim_model accepts."""
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
  from morph_net.tools import structure_exporter  # pylint: disable=g-import-not-at-top
  inputs = keras.Input((8, 8, 3))
  h = L.Conv2D(8, 1, use_bias=False, name='c')(inputs)
  h = L.BatchNormalization(name='bn')(h)
  a, b = keras.ops.split(h, 2, axis=-1)
  y = L.Concatenate()([L.Conv2D(4, 1, name='ca')(a), b])
  y = L.GlobalAveragePooling2D()(y)
  model = keras.Model(inputs, L.Dense(2, name='out')(y))
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  gamma = model.get_layer('bn').gamma
  g = gamma.numpy()
  g[[0, 5, 6]] = 0.0
  gamma.assign(g)
  exporter = structure_exporter.StructureExporter(reg.op_regularizer_manager)
  counts = exporter.get_alive_counts()
  assert counts['c'] == 6
  slim = mk.slim_model(model, counts)
  assert slim.get_layer('c').filters == 6
  assert analyze.analyze(slim).flops == mk.structure_cost(model, counts)
