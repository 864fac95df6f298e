"""configurable_ops as the original MorphNet's users call it.

tf_slim arg_scopes, function_dict, module hijacking, the contract details
(KeyError for a bad fallback rule, batch_norm without scope, lowercase
padding), and the configurable Keras layers.
"""

import json
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.tools import configurable_ops as co

tf1 = tf.compat.v1
slim = pytest.importorskip('tf_slim')


@pytest.fixture
def graph():
  g = tf.Graph()
  with g.as_default():
    yield g


def _ones(shape=(2, 4, 4, 3)):
  return tf.ones(shape)


def _run(*tensors):
  with tf1.Session() as sess:
    sess.run(tf1.global_variables_initializer())
    return sess.run(list(tensors))


def test_slim_arg_scope_padding_reaches_the_native_conv(graph):
  ops = co.ConfigurableOps({'first/Conv2D': 3})
  with slim.arg_scope([slim.conv2d], padding='VALID', stride=2):
    first = ops.conv2d(_ones(), 7, 3, scope='first')
    explicit = ops.conv2d(_ones(), 7, 1, scope='second', padding='SAME')
  assert first.shape.as_list() == [2, 1, 1, 3]  # VALID 3x3, stride 2
  assert explicit.shape.as_list() == [2, 2, 2, 7]  # explicit argument wins
  outside = ops.conv2d(_ones(), 7, 3, scope='third')
  assert outside.shape.as_list() == [2, 4, 4, 7]


def test_slim_arg_scope_reuse_shares_the_variables(graph):
  ops = co.ConfigurableOps({'first/Conv2D': 2})
  explicit = slim.conv2d(_ones(), 2, 3, scope='first', activation_fn=None)
  with slim.arg_scope([slim.conv2d], reuse=True):
    shared = ops.conv2d(_ones(), 12, 3, scope='first')
  assert len(tf1.global_variables()) == 2  # first/weights, first/biases
  a, b = _run(explicit, shared)
  np.testing.assert_allclose(a, b)
  convs = sorted(op.name for op in graph.get_operations()
                 if op.type == 'Conv2D')
  assert convs == ['first/Conv2D', 'first_1/Conv2D']


def test_slim_arg_scope_normalizer_and_regularizer_apply(graph):
  calls = []

  def normalizer(net, scale):
    calls.append(scale)
    return net * scale

  ops = co.ConfigurableOps()
  with slim.arg_scope([slim.conv2d], normalizer_fn=normalizer,
                      normalizer_params={'scale': 2.0},
                      weights_regularizer=tf.nn.l2_loss):
    ops.conv2d(_ones(), 4, 3, scope='conv')
  assert calls == [2.0]
  assert [v.name for v in tf1.global_variables()] == ['conv/weights:0']
  assert len(tf1.get_collection(tf1.GraphKeys.REGULARIZATION_LOSSES)) == 1


def test_slim_arg_scope_argument_the_native_layer_lacks_is_an_error(graph):
  ops = co.ConfigurableOps()
  with slim.arg_scope([slim.conv2d], outputs_collections='mine'):
    with pytest.raises(TypeError, match='outputs_collections.*slim_function'):
      ops.conv2d(_ones(), 4, 3, scope='conv')


def test_slim_function_dict_builds_with_tf_slim(graph):
  ops = co.ConfigurableOps({'conv/Conv2D': 5},
                           function_dict=co.slim_function_dict())
  net = ops.conv2d(_ones(), 8, 3, scope='conv')
  assert net.shape.as_list() == [2, 4, 4, 5]
  assert net.op.type == 'Relu'  # tf_slim's default activation
  assert ops.constructed_ops == {'conv/Conv2D': 5}


