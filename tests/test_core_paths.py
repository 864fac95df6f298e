"""Graph-mode and Keras 3 paths agree with each other and with hand math.

Network (input 8x8x3):
  conv1 3x3 SAME stride 1 -> 4 ch, BN1, relu
  conv2 3x3 SAME stride 2 -> 6 ch, BN2, relu
  mean over H, W -> dense 6 -> 5
"""

import numpy as np
import pytest
import tensorflow as tf

from conftest import conv_bn_model
from conftest import graph_conv_bn
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.tools import structure_exporter

tf1 = tf.compat.v1

THRESHOLD = 0.01
H = W = 8
C_IN = 3
GAMMA1 = np.array([1.0, 0.0, 0.5, 0.005], np.float32)  # alive: 1.0, 0.5
GAMMA2 = np.array([0.3, 0.0, 2.0, -0.7, 0.001, 0.2], np.float32)  # alive 4
N_OUT = 5

ALIVE1 = 2
ALIVE2 = 4
REG1 = 1.0 + 0.0 + 0.5 + 0.005
REG2 = 0.3 + 0.0 + 2.0 + 0.7 + 0.001 + 0.2

# FLOPs coefficients k = 2 * output positions * kernel elements.
K1_FLOPS = 2 * (8 * 8) * (3 * 3)  # 1152
K2_FLOPS = 2 * (4 * 4) * (3 * 3)  # 288 (stride 2, SAME: 8 -> 4)
KD_FLOPS = 2
# Model size: k = kernel elements.
K1_SIZE, K2_SIZE, KD_SIZE = 9, 9, 1


def expected(k1, k2, kd, alive1=ALIVE1, reg1=REG1, alive2=ALIVE2,
             reg2=REG2):
  # Input image: unregularized, full width 3, reg 0.
  # Dense output: unregularized, full width 5, reg 0.
  cost = (k1 * C_IN * alive1 + k2 * alive1 * alive2 + kd * alive2 * N_OUT)
  term = (k1 * (C_IN * reg1 + alive1 * 0.0)
          + k2 * (alive1 * reg2 + alive2 * reg1)
          + kd * (alive2 * 0.0 + N_OUT * reg2))
  # d term / d |gamma1_i| and d |gamma2_j|.
  d1 = k1 * C_IN + k2 * alive2
  d2 = k2 * alive1 + kd * N_OUT
  return cost, term, d1, d2


FLOPS_COST, FLOPS_TERM, FLOPS_D1, FLOPS_D2 = expected(
    K1_FLOPS, K2_FLOPS, KD_FLOPS)
SIZE_COST, SIZE_TERM, SIZE_D1, SIZE_D2 = expected(K1_SIZE, K2_SIZE, KD_SIZE)


def _tf_flops_of_convs_and_matmuls(model, input_shape):
  """FLOPs of the Conv2D and MatMul ops of `model` at batch 1, as
  TensorFlow's own op statistics (tf.profiler) count them."""
  fn = tf.function(lambda x: model(x, training=False), autograph=False)
  graph = fn.get_concrete_function(tf.TensorSpec((1,) + input_shape)).graph
  types = {op.name: op.type for op in graph.get_operations()}
  options = tf1.profiler.ProfileOptionBuilder.float_operation()
  options['output'] = 'none'
  nodes = [tf1.profiler.profile(graph, cmd='scope', options=options)]
  total = 0
  while nodes:
    node = nodes.pop()
    if types.get(node.name) in ('Conv2D', 'MatMul'):
      total += node.float_ops
    nodes.extend(node.children)
  return total


def test_hand_numbers_are_what_tf_counts_for_the_alive_network():
  """The expected costs, counted another way: a network of only the alive
  channels (conv1 2, conv2 4), its FLOPs by TensorFlow's op statistics and
  its model size by its kernels' sizes."""
  alive = conv_bn_model((H, W, C_IN), (ALIVE1, ALIVE2), N_OUT,
                        strides=(1, 2))
  assert _tf_flops_of_convs_and_matmuls(alive, (H, W, C_IN)) == FLOPS_COST
  assert sum(int(np.prod(w.shape)) for w in alive.weights
             if w.path.endswith('kernel')) == SIZE_COST


