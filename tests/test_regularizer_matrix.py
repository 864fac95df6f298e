"""Every family x target on one small network with a concat and two heads.

The network, built both as a `tf.compat.v1` graph (FusedBatchNorm) and as a
Keras 3 model (unfused BatchNorm), with 1x1 convs on a 4x4 input:

    x[4,4,2] -> conv_a (3) -> bn_a -> relu -+
             -> conv_b (2) -> bn_b -> relu -+-> concat (5)
    concat -> conv_h1 (4) -> bn_h1 -> relu -> mean -> dense1 (2)  [head 1]
    concat -> conv_h2 (3) -> bn_h2 -> relu -> mean -> dense2 (1)  [head 2]

Gammas (Gamma family) and per-channel kernel magnitudes (GroupLasso family,
each output channel's kernel is constant so RMS = mean|w| = |v|) are equal
(the LogisticSigmoid family gates after each ReLU instead, see LOGITS):
    a: [1, 0, 1]   b: [.5, .5]   h1: [1, 1, 0, 0]   h2: [2, 0, 0]
so with threshold 0.1 both families see the same alive counts and
regularization sums:  alive a=2 b=2 h1=2 h2=1;  reg a=2 b=1 h1=2 h2=2.
The concat group has alive 4 and reg 3. The heads' outputs are the network's
outputs and are never regularized (alive = width, reg = 0).
"""

import numpy as np
import pytest
import tensorflow as tf
import keras

from morph_net.network_regularizers import activation_regularizer
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import hardware
from morph_net.network_regularizers import latency_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.probabilistic_gating import activation_gating

tf1 = tf.compat.v1

VALUES = {'a': [1.0, 0.0, 1.0], 'b': [0.5, 0.5], 'h1': [1.0, 1.0, 0.0, 0.0],
          'h2': [2.0, 0.0, 0.0]}
IN_CH = {'a': 2, 'b': 2, 'h1': 5, 'h2': 5}
HEADS = {'dense1': (4, 2), 'dense2': (3, 1)}
P = 16  # spatial positions of every conv

# ----------------------------------------------------------------- by hand
ALIVE = {'a': 2, 'b': 2, 'h1': 2, 'h2': 1}
GAMMA_REG = {'a': 2.0, 'b': 1.0, 'h1': 2.0, 'h2': 2.0}


def io_table(reg):
  """(alive_in, alive_out, reg_in, reg_out) of every compute op."""
  c_alive, c_reg = ALIVE['a'] + ALIVE['b'], reg['a'] + reg['b']
  return {'a': (2, ALIVE['a'], 0, reg['a']), 'b': (2, ALIVE['b'], 0, reg['b']),
          'h1': (c_alive, ALIVE['h1'], c_reg, reg['h1']),
          'h2': (c_alive, ALIVE['h2'], c_reg, reg['h2']),
          'dense1': (ALIVE['h1'], 2, reg['h1'], 0),
          'dense2': (ALIVE['h2'], 1, reg['h2'], 0)}


IO = io_table(GAMMA_REG)
K_FLOPS = {'a': 2 * P, 'b': 2 * P, 'h1': 2 * P, 'h2': 2 * P, 'dense1': 2,
           'dense2': 2}
K_SIZE = dict.fromkeys(IO, 1)


def bilinear(k, io=None):
  io = io or IO
  cost = sum(k[o] * ai * ao for o, (ai, ao, _, _) in io.items())
  term = sum(k[o] * (ai * ro + ao * ri) for o, (ai, ao, ri, ro) in io.items())
  return cost, term


def expected(reg, with_bn=True):
  io = io_table(reg)
  return {
      'flops': bilinear(K_FLOPS, io),  # Gamma: (650, 1004)
      'model_size': bilinear(K_SIZE, io),  # Gamma: (25, 37)
      'activations': (sum(v[1] for v in io.values()),
                      sum(v[3] for v in io.values())),  # Gamma: (10, 7)
      # An idealized device with infinite bandwidth: latency = FLOPs.
      'flop_latency': bilinear(K_FLOPS, io),
      'memory_latency': _memory_latency(reg, with_bn),
  }


