"""One definition per concept: op types, positions, einsum equations,
variable unwrapping and the labels fixed by a network's inputs/outputs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import einsum_op_handler
from morph_net.framework import graph_view
from morph_net.framework import keras_trace
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.framework import op_types
from morph_net.framework import shapes
from morph_net.framework import sources
from morph_net.keras import _structure
from morph_net.keras import _width_rules


def _residual_on_input(feed):
  """input -> conv 'tied' + input -> conv 'free' -> conv 'head' (output).

  'tied' is added to the input, so its width is the data's; 'head' is the
  output, so its width is the task's; only 'free' may be slimmed.
  """
  graph = tf.Graph()
  with graph.as_default():
    shape = [1, 8, 8, 3]
    if feed == 'Placeholder':
      x = tf.compat.v1.placeholder(tf.float32, shape)
    else:
      x = tf.compat.v1.placeholder_with_default(tf.zeros(shape), shape)
    assert x.op.type == feed
    init = tf.compat.v1.initializers.ones()
    k1 = tf.compat.v1.get_variable('k1', [3, 3, 3, 3], initializer=init)
    k2 = tf.compat.v1.get_variable('k2', [1, 1, 3, 5], initializer=init)
    k3 = tf.compat.v1.get_variable('k3', [1, 1, 5, 2], initializer=init)
    h = tf.nn.conv2d(x, k1, 1, 'SAME', name='tied') + x
    h = tf.nn.conv2d(h, k2, 1, 'SAME', name='free')
    y = tf.nn.conv2d(tf.nn.relu(h), k3, 1, 'SAME', name='head')
  return graph, y.op


@pytest.mark.parametrize('feed', ['Placeholder', 'PlaceholderWithDefault'])
def test_an_input_fed_through_either_placeholder_fixes_its_tied_layers(feed):
  graph, out = _residual_on_input(feed)
  with graph.as_default():
    analysis = _structure.Analysis([out])
  manager = analysis.manager
  assert sorted(analysis.entries) == ['free', 'head', 'tied']
  # The input's 3 channels are one label each, shared by 'tied'.
  tied = manager.channel_labels(manager.view.graph.get_tensor_by_name(
      'tied:0'))
  np.testing.assert_array_equal(np.sort(analysis.input_labels),
                                np.sort(tied))
  assert analysis.is_fixed('tied')
  assert analysis.is_fixed('head')
  assert not analysis.is_fixed('free')
  with pytest.raises(ValueError, match='tied to the model.s inputs'):
    analysis.resolve({'tied': 2})


def test_the_manager_and_the_structure_read_the_same_fixed_labels():
  graph, out = _residual_on_input('PlaceholderWithDefault')
  with graph.as_default():
    analysis = _structure.Analysis([out])
  manager = analysis.manager
  np.testing.assert_array_equal(analysis.input_labels, manager.input_labels())
  np.testing.assert_array_equal(analysis.output_labels,
                                manager.output_labels())
  head = manager.view.graph.get_tensor_by_name('head:0')
  np.testing.assert_array_equal(manager.output_labels(),
                                np.unique(manager.channel_labels(head)))


def test_weights_are_variables_and_constants_not_activations():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [2, 4])
    var = tf.compat.v1.get_variable('w', [4, 3])
    const = tf.constant(np.ones([4, 3], np.float32))
    y = tf.matmul(x, var, name='MatMul') + tf.matmul(x, const)
  view = graph_view.GraphView.from_ops([y.op])
  read = graph.get_operation_by_name('MatMul').inputs[1]  # var's value
  assert read.op.type == 'ReadVariableOp'
  assert op_types.is_weight(read, view)
  assert op_types.is_weight(const, view)
  assert not op_types.is_weight(x, view)


def test_the_handler_table_reads_the_op_type_lists():
  table = op_handlers.default_op_handler_dict()
  for op_type in (op_types.INPUT_OPS + op_types.WEIGHT_SOURCES
                  + op_types.BATCH_NORMS + tuple(op_types.CONV_LAYOUTS)):
    assert op_type in table, op_type
  conv = type(table['Conv2D'])
  assert all(isinstance(table[t], conv)
             for t in op_types.CONVS + op_types.TRANSPOSED_CONVS)
  assert not isinstance(table['DepthwiseConv2dNative'], conv)


def test_transposed_conv_kernels_hold_output_channels_second_to_last():
  assert op_types.kernel_channel_axes() == (-2, -1)
  for op_type, layout in op_types.CONV_LAYOUTS.items():
    transposed = op_type in op_types.TRANSPOSED_CONVS
    assert layout.out_axis == (-2 if transposed else -1)
    assert layout.positions_on_output == (not transposed)


@pytest.mark.parametrize('groups,kernel_shape,expected', [
    (1, [3, 3, 1, 8], False),  # a plain conv of a 1-channel input
    (8, [3, 3, 1, 8], True),  # one input channel per group
    (4, [3, 3, 2, 8], False),  # a grouped conv
    (8, None, False),  # kernel not built
])
def test_depthwise_is_one_input_channel_per_group(groups, kernel_shape,
                                                  expected):
  assert op_types.is_depthwise(False, groups, kernel_shape) is expected
  assert op_types.is_depthwise(True, 1, None)


def test_keras_and_graph_depthwise_rules_agree():
  x = keras.Input((6, 6, 8))
  layers = [keras.layers.Conv2D(8, 3, groups=4, name='grouped'),
            keras.layers.Conv2D(16, 3, groups=8, name='depthwise_like'),
            keras.layers.DepthwiseConv2D(3, name='depthwise'),
            keras.layers.Conv2D(8, 3, name='plain')]
  model = keras.Model(x, [layer(x) for layer in layers])
  manager = orm.OpRegularizerManager(model)
  linear = {key: all(c.linear for c in entry.computes) for key, entry
            in manager.layers(include_depthwise=True).items()}
  assert linear == {'grouped': False, 'depthwise_like': True,
                    'depthwise': True, 'plain': False}
  for layer in layers:
    assert _width_rules.is_depthwise(layer) == linear[layer.name]


@pytest.mark.parametrize('shape,axes,first,expected', [
    ([None, 7, 5, 16], (-1,), 1, 35),
    ([None, 10, 4, 8], (-2, -1), 1, 10),  # heads x head size channels
    ([3, 10, 4, 8], (-2, -1), 0, 30),  # one example: axis 0 counts
    ([None, None, 5, 16], (-1,), 1, None),
    ([None, 16], (-1,), 1, 1),
    (None, (-1,), 1, None),
])
def test_positions_skip_the_batch_and_channel_axes(shape, axes, first,
                                                   expected):
  assert shapes.positions(shape, axes, first) == expected


def test_views_and_managers_count_positions_with_the_one_function():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, 6, 5, 3])
    k = tf.compat.v1.get_variable('k', [3, 3, 3, 4])
    y = tf.nn.conv2d(x, k, 1, 'SAME')
  manager = orm.OpRegularizerManager([y.op])
  assert manager.view.positions(y) == shapes.positions([None, 6, 5, 4])
  assert manager.positions(y) == 30
  compute, = manager.compute_ops
  assert (compute.positions, compute.in_positions) == (30, 30)


@pytest.mark.parametrize('equation,contracted,new', [
    ('abc,cd->abd', ['c'], ['d']),
    ('btc,chd->bthd', ['c'], ['h', 'd']),
    ('bthd,hde->bte', ['h', 'd'], ['e']),
    ('...b,bc->...c', ['b'], ['c']),
])
def test_one_parser_reads_a_kernel_s_channel_axes(equation, contracted, new):
  assert einsum_op_handler.kernel_letters(equation) == (contracted, new)
  assert _width_rules.einsum_channel_axes(equation) == len(new)
  terms, out = einsum_op_handler.split_equation(equation.encode())
  assert ','.join(terms) + '->' + out == equation


def test_a_keras_variable_unwraps_to_its_tf_variable():
  layer = keras.layers.Dense(2)
  layer.build((None, 3))
  inner = keras_trace.tf_variable(layer.kernel)
  assert isinstance(inner, tf.Variable)
  assert keras_trace.tf_variable(inner) is inner
  assert sources.variable_id(layer.kernel) == id(inner)
  assert sources.variable_id(inner) == id(inner)
