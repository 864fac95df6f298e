"""The original MorphNet's public names, as its users call them (graph mode).

Regularizer side: generic_regularizers' bases, op-level resource functions,
is_source_op, reduce_dims, the L2 grouping threshold, gated_batch_norm.
"""

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.framework import grouping_regularizers
from morph_net.network_regularizers import cost_calculator
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import latency_regularizer
from morph_net.network_regularizers import resource_function as rf
from morph_net.op_regularizers import group_lasso_regularizer as glr
from morph_net.probabilistic_gating import activation_gating

tf1 = tf.compat.v1


@pytest.fixture
def graph():
  g = tf.Graph()
  with g.as_default():
    yield g


def _conv_bn(net, filters, name, kernel=3):
  w = tf1.get_variable(name + '/weights', [kernel, kernel,
                                           net.shape.as_list()[-1], filters])
  net = tf.nn.conv2d(net, w, 1, 'SAME', name=name + '/Conv2D')
  gamma = tf1.get_variable(name + '/gamma', initializer=np.linspace(
      0.0, 1.0, filters).astype(np.float32))
  zeros = tf.zeros([filters])
  return tf1.nn.fused_batch_norm(net, gamma, zeros, zeros, zeros + 1.0,
                                 is_training=False,
                                 name=name + '/FusedBatchNormV3')[0]


def _run(*tensors, feed=None):
  with tf1.Session() as sess:
    sess.run(tf1.global_variables_initializer())
    return sess.run(list(tensors), feed)


# ------------------------------------------------------ generic_regularizers
class _Halved(generic_regularizers.OpRegularizer):
  """A decorator the original's way: a subclass of OpRegularizer."""

  def __init__(self, regularizer, scale):
    self._reg = regularizer.regularization_vector * scale
    self._alive = regularizer.alive_vector

  @property
  def regularization_vector(self):
    return self._reg

  @property
  def alive_vector(self):
    return self._alive


def test_op_regularizer_subclass_decorates_and_our_classes_are_instances(
    graph):
  x = tf.zeros([1, 4, 4, 3])
  logits = _conv_bn(_conv_bn(x, 4, 'c1'), 2, 'c2')
  plain = flop_regularizer.GammaFlopsRegularizer([logits.op], 0.1)
  halved = flop_regularizer.GammaFlopsRegularizer(
      [logits.op], 0.1, regularizer_decorator=_Halved,
      decorator_parameters={'scale': 0.5})
  term, half_term, cost, half_cost = _run(
      plain.get_regularization_term(), halved.get_regularization_term(),
      plain.get_cost(), halved.get_cost())
  assert term > 0 and half_term == pytest.approx(term / 2)
  assert half_cost == cost  # alive vectors untouched
  assert isinstance(plain, generic_regularizers.NetworkRegularizer)
  reg = plain.op_regularizer_manager.get_regularizer(
      graph.get_operation_by_name('c1/FusedBatchNormV3'))
  assert isinstance(reg, generic_regularizers.OpRegularizer)
  assert isinstance(glr.GroupLassoRegularizer(tf.ones([2, 3]), 0.1),
                    generic_regularizers.OpRegularizer)
  assert not isinstance(object(), generic_regularizers.OpRegularizer)
  with pytest.raises(TypeError):
    generic_regularizers.NetworkRegularizer()  # abstract


def test_is_source_op_names_the_batch_norms(graph):
  x = tf.zeros([1, 4, 4, 3])
  logits = _conv_bn(_conv_bn(x, 4, 'c1'), 2, 'c2')
  manager = flop_regularizer.GammaFlopsRegularizer(
      [logits.op], 0.1).op_regularizer_manager
  sources = sorted(op.name for op in manager.ops if manager.is_source_op(op))
  assert sources == ['c1/FusedBatchNormV3', 'c2/FusedBatchNormV3']


# ---------------------------------------------------- op-level resource fns
def _conv_ops():
  image = tf1.placeholder(tf.float32, [1, None, None, 5])
  w = tf1.get_variable('w', [3, 2, 5, 7])
  conv = tf.nn.conv2d(image, w, 2, 'SAME', name='conv')
  wt = tf1.get_variable('wt', [3, 3, 4, 5])
  convt = tf1.nn.conv2d_transpose(image, wt, tf.stack(
      [1, 2 * tf.shape(image)[1], 2 * tf.shape(image)[2], 4]), 2, 'SAME',
                                  name='convt')
  matmul = tf.matmul(tf.zeros([1, 6]), tf1.get_variable('m', [6, 3]))
  return image, conv.op, convt.op, matmul.op


