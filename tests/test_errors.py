"""Errors name the op, its type, the path from the output and what to do."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net import framework
from morph_net.network_regularizers import flop_regularizer

tf1 = tf.compat.v1


def _graph_with_unknown_op():
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None, 8, 8, 3])
    w = tf1.get_variable('w', [3, 3, 3, 4])
    g = tf1.get_variable('g', initializer=tf.ones([4]))
    b = tf1.get_variable('b', initializer=tf.zeros([4]))
    y = tf.nn.conv2d(x, w, 1, 'SAME', name='conv')
    y, _, _ = tf1.nn.fused_batch_norm(y, g, b, name='bn')
    y = tf.math.cumsum(y, axis=1, name='odd')  # no handler for 'Cumsum'
    y = tf.nn.relu(y, name='act')
    head = tf1.get_variable('head', [4, 2])
    y = tf.matmul(tf.reduce_mean(y, [1, 2]), head, name='logits')
  return graph, y


def test_unsupported_op_names_op_type_path_and_fix():
  _, out = _graph_with_unknown_op()
  with pytest.raises(framework.UnsupportedOpError) as info:
    flop_regularizer.GammaFlopsRegularizer([out.op], 0.1)
  msg = str(info.value)
  assert "'odd'" in msg and "'Cumsum'" in msg
  assert 'logits -> Mean -> act -> odd' in msg  # the path from the output
  assert "op_handler_dict['Cumsum']" in msg  # the one-line fix


def test_a_tf1_cond_names_its_usual_cause():
  """batch_norm(is_training=<a tensor>) in a TF1 graph builds a tf.cond per
  layer, whose branches meet in a Merge."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None, 8, 8, 3])
    training = tf1.placeholder_with_default(True, [])
    w = tf1.get_variable('w', [3, 3, 3, 4])
    g = tf1.get_variable('g', initializer=tf.ones([4]))
    b = tf1.get_variable('b', initializer=tf.zeros([4]))
    y = tf.nn.conv2d(x, w, 1, 'SAME', name='conv')
    y, _, _ = tf1.nn.fused_batch_norm(y, g, b, name='bn')
    off, on = tf.raw_ops.Switch(data=y, pred=training)
    y = tf.raw_ops.Merge(inputs=[off * 0.5, on], name='cond/Merge').output
    head = tf1.get_variable('head', [4, 2])
    y = tf.matmul(tf.reduce_mean(y, [1, 2]), head, name='logits')
  with pytest.raises(framework.UnsupportedOpError,
                     match=r'(?s)tf\.cond.*is_training.*Python bool'):
    flop_regularizer.GammaFlopsRegularizer([y.op], 0.1)


def test_registering_a_handler_fixes_it():
  _, out = _graph_with_unknown_op()
  reg = flop_regularizer.GammaFlopsRegularizer(
      [out.op], 0.1,
      op_handler_dict={'Cumsum': framework.GroupingOpHandler()})
  with tf1.Session(graph=out.graph) as sess:
    sess.run(tf1.global_variables_initializer())
    assert sess.run(reg.get_cost()) == 2 * 64 * 9 * 3 * 4 + 2 * 4 * 2


def test_handler_override_does_not_leak_into_other_managers():
  _, out = _graph_with_unknown_op()
  table = framework.default_op_handler_dict()
  table['Cumsum'] = framework.GroupingOpHandler()
  framework.OpRegularizerManager([out.op], table)
  assert 'Cumsum' not in framework.default_op_handler_dict()


def test_no_source_is_an_error_not_a_zero_regularizer():
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3)(inputs)
  model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
  with pytest.raises(framework.NoRegularizerSourceError) as info:
    flop_regularizer.GammaFlopsRegularizer(model, 0.1)
  assert 'BatchNormalization' in str(info.value)


def test_unknown_spatial_size_makes_flops_undefined():
  inputs = keras.Input((None, None, 3))
  x = keras.layers.Conv2D(4, 3, name='conv')(inputs)
  x = keras.layers.BatchNormalization()(x)
  model = keras.Model(inputs, keras.layers.Dense(2)(x))
  with pytest.raises(framework.UnknownShapeError) as info:
    flop_regularizer.GammaFlopsRegularizer(model, 0.1)
  msg = str(info.value)
  assert 'conv' in msg and 'Conv2D' in msg and 'input' in msg
  assert 'Path from the output' in msg


