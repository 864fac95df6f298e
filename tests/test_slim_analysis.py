"""slim_model / structure_cost read the analysis: keys, ties, costs, gates."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import morph_net.keras as mk
from morph_net.framework import op_regularizer_manager as orm
from morph_net.network_regularizers import cost_model
from morph_net.network_regularizers import flop_regularizer
from morph_net.probabilistic_gating import activation_gating
from morph_net.tools import analyze
from morph_net.tools import structure_exporter

L = keras.layers


def _block(name):
  inputs = keras.Input((6,))
  h = L.BatchNormalization(name='bn')(L.Dense(8, name='fc')(inputs))
  return keras.Model(inputs, L.Dense(6, name='proj')(L.ReLU()(h)), name=name)


def _nested():
  inputs = keras.Input((6,))
  y = _block('b2')(_block('b1')(inputs))
  return keras.Model(inputs, L.Dense(2, name='out')(y))


def test_nested_models_with_one_layer_name_slim_by_path():
  model = _nested()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.1)
  for block, dead in (('b1', [0, 1, 2]), ('b2', [5])):
    bn = model.get_layer(block).get_layer('bn')
    gamma = bn.gamma.numpy()
    gamma[dead] = 0
    bn.gamma.assign(gamma)
  counts = structure_exporter.StructureExporter(
      reg.op_regularizer_manager).get_alive_counts()
  assert counts == {'b1/fc': 5, 'b2/fc': 7}
  slim = mk.slim_model(model, reg, transfer_weights=True)
  assert slim.get_layer('b1').get_layer('fc').units == 5
  assert slim.get_layer('b2').get_layer('fc').units == 7
  x = np.random.default_rng(0).normal(size=(3, 6)).astype('float32')
  np.testing.assert_allclose(slim(x), model(x), atol=1e-5)
  # 2 x (6*5 + 5*6 + 6*7 + 7*6 + 6*2) = 312 FLOPs.
  assert mk.structure_cost(model, counts) == float(reg.get_cost()) == 312.0
  by_path = mk.slim_model(model, {'b1/fc': 3})
  assert by_path.get_layer('b1').get_layer('fc').units == 3
  assert by_path.get_layer('b2').get_layer('fc').units == 8
  with pytest.raises(ValueError, match="'fc' name several.*b1/fc, b2/fc"):
    mk.slim_model(model, {'fc': 3})


def _residual():
  inputs = keras.Input((8, 8, 3))
  s = L.Conv2D(8, 3, padding='same', name='stem')(inputs)
  r = L.Conv2D(8, 3, padding='same', name='res')(L.ReLU()(s))
  x = L.Add(name='add')([s, r])
  a = L.Conv2D(3, 1, name='a')(x)
  b = L.Conv2D(3, 1, name='b')(x)
  c = L.Conv2D(6, 1, name='c')(x)
  x = L.Add(name='add2')([L.Concatenate(name='cat')([a, b]), c])
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(2, name='out')(x))


def test_naming_one_tied_layer_sets_the_others():
  model = _residual()
  slim = mk.slim_model(model, {'stem': 5})
  assert slim.get_layer('res').filters == 5
  assert mk.structure_cost(model, {'stem': 5}) == mk.structure_cost(
      model, {'stem': 5, 'res': 5})
  slim = mk.slim_model(model, {'a': 2, 'b': 1})
  assert slim.get_layer('c').filters == 3
  with pytest.raises(ValueError, match="'c'.*'a'.*'b'|Give 'a'"):
    mk.slim_model(model, {'c': 5})
  with pytest.raises(ValueError, match="'c'.*5.*'a', 'b'.*3"):
    mk.slim_model(model, {'a': 2, 'b': 1, 'c': 5})


def test_bad_counts_are_one_line_errors_naming_the_layer():
  inputs = keras.Input((4,))
  model = keras.Model(inputs, L.Dense(2)(L.Dense(8, name='res')(inputs)))
  for count in (float('nan'), float('inf'), 10**9, -1, 2.5, '3', True):
    with pytest.raises(ValueError, match="Layer 'res'") as info:
      mk.slim_model(model, {'res': count})
    assert '\n' not in str(info.value)


def test_expand_refuses_an_infinite_or_unreachable_target():
  model = _residual()
  for target in (float('inf'), float('nan'), 0):
    with pytest.raises(ValueError, match='finite'):
      mk.expand_structure(model, {'stem': 4}, target)
  with pytest.raises(ValueError, match='64'):
    mk.expand_structure(model, {'stem': 4}, 1e15)


def test_empty_structure_is_the_model_as_built():
  model = _residual()
  full = cost_model.CostModel(orm.OpRegularizerManager(model),
                              'flops').full_cost()
  assert mk.structure_cost(model, {}) == full == analyze.analyze(model).flops
  slim = mk.slim_model(model, {})
  assert [l.name for l in slim.layers] == [l.name for l in model.layers]
  assert analyze.analyze(slim).flops == full


def _mixed():
  """Separable conv, depthwise, Flatten + Dense, a concat and a residual."""
  inputs = keras.Input((8, 8, 3))
  x = L.Conv2D(8, 3, padding='same', name='stem')(inputs)
  r = L.Conv2D(8, 3, padding='same', name='res')(L.ReLU()(x))
  x = L.Add()([x, r])
  a = L.DepthwiseConv2D(3, padding='same', name='dw')(x)
  a = L.Conv2D(6, 1, name='pw')(a)
  b = L.Conv2D(4, 3, padding='same', name='branch')(x)
  x = L.Concatenate()([a, b])
  x = L.SeparableConv2D(8, 3, strides=2, padding='same', name='sep')(x)
  x = L.Dense(12, name='fc')(L.Flatten()(x))
  return keras.Model(inputs, L.Dense(10, name='logits')(x))


@pytest.mark.parametrize('cost', ['flops', 'model_size'])
def test_half_structure_costs_what_its_slim_model_costs(cost):
  model = _mixed()
  counts = {'stem': 4, 'res': 4, 'pw': 3, 'branch': 2, 'sep': 4, 'fc': 6}
  slim = mk.slim_model(model, counts)
  report = analyze.analyze(slim)
  expected = report.flops if cost == 'flops' else report.weights
  assert mk.structure_cost(model, counts, cost=cost) == expected
  # Independent count from the slim model's layer shapes (FLOPs).
  if cost == 'flops':
    pos = 64
    by_hand = 2 * (pos * 9 * 3 * 4 + pos * 9 * 4 * 4 + pos * 9 * 4
                   + pos * 4 * 3 + pos * 9 * 4 * 2 + 16 * 9 * 5
                   + 16 * 5 * 4 + 64 * 6 + 6 * 10)
    assert expected == by_hand


def _gated_and_slim():
  gate = activation_gating.LogisticSigmoidGating
  inputs = keras.Input((8, 8, 3))
  h = L.Conv2D(6, 3, name='c1')(inputs)
  h = activation_gating.gated_relu_activation(name='act1')(h)
  h = L.Conv2D(5, 3, name='c2')(h)
  h = gate(name='g2', soft_mask_for_inference=True)(h)
  model = keras.Model(
      inputs, L.Dense(2, name='out')(L.GlobalAveragePooling2D()(h)))
  model.get_layer('act1').get_layer('act1_gate').mask_logits.assign(
      [2., -1, 2, -1, 2, 2])
  model.get_layer('g2').mask_logits.assign([2., -1, 1, 3, -2])
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(model)
  return model, mk.slim_model(model, reg, transfer_weights=True)


def test_gates_fold_into_core_keras_layers():
  model, slim = _gated_and_slim()
  layers = slim.layers + slim.get_layer('act1').layers
  assert all(type(l).__module__.startswith('keras.') for l in layers)
  assert slim.get_layer('g2').__class__ is L.Rescaling  # soft mask kept
  assert slim.get_layer('c2').filters == 3
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype('float32')
  np.testing.assert_allclose(slim(x), model(x), atol=1e-5)


@pytest.mark.slow  # a fresh interpreter imports TensorFlow: ~40 s here
def test_gated_slim_model_loads_without_morph_net(tmp_path):
  model, slim = _gated_and_slim()
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype('float32')
  slim.save(str(tmp_path / 'slim.keras'))
  np.save(str(tmp_path / 'x.npy'), x)
  np.save(str(tmp_path / 'y.npy'), np.asarray(model(x)))
  code = (
      'import sys, keras, numpy as np\n'
      "m = keras.models.load_model('slim.keras')\n"
      "y = np.asarray(m(np.load('x.npy')))\n"
      "assert not [k for k in sys.modules if k.startswith('morph_net')]\n"
      "print(float(np.abs(y - np.load('y.npy')).max()))\n")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('PYTHONPATH', None)
  done = subprocess.run([sys.executable, '-c', code], cwd=str(tmp_path),
                        capture_output=True, text=True, env=env, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert float(done.stdout.strip().splitlines()[-1]) < 1e-5


class _Wide(L.Dense):
  """A Dense whose config calls its width `width`."""

  def __init__(self, width, **kwargs):
    super().__init__(units=width, **kwargs)

  def get_config(self):
    config = super().get_config()
    config['width'] = config.pop('units')
    return config


def test_width_rule_for_a_layer_class_of_your_own():
  mk.register_width_rule(_Wide, 'width')
  inputs = keras.Input((4,))
  model = keras.Model(inputs, L.Dense(2, name='out')(
      _Wide(8, name='wide')(inputs)))
  assert mk.slim_model(model, {'wide': 3}).get_layer('wide').units == 3


class _Block(L.Layer):
  """A custom layer holding a Dense (not a functional model)."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.fc = L.Dense(8, name='fc')

  def call(self, x):
    return self.fc(x)