def expected_grad(gamma, d):
  # d|g|/dg = sign(g); tf.abs has gradient 0 at 0.
  return np.sign(gamma) * d


REGULARIZERS = {
    'flops': (flop_regularizer.GammaFlopsRegularizer,
              FLOPS_COST, FLOPS_TERM, FLOPS_D1, FLOPS_D2),
    'size': (model_size_regularizer.GammaModelSizeRegularizer,
             SIZE_COST, SIZE_TERM, SIZE_D1, SIZE_D2),
}
COEFFS = {'flops': (K1_FLOPS, K2_FLOPS, KD_FLOPS),
          'size': (K1_SIZE, K2_SIZE, KD_SIZE)}


def _kernels():
  rng = np.random.RandomState(0)
  return (rng.randn(3, 3, C_IN, 4).astype(np.float32),
          rng.randn(3, 3, 4, 6).astype(np.float32),
          rng.randn(6, N_OUT).astype(np.float32))


def build_keras():
  k1, k2, kd = _kernels()
  model = conv_bn_model((H, W, C_IN), (4, 6), N_OUT, strides=(1, 2))
  model.get_layer('conv1').set_weights([k1])
  model.get_layer('conv2').set_weights([k2])
  model.get_layer('logits').set_weights([kd, np.zeros(N_OUT, np.float32)])
  for name, g in (('bn1', GAMMA1), ('bn2', GAMMA2)):
    n = len(g)
    model.get_layer(name).set_weights(
        [g, np.zeros(n, np.float32), np.zeros(n, np.float32),
         np.ones(n, np.float32)])
  return model


def build_graph(fused=True):
  """Returns (graph, logits, gamma1 var, gamma2 var).

  fused=False builds the BatchNorms with tf.nn.batch_normalization (the
  unfused Mul form) instead of FusedBatchNorm.
  """
  k1, k2, kd = _kernels()
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf.float32, [None, H, W, C_IN])
    kernel1 = tf1.get_variable('kernel1', initializer=k1)
    kernel2 = tf1.get_variable('kernel2', initializer=k2)
    dense_w = tf1.get_variable('dense_w', initializer=kd)
    gamma1 = tf1.get_variable('gamma1', initializer=GAMMA1)
    gamma2 = tf1.get_variable('gamma2', initializer=GAMMA2)

    def batch_norm(net, gamma, n, name):
      if not fused:
        return tf.nn.batch_normalization(net, tf.zeros([n]), tf.ones([n]),
                                         tf.zeros([n]), gamma, 1e-3)
      beta = tf1.get_variable('beta' + name[-1],
                              initializer=np.zeros(n, np.float32))
      return tf1.nn.fused_batch_norm(net, gamma, beta, name=name)[0]

    net = tf.nn.conv2d(images, kernel1, 1, 'SAME', name='conv1')
    net = tf.nn.relu(batch_norm(net, gamma1, 4, 'bn1'))
    net = tf.nn.conv2d(net, kernel2, 2, 'SAME', name='conv2')
    net = tf.nn.relu(batch_norm(net, gamma2, 6, 'bn2'))
    net = tf.reduce_mean(net, [1, 2])
    logits = tf.matmul(net, dense_w, name='logits')
  return graph, logits, gamma1, gamma2


@pytest.fixture(scope='module')
def keras_model():
  return build_keras()


@pytest.mark.parametrize('kind', sorted(REGULARIZERS))
def test_keras_cost_term_alive(keras_model, kind):
  cls, cost, term, _, _ = REGULARIZERS[kind]
  reg = cls(keras_model, THRESHOLD)
  assert float(reg.get_cost()) == pytest.approx(cost, rel=1e-9)
  assert float(reg.get_regularization_term()) == pytest.approx(term, rel=1e-5)
  exporter = structure_exporter.StructureExporter(reg.op_regularizer_manager)
  assert exporter.get_alive_counts() == {'conv1': ALIVE1, 'conv2': ALIVE2}