@pytest.mark.parametrize('batch', [1, 4])
def test_op_level_functions_read_dynamic_spatial_sizes(graph, batch):
  image, conv, convt, matmul = _conv_ops()
  feed = {image: np.zeros([1, 11, 13, 5], np.float32)}
  out_pos, in_pos = 6 * 7, 11 * 13  # stride 2, SAME
  a_in, a_out, r_in, r_out = 4, 3, 2.5, 1.5
  values = _run(
      rf.flop_function(conv, False, a_in, a_out, r_in, r_out, batch),
      rf.flop_function(conv, True, a_in, a_out, r_in, r_out, batch),
      rf.flop_function(convt, False, a_in, a_out, r_in, r_out, batch),
      rf.memory_function(conv, False, a_in, a_out, r_in, r_out, batch),
      rf.flop_coeff(conv), feed=feed)
  flops, term, flops_t, memory, coeff = values
  assert flops == 2 * batch * out_pos * 6 * a_in * a_out
  assert term == 2 * batch * out_pos * 6 * (a_in * r_out + a_out * r_in)
  assert flops_t == 2 * batch * in_pos * 9 * a_in * a_out  # input positions
  assert memory == 4 * (batch * in_pos * a_in + 6 * a_in * a_out
                        + batch * out_pos * a_out)
  assert coeff == 2 * out_pos * 6
  assert rf.flop_coeff(matmul) == 2.0 and rf.num_weights_coeff(conv) == 6
  assert rf.model_size_function(conv, False, a_in, a_out, 0, 0, batch) == (
      6 * a_in * a_out)
  assert rf.activation_count_function(conv, True, 0, 0, r_in, r_out) == r_out
  assert rf.flop_coeff(image.op) == 0.0 and not rf.is_flop_op(image.op)


def test_latency_function_takes_the_slower_bound(graph):
  image, conv, _, _ = _conv_ops()
  feed = {image: np.zeros([1, 11, 13, 5], np.float32)}
  counts = (4, 3, 2.5, 1.5)
  flops = rf.flop_function(conv, False, *counts)
  memory = rf.memory_function(conv, False, *counts)
  compute_bound = rf.latency_function(conv, False, *counts, 1000, 1e9)
  memory_bound = rf.latency_function(conv, True, *counts, 1e9, 1)
  v100 = rf.latency_function_factory('V100', 1)(conv, False, *counts)
  f, m, c, mb, v = _run(flops, memory, compute_bound, memory_bound, v100,
                        feed=feed)
  assert c == pytest.approx(f / 1000)
  assert mb == pytest.approx(
      _run(rf.memory_function(conv, True, *counts), feed=feed)[0])
  assert v == pytest.approx(max(f / rf.PEAK_COMPUTE['V100'], m / 900))
  with pytest.raises(ValueError, match='Unknown hardware'):
    rf.latency_function_factory('Z80', 1)
  with pytest.raises(ValueError, match='batch_size'):
    rf.latency_function_factory('V100', 0)


@pytest.mark.parametrize('batch', [1, 3])
def test_the_originals_latency_cost_calculator_is_the_regularizers(
    graph, batch):
  # The original's LatencyRegularizer built CostCalculator(manager,
  # latency_function_factory(hardware, B)); it raised a TypeError here.
  image = tf1.placeholder(tf.float32, [None, 8, 8, 3])
  net = tf.nn.relu(_conv_bn(tf.nn.relu(_conv_bn(image, 8, 'a')), 6, 'b'))
  logits = tf.matmul(tf.reduce_mean(net, [1, 2]), tf1.get_variable(
      'fc', [6, 4]))
  reg = latency_regularizer.GammaLatencyRegularizer(
      [logits.op], 0.1, 'V100', batch_size=batch)
  calc = cost_calculator.CostCalculator(
      reg.op_regularizer_manager, rf.latency_function_factory('V100', batch))
  cost, expected, term, expected_term = _run(
      calc.get_cost(), reg.get_cost(), calc.get_regularization_term(),
      reg.get_regularization_term())
  assert cost == pytest.approx(expected) and cost > 0
  assert term == pytest.approx(expected_term)
  with pytest.raises(ValueError, match='memory_function is an op-level'):
    cost_calculator.CostCalculator(reg.op_regularizer_manager,
                                   rf.memory_function)


