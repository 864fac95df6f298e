"""Grouped convolutions and the function calls Keras wraps them in.

Keras 3 runs a grouped Conv2D (groups > 1) in a nested XLA function on CPU,
so the trace holds a StatefulPartitionedCall whose body is one Conv2D. The
graph view inlines such single-op calls; the conv handler finds the group
count from the kernel shape. Expected numbers are derived by hand:
conv FLOPs = 2 * H*W * kh*kw * sum over groups of alive_in_g * alive_out_g.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import errors
from morph_net.framework import op_regularizer_manager as orm
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import latency_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.tools import analyze
from morph_net.tools import structure_exporter

HW = 16 * 16


def _grouped_model():
  """groups=8 on 8 channels (depthwise), then groups=4: 8 -> 16."""
  x = keras.Input((16, 16, 8))
  y = keras.layers.Conv2D(8, 3, padding='same', groups=8, name='dw')(x)
  y = keras.layers.BatchNormalization(name='bn0')(y)
  y = keras.layers.Conv2D(8, 1, name='pw')(y)
  y = keras.layers.BatchNormalization(name='bn1')(y)
  y = keras.layers.Conv2D(16, 3, padding='same', groups=4, name='g4')(y)
  y = keras.layers.BatchNormalization(name='bn2')(y)
  y = keras.layers.GlobalAveragePooling2D()(y)
  y = keras.layers.Dense(3, name='head')(y)
  return keras.Model(x, y)


def _flops(dw_out, pw_in, pw_out, g4_in_blocks, g4_out_blocks, head_in):
  """Hand count with the given alive channels (per block for g4)."""
  return (2 * HW * 9 * dw_out
          + 2 * HW * 1 * pw_in * pw_out
          + 2 * HW * 9 * sum(a * b for a, b in zip(g4_in_blocks,
                                                   g4_out_blocks))
          + 2 * head_in * 3)


def _kill(model, layer, channels):
  bn = model.get_layer(layer)
  gamma = bn.gamma.numpy()
  gamma[list(channels)] = 0.0
  bn.gamma.assign(gamma)


def test_trace_holds_a_call_that_is_inlined():
  keras.backend.clear_session()
  model = _grouped_model()
  manager = orm.OpRegularizerManager(model)
  types = {c.op.name: c.op.type for c in manager.compute_ops}
  calls = [op for op in manager.view.graph.get_operations()
           if op.type == 'StatefulPartitionedCall']
  assert calls, 'Keras no longer wraps grouped convs; the test is stale'
  for call in calls:
    assert types[call.name] == 'Conv2D'


def test_costs_follow_groups_by_hand():
  keras.backend.clear_session()
  model = _grouped_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, gamma_threshold=0.1)
  size = model_size_regularizer.GammaModelSizeRegularizer(
      model, gamma_threshold=0.1)
  full = _flops(8, 8, 8, [2] * 4, [4] * 4, 16)
  assert float(reg.get_cost()) == full
  assert float(size.get_cost()) == 9 * 8 + 8 * 8 + 9 * 2 * 16 + 16 * 3
  # Two output channels of g4's first group die (bn2 channels 0, 1).
  _kill(model, 'bn2', [0, 1])
  assert float(reg.get_cost()) == _flops(8, 8, 8, [2] * 4, [2, 4, 4, 4], 14)
  # pw's channels 0 and 1 are g4's first input block: that block is gone.
  _kill(model, 'bn1', [0, 1])
  assert float(reg.get_cost()) == _flops(8, 8, 6, [0, 2, 2, 2],
                                         [2, 4, 4, 4], 14)
  # The depthwise-like conv follows its input, so bn0's channels are the
  # model input's channels, whose width the data fixes: they are never
  # regularized, and a dead bn0 gamma changes no cost.
  _kill(model, 'bn0', [0])
  assert float(reg.get_cost()) == _flops(8, 8, 6, [0, 2, 2, 2],
                                         [2, 4, 4, 4], 14)


def test_term_is_the_sum_over_groups():
  keras.backend.clear_session()
  model = _grouped_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, gamma_threshold=0.1)
  for name in ('bn0', 'bn1', 'bn2'):
    bn = model.get_layer(name)
    bn.gamma.assign(np.linspace(0.5, 1.5, bn.gamma.shape[0]))
  g0, g1, g2 = (np.abs(model.get_layer(n).gamma.numpy())
                for n in ('bn0', 'bn1', 'bn2'))
  # dw is depthwise and follows the model input: its channels (bn0's) are
  # the input's, never regularized (reg 0), so dw adds no term.
  del g0
  # pw: a_in r_out + a_out r_in, with r_in = 0.
  expected = 2 * HW * 1 * 8 * g1.sum()
  # g4: per group, a_in r_out + a_out r_in.
  for g in range(4):
    expected += 2 * HW * 9 * (2 * g2[4 * g:4 * g + 4].sum()
                              + 4 * g1[2 * g:2 * g + 2].sum())
  # head: a_out (3, fixed) * r_in (bn2).
  expected += 2 * 3 * g2.sum()
  assert float(reg.get_regularization_term()) == pytest.approx(expected,
                                                                rel=1e-5)


def test_graph_mode_grouped_kernel_matches_keras():
  """A tf.compat.v1 graph with grouped kernels (no call op) costs the same."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [1, 16, 16, 8])

    def conv_bn(t, k, c_in_per_group, c_out, name):
      w = tf.compat.v1.get_variable(name + '/w', [k, k, c_in_per_group, c_out])
      t = tf.nn.conv2d(t, w, 1, 'SAME', name=name)
      gamma = tf.compat.v1.get_variable(
          name + '/gamma', initializer=tf.ones([c_out]))
      t, _, _ = tf.compat.v1.nn.fused_batch_norm(
          t, gamma, tf.zeros([c_out]), tf.zeros([c_out]), tf.ones([c_out]),
          is_training=False)
      return t

    y = conv_bn(x, 3, 1, 8, 'dw')
    y = conv_bn(y, 1, 8, 8, 'pw')
    y = conv_bn(y, 3, 2, 16, 'g4')
    y = tf.reduce_mean(y, [1, 2])
    w = tf.compat.v1.get_variable('head/w', [16, 3])
    logits = tf.matmul(y, w)
    reg = flop_regularizer.GammaFlopsRegularizer([logits.op], 0.1)
    cost = reg.get_cost()
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      assert sess.run(cost) == _flops(8, 8, 8, [2] * 4, [4] * 4, 16)