@pytest.mark.parametrize('kind', sorted(REGULARIZERS))
def test_graph_cost_term_alive(kind):
  cls, cost, term, _, _ = REGULARIZERS[kind]
  graph, logits, _, _ = build_graph()
  with graph.as_default():
    reg = cls([logits.op], THRESHOLD)
    cost_t, term_t = reg.get_cost(), reg.get_regularization_term()
    exporter = structure_exporter.StructureExporter(
        reg.op_regularizer_manager)
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      cost_v, term_v, alive = sess.run([cost_t, term_t, exporter.tensors])
  exporter.populate_tensor_values(alive)
  assert float(cost_v) == pytest.approx(cost, rel=1e-9)
  assert float(term_v) == pytest.approx(term, rel=1e-5)
  assert exporter.get_alive_counts() == {'conv1': ALIVE1, 'conv2': ALIVE2}


@pytest.mark.parametrize('kind', sorted(REGULARIZERS))
def test_graph_and_keras_agree(keras_model, kind):
  cls = REGULARIZERS[kind][0]
  keras_reg = cls(keras_model, THRESHOLD)
  graph, logits, _, _ = build_graph()
  with graph.as_default():
    reg = cls([logits.op], THRESHOLD)
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      cost_v, term_v = sess.run([reg.get_cost(),
                                 reg.get_regularization_term()])
  assert float(cost_v) == float(keras_reg.get_cost())
  assert float(term_v) == pytest.approx(
      float(keras_reg.get_regularization_term()), rel=1e-6)


@pytest.mark.parametrize('kind', sorted(REGULARIZERS))
def test_keras_gradients(keras_model, kind):
  cls, _, _, d1, d2 = REGULARIZERS[kind]
  reg = cls(keras_model, THRESHOLD)
  g1 = keras_model.get_layer('bn1').gamma
  g2 = keras_model.get_layer('bn2').gamma
  with tf.GradientTape() as tape:
    term = reg.get_regularization_term()
  grads = tape.gradient(term, [g1, g2])
  assert grads[0] is not None and grads[1] is not None
  grads = [np.asarray(g) for g in grads]
  assert np.any(grads[0] != 0) and np.any(grads[1] != 0)
  np.testing.assert_allclose(grads[0], expected_grad(GAMMA1, d1), rtol=1e-5)
  np.testing.assert_allclose(grads[1], expected_grad(GAMMA2, d2), rtol=1e-5)


@pytest.mark.parametrize('kind', sorted(REGULARIZERS))
def test_graph_gradients(kind):
  cls, _, _, d1, d2 = REGULARIZERS[kind]
  graph, logits, gamma1, gamma2 = build_graph()
  with graph.as_default():
    reg = cls([logits.op], THRESHOLD)
    term = reg.get_regularization_term()
    grads = tf1.gradients(term, [gamma1, gamma2])
    assert all(g is not None for g in grads)
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      grads = sess.run(grads)
  np.testing.assert_allclose(grads[0], expected_grad(GAMMA1, d1), rtol=1e-5)
  np.testing.assert_allclose(grads[1], expected_grad(GAMMA2, d2), rtol=1e-5)


@pytest.mark.parametrize('kind', sorted(REGULARIZERS))
def test_term_inside_tf_function(kind):
  cls, cost, term, d1, _ = REGULARIZERS[kind]
  model = build_keras()
  reg = cls(model, THRESHOLD)
  g1 = model.get_layer('bn1').gamma

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      t = reg.get_regularization_term()
    return t, reg.get_cost(), tape.gradient(t, g1)

  t, c, grad = step()
  assert float(t) == pytest.approx(term, rel=1e-5)
  assert float(c) == pytest.approx(cost, rel=1e-9)
  np.testing.assert_allclose(np.asarray(grad), expected_grad(GAMMA1, d1),
                             rtol=1e-5)
  # The function reads live variables: kill channel 0 of bn1 and re-run.
  new_g1 = GAMMA1.copy()
  new_g1[0] = 0.0
  g1.assign(new_g1)
  t2, c2, _ = step()
  # Now bn1 has one alive channel (0.5) and reg 0.505.
  cost2, term2, _, _ = expected(*COEFFS[kind], alive1=1, reg1=0.505)
  assert float(c2) == pytest.approx(cost2, rel=1e-9)
  assert float(c2) < float(c)
  assert float(t2) == pytest.approx(term2, rel=1e-5)


