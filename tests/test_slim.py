"""slim_model / expand_structure: widths, morphing, weights, costs."""

import json
import os

import keras
import numpy as np
import pytest

from conftest import conv_bn
import morph_net.keras as mk
from morph_net.network_regularizers import flop_regularizer
from morph_net.probabilistic_gating import activation_gating
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


def _seed_model(k=1):
  """Residual add, depthwise conv, concat, separable conv, Flatten+Dense."""
  inputs = keras.Input((8, 8, 3))
  x = L.ReLU()(conv_bn(inputs, 8 * k, 'stem', 3))
  r = L.ReLU()(conv_bn(x, 6 * k, 'res_a', 3))
  r = conv_bn(r, 8 * k, 'res_b', 3)
  x = L.ReLU()(L.Add(name='add')([x, r]))
  a = L.DepthwiseConv2D(3, padding='same', use_bias=False, name='dw')(x)
  a = L.ReLU()(L.BatchNormalization(name='dw_bn')(a))
  a = L.ReLU()(conv_bn(a, 6 * k, 'pw', 1))
  b = L.ReLU()(conv_bn(x, 4 * k, 'branch', 3))
  x = L.Concatenate(name='concat')([a, b])
  x = L.SeparableConv2D(8 * k, 3, strides=2, padding='same', use_bias=False,
                        name='sep')(x)
  x = L.ReLU()(L.BatchNormalization(name='sep_bn')(x))
  x = L.Flatten(name='flatten')(x)
  x = L.Dense(12 * k, name='fc')(x)
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


def test_dead_residual_branch_collapses_to_shortcut(morphed_seed):
  model, reg = morphed_seed
  counts = structure_exporter.StructureExporter(
      reg.op_regularizer_manager).get_alive_counts()
  assert counts['res_a'] == 0
  slim = mk.slim_model(model, reg, transfer_weights=True)
  names = {l.name for l in slim.layers}
  assert not names & {'res_a', 'res_a_bn', 'res_b', 'res_b_bn', 'add'}
  assert not any(isinstance(l, L.Add) for l in slim.layers)
  assert len(slim.layers) == len(model.layers) - 6  # 5 above + the ReLU
  x = _images()
  np.testing.assert_allclose(slim(x, training=False),
                             model(x, training=False), atol=1e-5, rtol=1e-5)
  assert _flops(slim) == pytest.approx(float(reg.get_cost()), rel=1e-6)


def test_dead_concat_input_is_dropped(seed):
  model, _ = seed
  slim = mk.slim_model(model, {'branch': 0})
  assert 'branch' not in {l.name for l in slim.layers}
  assert 'concat' not in {l.name for l in slim.layers}  # one input left
  assert slim.get_layer('sep').input.shape[-1] == 6


def test_dead_main_chain_keeps_one_channel_and_warns(seed):
  model, _ = seed
  with pytest.warns(UserWarning, match="'sep'"):
    slim = mk.slim_model(model, {'sep': 0})
  assert slim.get_layer('sep').output.shape[-1] == 1
  assert slim.get_layer('fc').input.shape[-1] == 16


def test_round_to_rounds_up_within_original_width(seed):
  model, reg = seed
  slim = mk.slim_model(model, reg, round_to=4, transfer_weights=True)
  w = _widths(slim)
  # Alive 6, 5, 4, 3, 5, 8 -> multiples of 4, at most the original width.
  assert (w['stem'], w['res_a'], w['pw'], w['branch']) == (8, 6, 4, 4)
  assert (w['sep'], w['fc']) == (8, 8)
  # The channels added back are dead ones (zero output): same function.
  x = _images()
  np.testing.assert_allclose(slim(x, training=False),
                             model(x, training=False), atol=1e-5, rtol=1e-5)
  assert mk.slim_model(model, {'fc': 1}, round_to=8).get_layer(
      'fc').output.shape[-1] == 8


def test_unknown_and_unprunable_names_are_errors(seed):
  model, _ = seed
  with pytest.raises(ValueError, match='nope.*stem_x|stem_x.*nope'):
    mk.slim_model(model, {'nope': 3, 'stem_x': 2, 'stem': 4})
  with pytest.raises(ValueError, match='stem_bn'):
    mk.slim_model(model, {'stem_bn': 3})


def test_tied_layers_with_different_counts_are_an_error(seed):
  model, _ = seed
  with pytest.raises(ValueError, match="'res_b'.*'stem'|'stem'.*'res_b'"):
    mk.slim_model(model, {'stem': 4, 'res_b': 5})