def test_subclassed_model_without_shape_asks_for_input_signature():

  class Net(keras.Model):

    def __init__(self):
      super().__init__()
      self.conv = keras.layers.Conv2D(4, 3)
      self.bn = keras.layers.BatchNormalization()
      self.head = keras.layers.Dense(2)

    def call(self, x, training=False):
      x = self.bn(self.conv(x), training=training)
      return self.head(tf.reduce_mean(x, [1, 2]))

  net = Net()
  with pytest.raises(framework.AnalysisError) as info:
    flop_regularizer.GammaFlopsRegularizer(net, 0.1)
  assert 'input_signature' in str(info.value)
  reg = flop_regularizer.GammaFlopsRegularizer(
      net, 0.1, input_signature=[tf.TensorSpec([None, 6, 6, 3])])
  assert float(reg.get_cost()) == 2 * 16 * 9 * 3 * 4 + 2 * 4 * 2
  # As the message says: once called, the model knows its input shape.
  fresh = Net()
  fresh(tf.zeros([2, 6, 6, 3]))
  reg = flop_regularizer.GammaFlopsRegularizer(fresh, 0.1)
  assert float(reg.get_cost()) == 2 * 16 * 9 * 3 * 4 + 2 * 4 * 2


def test_force_group_with_mismatched_channels_is_an_error():
  inputs = keras.Input((8, 8, 3))
  a = keras.layers.Conv2D(4, 1, name='a')(inputs)
  a = keras.layers.BatchNormalization(name='bn_a')(a)
  b = keras.layers.Conv2D(5, 1, name='b')(inputs)
  b = keras.layers.BatchNormalization(name='bn_b')(b)
  model = keras.Model(inputs, keras.layers.Concatenate()([a, b]))
  with pytest.raises(framework.ChannelMismatchError):
    flop_regularizer.GammaFlopsRegularizer(
        model, 0.1, force_group=['^(a|b)$'])


def test_blacklist_pattern_matching_nothing_is_an_error():
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, name='conv')(inputs)
  x = keras.layers.BatchNormalization(name='bn')(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, keras.layers.Dense(2)(x))
  with pytest.raises(ValueError, match='match no regularizer source'):
    flop_regularizer.GammaFlopsRegularizer(
        model, 0.1, regularizer_blacklist=['nothing_like_this'])
  # Blacklisting the only BatchNorm (by layer name) leaves no source.
  with pytest.raises(framework.NoRegularizerSourceError):
    flop_regularizer.GammaFlopsRegularizer(
        model, 0.1, regularizer_blacklist=['^bn$'])


def test_force_group_ties_channels():
  inputs = keras.Input((8, 8, 3))
  a = keras.layers.Conv2D(4, 1, name='a')(inputs)
  a = keras.layers.BatchNormalization(name='bn_a')(a)
  b = keras.layers.Conv2D(4, 1, name='b')(inputs)
  b = keras.layers.BatchNormalization(name='bn_b')(b)
  x = keras.layers.Concatenate()([a, b])
  x = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, keras.layers.Dense(2, name='head')(x))
  model.get_layer('bn_a').gamma.assign([1.0, 0.0, 1.0, 1.0])
  plain = flop_regularizer.GammaFlopsRegularizer(model, 0.1)
  forced = flop_regularizer.GammaFlopsRegularizer(
      model, 0.1, force_group=['^(a|b)$'])
  head = 2 * 2
  assert float(plain.get_cost()) == 2 * 64 * 3 * (3 + 4) + head * (3 + 4)
  # Channel 1 of b is alive, so it keeps channel 1 of a alive too.
  assert float(forced.get_cost()) == 2 * 64 * 3 * (4 + 4) + head * (4 + 4)
  manager = forced.op_regularizer_manager
  conv_a, conv_b = [c for c in manager.compute_ops if c.op.type == 'Conv2D']
  np.testing.assert_array_equal(manager.class_indices(conv_a.output),
                                manager.class_indices(conv_b.output))


def test_sources_only_on_output_channels_is_an_error():
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, name='conv')(inputs)
  model = keras.Model(inputs, keras.layers.BatchNormalization(name='bn')(x))
  with pytest.raises(framework.NoRegularizerSourceError, match='output'):
    flop_regularizer.GammaFlopsRegularizer(model, 0.1)


def test_channel_mismatch_names_op_type_and_path():
  _, out = _graph_with_unknown_op()
  # A wrong table entry: Conv2D does not pass channels through (3 -> 4).
  with pytest.raises(framework.ChannelMismatchError) as info:
    flop_regularizer.GammaFlopsRegularizer(
        [out.op], 0.1, op_handler_dict={
            'Cumsum': framework.GroupingOpHandler(),
            'Conv2D': framework.GroupingOpHandler()})
  msg = str(info.value)
  assert "'conv'" in msg and 'Conv2D' in msg
  assert '(3)' in msg and '(4)' in msg
  assert 'logits -> Mean -> act -> odd -> bn -> conv' in msg