def test_cost_follows_variable_updates_eager():
  model = build_keras()
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  before = float(reg.get_cost())
  g2 = model.get_layer('bn2').gamma
  new_g2 = GAMMA2.copy()
  new_g2[4] = 1.0  # 0.001 -> 1.0: one more alive channel in conv2's group
  g2.assign(new_g2)
  after = float(reg.get_cost())
  # conv2 out +1: 288 * 2 * 1; dense in +1: 2 * 1 * 5.
  assert after - before == pytest.approx(288 * 2 + 2 * 5)


@pytest.mark.parametrize('kind', sorted(REGULARIZERS))
def test_graph_unfused_batch_norm(kind):
  cls, cost, term, d1, _ = REGULARIZERS[kind]
  graph, logits, gamma1, _ = build_graph(fused=False)
  with graph.as_default():
    reg = cls([logits.op], THRESHOLD)
    grad = tf1.gradients(reg.get_regularization_term(), [gamma1])[0]
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      cost_v, term_v, grad_v = sess.run(
          [reg.get_cost(), reg.get_regularization_term(), grad])
  assert float(cost_v) == pytest.approx(cost, rel=1e-9)
  assert float(term_v) == pytest.approx(term, rel=1e-5)
  np.testing.assert_allclose(grad_v, expected_grad(GAMMA1, d1), rtol=1e-5)


def test_graph_cost_of_op_subset():
  graph, logits, _, _ = build_graph()
  with graph.as_default():
    reg = flop_regularizer.GammaFlopsRegularizer([logits.op], THRESHOLD)
    conv1 = graph.get_operation_by_name('conv1')
    conv2 = graph.get_operation_by_name('conv2')
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      c1, c12 = sess.run([reg.get_cost([conv1]),
                          reg.get_cost([conv1, conv2])])
  assert float(c1) == K1_FLOPS * C_IN * ALIVE1  # 6912
  assert float(c12) == K1_FLOPS * C_IN * ALIVE1 + K2_FLOPS * ALIVE1 * ALIVE2


def test_graph_concat_depthwise_flatten():
  """tf.concat -> depthwise (multiplier 2) -> BN -> flatten -> matmul."""
  rng = np.random.RandomState(1)
  gamma_a = np.array([1.0, 0.0, 1.0], np.float32)
  gamma_b = np.array([0.0, 1.0, 1.0, 1.0, 0.001], np.float32)
  gamma_dw = np.ones(16, np.float32)
  gamma_dw[[2, 3]] = 0.0  # concat channel 1 (a[1]): dead everywhere
  gamma_dw[[14, 15]] = 0.0  # concat channel 7 (b[4]): dead everywhere
  # concat channel 3 (b[0]) is dead in bn_b but dw outputs 6, 7 live.
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf.float32, [None, 4, 4, 3])

    def var(name, value):
      return tf1.get_variable(name, initializer=np.asarray(value, np.float32))

    net_a = tf.nn.conv2d(images, var('ka', rng.randn(1, 1, 3, 3)), 1,
                         'SAME', name='conv_a')
    net_a, _, _ = tf1.nn.fused_batch_norm(net_a, var('ga', gamma_a),
                                          var('ba', np.zeros(3)), name='bn_a')
    net_b = tf.nn.conv2d(images, var('kb', rng.randn(1, 1, 3, 5)), 1,
                         'SAME', name='conv_b')
    net_b, _, _ = tf1.nn.fused_batch_norm(net_b, var('gb', gamma_b),
                                          var('bb', np.zeros(5)), name='bn_b')
    net = tf.concat([net_a, net_b], 3)
    net = tf.nn.depthwise_conv2d(net, var('kd', rng.randn(3, 3, 8, 2)),
                                 [1, 1, 1, 1], 'SAME', name='dw')
    net, _, _ = tf1.nn.fused_batch_norm(net, var('gd', gamma_dw),
                                        var('bd', np.zeros(16)), name='bn_dw')
    net = tf.reshape(tf.nn.relu(net), [-1, 4 * 4 * 16])
    logits = tf.matmul(net, var('w', rng.randn(256, 7)), name='logits')
    reg = flop_regularizer.GammaFlopsRegularizer([logits.op], THRESHOLD)
    exporter = structure_exporter.StructureExporter(
        reg.op_regularizer_manager)
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      cost, alive = sess.run([reg.get_cost(), exporter.tensors])
  exporter.populate_tensor_values(alive)
  # Alive concat channels: a -> 2, b -> 4 (b[0] kept by the dw BN).
  assert exporter.get_alive_counts() == {'conv_a': 2, 'conv_b': 4}
  dw_out = 2 * (2 + 4)
  expected = (2 * 16 * 3 * 2  # conv_a
              + 2 * 16 * 3 * 4  # conv_b
              + 2 * 16 * 9 * dw_out  # depthwise, linear
              + 2 * (16 * dw_out) * 7)  # flatten: 16 positions x 12 alive
  assert float(cost) == expected


