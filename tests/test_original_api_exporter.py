"""StructureExporter over any manager with the original MorphNet's interface.

The original's users (and its tests) hand the exporter their own manager
objects: anything with `ops` and `get_regularizer(op)`, sometimes a subclass
of OpRegularizerManager that never ran its constructor.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import op_regularizer_manager as orm
from morph_net.network_regularizers import flop_regularizer
from morph_net.tools import structure_exporter as se

tf1 = tf.compat.v1


class _Alive:
  """An op regularizer that only knows its alive vector."""

  def __init__(self, alive):
    self.alive_vector = alive

  @property
  def regularization_vector(self):
    raise AssertionError('the exporter reads alive vectors only')


def _graph_ops():
  """Ops of every kind the exporter must sort: prunable or not."""
  x = tf.zeros([1, 6, 6, 2])
  conv = tf.nn.conv2d(x, tf.ones([3, 3, 2, 4]), 1, 'SAME', name='top/conv')
  convt = tf1.nn.conv2d_transpose(x, tf.ones([1, 1, 3, 2]), [1, 6, 6, 3], 1,
                                  name='top/up')
  depthwise = tf.nn.depthwise_conv2d(x, tf.ones([3, 3, 2, 1]), [1, 1, 1, 1],
                                     'SAME', name='top/dw')
  dense = tf.matmul(tf.zeros([1, 5]), tf.ones([5, 2]), name='top/fc')
  relu = tf.nn.relu(conv, name='top/relu')
  unregularized = tf.nn.conv2d(x, tf.ones([1, 1, 2, 2]), 1, 'SAME',
                               name='top/frozen')
  return [op.op if hasattr(op, 'op') else op for op in (
      conv, convt, depthwise, dense, relu, unregularized)]


class DuckManager:
  """Not one of ours: only `ops` (an attribute) and `get_regularizer`."""

  def __init__(self, ops, alive):
    self.ops = ops
    self._alive = alive

  def get_regularizer(self, op):
    vector = self._alive.get(op.name)
    return None if vector is None else _Alive(vector)


_ALIVE = {'top/conv': [True, False, True, True],
          'top/up': [False, False, True],
          'top/dw': [True, True],
          'top/fc': np.array([1, 0]),
          'top/relu': [True] * 4}


def test_a_foreign_manager_exports_its_convs_and_matmuls_by_op_name():
  with tf.Graph().as_default():
    manager = DuckManager(_graph_ops(), _ALIVE)
    exporter = se.StructureExporter(manager)
    # Depthwise (follows its input), relu (no width of its own) and an op
    # whose regularizer is None are left out.
    assert sorted(exporter.tensors) == ['top/conv', 'top/fc', 'top/up']
    assert all(t.dtype == tf.bool for t in exporter.tensors.values())
    with pytest.raises(ValueError, match='populate_tensor_values'):
      exporter.get_alive_counts()
    with tf1.Session() as sess:
      values = sess.run(exporter.tensors)
  assert values['top/up'].tolist() == [False, False, True]
  exporter.populate_tensor_values(values)
  assert exporter.get_alive_counts() == {'top/conv': 3, 'top/fc': 1,
                                         'top/up': 1}


def test_a_constructorless_subclass_of_ours_reads_its_own_members():
  class Fake(orm.OpRegularizerManager):

    def __init__(self, ops):  # pylint: disable=super-init-not-called
      self.fake_ops = ops

    def ops(self):  # a method, not our property
      return self.fake_ops

    def get_regularizer(self, op):
      return _Alive([True, False]) if op.type == 'MatMul' else None

  with tf.Graph().as_default():
    exporter = se.StructureExporter(Fake(_graph_ops()),
                                    remove_common_prefix=True)
    with tf1.Session() as sess:
      exporter.populate_tensor_values(sess.run(exporter.tensors))
  assert exporter.get_alive_counts() == {'fc': 1}


def test_alive_tensors_of_a_foreign_manager_are_read_as_they_change():
  with tf.Graph().as_default():
    ops = _graph_ops()
    flags = tf1.placeholder(tf.bool, [4])
    exporter = se.StructureExporter(DuckManager(ops, {'top/conv': flags}))
    with tf1.Session() as sess:
      first = sess.run(exporter.tensors, {flags: [True] * 4})
      second = sess.run(exporter.tensors, {flags: [False, True] * 2})
  exporter.populate_tensor_values(first)
  assert exporter.get_alive_counts() == {'top/conv': 4}
  exporter.populate_tensor_values(second)
  assert exporter.get_alive_counts() == {'top/conv': 2}


def test_eagerly_a_foreign_manager_needs_no_populate(tmp_path):
  weight = tf.Variable([0.5, 0.0, 2.0])

  class Eager:

    def __init__(self, ops):
      self.ops = ops

    def get_regularizer(self, op):
      del op  # one regularizer, read from a live variable
      return _Alive(tf.abs(weight) > 0.1)

  with tf.Graph().as_default():
    conv = _graph_ops()[0]
  exporter = se.StructureExporter(Eager([conv]))
  assert exporter.get_alive_counts() == {'top/conv': 2}
  weight.assign([0.5, 0.5, 2.0])
  path = exporter.create_file_and_save_alive_counts(str(tmp_path), 7)
  assert os.path.basename(path) == 'alive_7'
  with open(path) as f:
    assert json.load(f) == {'top/conv': 3}


def test_an_object_without_the_interface_is_refused_by_name():
  with pytest.raises(TypeError, match="'get_regularizer'"):
    se.StructureExporter(type('NoReg', (), {'ops': []})())


@pytest.mark.parametrize('names,expected', [
    ([], []),
    (['solo'], ['solo']),                      # no scope to drop
    (['m/a', 'm/b/c'], ['a', 'b/c']),          # one level only
    (['m/a', 'n/a'], ['m/a', 'n/a']),          # scopes differ
    (['ab/x', 'abc/y'], ['ab/x', 'abc/y']),    # a string prefix is no scope
    (['/a', '/b'], ['a', 'b']),                # an empty first scope
])
def test_remove_common_prefix_drops_the_first_shared_scope(names, expected):
  rename = se.get_remove_common_prefix_fn(names)
  assert [rename(n) for n in names] == expected


def test_remove_common_prefix_strips_one_scope_of_our_manager_keys():
  with tf.Graph().as_default():
    x = tf1.placeholder(tf.float32, [None, 4, 4, 3])
    with tf1.variable_scope('model'), tf1.variable_scope('block'):
      net = tf.nn.conv2d(x, tf1.get_variable('k', [1, 1, 3, 4]), 1, 'SAME',
                         name='conv')
      gamma = tf1.get_variable('gamma', initializer=[1.0, 0.0, 1.0, 1.0])
      net = tf1.nn.fused_batch_norm(net, gamma, tf.zeros([4]),
                                    is_training=True, name='bn')[0]
      net = tf.matmul(tf.reduce_mean(net, [1, 2]),
                      tf1.get_variable('w', [4, 2]), name='logits')
    reg = flop_regularizer.GammaFlopsRegularizer([net.op], 0.1)
    exporter = se.StructureExporter(reg.op_regularizer_manager,
                                    remove_common_prefix=True)
    assert list(exporter.tensors) == ['block/conv']
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      exporter.populate_tensor_values(sess.run(exporter.tensors))
  assert exporter.get_alive_counts() == {'block/conv': 3}


def test_compute_alive_counts_counts_true_entries_of_any_vector():
  counts = se.compute_alive_counts({'z': np.array([1, 0, 1]), 'a': [False],
                                    'm': [True, True]})
  assert counts == {'a': 0, 'm': 2, 'z': 2}
  assert list(counts) == ['a', 'm', 'z']
  assert se._compute_alive_counts is se.compute_alive_counts  # pylint: disable=protected-access
