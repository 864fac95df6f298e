"""One network model behind every number (issue: "One network model").

On tiny Keras models (plain CNN, dilated conv, EinsumDense MLP, CSP-style
split + concat block, grouped conv), every reporting path must give the same
FLOPs, and that number must equal an independent count from the layer shapes
recorded in a real forward pass:

    regularizer get_cost() == analyze().flops == structure_cost(model, {})
      == `morphnet analyze --json` flops == independent count

and after halving every exported count, structure_cost(model, half) equals
the FLOPs of slim_model(model, half), by our analysis and independently.
"""

import contextlib
import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import morph_net.keras as mk
from morph_net import cli
from morph_net.network_regularizers import flop_regularizer
from morph_net.tools import analyze
from morph_net.tools import structure_exporter

L = keras.layers


def _plain_cnn():
  inputs = keras.Input((12, 12, 3))
  x = L.Conv2D(8, 3, padding='same', use_bias=False, name='c1')(inputs)
  x = L.ReLU()(L.BatchNormalization(name='bn1')(x))
  x = L.Conv2D(12, 3, strides=2, name='c2')(x)
  x = L.ReLU()(L.BatchNormalization(name='bn2')(x))
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(4, name='logits')(x))


def _dilated_cnn():
  inputs = keras.Input((16, 16, 3))
  x = L.Conv2D(8, 3, padding='same', name='c1')(inputs)
  x = L.Conv2D(10, 3, dilation_rate=2, padding='same', name='dil_same')(x)
  x = L.ReLU()(x)
  x = L.Conv2D(6, 3, dilation_rate=3, name='dil_valid')(x)
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(4, name='logits')(x))


def _dilated_1d():
  # Keras runs a 1-D conv as a 2-D one: SpaceToBatchND -> ExpandDims ->
  # Conv2D -> Squeeze -> BatchToSpaceND. Counted on its sub-images, the
  # conv lost a factor of its output length over the sub-image's.
  inputs = keras.Input((19, 4))
  x = L.Conv1D(6, 3, dilation_rate=2, name='dil_valid')(inputs)
  x = L.Conv1D(8, 3, dilation_rate=2, padding='same', name='dil_same')(x)
  x = L.Conv1D(6, 2, dilation_rate=3, padding='causal', name='dil_causal')(x)
  x = L.GlobalAveragePooling1D()(x)
  return keras.Model(inputs, L.Dense(4, name='logits')(x))


def _einsum_mlp():
  inputs = keras.Input((5, 6))  # a sequence of 5 tokens of width 6
  x = L.EinsumDense('abc,cd->abd', output_shape=(None, 16), bias_axes='d',
                    name='up')(inputs)
  x = L.Activation('gelu')(x)
  x = L.EinsumDense('abc,cd->abd', output_shape=(None, 6), name='down')(x)
  x = L.Add()([x, inputs])
  x = L.GlobalAveragePooling1D()(x)
  x = L.EinsumDense('ab,bc->ac', output_shape=12, name='fc')(x)
  return keras.Model(inputs, L.Dense(3, name='logits')(x))


def _csp_block():
  inputs = keras.Input((8, 8, 3))
  x = L.Conv2D(16, 1, name='stem')(inputs)
  a, b = keras.ops.split(x, 2, axis=-1)
  b = L.Conv2D(8, 3, padding='same', name='branch')(b)
  x = L.Concatenate()([a, b])
  x = L.Conv2D(12, 1, name='merge')(x)
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(4, name='logits')(x))


def _grouped_conv():
  inputs = keras.Input((8, 8, 4))
  x = L.Conv2D(8, 1, name='c1')(inputs)
  # Halving keeps every width a multiple of the group count.
  x = L.Conv2D(16, 3, padding='same', groups=4, name='grouped')(x)
  x = L.Conv2D(8, 1, name='c2')(x)
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(4, name='logits')(x))


_MODELS = {'plain_cnn': _plain_cnn, 'dilated': _dilated_cnn,
           'dilated_1d': _dilated_1d,
           'einsum_mlp': _einsum_mlp, 'csp_split': _csp_block,
           'grouped_conv': _grouped_conv}