def test_layer_inside_a_custom_layer_is_narrowed_in_place():
  keras.backend.clear_session()
  inputs = keras.Input((4,))
  model = keras.Model(inputs, L.Dense(2, name='out')(
      _Block(name='blk')(inputs)))
  slim = mk.slim_model(model, {'fc': 3})
  assert isinstance(slim.get_layer('blk'), _Block)
  assert slim.get_layer('blk').fc.units == 3
  assert analyze.analyze(slim).flops == mk.structure_cost(model, {'fc': 3})
  assert analyze.analyze(slim).flops == 2 * (4 * 3 + 3 * 2)


def _zero_dead(layer, alive):
  """Dead output channels of a Dense/conv produce 0 (kernel and bias)."""
  kernel, bias = layer.get_weights()
  kernel[..., ~alive] = 0
  bias[~alive] = 0
  layer.set_weights([kernel, bias])


def test_channel_split_keeps_each_slices_alive_channels():
  """A CSP-like block: split a conv's channels, convolve one half, concat."""
  inputs = keras.Input((8, 8, 3))
  h = L.Conv2D(8, 1, name='c')(inputs)
  a, b = keras.ops.split(h, 2, axis=-1)
  a = L.Conv2D(4, 3, padding='same', name='ca')(a)
  y = L.GlobalAveragePooling2D()(L.Concatenate()([a, b]))
  model = keras.Model(inputs, L.Dense(2, name='out')(y))
  # Counts split evenly: 2 + 2 of the 4 + 4 halves.
  slim = mk.slim_model(model, {'c': 4})
  assert slim.get_layer('ca').input.shape[-1] == 2
  assert analyze.analyze(slim).flops == mk.structure_cost(model, {'c': 4})
  # Alive vectors: 3 alive in the first half, 3 in the second.
  alive = np.array([1, 0, 1, 1, 1, 0, 1, 1], bool)
  _zero_dead(model.get_layer('c'), alive)
  slim = mk.slim_model(model, {'c': alive}, transfer_weights=True)
  assert slim.get_layer('ca').input.shape[-1] == 3
  assert analyze.analyze(slim).flops == mk.structure_cost(
      model, {'c': alive}) == 2 * 64 * (3 * 6 + 9 * 3 * 4) + 2 * 7 * 2
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype('float32')
  np.testing.assert_allclose(slim(x), model(x), atol=1e-5)
  with pytest.raises(ValueError, match="'c'.*split"):
    mk.slim_model(model, {'c': 3})


