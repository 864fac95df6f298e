"""Other front doors: tf_keras (Keras 2) models and raw concrete functions."""

import numpy as np
import pytest
import tensorflow as tf

from morph_net.network_regularizers import flop_regularizer
from morph_net.tools import structure_exporter

tf_keras = pytest.importorskip('tf_keras')

# FLOPs of conv 3x3 (3 -> 4 channels, 8x8 'same') + dense (alive -> 2).
def _expected_flops(alive):
  return 2 * 64 * 9 * 3 * alive + 2 * alive * 2


def test_tf_keras_model_uses_fused_batch_norm():
  model = tf_keras.Sequential([
      tf_keras.layers.Conv2D(4, 3, padding='same', input_shape=(8, 8, 3),
                             name='conv'),
      tf_keras.layers.BatchNormalization(name='bn'),
      tf_keras.layers.ReLU(),
      tf_keras.layers.GlobalAveragePooling2D(),
      tf_keras.layers.Dense(2, name='head'),
  ])
  model.get_layer('bn').gamma.assign([1.0, 0.0, 1.0, 1.0])
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.1)
  types = {s.op.type for s in reg.op_regularizer_manager.sources}
  assert types == {'FusedBatchNormV3'}
  assert float(reg.get_cost()) == _expected_flops(3)
  exporter = structure_exporter.StructureExporter(reg.op_regularizer_manager)
  assert exporter.get_alive_counts() == {'conv': 3}
  gamma = model.get_layer('bn').gamma
  with tf.GradientTape() as tape:
    term = reg.get_regularization_term()
  assert np.abs(tape.gradient(term, gamma).numpy()).sum() > 0


def test_concrete_function_of_raw_ops():
  kernel = tf.Variable(tf.ones([3, 3, 3, 4]))
  gamma = tf.Variable([1.0, 1.0, 0.0, 1.0])
  beta = tf.Variable(tf.zeros([4]))
  head = tf.Variable(tf.ones([4, 2]))

  @tf.function
  def net(x):
    y = tf.nn.conv2d(x, kernel, 1, 'SAME')
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(
        y, gamma, beta, mean=tf.zeros([4]), variance=tf.ones([4]),
        is_training=False)
    return tf.matmul(tf.reduce_mean(tf.nn.relu(y), [1, 2]), head)

  concrete = net.get_concrete_function(tf.TensorSpec([None, 8, 8, 3]))
  reg = flop_regularizer.GammaFlopsRegularizer(concrete, 0.1)
  assert float(reg.get_cost()) == _expected_flops(3)
  gamma.assign([1.0, 1.0, 1.0, 1.0])  # live variables, no re-tracing
  assert float(reg.get_cost()) == _expected_flops(4)


def _keras_net():
  import keras  # pylint: disable=g-import-not-at-top
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, padding='same', name='conv')(inputs)
  x = keras.layers.BatchNormalization(name='bn')(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(2, name='head')(x))


def test_mixed_precision_model():
  import keras  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy('mixed_float16')
  try:
    model = _keras_net()
    model.get_layer('bn').gamma.assign([1.0, 0.0, 1.0, 1.0])
    reg = flop_regularizer.GammaFlopsRegularizer(model, 0.1)
    assert float(reg.get_cost()) == _expected_flops(3)
    with tf.GradientTape() as tape:
      term = reg.get_regularization_term()
    assert term.dtype == tf.float32
    grad = tape.gradient(term, model.get_layer('bn').gamma.value)
    assert np.all(np.isfinite(grad.numpy())) and grad.numpy()[0] > 0
  finally:
    keras.mixed_precision.set_global_policy('float32')


def test_distribute_strategy_training_step():
  import keras  # pylint: disable=g-import-not-at-top
  strategy = tf.distribute.MirroredStrategy(['/cpu:0'])
  with strategy.scope():
    model = _keras_net()
    reg = flop_regularizer.GammaFlopsRegularizer(model, 0.1)
    optimizer = keras.optimizers.SGD(0.1)
  assert float(reg.get_cost()) == _expected_flops(4)
  gamma = model.get_layer('bn').gamma
  optimizer.build([gamma])

  @tf.function
  def step(x):
    def replica_fn(x):
      with tf.GradientTape() as tape:
        loss = reg.get_regularization_term() * 1e-4
      # The term depends on the gammas only.
      grad = tape.gradient(loss, gamma.value)
      optimizer.apply_gradients([(grad, gamma)])
      return loss
    return strategy.run(replica_fn, args=(x,))

  before = gamma.numpy().copy()
  step(tf.ones([4, 8, 8, 3]))
  # The L1 term shrinks every (positive) gamma.
  assert np.all(gamma.numpy() < before)