def test_tf_function_with_input_signature(keras_model):
  fn = tf.function(lambda x: keras_model(x, training=False))
  reg = flop_regularizer.GammaFlopsRegularizer(
      fn, THRESHOLD, input_signature=[tf.TensorSpec([None, H, W, C_IN])])
  assert float(reg.get_cost()) == pytest.approx(FLOPS_COST, rel=1e-9)
  assert float(reg.get_regularization_term()) == pytest.approx(
      FLOPS_TERM, rel=1e-5)
  with tf.GradientTape() as tape:
    term = reg.get_regularization_term()
  grad = tape.gradient(term, keras_model.get_layer('bn2').gamma)
  np.testing.assert_allclose(np.asarray(grad),
                             expected_grad(GAMMA2, FLOPS_D2), rtol=1e-5)


def test_graph_matmul_with_the_weight_first_is_refused_by_name():
  # W h^T puts the units on axis 0: it was skipped, costing nothing.
  from morph_net.framework import errors  # pylint: disable=g-import-not-at-top
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, 6, 6, 3])
    h = tf.reduce_mean(graph_conv_bn(x, 4)[0], [1, 2])
    weight = tf.compat.v1.get_variable('w', [10, 4])
    logits = tf.matmul(weight, h, transpose_b=True, name='logits')
    with pytest.raises(errors.UnsupportedOpError,
                       match="MatMul 'logits' has its weight as the first"):
      flop_regularizer.GammaFlopsRegularizer([logits.op], 0.1)


@pytest.mark.parametrize('channels', [3, 6])
def test_graph_nchw_is_refused_by_name(channels):
  # With C == W (6) the channels-last reading was silently wrong; otherwise
  # a grouped-conv error that never said NCHW.
  from morph_net.framework import errors  # pylint: disable=g-import-not-at-top
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, channels, 6, 6])
    kernel = tf.compat.v1.get_variable('k', [3, 3, channels, 4])
    y = tf.nn.conv2d(x, kernel, 1, 'SAME', data_format='NCHW', name='conv')
    head = tf.compat.v1.get_variable('head', [4, 2])
    logits = tf.matmul(tf.reduce_mean(y, [2, 3]), head)
    with pytest.raises(errors.UnsupportedOpError,
                       match="'conv' \\(type Conv2D\\) uses data_format 'NCHW'"):
      flop_regularizer.GroupLassoFlopsRegularizer([logits.op], 0.1)


@pytest.mark.parametrize('op', ['space_to_depth', 'depth_to_space'])
def test_graph_space_to_depth_follows_its_input_channels(op):
  # Both were leaves: a conv after them counted every input channel, dead
  # or alive.
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3])
    h, gamma = graph_conv_bn(x, 8)
    h = getattr(tf.nn, op)(h, 2)  # 4x4x32 or 16x16x2
    c_in = 32 if op == 'space_to_depth' else 2
    positions = 16 if op == 'space_to_depth' else 256
    k2 = tf.compat.v1.get_variable('k2', [1, 1, c_in, 4])
    y = tf.reduce_mean(tf.nn.conv2d(h, k2, 1, 'SAME'), [1, 2])
    logits = tf.matmul(y, tf.compat.v1.get_variable('fc', [4, 2]))
    reg = flop_regularizer.GammaFlopsRegularizer([logits.op], 0.1)
    cost = reg.get_cost()
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      # depth_to_space: output channel j is made of inputs j and j + 2
      # (and j + 4, j + 6): killing 0, 2, 4, 6 kills output channel 0.
      sess.run(gamma.assign([0.0, 1.0] * 4))
      alive_next = 16 if op == 'space_to_depth' else 1  # 4 x 4, or 1
      assert sess.run(cost) == (2 * 64 * 27 * 4
                                + 2 * positions * alive_next * 4
                                + 2 * 4 * 2)
