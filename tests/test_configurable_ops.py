"""tools.configurable_ops: graph-mode widths from a structure, vanishing."""


import numpy as np
import pytest
import tensorflow as tf

from morph_net.network_regularizers import flop_regularizer
from morph_net.tools import configurable_ops as co
from morph_net.tools import structure_exporter

tf1 = tf.compat.v1


@pytest.fixture
def graph():
  g = tf.Graph()
  with g.as_default():
    yield g


def images(shape=(None, 8, 8, 3)):
  return tf1.placeholder(tf.float32, shape)


def test_widths_come_from_the_parameterization(graph):
  ops = co.ConfigurableOps({'conv1/Conv2D': 5, 'sep/separable_conv2d': 7,
                            'fc/MatMul': 2})
  net = ops.conv2d(images(), 16, 3, scope='conv1')
  assert net.shape.as_list() == [None, 8, 8, 5]
  assert graph.get_operation_by_name('conv1/Conv2D').type == 'Conv2D'
  net = ops.separable_conv2d(net, 16, 3, scope='sep')
  assert net.shape.as_list() == [None, 8, 8, 7]
  assert graph.get_operation_by_name('sep/separable_conv2d').type == 'Conv2D'
  out = ops.fully_connected(tf.reduce_mean(net, [1, 2]), 10, scope='fc')
  assert out.shape.as_list() == [None, 2]
  assert ops.constructed_ops == {'conv1/Conv2D': 5,
                                 'sep/separable_conv2d': 7, 'fc/MatMul': 2}


def test_keys_include_the_enclosing_scope(graph):
  ops = co.ConfigurableOps({'block1/conv/Conv2D': 3})
  with tf1.variable_scope('block1'):
    net = ops.conv2d(images(), 8, 1, scope='conv')
  assert net.shape[-1] == 3
  assert list(ops.constructed_ops) == ['block1/conv/Conv2D']


def test_pass_through_keeps_the_requested_width(graph):
  ops = co.ConfigurableOps({'other/Conv2D': 1}, fallback_rule='pass_through')
  assert ops.conv2d(images(), 6, 3, scope='conv').shape[-1] == 6


def test_strict_raises_key_error_for_a_missing_name(graph):
  ops = co.ConfigurableOps({'conv/Conv2D': 4},
                           fallback_rule=co.FallbackRule.strict)
  net = ops.conv2d(images(), 6, 3, scope='conv')
  assert net.shape[-1] == 4
  with pytest.raises(KeyError, match='conv2/Conv2D'):
    ops.conv2d(net, 6, 3, scope='conv2')


def test_zero_fallback_vanishes_missing_layers(graph):
  ops = co.ConfigurableOps({'kept/Conv2D': 4}, fallback_rule='zero')
  x = images()
  assert ops.conv2d(x, 6, 3, scope='kept').shape[-1] == 4
  assert ops.conv2d(x, 6, 3, scope='missing') is co.VANISHED
  assert ops.constructed_ops['missing/Conv2D'] == 0


def test_bad_fallback_rule_and_widths_are_rejected():
  with pytest.raises(ValueError, match='fallback_rule'):
    co.ConfigurableOps({}, fallback_rule='lenient')
  with pytest.raises(ValueError, match='non-negative'):
    co.ConfigurableOps({'a/Conv2D': -1})


def test_zero_width_vanishes_and_adds_no_ops(graph):
  ops = co.ConfigurableOps({'conv/Conv2D': 0, 'fc/MatMul': 0})
  x = images()
  before = len(graph.get_operations())
  assert ops.conv2d(x, 6, 3, scope='conv') is co.VANISHED
  assert ops.fully_connected(tf.reduce_mean(x, [1, 2]), 4,
                             scope='fc') is co.VANISHED
  assert len(graph.get_operations()) == before + 2  # only the reduce_mean
  assert co.is_vanished(co.VANISHED) and not co.is_vanished(x)


def test_ops_on_a_vanished_input_vanish(graph):
  ops = co.ConfigurableOps({'conv1/Conv2D': 0})
  net = ops.conv2d(images(), 6, 3, scope='conv1')
  assert ops.batch_norm(net, scope='bn') is co.VANISHED
  assert ops.conv2d(net, 6, 3, scope='conv2') is co.VANISHED
  assert ops.separable_conv2d(net, 6, 3, scope='sep') is co.VANISHED
  assert ops.max_pool2d(net, 2) is co.VANISHED
  assert ops.fully_connected(net, 3, scope='fc') is co.VANISHED