def test_function_dict_gets_the_width_second_and_vanished_skips_it(graph):
  def fake(*args, **kwargs):
    return ('fake', args[1], kwargs.get('scope'), kwargs.get('name'))

  ops = co.ConfigurableOps({'fc/MatMul': 13, 'gone/Conv2D': 0},
                           function_dict={'fully_connected': fake,
                                          'conv2d': fake})
  assert ops.fully_connected(_ones([3, 12]), 88, scope='fc') == (
      'fake', 13, 'fc', None)
  assert ops.conv2d(inputs=_ones(), num_outputs=11, kernel_size=3,
                    name='conv') == ('fake', 11, None, 'conv')
  assert ops.constructed_ops['conv/Conv2D'] == 11  # name= keys like scope=
  assert ops.conv2d(_ones(), 4, 3, scope='gone') is co.VANISHED
  assert ops.conv2d(co.VANISHED, 4, 3, scope='after') is co.VANISHED
  with pytest.raises(ValueError, match='function_dict names'):
    co.ConfigurableOps(function_dict={'conv3d': fake})


def test_concat_and_add_n_overrides_get_the_kept_values():
  seen = {}
  ops = co.ConfigurableOps(function_dict={
      'concat': lambda values, **kw: seen.update(concat=(values, kw)),
      'add_n': lambda values, **kw: seen.update(add_n=(values, kw))})
  ops.concat(values=[1, None, co.VANISHED, 2], axis=1)
  ops.add_n(inputs=[3, None, 4], name='sum')
  assert seen == {'concat': ([1, 2], {'axis': 1}),
                  'add_n': ([3, 4], {'name': 'sum'})}
  with pytest.raises(ValueError, match='values'):
    ops.concat(inputs=[1, 2])


def test_fallback_rule_contract():
  with pytest.raises(KeyError):
    co.ConfigurableOps(fallback_rule='bad bad rule')
  with pytest.raises(ValueError):  # the same error is a ValueError too
    co.ConfigurableOps(fallback_rule='bad bad rule')
  with pytest.raises(ValueError) as wrong_type:
    co.ConfigurableOps(fallback_rule=20180207)
  assert not isinstance(wrong_type.value, KeyError)


def test_strict_names_the_missing_op(graph):
  ops = co.ConfigurableOps({'first/Conv2D': 3}, fallback_rule='strict')
  with pytest.raises(KeyError,
                     match='op_name "second/Conv2D" not found in param'):
    ops.conv2d(_ones(), 7, 1, scope='second')


def test_batch_norm_without_scope_and_lowercase_padding(graph):
  ops = co.ConfigurableOps()
  x = tf.constant(np.arange(96, dtype=np.float32).reshape(2, 4, 4, 3))
  first = ops.batch_norm(x, center=False, scale=False)
  second = ops.batch_norm(x)
  names = [op.name for op in graph.get_operations()
           if op.type == 'FusedBatchNormV3']
  assert names == ['BatchNorm/FusedBatchNormV3',
                   'BatchNorm_1/FusedBatchNormV3']
  variables = {v.op.name for v in tf1.global_variables()}
  assert 'BatchNorm/gamma' not in variables  # scale=False: none, as tf_slim
  assert 'BatchNorm/beta' not in variables
  assert {'BatchNorm_1/gamma', 'BatchNorm_1/beta'} <= variables
  pooled = ops.max_pool2d(x, 2, stride=2, padding='same')
  mine, normalized = _run(pooled, first)
  expected = tf.nn.max_pool2d(x, 2, 2, 'SAME')
  np.testing.assert_array_equal(mine, _run(expected)[0])
  value = np.arange(96, dtype=np.float32).reshape(2, 4, 4, 3)
  np.testing.assert_allclose(normalized, (value - value.mean((0, 1, 2))) /
                             np.sqrt(value.var((0, 1, 2)) + 1e-3), rtol=1e-4)
  assert ops.avg_pool2d(co.VANISHED, 2) is co.VANISHED
  assert second.shape.as_list() == [2, 4, 4, 3]