def test_reshape_that_splits_pruned_channels_is_an_error():
  inputs = keras.Input((4, 4, 2))
  x = L.Reshape((16 * 6,), name='split')(L.Conv2D(6, 1, name='c')(inputs))
  model = keras.Model(inputs, L.Dense(2, name='out')(x))
  with pytest.raises(NotImplementedError, match="'split'.*'c'"):
    mk.slim_model(model, {'c': 3})


def test_output_layers_may_not_be_named():
  inputs = keras.Input((4,))
  x = L.Dense(6, name='h')(inputs)
  model = keras.Model(inputs, L.Dense(3, name='logits')(x))
  for call in (lambda s: mk.slim_model(model, s),
               lambda s: mk.structure_cost(model, s),
               lambda s: mk.expand_structure(model, s, 1e3)):
    with pytest.raises(ValueError, match="outputs.*logits.*task"):
      call({'h': 2, 'logits': 2})


def test_transfer_needs_alive_vectors(seed):
  model, _ = seed
  with pytest.raises(ValueError, match='alive'):
    mk.slim_model(model, {'stem': 4}, transfer_weights=True)


def test_json_counts_build_the_same_model(seed, tmp_path):
  model, reg = seed
  exporter = structure_exporter.StructureExporter(reg.op_regularizer_manager)
  path = exporter.create_file_and_save_alive_counts(str(tmp_path), 7)
  with open(path) as f:
    counts = json.load(f)
  assert _widths(mk.slim_model(model, counts)) == _widths(
      mk.slim_model(model, reg))
  vectors = {k: np.asarray(v) for k, v in exporter.tensors.items()}
  from_vectors = mk.slim_model(model, vectors, transfer_weights=True)
  x = _images()
  np.testing.assert_allclose(from_vectors(x), model(x), atol=1e-5,
                             rtol=1e-5)


def test_slim_model_saves_and_loads(seed, tmp_path):
  model, reg = seed
  slim = mk.slim_model(model, reg, transfer_weights=True)
  path = os.path.join(str(tmp_path), 'slim.keras')
  slim.save(path)
  loaded = keras.models.load_model(path)
  assert _widths(loaded) == _widths(slim)
  x = _images()
  np.testing.assert_allclose(loaded(x), slim(x), atol=1e-6)


@pytest.mark.parametrize('cost', ['flops', 'model_size'])
def test_expand_structure_meets_target_from_below(cost):
  model = _seed_model(k=8)  # realistic widths: one channel is a small step
  learned = {'stem': 40, 'res_a': 10, 'res_b': 40, 'pw': 30, 'branch': 20,
             'sep': 35, 'fc': 50}
  target = mk.structure_cost(model, {}, cost=cost)  # the seed's cost
  assert mk.structure_cost(model, learned, cost=cost) < 0.6 * target
  counts = mk.expand_structure(model, learned, target, cost=cost)
  got = mk.structure_cost(model, counts, cost=cost)
  assert 0.97 * target <= got <= target
  assert all(counts[k] > learned[k] for k in learned)
  assert counts['stem'] == counts['res_b']  # tied counts stay tied
  if cost == 'flops':
    assert _flops(mk.slim_model(model, counts)) == pytest.approx(got)


def test_expand_structure_round_to_and_beyond_original(seed):
  model, _ = seed
  target = 2.0 * mk.structure_cost(model, {})
  counts = mk.expand_structure(model, {'pw': 6, 'fc': 12}, target,
                               round_to=4)
  assert all(c % 4 == 0 for c in counts.values())
  assert counts['fc'] > 12  # expansion may exceed the original width
  assert mk.structure_cost(model, counts) <= target
  with pytest.raises(ValueError, match='narrowest'):
    mk.expand_structure(model, {'pw': 6}, 10.0)


def test_sequential_model_and_an_unbuilt_subclassed_model():
  model = keras.Sequential([keras.Input((5,)), L.Dense(7, name='h'),
                            L.BatchNormalization(name='h_bn'),
                            L.Dense(2, name='out')])
  vectors = {'h': np.array([1, 0, 1, 1, 0, 0, 1], bool)}
  slim = mk.slim_model(model, vectors, transfer_weights=True)
  assert slim.get_layer('h').output.shape[-1] == 4
  kernel = model.get_layer('h').get_weights()[0]
  np.testing.assert_allclose(slim.get_layer('h').get_weights()[0],
                             kernel[:, [0, 2, 3, 6]])

  class Sub(keras.Model):

    def call(self, x):
      return x

  # A subclassed model slims in place (tests/test_slim_custom_layers.py);
  # one never called has no known input shape.
  with pytest.raises(ValueError, match='input_signature'):
    mk.slim_model(Sub(), {})