def test_concat_drops_vanished_inputs(graph):
  ops = co.ConfigurableOps({'b1/Conv2D': 3, 'b2/Conv2D': 0, 'b3/Conv2D': 5})
  x = images()
  branches = [ops.conv2d(x, 8, 1, scope=s) for s in ('b1', 'b2', 'b3')]
  assert branches[1] is co.VANISHED
  net = ops.concat(branches, axis=3)
  assert net.shape.as_list() == [None, 8, 8, 8]
  assert ops.concat([branches[1], branches[1]]) is co.VANISHED
  assert ops.concat([branches[1], branches[0]]).shape[-1] == 3


def test_add_skips_vanished_operands_so_a_residual_collapses(graph):
  ops = co.ConfigurableOps({'res/conv1/Conv2D': 0})
  x = images((None, 8, 8, 4))
  with tf1.variable_scope('res'):
    branch = ops.conv2d(x, 4, 3, scope='conv1')
    branch = ops.conv2d(branch, 4, 3, scope='conv2')
  assert branch is co.VANISHED
  assert ops.add(x, branch) is x  # the block is its shortcut
  assert ops.add([branch, branch]) is co.VANISHED
  y = ops.conv2d(x, 4, 1, scope='other')
  assert ops.add([x, branch, y]).op.type in ('AddV2', 'Add')
  assert ops.add([x, y, y]).op.type == 'AddN'


def test_network_runs_and_batch_norm_uses_the_new_width(graph):
  ops = co.ConfigurableOps({'conv/Conv2D': 3})
  x = images()
  net = ops.conv2d(x, 8, 3, scope='conv', activation_fn=tf.nn.relu)
  net = ops.batch_norm(net, scope='bn', is_training=True)
  update_ops = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
  assert len(update_ops) == 2
  gamma = [v for v in tf1.global_variables() if v.name == 'bn/gamma:0']
  assert gamma and gamma[0].shape.as_list() == [3]
  with tf1.Session(graph=graph) as sess:
    sess.run(tf1.global_variables_initializer())
    out = sess.run(net, {x: np.ones([2, 8, 8, 3], np.float32)})
  assert out.shape == (2, 8, 8, 3)


def test_constructed_names_are_the_exported_structure_keys(graph):
  """A structure exported from a graph feeds straight back into the ops."""
  def build(ops):
    x = images()
    net = ops.conv2d(x, 8, 3, scope='conv1', activation_fn=tf.nn.relu)
    with tf1.variable_scope('block'):
      a = ops.conv2d(net, 4, 1, scope='a')
      b = ops.separable_conv2d(net, 6, 3, scope='sep')
      net = ops.concat([a, b])
    return ops.fully_connected(tf.reduce_mean(net, [1, 2]), 3, scope='fc')

  ops = co.ConfigurableOps()
  out = build(ops)
  reg = flop_regularizer.GroupLassoFlopsRegularizer([out.op], 0.0)
  exporter = structure_exporter.StructureExporter(reg.op_regularizer_manager)
  with tf1.Session(graph=graph) as sess:
    sess.run(tf1.global_variables_initializer())
    exporter.populate_tensor_values(sess.run(exporter.tensors))
  exported = exporter.get_alive_counts()
  # The logits are fixed by the task, so the exporter leaves them out.
  assert set(exported) == set(ops.constructed_ops) - {'fc/MatMul'}
  assert exported == {'conv1/Conv2D': 8, 'block/a/Conv2D': 4,
                      'block/sep/separable_conv2d': 6}
  # Rebuilt from a (shrunk) structure in a fresh graph.
  shrunk = dict(exported, **{'block/a/Conv2D': 0, 'conv1/Conv2D': 2})
  with tf.Graph().as_default():
    ops2 = co.ConfigurableOps(shrunk, fallback_rule='strict')
    with pytest.raises(KeyError, match='fc/MatMul'):
      build(ops2)
  with tf.Graph().as_default():
    ops3 = co.ConfigurableOps(dict(shrunk, **{'fc/MatMul': 3}), 'strict')
    assert build(ops3).shape.as_list() == [None, 3]
    conv = tf1.get_default_graph().get_operation_by_name(
        'block/sep/separable_conv2d')
    assert conv.outputs[0].shape[-1] == 6
    assert conv.inputs[0].shape[-1] == 2  # depthwise over conv1's 2 channels