def test_depthwise_like_conv_equals_depthwise_conv():
  """groups == channels costs and ties like DepthwiseConv2D."""

  def build(depthwise):
    keras.backend.clear_session()
    x = keras.Input((8, 8, 3))
    y = keras.layers.BatchNormalization(name='bn_a')(
        keras.layers.Conv2D(6, 1, name='a')(x))
    if depthwise:
      y = keras.layers.DepthwiseConv2D(3, depth_multiplier=2,
                                       padding='same', name='dw')(y)
    else:
      y = keras.layers.Conv2D(12, 3, groups=6, padding='same', name='dw')(y)
    y = keras.layers.BatchNormalization(name='bn_dw')(y)
    y = keras.layers.BatchNormalization(name='bn_b')(
        keras.layers.Conv2D(5, 1, name='b')(y))
    return keras.Model(x, keras.layers.Dense(2)(
        keras.layers.GlobalAveragePooling2D()(y)))

  results = []
  for depthwise in (True, False):
    model = build(depthwise)
    reg = flop_regularizer.GammaFlopsRegularizer(model, gamma_threshold=0.1)
    _kill(model, 'bn_a', [1])  # dw channels 2, 3 follow a's channel 1
    _kill(model, 'bn_dw', [2, 3])
    exporter = structure_exporter.StructureExporter(
        reg.op_regularizer_manager)
    results.append((float(reg.get_cost()), exporter.get_alive_counts()))
  assert results[0] == results[1]
  assert results[0][1] == {'a': 5, 'b': 5}


def test_group_lasso_sources_skip_depthwise_like_convs():
  keras.backend.clear_session()
  model = _grouped_model()
  reg = flop_regularizer.GroupLassoFlopsRegularizer(model, threshold=1e-3)
  manager = reg.op_regularizer_manager
  owners = sorted(manager.view.owner_of_variable(s.param)
                  for s in manager.sources)
  assert owners == ['g4', 'head', 'pw']
  assert float(reg.get_cost()) == _flops(8, 8, 8, [2] * 4, [4] * 4, 16)
  # Kill g4's whole second group of outputs (kernel channels 4..7).
  g4 = model.get_layer('g4')
  kernel = g4.kernel.numpy()
  kernel[..., 4:8] = 0.0
  g4.kernel.assign(kernel)
  assert float(reg.get_cost()) == _flops(8, 8, 8, [2] * 4, [4, 0, 4, 4], 12)


