"""StructureExporter: keys, counts, file naming, JSON, atomic writes."""

import io
import warnings
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import keras

from morph_net.network_regularizers import flop_regularizer
from morph_net.tools import structure_exporter

tf1 = tf.compat.v1
L = keras.layers
THRESHOLD = 0.01


def set_gamma(model, name, gamma):
  gamma = np.asarray(gamma, np.float32)
  n = len(gamma)
  model.get_layer(name).set_weights(
      [gamma, np.zeros(n, np.float32), np.zeros(n, np.float32),
       np.ones(n, np.float32)])


def exporter_for(model, **kwargs):
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  return structure_exporter.StructureExporter(reg.op_regularizer_manager,
                                              **kwargs)


GAMMA = [1.0, 0.0, 0.5, 0.001]  # 2 alive of 4


# ------------------------------------------------------- Keras layer kinds
def _conv1d():
  inputs = keras.Input((16, 3))
  x = L.Conv1D(4, 3, use_bias=False, name='c1d')(inputs)
  x = L.BatchNormalization(name='bn')(x)
  x = L.GlobalAveragePooling1D()(L.ReLU()(x))
  return keras.Model(inputs, L.Dense(2, name='logits')(x)), 'c1d'


def _conv2d():
  inputs = keras.Input((8, 8, 3))
  x = L.Conv2D(4, 3, use_bias=False, name='c2d')(inputs)
  x = L.BatchNormalization(name='bn')(x)
  x = L.GlobalAveragePooling2D()(L.ReLU()(x))
  return keras.Model(inputs, L.Dense(2, name='logits')(x)), 'c2d'


def _conv3d():
  inputs = keras.Input((4, 4, 4, 3))
  x = L.Conv3D(4, 3, use_bias=False, name='c3d')(inputs)
  x = L.BatchNormalization(name='bn')(x)
  x = L.GlobalAveragePooling3D()(L.ReLU()(x))
  return keras.Model(inputs, L.Dense(2, name='logits')(x)), 'c3d'


def _conv2d_transpose():
  inputs = keras.Input((4, 4, 3))
  x = L.Conv2DTranspose(4, 3, strides=2, padding='same', use_bias=False,
                        name='tconv')(inputs)
  x = L.BatchNormalization(name='bn')(x)
  x = L.GlobalAveragePooling2D()(L.ReLU()(x))
  return keras.Model(inputs, L.Dense(2, name='logits')(x)), 'tconv'


def _dense():
  inputs = keras.Input((6,))
  x = L.Dense(4, use_bias=False, name='fc')(inputs)
  x = L.BatchNormalization(name='bn')(x)
  return keras.Model(inputs, L.Dense(2, name='logits')(L.ReLU()(x))), 'fc'


def _separable():
  inputs = keras.Input((8, 8, 3))
  x = L.SeparableConv2D(4, 3, use_bias=False, name='sep')(inputs)
  x = L.BatchNormalization(name='bn')(x)
  x = L.GlobalAveragePooling2D()(L.ReLU()(x))
  return keras.Model(inputs, L.Dense(2, name='logits')(x)), 'sep'


@pytest.mark.parametrize('build', [_conv1d, _conv2d, _conv3d,
                                   _conv2d_transpose, _dense, _separable],
                         ids=lambda f: f.__name__.strip('_'))
def test_keras_keys_are_layer_names(build):
  model, layer_name = build()
  set_gamma(model, 'bn', GAMMA)
  exporter = exporter_for(model)
  # Only the layer followed by the BN is regularized; 'logits' is not.
  assert exporter.get_alive_counts() == {layer_name: 2}
  assert set(exporter.tensors) == {layer_name}
  alive = np.asarray(exporter.tensors[layer_name])
  np.testing.assert_array_equal(alive, [True, False, True, False])


def test_keras_counts_follow_variable_updates():
  model, name = _conv2d()
  set_gamma(model, 'bn', GAMMA)
  exporter = exporter_for(model)
  assert exporter.get_alive_counts() == {name: 2}
  model.get_layer('bn').gamma.assign([1.0, 1.0, 1.0, 1.0])
  assert exporter.get_alive_counts() == {name: 4}


# ------------------------------------------------------------------- files
def test_file_naming_and_json(tmp_path):
  model, name = _conv2d()
  set_gamma(model, 'bn', GAMMA)
  exporter = exporter_for(model)
  path = exporter.create_file_and_save_alive_counts(str(tmp_path), 1234)
  expected_path = os.path.join(str(tmp_path), 'learned_structure',
                               'alive_1234')
  assert os.path.abspath(path) == os.path.abspath(expected_path)
  with open(expected_path) as f:
    assert json.load(f) == {name: 2}
  # Only the final file is left in the directory: no temp files.
  assert os.listdir(os.path.join(str(tmp_path), 'learned_structure')) == [
      'alive_1234']