def _memory_latency(group_reg, with_bn=True):
  """Bytes moved (float32), MorphNet's roofline on MEMORY_LATENCY.

  Gates (a Mul by a [C] mask) are part of their layer and move nothing.
  """
  b = 4
  alive = {'x': 2, 'a': 2, 'b': 2, 'c': 4, 'h1': 2, 'h2': 1, 'm1': 2,
           'm2': 1, 'd1': 2, 'd2': 1}
  reg = {'x': 0, 'c': group_reg['a'] + group_reg['b'], 'm1': group_reg['h1'],
         'm2': group_reg['h2'], 'd1': 0, 'd2': 0, **group_reg}
  pos = {'m1': 1, 'm2': 1, 'd1': 1, 'd2': 1}
  # op: (linear tensors read/written, weight bytes per alive pair, in, out)
  bns = 2 if with_bn else 1  # BatchNorm and Relu each read and write
  ops = [
      (['x', 'a'], b, 'x', 'a'), (['x', 'b'], b, 'x', 'b'),  # convs
      *[(['a', 'a'], 0, None, None), (['b', 'b'], 0, None, None)] * bns,
      (['c', 'c'], 0, None, None),  # concat reads what it writes
      (['c', 'h1'], b, 'c', 'h1'), (['c', 'h2'], b, 'c', 'h2'),
      *[(['h1', 'h1'], 0, None, None), (['h2', 'h2'], 0, None, None)] * bns,
      (['m1', 'd1'], b, 'm1', 'd1'), (['m2', 'd2'], b, 'm2', 'd2'),
  ]
  cost = term = 0.0
  for tensors, w, t_in, t_out in ops:
    cost += sum(pos.get(t, P) * b * alive[t] for t in tensors)
    term += sum(pos.get(t, P) * b * reg[t] for t in tensors)
    if w:
      cost += w * alive[t_in] * alive[t_out]
      term += w * (alive[t_in] * reg[t_out] + alive[t_out] * reg[t_in])
  return cost, term


EXPECTED = expected(GAMMA_REG)

# LogisticSigmoid: gates after each ReLU instead of BatchNorms; alive where
# logits > 0 (the same channels as above), reg = sum of sigmoid(logits).
LOGITS = {'a': [2.0, -2.0, 1.0], 'b': [0.5, 1.5], 'h1': [1.0, 3.0, -1.0, -3.0],
          'h2': [2.0, -1.0, -2.0]}
GATE_REG = {k: float(np.sum(1 / (1 + np.exp(-np.asarray(v)))))
            for k, v in LOGITS.items()}
GATED_EXPECTED = expected(GATE_REG, with_bn=False)


# ------------------------------------------------------------- networks
def _kernel(name):
  v = np.asarray(VALUES[name], np.float32)
  return np.ones([1, 1, IN_CH[name], len(v)], np.float32) * v


def _head_kernel(name):
  n_in, n_out = HEADS[name]
  return np.full([n_in, n_out], 0.3, np.float32)


def build_graph(gated=False):
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None, 4, 4, 2], name='x')

    def block(name, net):
      w = tf1.get_variable('w_' + name, initializer=_kernel(name))
      net = tf.nn.conv2d(net, w, 1, 'SAME', name='conv_' + name)
      if gated:
        gate = activation_gating.logistic_sigmoid_gating(
            tf.nn.relu(net), is_training=False,
            keep_first_channel_alive=False, scope='gate_' + name)
        return gate
      gamma = tf1.get_variable('g_' + name, initializer=np.asarray(
          VALUES[name], np.float32))
      beta = tf1.get_variable('b_' + name, initializer=tf.zeros_like(gamma))
      net, _, _ = tf1.nn.fused_batch_norm(net, gamma, beta, name='bn_' + name)
      return tf.nn.relu(net)

    c = tf.concat([block('a', x), block('b', x)], -1)
    heads = []
    for h, d in (('h1', 'dense1'), ('h2', 'dense2')):
      pooled = tf.reduce_mean(block(h, c), [1, 2])
      w = tf1.get_variable('w_' + d, initializer=_head_kernel(d))
      heads.append(tf.matmul(pooled, w, name=d))
  return graph, [t.op for t in heads]