def test_analyze_and_latency_count_groups():
  keras.backend.clear_session()
  model = _grouped_model()
  report = analyze.analyze(model)
  rows = {l.name: l for l in report.layers}
  assert rows['g4'].flops == 2 * HW * 9 * 2 * 16
  assert rows['g4'].weights == 9 * 2 * 16
  assert rows['dw'].flops == 2 * HW * 9 * 8 and not rows['dw'].prunable
  assert report.flops == _flops(8, 8, 8, [2] * 4, [4] * 4, 16)
  # Latency on the idealized compute-bound device is FLOPs / peak.
  lat = latency_regularizer.GammaLatencyRegularizer(
      model, gamma_threshold=0.1, hardware='FLOP_LATENCY')
  ops = [c.op for c in lat.op_regularizer_manager.compute_ops
         if c.op.name.startswith('functional') and 'g4' in c.op.name]
  assert len(ops) == 1
  g4_full = float(lat.get_cost(ops))
  _kill(model, 'bn2', [4, 5, 6, 7])
  assert float(lat.get_cost(ops)) == pytest.approx(g4_full * 3 / 4)


# ------------------------------------------------------- nested calls
def _concrete(fn, shape):
  return tf.function(fn).get_concrete_function(tf.TensorSpec(shape))


def test_single_op_call_is_inlined_for_any_op_type():
  """A nested function around one Relu passes channels through."""
  w = tf.Variable(tf.ones([1, 1, 3, 4]))
  gamma = tf.Variable(tf.ones([4]))
  head = tf.Variable(tf.ones([4, 2]))
  relu = tf.function(tf.nn.relu)

  def net(x):
    y = tf.nn.conv2d(x, w, 1, 'SAME')
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(
        y, gamma, tf.zeros([4]), tf.zeros([4]), tf.ones([4]),
        is_training=False)
    y = relu(y)
    return tf.matmul(tf.reduce_mean(y, [1, 2]), head)

  reg = flop_regularizer.GammaFlopsRegularizer(
      _concrete(net, [1, 4, 4, 3]), gamma_threshold=0.1)
  manager = reg.op_regularizer_manager
  assert 'Relu' in {op.type for op in manager.ops}
  assert float(reg.get_cost()) == 2 * 16 * 3 * 4 + 2 * 4 * 2
  gamma.assign([1.0, 0.0, 1.0, 0.0])
  assert float(reg.get_cost()) == 2 * 16 * 3 * 2 + 2 * 2 * 2


def test_one_function_called_twice_resolves_each_calls_kernel():
  w1 = tf.Variable(tf.ones([1, 1, 3, 4]), name='k1')
  w2 = tf.Variable(tf.ones([1, 1, 4, 5]), name='k2')
  head = tf.Variable(tf.ones([5, 2]))

  @tf.function
  def conv(x, kernel):
    return tf.nn.conv2d(x, kernel, 1, 'SAME')

  def net(x):
    y = conv(x, w1)
    y = conv(y, w2)
    return tf.matmul(tf.reduce_mean(y, [1, 2]), head)

  reg = flop_regularizer.GroupLassoFlopsRegularizer(
      _concrete(net, [1, 4, 4, 3]), threshold=1e-3)
  params = {s.param.name for s in reg.op_regularizer_manager.sources}
  assert {'k1:0', 'k2:0'} <= params
  w2.assign(tf.concat([tf.zeros([1, 1, 4, 2]), tf.ones([1, 1, 4, 3])], -1))
  # conv1: 3 -> 4; conv2: 4 -> 3 alive; head: 3 -> 2.
  assert float(reg.get_cost()) == 2 * 16 * (3 * 4 + 4 * 3) + 2 * 3 * 2


def test_call_of_several_ops_is_a_clear_error():
  w = tf.Variable(tf.ones([1, 1, 3, 4]))

  @tf.function
  def block(y):
    return tf.nn.relu(y) * 2.0

  def net(x):
    return block(tf.nn.conv2d(x, w, 1, 'SAME'))

  with pytest.raises(errors.UnsupportedOpError) as info:
    orm.OpRegularizerManager(_concrete(net, [1, 4, 4, 3]))
  message = str(info.value)
  assert 'StatefulPartitionedCall' in message or 'PartitionedCall' in message
  assert "'Mul'" in message and "'Relu'" in message
  assert 'input_boundary' in message and 'Path from the output' in message