def test_op_level_flops_of_an_atrous_conv_count_its_real_positions(graph):
  # The conv runs on 2 x 2 space-to-batch sub-images of 4 x 4 positions:
  # counted there, its FLOPs were a quarter of the 8 x 8 output's.
  image = tf1.placeholder(tf.float32, [None, 8, 8, 3])
  net = tf.nn.atrous_conv2d(image, tf1.get_variable('k', [3, 3, 3, 5]), 2,
                            'SAME')
  conv = next(op for op in graph.get_operations() if op.type == 'Conv2D')
  flops = rf.flop_function(conv, False, 3, 5, 0, 0, 2)  # static sizes
  assert flops == 2 * 2 * 64 * 9 * 3 * 5
  logits = tf.matmul(tf.reduce_mean(net, [1, 2]), tf1.get_variable(
      'fc', [5, 2]))
  reg = flop_regularizer.GroupLassoFlopsRegularizer([logits.op], 1e-3)
  assert _run(reg.get_cost())[0] == 2 * 64 * 9 * 3 * 5 + 2 * 5 * 2


def test_memory_of_a_matmul_is_a_tensor_of_rows_weights_and_outputs(graph):
  matmul = tf.matmul(tf.zeros([1, 6]), tf1.get_variable('m', [6, 3])).op
  cost = rf.memory_function(matmul, False, 5, 2, 0.0, 0.0, 8)
  term = rf.memory_function(matmul, True, 5, 2, 1.5, 0.5, 8)
  assert tf.is_tensor(cost) and tf.is_tensor(term)
  # 8 rows x 5 inputs + 5 x 2 weights + 8 rows x 2 outputs, 4 bytes each.
  assert _run(cost, term) == [4 * (8 * 5 + 5 * 2 + 8 * 2),
                              4 * (8 * 1.5 + (5 * 0.5 + 2 * 1.5) + 8 * 0.5)]


def test_memory_of_ops_that_only_move_activations(graph):
  image = tf1.placeholder(tf.float32, [1, None, None, 4])
  feed = {image: np.zeros([1, 3, 5, 4], np.float32)}
  left, right = tf.nn.relu(image), tf.nn.relu6(image)
  concat = tf.concat([left, right], 3).op
  added = tf.add(left, right).op
  scaled = tf.multiply(left, tf.ones([4])).op  # a [C] scale is no read
  reshaped = tf.reshape(left, [-1]).op  # not a memory op: moves nothing
  counts = (6, 6, 2.0, 3.0)
  values = _run(*[rf.memory_function(op, reg, *counts, 2)
                  for op in (concat, added, scaled, reshaped)
                  for reg in (False, True)], feed=feed)
  positions = 3 * 5  # per example, read with tf.shape
  unit = 2 * 4 * positions  # batch 2, 4 bytes
  assert values == [
      unit * (6 + 6), unit * (2.0 + 3.0),          # concat reads its output
      unit * (2 * 6 + 6), unit * (2 * 2.0 + 3.0),  # add reads both operands
      unit * (6 + 6), unit * (2.0 + 3.0),
      0.0, 0.0]


def test_get_input_activation_is_the_activation_not_the_weight(graph):
  image = tf.zeros([1, 6, 6, 2])
  conv = tf.nn.conv2d(image, tf.ones([3, 3, 2, 4]), 1, 'SAME')
  transposed = tf1.nn.conv2d_transpose(image, tf.ones([3, 3, 5, 2]),
                                       [1, 12, 12, 5], 2)
  depthwise = tf.nn.depthwise_conv2d(image, tf.ones([3, 3, 2, 1]),
                                     [1, 1, 1, 1], 'SAME')
  rows = tf.zeros([3, 2])
  matmul = tf.matmul(rows, tf.ones([2, 7]))
  for out, expected in ((conv, image), (transposed, image),
                        (depthwise, image), (matmul, rows)):
    assert cost_calculator.get_input_activation(out.op) is expected
  with pytest.raises(ValueError, match='Relu'):
    cost_calculator.get_input_activation(tf.nn.relu(image).op)


@pytest.mark.parametrize('make', [
    lambda out: flop_regularizer.GammaFlopsRegularizer([out.op], 0.2),
    lambda out: latency_regularizer.GammaLatencyRegularizer(
        [out.op], 0.2, hardware='V100')])