def test_einsum_dense_is_slimmable():
  inputs = keras.Input((5, 6))
  h = L.EinsumDense('abc,cd->abd', output_shape=(5, 7), bias_axes='d',
                    name='ed')(inputs)
  h = L.EinsumDense('abc,cd->abd', output_shape=(5, 4), name='ed2')(h)
  model = keras.Model(inputs, L.Dense(2, name='out')(L.Flatten()(h)))
  # FLOPs = 2 x 5 positions x (6 x 3 + 3 x 4) + 2 x 20 x 2.
  assert mk.structure_cost(model, {'ed': 3}) == 2 * 5 * 30 + 80
  alive = np.array([1, 0, 1, 1, 0, 0, 0], bool)
  kernel = model.get_layer('ed2').kernel.numpy()
  kernel[~alive] = 0
  model.get_layer('ed2').kernel.assign(kernel)
  slim = mk.slim_model(model, {'ed': alive}, transfer_weights=True)
  assert slim.get_layer('ed').kernel.shape == (6, 3)
  assert analyze.analyze(slim).flops == 2 * 5 * 30 + 80
  x = np.random.default_rng(0).normal(size=(2, 5, 6)).astype('float32')
  np.testing.assert_allclose(slim(x), model(x), atol=1e-5)


def test_branch_removed_upstream_costs_nothing_downstream():
  """b1 = 0 removes b2 too; the concat then loses b2's channels."""
  inputs = keras.Input((6, 6, 3))
  a = L.Conv2D(4, 1, name='a')(inputs)
  b = L.Conv2D(5, 1, name='b2')(L.Conv2D(3, 1, name='b1')(inputs))
  x = L.Conv2D(2, 1, name='head')(L.Concatenate()([a, b]))
  model = keras.Model(inputs, L.Dense(2, name='out')(L.Flatten()(x)))
  slim = mk.slim_model(model, {'b1': 0})
  assert 'b2' not in {l.name for l in slim.layers}
  assert slim.get_layer('head').input.shape[-1] == 4
  assert mk.structure_cost(model, {'b1': 0}) == analyze.analyze(slim).flops