def test_decorator_from_parameterization_file(tmp_path, graph):
  path = tmp_path / 'alive_7'
  path.write_text(json.dumps({'first/Conv2D': 3, 'second/Conv2D': 13}))
  ops = co.decorator_from_parameterization_file(str(path), 'strict')
  assert ops.conv2d(_ones(), 7, 1, scope='second').shape[-1] == 13
  assert ops.fallback_rule == co.FallbackRule.strict


def test_hijacked_module_builds_through_the_ops_and_recovers(graph):
  module = types.SimpleNamespace(conv2d=slim.conv2d, concat=tf.concat,
                                 other=len)
  ops = co.ConfigurableOps({'block/Conv2D': 3})
  originals = co.hijack_module_functions(ops, module)
  assert sorted(originals) == ['concat', 'conv2d']
  with slim.arg_scope([module.conv2d], num_outputs=9):
    net = module.conv2d(_ones(), kernel_size=1, scope='block')
  assert net.shape[-1] == 3 and ops.constructed_ops == {'block/Conv2D': 3}
  assert module.concat([net, co.VANISHED], 3).shape[-1] == 3
  co.recover_module_functions(originals, module)
  assert module.conv2d is slim.conv2d and module.concat is tf.concat


# ------------------------------------------------------------- Keras layers
def test_configurable_keras_layers_take_widths_by_name_or_op_name():
  built = {}
  params = {'c1': 5, 'sep/separable_conv2d': 4, 'fc/MatMul': 0}
  x = keras.ops.ones([1, 8, 8, 3])
  conv = co.ConfigurableConv2D(filters=16, kernel_size=3, name='c1',
                               parameterization=params, constructed_ops=built)
  sep = co.ConfigurableSeparableConv2D(
      filters=16, kernel_size=3, name='sep', parameterization=params,
      constructed_ops=built)
  dense = co.ConfigurableDense(units=8, name='fc', parameterization=params,
                               constructed_ops=built)
  other = co.ConfigurableDense(units=6, name='other', constructed_ops=built)
  h = sep(conv(x))
  assert h.shape[-1] == 4 and conv.kernel.shape[-1] == 5
  flat = keras.ops.mean(h, axis=(1, 2))
  assert dense(flat) is co.VANISHED and dense.is_null_op
  assert other(flat).shape[-1] == 6  # pass-through width
  assert dense(co.VANISHED) is co.VANISHED
  assert built == {'c1': 5, 'sep/separable_conv2d': 4, 'fc/MatMul': 0,
                   'other': 6}
  with pytest.raises(KeyError, match='strict'):
    co.ConfigurableDense(units=3, name='nope', is_strict=True)(flat)
  with pytest.raises(ValueError, match='keyword'):
    co.ConfigurableDense(3)


def test_pass_through_wrapper_and_keras_module_hijack():
  add = co.PassThroughKerasLayerWrapper(keras.layers.Add)
  a = keras.ops.ones([1, 3])
  assert add([a, co.VANISHED]) is a
  assert add([co.VANISHED]) is co.VANISHED
  assert add([a, a]).numpy().tolist() == [[2.0, 2.0, 2.0]]
  module = types.SimpleNamespace(Conv2D=keras.layers.Conv2D,
                                 Dense=keras.layers.Dense,
                                 Add=keras.layers.Add)
  built, originals = co.hijack_keras_module(
      {'model/head': 0, 'model/body': 4}, module, remove_common_prefix=True)
  assert sorted(originals) == ['Add', 'Conv2D', 'Dense']
  body = module.Conv2D(filters=8, kernel_size=1, name='body')
  head = module.Dense(units=2, name='head')
  y = body(keras.ops.ones([1, 2, 2, 3]))
  assert y.shape[-1] == 4
  assert head(keras.ops.mean(y, axis=(1, 2))).shape[-1] == 1  # kept alive
  assert built == {'body': 4, 'head': 1}
  with pytest.raises(ValueError, match='layers module'):
    co.hijack_keras_module({}, keras.layers)