def independent_flops(model):
  """FLOPs from layer shapes recorded in a real forward pass.

  Conv: 2 x output positions x kernel elements x C_in / groups x C_out;
  Dense / EinsumDense with a [C_in, C_out] kernel: 2 x positions x C_in x
  C_out (positions: the input's dims between batch and channels).
  """
  convs = (L.Conv1D, L.Conv2D)
  layers = [l for l in model.layers
            if isinstance(l, convs + (L.Dense, L.EinsumDense))]
  probe = keras.Model(model.inputs,
                      [l.input for l in layers] + [l.output for l in layers])
  shape = [2] + list(model.inputs[0].shape[1:])
  values = probe(np.random.RandomState(0).randn(*shape).astype('float32'))
  ins, outs = values[:len(layers)], values[len(layers):]
  total = 0.0
  for layer, x, y in zip(layers, ins, outs):
    x_shape, y_shape = tuple(x.shape), tuple(y.shape)
    kernel = tuple(layer.kernel.shape)
    if isinstance(layer, convs):
      positions = np.prod(y_shape[1:-1])
      total += 2.0 * positions * np.prod(kernel[:-1]) * kernel[-1]
    else:
      assert len(kernel) == 2, layer.name
      total += 2.0 * np.prod(x_shape[1:-1]) * kernel[0] * kernel[1]
  return total


def _cli_flops(model, tmp_path):
  path = str(tmp_path / 'model.keras')
  model.save(path)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = cli.main(['analyze', path, '--json'])
  assert code in (0, None)
  return json.loads(out.getvalue())['flops']


@pytest.mark.parametrize('name', sorted(_MODELS))
def test_every_reporting_path_gives_the_independent_flops(name, tmp_path):
  keras.utils.set_random_seed(1)
  model = _MODELS[name]()
  expected = independent_flops(model)
  reg = flop_regularizer.GroupLassoFlopsRegularizer(model, threshold=1e-4)
  assert float(reg.get_cost()) == pytest.approx(expected, rel=1e-9)
  assert analyze.analyze(model).flops == pytest.approx(expected, rel=1e-9)
  assert mk.structure_cost(model, {}) == pytest.approx(expected, rel=1e-9)
  assert _cli_flops(model, tmp_path) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize('name', sorted(_MODELS))
def test_halved_structure_costs_what_its_slim_model_costs(name):
  keras.utils.set_random_seed(2)
  model = _MODELS[name]()
  reg = flop_regularizer.GroupLassoFlopsRegularizer(model, threshold=1e-4)
  exporter = structure_exporter.StructureExporter(reg.op_regularizer_manager)
  counts = exporter.get_alive_counts()
  assert counts  # every model has prunable layers
  half = {k: max(1, v // 2) for k, v in counts.items()}
  planned = mk.structure_cost(model, half)
  slim = mk.slim_model(model, half)
  assert analyze.analyze(slim).flops == pytest.approx(planned, rel=1e-9)
  assert independent_flops(slim) == pytest.approx(planned, rel=1e-9)
  assert planned < analyze.analyze(model).flops


def test_dilated_graph_mode_atrous_conv_counts_its_real_positions():
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, 16, 16, 3])
    kernel = tf.compat.v1.get_variable('k', [3, 3, 3, 5])
    net = tf.nn.atrous_conv2d(images, kernel, 2, 'SAME')
    report = analyze.analyze([net.op])
  # 16 x 16 output positions, not the 8 x 8 of each space-to-batch image.
  assert report.flops == 2 * 16 * 16 * 9 * 3 * 5


def test_mul_override_keeps_batch_norm_detection():
  model = _plain_cnn()
  from morph_net import framework  # pylint: disable=g-import-not-at-top
  reg = flop_regularizer.GammaFlopsRegularizer(
      model, 0.01, op_handler_dict={'Mul': framework.GroupingOpHandler()})
  sources = reg.op_regularizer_manager.sources
  assert len(sources) == 2
  assert float(reg.get_cost()) == pytest.approx(independent_flops(model))


