"""slim_model / expand_structure: widths, morphing, weights, costs."""

import json
import os
import warnings

import keras
import numpy as np
import pytest

import morph_net.keras as mk
from morph_net.network_regularizers import flop_regularizer
from morph_net.tools import structure_exporter

THRESHOLD = 1e-2
L = keras.layers

# Dead channels per tied group, listed by the BatchNorms carrying the group.
# The stem group is tied by the residual Add and the depthwise conv.
DEAD = {
    ('stem_bn', 'res_b_bn', 'dw_bn'): [1, 5],
    ('res_a_bn',): [2],
    ('pw_bn',): [0, 3],
    ('branch_bn',): [2],
    ('sep_bn',): [4, 6, 7],
    ('fc_bn',): [0, 1, 2, 3],
}


def _conv_bn(x, filters, kernel, name, strides=1):
  x = L.Conv2D(filters, kernel, strides=strides, padding='same',
               use_bias=False, name=name)(x)
  return L.BatchNormalization(name=name + '_bn')(x)


def _seed_model():
  """Residual add, depthwise conv, concat, separable conv, Flatten+Dense."""
  inputs = keras.Input((8, 8, 3))
  x = L.ReLU()(_conv_bn(inputs, 8, 3, 'stem'))
  r = L.ReLU()(_conv_bn(x, 6, 3, 'res_a'))
  r = _conv_bn(r, 8, 3, 'res_b')
  x = L.ReLU()(L.Add(name='add')([x, r]))
  a = L.DepthwiseConv2D(3, padding='same', use_bias=False, name='dw')(x)
  a = L.ReLU()(L.BatchNormalization(name='dw_bn')(a))
  a = L.ReLU()(_conv_bn(a, 6, 1, 'pw'))
  b = L.ReLU()(_conv_bn(x, 4, 3, 'branch'))
  x = L.Concatenate(name='concat')([a, b])
  x = L.SeparableConv2D(8, 3, strides=2, padding='same', use_bias=False,
                        name='sep')(x)
  x = L.ReLU()(L.BatchNormalization(name='sep_bn')(x))
  x = L.Flatten(name='flatten')(x)
  x = L.Dense(12, name='fc')(x)
  x = L.ReLU()(L.BatchNormalization(name='fc_bn')(x))
  return keras.Model(inputs, L.Dense(10, name='logits')(x), name='seed')


def _kill(model, dead, morph_residual=False):
  """Random BN statistics; dead channels get gamma = beta = 0."""
  rng = np.random.default_rng(0)
  for layer in model.layers:
    if isinstance(layer, L.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.3, n),
                         rng.normal(0, 0.3, n), rng.uniform(0.5, 2.0, n)])
  for bns, channels in dead.items():
    for bn in bns:
      gamma, beta, mean, var = model.get_layer(bn).get_weights()
      gamma[channels] = 0
      beta[channels] = 0
      model.get_layer(bn).set_weights([gamma, beta, mean, var])
  if morph_residual:
    # Zero input to res_b leaves res_b_bn's shift beta - gamma*mean/std; make
    # it 0 so that removing the branch is exact.
    bn = model.get_layer('res_a_bn')
    bn.set_weights([np.zeros(6), np.zeros(6)] + bn.get_weights()[2:])
    bn = model.get_layer('res_b_bn')
    gamma, _, _, var = bn.get_weights()
    bn.set_weights([gamma, np.zeros(8), np.zeros(8), var])


@pytest.fixture(scope='module')
def seed():
  model = _seed_model()
  _kill(model, DEAD)
  return model, flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)


@pytest.fixture(scope='module')
def morphed_seed():
  model = _seed_model()
  _kill(model, DEAD, morph_residual=True)
  return model, flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)


def _flops(model):
  """FLOPs of conv/dense/depthwise layers, counted from layer shapes."""
  total = 0
  for layer in model.layers:
    if not isinstance(layer, (L.Conv2D, L.Dense, L.DepthwiseConv2D,
                              L.SeparableConv2D)):
      continue
    x, y = layer.input.shape, layer.output.shape
    if isinstance(layer, L.DepthwiseConv2D):
      total += 2 * np.prod(y[1:]) * np.prod(layer.kernel_size)
    elif isinstance(layer, L.SeparableConv2D):
      total += 2 * np.prod(y[1:3]) * x[-1] * (9 + y[-1])
    elif isinstance(layer, L.Conv2D):
      total += 2 * np.prod(y[1:]) * np.prod(layer.kernel_size) * x[-1]
    elif isinstance(layer, L.Dense):
      total += 2 * x[-1] * y[-1]
  return float(total)


def _images(n=4):
  return np.random.default_rng(1).normal(size=(n, 8, 8, 3)).astype('float32')


def _widths(model):
  return {l.name: l.output.shape[-1] for l in model.layers}


def test_slim_widths_are_the_alive_counts(seed):
  model, reg = seed
  slim = mk.slim_model(model, reg)
  w = _widths(slim)
  assert (w['stem'], w['res_a'], w['res_b'], w['dw']) == (6, 5, 6, 6)
  assert (w['pw'], w['branch'], w['concat'], w['sep']) == (4, 3, 7, 5)
  assert (w['flatten'], w['fc'], w['logits']) == (4 * 4 * 5, 8, 10)
  assert slim.get_layer('pw_bn').gamma.shape == (4,)


def test_slim_flops_equal_regularizer_cost(seed):
  model, reg = seed
  slim = mk.slim_model(model, reg)
  expected = float(reg.get_cost())
  assert _flops(slim) == pytest.approx(expected, rel=1e-6)
  assert _flops(slim) < _flops(model)
  assert mk.structure_cost(model, reg) == pytest.approx(expected, rel=1e-6)
  full = flop_regularizer.GammaFlopsRegularizer(slim, THRESHOLD)
  assert float(full.get_cost()) == pytest.approx(expected, rel=1e-6)


def test_transfer_weights_reproduces_outputs(seed):
  model, reg = seed
  slim = mk.slim_model(model, reg, transfer_weights=True)
  x = _images()
  np.testing.assert_allclose(slim(x, training=False),
                             model(x, training=False), atol=1e-5, rtol=1e-5)
