"""Placeholder main job: runs a FLOP regularizer on a small CNN.

Replaced by the full MNIST recipe (train, structure-learn, slim, retrain).
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras  # pylint: disable=g-import-not-at-top
import tensorflow as tf

from morph_net.network_regularizers import flop_regularizer
from morph_net.tools import structure_exporter


def build_model():
  inputs = keras.Input((28, 28, 1))
  x = inputs
  for i, filters in enumerate((16, 32)):
    x = keras.layers.Conv2D(filters, 3, padding='same', use_bias=False,
                            name='conv%d' % i)(x)
    x = keras.layers.BatchNormalization(name='bn%d' % i)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(10, name='logits')(x))


def main():
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, gamma_threshold=1e-2)
  images = tf.random.normal([64, 28, 28, 1])
  labels = tf.random.uniform([64], 0, 10, tf.int32)
  opt = keras.optimizers.Adam(5e-2)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  strength = 1.0 / float(reg.get_cost())
  before = float(reg.get_cost())
  for _ in range(60):
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, model(images, training=True))
      loss += strength * 100.0 * reg.get_regularization_term()
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
  exporter = structure_exporter.StructureExporter(reg.op_regularizer_manager)
  print(json.dumps({'flops_before': before,
                    'flops_after': float(reg.get_cost()),
                    'alive': exporter.get_alive_counts()}))


if __name__ == '__main__':
  main()