def _se_model():
  """Add(Concat(a, b), c) then squeeze-excite (Reshape, Multiply)."""
  inputs = keras.Input((6, 6, 4))
  a = L.Conv2D(3, 1, name='a')(inputs)
  b = L.Conv2D(3, 1, name='b')(inputs)
  c = L.Conv2D(6, 1, name='c')(inputs)
  x = L.Add(name='add')([L.Concatenate(name='cat')([a, b]), c])
  s = L.Reshape((1, 1, 6), name='se_reshape')(L.GlobalAveragePooling2D()(x))
  s = L.Conv2D(2, 1, activation='relu', name='se_reduce')(s)
  s = L.Conv2D(6, 1, activation='sigmoid', name='se_expand')(s)
  x = L.Multiply(name='se_mul')([x, s])
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(2, name='out')(x))


def test_transfer_through_concat_add_and_squeeze_excite():
  model = _se_model()
  alive = np.array([1, 0, 1, 0, 1, 1], bool)  # a: 0, 2; b: 1, 2
  for name in ('se_reduce', 'out'):  # dead channels must not contribute
    kernel, bias = model.get_layer(name).get_weights()
    kernel[..., ~alive, :] = 0
    model.get_layer(name).set_weights([kernel, bias])
  vectors = {'a': alive[:3], 'b': alive[3:], 'c': alive, 'se_expand': alive}
  slim = mk.slim_model(model, vectors, transfer_weights=True)
  assert slim.get_layer('se_reshape').output.shape[-1] == 4
  assert slim.get_layer('se_mul').output.shape[-1] == 4
  x = np.random.default_rng(2).normal(size=(3, 6, 6, 4)).astype('float32')
  np.testing.assert_allclose(slim(x), model(x), atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match='differ'):
    mk.slim_model(model, dict(vectors, c=alive[::-1]), transfer_weights=True)


def test_expand_keeps_concat_sum_tied_to_add():
  model = _se_model()
  counts = {'a': 3, 'b': 3, 'c': 6, 'se_expand': 6}
  base = mk.structure_cost(model, counts)
  for factor in (1.3, 1.7, 2.2, 3.1):
    out = mk.expand_structure(model, counts, factor * base)
    assert out['a'] + out['b'] == out['c'] == out['se_expand']
    assert mk.structure_cost(model, out) <= factor * base
    assert mk.slim_model(model, out).get_layer('add').output.shape[-1] == (
        out['c'])


def test_gated_transposed_conv_and_dense_on_sequence():
  gate = activation_gating.LogisticSigmoidGating
  inputs = keras.Input((8, 8, 3))
  x = L.ReLU()(gate(name='g1')(L.Conv2D(6, 3, name='c1')(inputs)))
  x = gate(name='g2')(L.Conv2DTranspose(5, 3, strides=2, name='ct')(x))
  x = L.Reshape((-1, 5), name='seq')(x)  # (positions, channels)
  x = gate(name='g3')(L.Dense(7, name='d')(x))
  model = keras.Model(
      inputs, L.Dense(2, name='out')(L.GlobalAveragePooling1D()(x)))
  model.get_layer('g1').mask_logits.assign([2., -1, 2, -1, 2, 2])
  model.get_layer('g2').mask_logits.assign([2., -1, -1, 2, 2])
  model.get_layer('g3').mask_logits.assign([2., -1, 2, -1, 2, -2, 2])
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(model)
  slim = mk.slim_model(model, reg, transfer_weights=True)
  w = _widths(slim)
  assert (w['c1'], w['ct'], w['seq'], w['d']) == (4, 3, 3, 4)
  # Gates are folded away: every kept channel's inference mask is 1.
  assert not {'g1', 'g2', 'g3'} & set(w)
  x = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype('float32')
  np.testing.assert_allclose(slim(x), model(x), atol=1e-5, rtol=1e-5)
  assert mk.structure_cost(model, reg) == pytest.approx(float(reg.get_cost()))
  kept = mk.slim_model(model, reg, transfer_weights=True, fold_gates=False)
  assert kept.get_layer('g2').mask_logits.shape == (3,)
  np.testing.assert_allclose(kept(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('module', [mk.slim, mk.expand])
def test_docstring_examples_run(module):
  import doctest  # pylint: disable=g-import-not-at-top
  result = doctest.testmod(module)
  assert result.attempted > 0
  assert result.failed == 0