def test_nested_blocks_with_colliding_names_export_distinct_keys():
  def block(name):
    inputs = keras.Input((4,))
    return keras.Model(inputs, L.Dense(32, name='fc')(inputs), name=name)

  inputs = keras.Input((4,))
  x = L.Concatenate()([block('b1')(inputs), block('b2')(inputs)])
  model = keras.Model(inputs, L.Dense(3, name='head')(x))
  reg = flop_regularizer.GroupLassoFlopsRegularizer(model, threshold=1e-3)
  kernel = model.get_layer('b1').get_layer('fc').kernel
  value = kernel.numpy()
  value[:, 2:] = 0.0  # kill 30 of b1/fc's 32 units
  kernel.assign(value)
  counts = structure_exporter.StructureExporter(
      reg.op_regularizer_manager).get_alive_counts()
  assert counts == {'b1/fc': 2, 'b2/fc': 32}
  slim = mk.slim_model(model, counts)
  assert slim.get_layer('b1').get_layer('fc').units == 2
  assert slim.get_layer('b2').get_layer('fc').units == 32


# ------------------------------------------- removals and what they take
def _chain_into_concat():
  inputs = keras.Input((8, 8, 3))
  a = L.Conv2D(4, 3, padding='same', name='a')(inputs)
  b = L.Conv2D(5, 3, padding='same', name='b')(a)  # read only by c
  c = L.Conv2D(6, 3, padding='same', name='c')(b)
  return keras.Model(inputs, L.Conv2D(2, 1, name='head')(
      L.Concatenate()([c, a])))


def _chain_into_add():
  inputs = keras.Input((8, 8, 3))
  a = L.Conv2D(4, 3, padding='same', name='a')(inputs)
  b = L.Conv2D(5, 3, padding='same', name='b')(a)
  c = L.Conv2D(4, 3, padding='same', name='c')(b)
  return keras.Model(inputs, L.Conv2D(2, 1, name='head')(L.Add()([a, c])))


def _spatial_concat():
  inputs = keras.Input((8, 8, 3))
  a = L.Conv2D(6, 3, padding='same', name='a')(inputs)
  b = L.Conv2D(6, 3, padding='same', name='b')(inputs)
  x = L.Concatenate(axis=1)([a, b])  # 16 x 8: rows, not channels
  g = L.Conv2D(6, 1, activation='sigmoid', name='g')(x)
  x = L.Conv2D(4, 3, name='c2')(L.Multiply()([x, g]))
  return keras.Model(inputs, L.Dense(3, name='fc')(
      L.GlobalAveragePooling2D()(x)))


@pytest.mark.parametrize('build, structure, gone', [
    # b fed only c: removing c leaves b unread, and the rebuild drops it.
    (_chain_into_concat, {'c': 0}, {'b', 'c'}),
    # The zero ties a and c; a keeps one channel (the output needs it).
    (_chain_into_add, {'c': 0}, {'b', 'c'}),
    # Along rows, dropping a would halve what g and c2 see: a is kept.
    (_spatial_concat, {'g': 0}, set()),
])
def test_structure_cost_is_the_cost_of_what_slim_keeps(build, structure,
                                                       gone):
  keras.utils.set_random_seed(3)
  model = build()
  planned = mk.structure_cost(model, structure)
  with pytest.warns(UserWarning):
    slim = mk.slim_model(model, structure)
  names = {l.name for l in slim.layers}
  assert not gone & names
  assert independent_flops(slim) == pytest.approx(planned, rel=1e-9)
  assert analyze.analyze(slim).flops == pytest.approx(planned, rel=1e-9)
  for layer in model.layers:  # what survives reads what it read before
    if layer.name in names and not isinstance(layer, L.InputLayer):
      assert slim.get_layer(layer.name).output.shape[:-1] == (
          layer.output.shape[:-1])


def test_slim_warns_about_a_layer_only_removed_layers_read():
  with pytest.warns(UserWarning, match=r"'b' \(5 channels\) is left out"):
    slim = mk.slim_model(_chain_into_concat(), {'c': 0})
  assert 'b' not in {layer.name for layer in slim.layers}


def test_expand_structure_lands_on_the_slim_cost_with_a_removed_branch():
  model = _chain_into_concat()
  target = 0.5 * analyze.analyze(model).flops
  counts = mk.expand_structure(model, {'a': 4, 'b': 5, 'c': 0}, target)
  with pytest.warns(UserWarning, match='left out'):
    slim = mk.slim_model(model, counts)
  actual = independent_flops(slim)
  assert actual == pytest.approx(mk.structure_cost(model, counts), rel=1e-9)
  assert 0.9 * target <= actual <= target