def test_graph_mode_call_reads_its_kernel_in_the_outer_graph():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [1, 4, 4, 3])
    w = tf.compat.v1.get_variable('w', [1, 1, 3, 4], use_resource=True,
                                  initializer=tf.compat.v1.ones_initializer())
    head = tf.compat.v1.get_variable(
        'head', [4, 2], initializer=tf.compat.v1.ones_initializer())

    @tf.function
    def conv(t):
      return tf.nn.conv2d(t, w, 1, 'SAME')

    y = conv(x)
    logits = tf.matmul(tf.reduce_mean(y, [1, 2]), head)
    assert y.op.type in ('StatefulPartitionedCall', 'PartitionedCall')
    reg = flop_regularizer.GroupLassoFlopsRegularizer([logits.op], 1e-3)
    cost = reg.get_cost()
    term = reg.get_regularization_term()
    kill = w.assign(tf.concat([tf.zeros([1, 1, 3, 1]),
                               tf.ones([1, 1, 3, 3])], -1))
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      assert sess.run(cost) == 2 * 16 * 3 * 4 + 2 * 4 * 2
      assert sess.run(term) > 0
      sess.run(kill)
      assert sess.run(cost) == 2 * 16 * 3 * 3 + 2 * 3 * 2


# ------------------------------------------------------------- slimming
def _convnext_like():
  """Stem, a groups == channels conv on a residual stream, a 1x1 MLP."""
  L = keras.layers
  x = keras.Input((8, 8, 3))
  s = L.BatchNormalization(name='stem_bn')(L.Conv2D(8, 3, padding='same',
                                                    name='stem')(x))
  y = L.Conv2D(16, 3, padding='same', groups=8, name='dwg')(s)  # mult 2
  y = L.BatchNormalization(name='dwg_bn')(y)
  y = L.ReLU()(L.BatchNormalization(name='up_bn')(
      L.Conv2D(12, 1, name='up')(y)))
  y = L.BatchNormalization(name='down_bn')(L.Conv2D(8, 1, name='down')(y))
  y = L.Add()([s, y])
  y = L.Dense(4, name='head')(L.GlobalAveragePooling2D()(y))
  return keras.Model(x, y)


def test_slim_depthwise_like_grouped_conv_with_weight_transfer(tmp_path):
  import morph_net.keras as mk  # pylint: disable=g-import-not-at-top
  keras.backend.clear_session()
  model = _convnext_like()
  rng = np.random.default_rng(0)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.3, n),
                         rng.normal(0, 0.3, n), rng.uniform(0.5, 2.0, n)])
  dead = {('stem_bn', 'down_bn', 'dwg_bn'): None, ('up_bn',): [0, 5, 7]}
  for bns, channels in dead.items():
    for bn in bns:
      gamma, beta, mean, var = model.get_layer(bn).get_weights()
      # Residual channel 3 dies; in dwg it is channels 6 and 7.
      chans = channels or ([6, 7] if bn == 'dwg_bn' else [3])
      gamma[chans] = 0
      beta[chans] = 0
      model.get_layer(bn).set_weights([gamma, beta, mean, var])
  reg = flop_regularizer.GammaFlopsRegularizer(model, gamma_threshold=1e-2)
  counts = structure_exporter.StructureExporter(
      reg.op_regularizer_manager).get_alive_counts()
  assert counts == {'stem': 7, 'up': 9, 'down': 7}
  slim = mk.slim_model(model, reg, transfer_weights=True)
  dwg = slim.get_layer('dwg')
  assert (dwg.filters, dwg.groups) == (14, 7)
  x = rng.normal(size=(2, 8, 8, 3)).astype('float32')
  np.testing.assert_allclose(slim(x, training=False),
                             model(x, training=False), atol=1e-5, rtol=1e-5)
  expected = float(reg.get_cost())
  assert float(flop_regularizer.GammaFlopsRegularizer(
      slim, 1e-2).get_cost()) == expected
  assert mk.structure_cost(model, counts) == expected
  path = str(tmp_path / 'slim.keras')
  slim.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(loaded(x, training=False),
                             slim(x, training=False), atol=1e-6)


def test_slim_keeps_the_group_count_of_a_grouped_conv():
  import morph_net.keras as mk  # pylint: disable=g-import-not-at-top
  keras.backend.clear_session()
  model = _grouped_model()
  slim = mk.slim_model(model, {'pw': 4, 'g4': 8})
  assert slim.get_layer('g4').groups == 4
  assert slim.get_layer('g4').filters == 8
  assert mk.structure_cost(model, {'pw': 4, 'g4': 8}) == (
      2 * HW * 9 * 8 + 2 * HW * 8 * 4 + 2 * HW * 9 * 4 * 8 // 4 + 2 * 8 * 3)
  slim(np.zeros([1, 16, 16, 8], np.float32))  # it runs
  with pytest.raises(ValueError, match='multiples of 4'):
    mk.slim_model(model, {'g4': 6})