def test_an_empty_op_list_means_every_op_as_in_the_original(graph, make):
  x = tf.zeros([1, 8, 8, 3])
  net = _conv_bn(_conv_bn(x, 4, 'c1'), 5, 'c2')
  logits = tf.matmul(tf.reduce_mean(net, [1, 2]), tf.ones([5, 2]))
  reg = make(logits)
  conv = graph.get_operation_by_name('c1/Conv2D')
  every, empty, one, term_every, term_empty = _run(
      reg.get_cost(), reg.get_cost([]), reg.get_cost([conv]),
      reg.get_regularization_term(), reg.get_regularization_term([]))
  assert empty == every > one > 0
  assert term_empty == term_every > 0


def test_flop_coeff_of_an_op_is_the_regularizers_per_pair_cost(graph):
  x = tf.zeros([1, 8, 8, 3])
  logits = _conv_bn(_conv_bn(x, 4, 'c1', kernel=3), 2, 'c2', kernel=1)
  reg = flop_regularizer.GammaFlopsRegularizer([logits.op], 0.2)
  conv = graph.get_operation_by_name('c2/Conv2D')
  cost, = _run(reg.get_cost([conv]))
  # c1's gammas linspace(0, 1, 4): 3 of 4 above 0.2; c2 is the output (2).
  assert cost == rf.flop_coeff(conv) * 3 * 2


# -------------------------------------------- reduce_dims, L2 threshold, gates
def test_reduce_dims_names_the_axes_a_channel_norm_reduces(graph):
  w = tf.constant(np.random.default_rng(0).normal(size=[3, 3, 4, 5]),
                  tf.float32)
  by_dims = glr.GroupLassoRegularizer(w, reduce_dims=(0, 1, 3), threshold=1.0)
  by_axis = glr.GroupLassoRegularizer(w, threshold=1.0, out_axis=-2)
  a, b = _run(by_dims.regularization_vector, by_axis.regularization_vector)
  np.testing.assert_allclose(a, b)
  assert a.shape == (4,)
  with pytest.raises(ValueError, match='exactly one'):
    glr.GroupLassoRegularizer(w, reduce_dims=(0, 1), threshold=1.0)


def test_l2_grouping_threshold_decides_alive_from_the_group_norm():
  class Reg:
    def __init__(self, v):
      self.regularization_vector = tf.constant(v)
      self.alive_vector = tf.constant([False] * len(v))

  regs = [Reg([0.3, 0.1]), Reg([0.4, 0.1])]
  with_threshold = grouping_regularizers.L2GroupingRegularizer(regs, 0.2)
  assert with_threshold.alive_vector.numpy().tolist() == [True, False]
  plain = grouping_regularizers.L2GroupingRegularizer(regs)
  assert plain.alive_vector.numpy().tolist() == [False, False]


def test_gated_batch_norm_in_a_graph_is_batch_norm_then_a_gate(graph):
  x = tf.constant(np.random.default_rng(1).normal(size=[2, 4, 4, 3]),
                  tf.float32)
  gated = activation_gating.gated_batch_norm(log_odds_init=100.0)(x)
  names = [op.name for op in graph.get_operations()]
  assert 'BatchNorm/FusedBatchNormV3' in names
  assert any(n.endswith('/mask_logits') for n in names)
  out, value = _run(gated, x)
  expected = (value - value.mean((0, 1, 2))) / np.sqrt(
      value.var((0, 1, 2)) + 1e-3)
  np.testing.assert_allclose(out, expected, atol=1e-4)


@pytest.mark.parametrize('straight_through', [False, True])
def test_logistic_sigmoid_sample_is_on_with_probability_sigmoid_logits(
    straight_through):
  logits = tf.fill([4000], 0.5)
  mask = activation_gating.logistic_sigmoid_sample(logits, 0.01,
                                                   straight_through)
  assert float(tf.reduce_mean(mask)) == pytest.approx(0.622, abs=0.04)
  assert activation_gating._logistic_sigmoid_sample is (  # pylint: disable=protected-access
      activation_gating.logistic_sigmoid_sample)


def test_gated_helpers_are_keras_layers_outside_a_graph():
  block = activation_gating.gated_batch_norm(name='bn')
  assert [type(l).__name__ for l in block.layers] == [
      'BatchNormalization', 'LogisticSigmoidGating']
  relu = activation_gating.gated_relu_activation()
  assert relu(tf.constant([[-1.0, 2.0]])).numpy().tolist() == [[0.0, 2.0]]
  with pytest.raises(ValueError, match='gating_fn'):
    activation_gating.gated_relu_activation(gating_fn=lambda x: x)