def test_second_step_new_file_and_overwrite(tmp_path):
  model, name = _conv2d()
  set_gamma(model, 'bn', GAMMA)
  exporter = exporter_for(model)
  exporter.create_file_and_save_alive_counts(str(tmp_path), 0)
  model.get_layer('bn').gamma.assign([1.0, 1.0, 1.0, 0.0])
  exporter.create_file_and_save_alive_counts(str(tmp_path), 10)
  exporter.create_file_and_save_alive_counts(str(tmp_path), 10)
  directory = os.path.join(str(tmp_path), 'learned_structure')
  assert sorted(os.listdir(directory)) == ['alive_0', 'alive_10']
  with open(os.path.join(directory, 'alive_0')) as f:
    assert json.load(f) == {name: 2}
  with open(os.path.join(directory, 'alive_10')) as f:
    assert json.load(f) == {name: 3}


def test_save_alive_counts_to_open_file():
  model, name = _conv2d()
  set_gamma(model, 'bn', GAMMA)
  buf = io.StringIO()
  exporter_for(model).save_alive_counts(buf)
  assert json.loads(buf.getvalue()) == {name: 2}


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path,
                                                          monkeypatch):
  path = os.path.join(str(tmp_path), 'alive_5')
  structure_exporter.write_atomically(path, '{"old": 1}')

  def broken_replace(src, dst):
    raise OSError('disk on fire')

  monkeypatch.setattr(os, 'replace', broken_replace)
  with pytest.raises(OSError):
    structure_exporter.write_atomically(path, '{"new": 2}')
  monkeypatch.undo()
  assert os.listdir(str(tmp_path)) == ['alive_5']
  with open(path) as f:
    assert json.load(f) == {'old': 1}


# -------------------------------------------------------------- graph mode
def _graph_net():
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf.float32, [None, 8, 8, 3])
    with tf1.variable_scope('net'):
      k1 = tf1.get_variable('k1', [3, 3, 3, 4])
      g1 = tf1.get_variable('g1', initializer=np.array(GAMMA, np.float32))
      b1 = tf1.get_variable('b1', initializer=tf.zeros([4]))
      k2 = tf1.get_variable('k2', [3, 3, 4, 3])
      g2 = tf1.get_variable('g2', initializer=np.array([1.0, 1.0, 0.0],
                                                       np.float32))
      b2 = tf1.get_variable('b2', initializer=tf.zeros([3]))
      net = tf.nn.conv2d(images, k1, 1, 'SAME', name='conv1')
      net, _, _ = tf1.nn.fused_batch_norm(net, g1, b1, name='bn1')
      net = tf.nn.conv2d(tf.nn.relu(net), k2, 1, 'SAME', name='conv2')
      net, _, _ = tf1.nn.fused_batch_norm(net, g2, b2, name='bn2')
      out = tf.reduce_mean(tf.nn.relu(net), [1, 2])
      # Channels of the output boundary are never regularized: end with a
      # matmul so conv2's channels are prunable.
      w = tf1.get_variable('w', [3, 2])
      out = tf.matmul(out, w, name='logits')
  return graph, out


@pytest.mark.parametrize('remove_prefix,keys', [
    (False, {'net/conv1': 2, 'net/conv2': 2}),
    (True, {'conv1': 2, 'conv2': 2}),
])
def test_graph_mode_requires_populate(remove_prefix, keys):
  graph, out = _graph_net()
  with graph.as_default():
    reg = flop_regularizer.GammaFlopsRegularizer([out.op], THRESHOLD)
    exporter = structure_exporter.StructureExporter(
        reg.op_regularizer_manager, remove_common_prefix=remove_prefix)
    with pytest.raises(ValueError, match='populate_tensor_values'):
      exporter.get_alive_counts()
    tensors = exporter.tensors
    assert set(tensors) == set(keys)
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      values = sess.run(tensors)
  with pytest.raises(ValueError):
    exporter.populate_tensor_values({k: v for k, v in list(values.items())[1:]})
  exporter.populate_tensor_values(values)
  assert exporter.get_alive_counts() == keys


def test_graph_mode_file(tmp_path):
  graph, out = _graph_net()
  with graph.as_default():
    reg = flop_regularizer.GammaFlopsRegularizer([out.op], THRESHOLD)
    exporter = structure_exporter.StructureExporter(
        reg.op_regularizer_manager, remove_common_prefix=True)
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      exporter.populate_tensor_values(sess.run(exporter.tensors))
  path = exporter.create_file_and_save_alive_counts(str(tmp_path), 3)
  with open(path) as f:
    assert json.load(f) == {'conv1': 2, 'conv2': 2}
  assert os.listdir(os.path.dirname(path)) == ['alive_3']