def build_keras(gated=False):
  inputs = keras.Input((4, 4, 2))

  def block(name, net):
    conv = keras.layers.Conv2D(len(VALUES[name]), 1, use_bias=False,
                               name='conv_' + name)
    if gated:
      gate = activation_gating.LogisticSigmoidGating(
          keep_first_channel_alive=False, name='gate_' + name)
      net = gate(keras.layers.ReLU()(conv(net)))
      gate.mask_logits.assign(LOGITS[name])
    else:
      bn = keras.layers.BatchNormalization(name='bn_' + name)
      net = keras.layers.ReLU()(bn(conv(net)))
      bn.gamma.assign(VALUES[name])
    conv.kernel.assign(_kernel(name))
    return net

  c = keras.layers.Concatenate()([block('a', inputs), block('b', inputs)])
  outputs = []
  for h, d in (('h1', 'dense1'), ('h2', 'dense2')):
    pooled = keras.layers.GlobalAveragePooling2D()(block(h, c))
    dense = keras.layers.Dense(HEADS[d][1], use_bias=False, name=d)
    outputs.append(dense(pooled))
    dense.kernel.assign(_head_kernel(d))
  return keras.Model(inputs, outputs)


FAMILIES = {
    'gamma': {
        'flops': lambda b: flop_regularizer.GammaFlopsRegularizer(b, 0.1),
        'model_size': lambda b: model_size_regularizer.GammaModelSizeRegularizer(b, 0.1),
        'activations': lambda b: activation_regularizer.GammaActivationRegularizer(b, 0.1),
        'flop_latency': lambda b: latency_regularizer.GammaLatencyRegularizer(b, 0.1, 'FLOP_LATENCY'),
        'memory_latency': lambda b: latency_regularizer.GammaLatencyRegularizer(b, 0.1, 'MEMORY_LATENCY'),
    },
    'group_lasso': {
        'flops': lambda b: flop_regularizer.GroupLassoFlopsRegularizer(b, 0.1),
        'model_size': lambda b: model_size_regularizer.GroupLassoModelSizeRegularizer(b, 0.1, l1_fraction=0.5),
        'activations': lambda b: activation_regularizer.GroupLassoActivationRegularizer(b, 0.1),
        'flop_latency': lambda b: latency_regularizer.GroupLassoLatencyRegularizer(b, 0.1, 'FLOP_LATENCY'),
        'memory_latency': lambda b: latency_regularizer.GroupLassoLatencyRegularizer(b, 0.1, 'MEMORY_LATENCY'),
    },
}
_LS = dict(regularize_on_mask=False)
FAMILIES['logistic_sigmoid'] = {
    'flops': lambda b: flop_regularizer.LogisticSigmoidFlopsRegularizer(b, **_LS),
    'model_size': lambda b: model_size_regularizer.LogisticSigmoidModelSizeRegularizer(b, **_LS),
    'flop_latency': lambda b: latency_regularizer.LogisticSigmoidLatencyRegularizer(b, 'FLOP_LATENCY', **_LS),
    'memory_latency': lambda b: latency_regularizer.LogisticSigmoidLatencyRegularizer(b, 'MEMORY_LATENCY', **_LS),
}
CASES = [(f, t) for f in FAMILIES for t in FAMILIES[f]]


def _expected(family, target):
  return (GATED_EXPECTED if family == 'logistic_sigmoid' else EXPECTED)[target]


def _rtol(family):
  # Probabilistic grouping shrinks p by (1 - 1e-6) to keep log(1 - p) finite.
  return 1e-5 if family == 'logistic_sigmoid' else 1e-6


@pytest.fixture(scope='module')
def keras_model():
  return build_keras()


@pytest.fixture(scope='module')
def gated_keras_model():
  return build_keras(gated=True)


@pytest.mark.parametrize('family,target', CASES)
def test_graph_mode_matches_hand_derived(family, target):
  graph, outputs = build_graph(gated=family == 'logistic_sigmoid')
  with graph.as_default():
    reg = FAMILIES[family][target](outputs)
    cost, term = reg.get_cost(), reg.get_regularization_term()
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      for v in tf1.global_variables():
        for name, logits in LOGITS.items():
          if v.op.name == 'gate_%s/mask_logits' % name:
            v.load(logits, sess)
      got = sess.run([cost, term])
  np.testing.assert_allclose(got, _expected(family, target),
                             rtol=_rtol(family))


@pytest.mark.parametrize('family,target', CASES)
def test_keras_path_matches_graph_mode(keras_model, gated_keras_model,
                                       family, target):
  model = gated_keras_model if family == 'logistic_sigmoid' else keras_model
  reg = FAMILIES[family][target](model)
  got = [float(reg.get_cost()), float(reg.get_regularization_term())]
  np.testing.assert_allclose(got, _expected(family, target),
                             rtol=_rtol(family))


