"""TF1 programs as they are written run unchanged (in their own process).

The program calls `tf.compat.v1.disable_v2_behavior()` first, as TF1-era code
does (V1 `Dimension` shapes, reference variables), builds its network with
`tf.layers` (through tf_keras, TF_USE_LEGACY_KERAS=1) and trains it with a
`tf.Session`. One subprocess runs every case and prints a JSON report; the
tests below read it.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

_PROGRAM = textwrap.dedent('''
    import json, os, tempfile
    import numpy as np
    import tensorflow as tf
    tf.compat.v1.disable_v2_behavior()
    tf = tf.compat.v1
    from morph_net.network_regularizers import flop_regularizer
    from morph_net.network_regularizers import latency_regularizer
    from morph_net.network_regularizers import model_size_regularizer
    from morph_net.probabilistic_gating import activation_gating
    from morph_net.tools import structure_exporter
    report = {}

    # The original project's README: gated ReLUs, LogisticSigmoid FLOPs,
    # input_boundary at the inputs and labels, the exporter in the loop.
    def build_model(inputs, is_training):
      gated_relu = activation_gating.gated_relu_activation()
      net = tf.layers.conv2d(inputs, filters=16, kernel_size=[3, 3],
                             padding='same', name='conv1')
      net = gated_relu(net, is_training=is_training)
      net = tf.layers.conv2d(net, filters=32, kernel_size=[3, 3],
                             padding='same', name='conv2')
      net = gated_relu(net, is_training=is_training)
      net = tf.reduce_mean(net, axis=[1, 2])
      return tf.layers.dense(net, 10, name='logits')

    with tf.Graph().as_default():
      inputs = tf.placeholder(tf.float32, [None, 8, 8, 3])
      labels = tf.placeholder(tf.int64, [None])
      logits = build_model(inputs, is_training=True)
      network_regularizer = flop_regularizer.LogisticSigmoidFlopsRegularizer(
          output_boundary=[logits.op], input_boundary=[inputs.op, labels.op],
          alive_threshold=0.1)
      loss = (tf.losses.sparse_softmax_cross_entropy(labels, logits)
              + 1e-6 * network_regularizer.get_regularization_term())
      train_op = tf.train.MomentumOptimizer(0.01, 0.9).minimize(loss)
      exporter = structure_exporter.StructureExporter(
          network_regularizer.op_regularizer_manager)
      train_dir = tempfile.mkdtemp()
      with tf.Session() as sess:
        tf.global_variables_initializer().run()
        feed = {inputs: np.random.rand(4, 8, 8, 3), labels: np.arange(4)}
        for step in range(3):
          _, tensors, cost = sess.run(
              [train_op, exporter.tensors, network_regularizer.get_cost()],
              feed)
          exporter.populate_tensor_values(tensors)
          exporter.create_file_and_save_alive_counts(train_dir, step)
      folder = os.path.join(train_dir, 'learned_structure')
      with open(os.path.join(folder, 'alive_2')) as f:
        saved = json.load(f)
      report['readme'] = dict(cost=float(cost), files=sorted(os.listdir(folder)),
                              saved=saved, cost_name=network_regularizer.cost_name)

    # A residual block with tf.layers BatchNorm, fed three ways at batch 1.
    def feed(kind, batch):
      shape = [batch, 8, 8, 3]
      if kind == 'constant':
        return tf.zeros(shape)
      if kind == 'iterator':
        data = tf.data.Dataset.from_tensors(np.zeros(shape, np.float32))
        return tf.data.make_one_shot_iterator(data.repeat()).get_next()
      return tf.placeholder(tf.float32, shape)

    def conv_bn(net, filters, name):
      net = tf.layers.conv2d(net, filters, 3, padding='same', use_bias=False,
                             name=name)
      return tf.layers.batch_normalization(net, training=True,
                                           name=name + '_bn')

    report['gamma'] = {}
    for kind in ('constant', 'iterator', 'placeholder'):
      for batch in (1, 2):
        with tf.Graph().as_default():
          a = tf.nn.relu(conv_bn(feed(kind, batch), 8, 'c1'))
          b = conv_bn(a, 8, 'c2')
          logits = tf.layers.conv2d(tf.nn.relu(a + b), 4, 3, padding='same',
                                    name='logits')
          costs = {}
          regs = dict(
              flops=flop_regularizer.GammaFlopsRegularizer([logits.op], 0.1),
              size=model_size_regularizer.GammaModelSizeRegularizer(
                  [logits.op], 0.1),
              latency=latency_regularizer.GammaLatencyRegularizer(
                  [logits.op], 0.1, hardware='FLOP_LATENCY'))
          with tf.Session() as sess:
            tf.global_variables_initializer().run()
            feeds = {}
            if kind == 'placeholder':
              x = [op for op in tf.get_default_graph().get_operations()
                   if op.type == 'Placeholder'][0].outputs[0]
              feeds = {x: np.zeros(x.shape.as_list(), np.float32)}
            for name, reg in regs.items():
              costs[name] = float(sess.run(reg.get_cost(), feeds))
              sess.run(reg.get_regularization_term(), feeds)
          report['gamma']['%s/%d' % (kind, batch)] = costs

    # Group lasso reads reference variables (VariableV2) directly.
    with tf.Graph().as_default():
      x = tf.zeros([2, 6])
      w1 = tf.get_variable('w1', initializer=np.ones([6, 4], np.float32))
      w2 = tf.get_variable('w2', initializer=np.ones([4, 3], np.float32))
      out = tf.matmul(tf.nn.relu(tf.matmul(x, w1)), w2)
      reg = flop_regularizer.GroupLassoFlopsRegularizer([out.op], 0.5)
      with tf.Session() as sess:
        tf.global_variables_initializer().run()
        sess.run(w1[:, 0].assign(np.zeros(6)))
        report['group_lasso'] = float(sess.run(reg.get_cost()))
    print('REPORT ' + json.dumps(report))
''')


@pytest.fixture(scope='module')
def report():
  pytest.importorskip('tf_keras')
  env = dict(os.environ, TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='3')
  done = subprocess.run([sys.executable, '-c', _PROGRAM], env=env,
                        capture_output=True, text=True, timeout=600,
                        check=False)
  lines = [l for l in done.stdout.splitlines() if l.startswith('REPORT ')]
  assert done.returncode == 0 and lines, done.stderr[-3000:]
  return json.loads(lines[-1][len('REPORT '):])


def test_the_original_readme_snippet_trains_and_exports(report):
  readme = report['readme']
  # conv1 2x64x(9x3)x16 + conv2 2x64x(9x16)x32 + logits 2x32x10.
  assert readme['cost'] == 2 * 64 * 27 * 16 + 2 * 64 * 144 * 32 + 2 * 32 * 10
  assert readme['cost_name'] == 'FLOPs'
  assert readme['files'] == ['alive_0', 'alive_1', 'alive_2']
  assert readme['saved'] == {'conv1/Conv2D': 16, 'conv2/Conv2D': 32}


def test_constant_iterator_and_placeholder_inputs_cost_the_same(report):
  """Behind the residual add: c1 2x64x27x8, c2 2x64x72x8, logits
  2x64x72x4 FLOPs per example, at batch 1 as at batch 2."""
  flops = 2 * 64 * (27 * 8 + 72 * 8 + 72 * 4)
  weights = 9 * (3 * 8 + 8 * 8 + 8 * 4)
  assert len(report['gamma']) == 6
  for case, costs in report['gamma'].items():
    assert costs['flops'] == flops, case
    assert costs['size'] == weights, case
    assert costs['latency'] >= flops, case  # FLOPs / 1 GFLOP/s, + memory
  assert len({c['latency'] for c in report['gamma'].values()}) == 1


def test_group_lasso_reads_reference_variables(report):
  # w1's first column is zero: 3 of 4 hidden units alive (threshold 0.5).
  assert report['group_lasso'] == 2 * 6 * 3 + 2 * 3 * 3