def test_graph_gate_names_its_mask_op_as_the_original(graph):
  activation = tf.ones([2, 5, 5, 3])
  gated = activation_gating.logistic_sigmoid_gating(
      activation, axis=3, is_training=False, log_odds_init=-4.0)
  again = activation_gating.logistic_sigmoid_gating(activation, axis=3)
  mask_op = graph.get_operation_by_name(
      'logistic_sigmoid_gating/LogisticSigmoidGating')
  assert mask_op.outputs[0].shape.as_list() == [3]
  assert again.op.name.startswith('logistic_sigmoid_gating_1/')
  assert [v.op.name for v in tf1.global_variables()] == [
      'logistic_sigmoid_gating/mask_logits',
      'logistic_sigmoid_gating_1/mask_logits']
  mask, out = _run(mask_op.outputs[0], gated)
  # Inference mask: logits < 0 are off, but the first channel stays alive.
  assert mask.tolist() == [1.0, 0.0, 0.0]
  np.testing.assert_array_equal(out[..., 0], 1.0)
  np.testing.assert_array_equal(out[..., 1:], 0.0)


def test_the_originals_handler_modules_and_default_handlers():
  """The original's module paths for the handlers still import, and an
  op_handler_dict that is a defaultdict serves unlisted op types."""
  import collections  # pylint: disable=g-import-not-at-top
  from morph_net.framework import concat_op_handler  # pylint: disable=g-import-not-at-top
  from morph_net.framework import grouping_op_handler  # pylint: disable=g-import-not-at-top
  from morph_net.framework import op_handlers  # pylint: disable=g-import-not-at-top
  from morph_net.framework import op_regularizer_manager as orm  # pylint: disable=g-import-not-at-top
  from morph_net.framework import output_non_passthrough_op_handler  # pylint: disable=g-import-not-at-top
  from morph_net.framework import axis_op_handlers  # pylint: disable=g-import-not-at-top
  from morph_net.framework import conv_op_handlers  # pylint: disable=g-import-not-at-top
  from morph_net.framework import grouping_op_handlers  # pylint: disable=g-import-not-at-top
  assert concat_op_handler.ConcatOpHandler is axis_op_handlers.ConcatOpHandler
  assert (grouping_op_handler.GroupingOpHandler is
          grouping_op_handlers.GroupingOpHandler)
  assert (output_non_passthrough_op_handler.OutputNonPassthroughOpHandler is
          conv_op_handlers.OutputNonPassthroughOpHandler)
  table = collections.defaultdict(grouping_op_handlers.GroupingOpHandler,
                                  op_handlers.default_op_handler_dict())
  del table['Relu']  # now served by the default
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, 4])
    w = tf.compat.v1.get_variable('w', [4, 8])
    v = tf.compat.v1.get_variable('v', [8, 2])
    out = tf.matmul(tf.nn.relu(tf.matmul(x, w)), v)
    manager = orm.OpRegularizerManager([out.op], op_handler_dict=table)
  assert any(op.type == 'Relu' for op in manager.ops)


def test_a_boundary_that_is_also_an_output_keeps_a_constant_fed_graph_fed():
  """A graph fed by a constant image, one of whose outputs is also an
  input boundary (the walk stops there): the image is still the data, so
  the gates before it keep their regularizers (they were taken for
  parameters: the boundary made the graph look placeholder-fed)."""
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
  from morph_net.probabilistic_gating import activation_gating  # pylint: disable=g-import-not-at-top
  graph = tf.Graph()
  with graph.as_default():
    image = tf.zeros([1, 4, 4, 3])
    gate = activation_gating.gated_relu_activation()
    k1 = tf.compat.v1.get_variable('k1', [3, 3, 3, 8])
    k2 = tf.compat.v1.get_variable('k2', [3, 3, 8, 8])
    k3 = tf.compat.v1.get_variable('k3', [1, 1, 8, 4])
    h1 = gate(tf.nn.conv2d(image, k1, 1, 'SAME'), scope='g1')
    h2 = gate(tf.nn.conv2d(h1, k2, 1, 'SAME'), scope='g2')
    mid = tf.nn.conv2d(h2, k3, 1, 'SAME')
    k4 = tf.compat.v1.get_variable('k4', [1, 1, 8, 4])
    out = tf.reduce_mean(tf.nn.conv2d(h2 + h1, k4, 1, 'SAME'), [1, 2])
    reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(
        [out.op, mid.op], input_boundary=[mid.op])
  names = [s.op.name for s in reg.op_regularizer_manager.sources]
  assert any(n.startswith('g1/') for n in names), names
  assert any(n.startswith('g2/') for n in names), names