# (build, FLOPs, model size) by hand; the BN leaves 2 of 4 channels alive
# and 'logits' costs 2*2*2 FLOPs and 2*2 weights.
_HAND_COSTS = [
    # Conv1D: 16 -> 14 positions (valid, k=3), 3 inputs.
    (_conv1d, 2 * 14 * 3 * 3 * 2 + 8, 3 * 3 * 2 + 4),
    # Conv2D: 8x8 -> 6x6 (valid 3x3).
    (_conv2d, 2 * 36 * 9 * 3 * 2 + 8, 9 * 3 * 2 + 4),
    # Conv3D: 4^3 -> 2^3 (valid 3x3x3).
    (_conv3d, 2 * 8 * 27 * 3 * 2 + 8, 27 * 3 * 2 + 4),
    # Conv2DTranspose: positions of the (4x4) input.
    (_conv2d_transpose, 2 * 16 * 9 * 3 * 2 + 8, 9 * 3 * 2 + 4),
    # Dense 6 -> 4.
    (_dense, 2 * 6 * 2 + 8, 6 * 2 + 4),
    # Separable: depthwise (linear, 3 unregularized channels) + pointwise.
    (_separable, 2 * 36 * 9 * 3 + 2 * 36 * 1 * 3 * 2 + 8,
     9 * 3 + 3 * 2 + 4),
]


@pytest.mark.parametrize('build,flops,size', _HAND_COSTS,
                         ids=[b.__name__.strip('_') for b, _, _ in
                              _HAND_COSTS])
def test_layer_kind_costs(build, flops, size):
  from morph_net.network_regularizers import model_size_regularizer  # pylint: disable=g-import-not-at-top
  model, _ = build()
  set_gamma(model, 'bn', GAMMA)
  assert float(flop_regularizer.GammaFlopsRegularizer(
      model, THRESHOLD).get_cost()) == flops
  assert float(model_size_regularizer.GammaModelSizeRegularizer(
      model, THRESHOLD).get_cost()) == size


def test_nested_model_keys_are_inner_layer_names():
  inner_in = keras.Input((8, 8, 3))
  y = L.Conv2D(4, 3, use_bias=False, name='inner_conv')(inner_in)
  y = L.BatchNormalization(name='bn')(y)
  inner = keras.Model(inner_in, L.ReLU()(y), name='backbone')
  inputs = keras.Input((8, 8, 3))
  x = L.GlobalAveragePooling2D()(inner(inputs))
  model = keras.Model(inputs, L.Dense(2, name='logits')(x))
  inner.get_layer('bn').set_weights(
      [np.array(GAMMA, np.float32), np.zeros(4, np.float32),
       np.zeros(4, np.float32), np.ones(4, np.float32)])
  assert exporter_for(model).get_alive_counts() == {'inner_conv': 2}


def test_shared_layer_called_twice_is_one_key():
  inputs = keras.Input((8, 8, 3))
  conv = L.Conv2D(4, 1, use_bias=False, name='shared')
  bn = L.BatchNormalization(name='bn')
  a = bn(conv(inputs))
  b = bn(conv(L.ReLU()(inputs)))
  x = L.GlobalAveragePooling2D()(L.Add()([a, b]))
  model = keras.Model(inputs, L.Dense(2, name='logits')(x))
  set_gamma(model, 'bn', GAMMA)
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  counts = structure_exporter.StructureExporter(
      reg.op_regularizer_manager).get_alive_counts()
  assert counts == {'shared': 2}
  # Two applications, each 2*64*3*2; dense 2*2*2.
  assert float(reg.get_cost()) == 2 * (2 * 64 * 3 * 2) + 8


def test_a_directory_with_later_steps_of_another_run_is_warned(tmp_path):
  """A fresh run whose first counts equal an earlier run's writes nothing
  new at those steps; the earlier run's later files stay the 'latest'
  that last_structure reads: said once, naming them."""
  model, _ = _conv2d()
  set_gamma(model, 'bn', GAMMA)
  first = exporter_for(model)
  for step in (0, 10, 20, 30):
    first.create_file_and_save_alive_counts(str(tmp_path), step)
  again = exporter_for(model)
  with pytest.warns(RuntimeWarning, match=r'alive_20, alive_30\)'):
    path = again.create_file_and_save_alive_counts(str(tmp_path), 10)
  assert os.path.basename(path) == 'alive_10'  # the earlier run's file
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # once per directory
    again.create_file_and_save_alive_counts(str(tmp_path), 20)
    # Going on from the last step (a resumed run) is not warned.
    exporter_for(model).create_file_and_save_alive_counts(str(tmp_path), 30)