def test_latency_on_real_hardware_is_the_roofline_max(keras_model):
  v100 = hardware.get_hardware('V100')
  reg = latency_regularizer.GammaLatencyRegularizer(keras_model, 0.1, 'V100')
  flops_only = latency_regularizer.GammaLatencyRegularizer(
      keras_model, 0.1, 'FLOP_LATENCY')
  bytes_only = latency_regularizer.GammaLatencyRegularizer(
      keras_model, 0.1, 'MEMORY_LATENCY')
  compute = flops_only.per_op_costs()
  memory = bytes_only.per_op_costs()
  expected = sum(max(compute[op] / v100.peak_compute,
                     memory[op] / v100.memory_bandwidth) for op in compute)
  assert float(reg.get_cost()) == pytest.approx(expected, rel=1e-9)
  assert reg.cost_name == 'V100 Latency'
  # This tiny network is memory bound on a V100: the term is the memory one.
  assert float(reg.get_regularization_term()) == pytest.approx(
      EXPECTED['memory_latency'][1] / v100.memory_bandwidth, rel=1e-6)


def test_batch_size_scales_activations_not_weights(keras_model):
  one = latency_regularizer.GammaLatencyRegularizer(
      keras_model, 0.1, 'MEMORY_LATENCY', batch_size=1)
  four = latency_regularizer.GammaLatencyRegularizer(
      keras_model, 0.1, 'MEMORY_LATENCY', batch_size=4)
  weights = 4 * sum(ai * ao for ai, ao, _, _ in IO.values())
  assert float(four.get_cost()) == pytest.approx(
      4 * (float(one.get_cost()) - weights) + weights)


def test_custom_and_unknown_hardware(keras_model):
  spec = hardware.HardwareSpec('MyChip', peak_compute=1.0,
                               memory_bandwidth=1e20)
  reg = latency_regularizer.GammaLatencyRegularizer(keras_model, 0.1, spec)
  assert float(reg.get_cost()) == pytest.approx(EXPECTED['flops'][0])
  assert reg.cost_name == 'MyChip Latency'
  with pytest.raises(ValueError, match='H100') as info:
    latency_regularizer.GammaLatencyRegularizer(keras_model, 0.1, 'Z80')
  assert 'Z80' in str(info.value)
  for name in ('A100', 'H100', 'L4', 'TPUv4', 'TPUv5e', 'K80', 'TPUv2'):
    assert hardware.get_hardware(name).peak_compute > 0


def test_l1_fraction_outside_unit_interval_is_an_error(keras_model):
  with pytest.raises(ValueError, match='l1_fraction'):
    flop_regularizer.GroupLassoFlopsRegularizer(keras_model, 0.1,
                                                l1_fraction=1.5)


def test_l1_fraction_mixes_rms_and_mean_abs():
  inputs = keras.Input((4, 4, 2))
  conv = keras.layers.Conv2D(1, 1, use_bias=False, name='conv')
  x = keras.layers.GlobalAveragePooling2D()(conv(inputs))
  model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False)(x))
  conv.kernel.assign(np.reshape([3.0, 1.0], [1, 1, 2, 1]))
  rms, mean_abs = np.sqrt((9 + 1) / 2), 2.0
  for f in (0.0, 0.25, 1.0):
    reg = activation_regularizer.GroupLassoActivationRegularizer(
        model, 0.1, l1_fraction=f)
    assert float(reg.get_regularization_term()) == pytest.approx(
        (1 - f) * rms + f * mean_abs, rel=1e-6)


def test_decorator_scales_the_regularization_vector(keras_model):

  class Scaled:

    def __init__(self, regularizer, factor):
      self.regularization_vector = regularizer.regularization_vector * factor
      self.alive_vector = regularizer.alive_vector

  reg = flop_regularizer.GammaFlopsRegularizer(
      keras_model, 0.1, regularizer_decorator=Scaled,
      decorator_parameters={'factor': 3.0})
  assert float(reg.get_cost()) == EXPECTED['flops'][0]
  assert float(reg.get_regularization_term()) == pytest.approx(
      3 * EXPECTED['flops'][1])


def test_group_lasso_term_is_differentiable_without_nans(keras_model):
  reg = flop_regularizer.GroupLassoFlopsRegularizer(keras_model, 0.1)
  kernel = keras_model.get_layer('conv_a').kernel
  with tf.GradientTape() as tape:
    term = reg.get_regularization_term()
  grad = tape.gradient(term, kernel.value).numpy()
  assert np.all(np.isfinite(grad))
  assert np.abs(grad).sum() > 0
