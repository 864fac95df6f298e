"""Tracing models for the analysis: structured inputs, dynamic batch sizes,
embedding lookups."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net import framework
from morph_net.framework import graph_view
from morph_net.network_regularizers import cost_model
from morph_net.network_regularizers import flop_regularizer
from morph_net.tools import analyze

L = keras.layers


def _dict_input_model():
  """Two named inputs (like keras-hub's token_ids / padding_mask)."""
  ids = keras.Input((6,), dtype='int32', name='token_ids')
  mask = keras.Input((6,), dtype='float32', name='padding_mask')
  x = L.Embedding(20, 8, name='embed')(ids)
  x = x * keras.ops.expand_dims(mask, -1)
  x = L.Dense(12, name='fc')(x)
  x = L.GlobalAveragePooling1D()(x)
  return keras.Model({'token_ids': ids, 'padding_mask': mask},
                     L.Dense(3, name='logits')(x))


def test_a_model_with_dict_inputs_traces_and_counts():
  report = analyze.analyze(_dict_input_model())
  # fc: 2 x 6 positions x 8 x 12; logits: 2 x 12 x 3; the lookup is free.
  assert report.flops == 2 * 6 * 8 * 12 + 2 * 12 * 3
  assert report.layer('fc').channels == 12


def test_input_signature_accepts_the_input_structure():
  model = _dict_input_model()
  signature = {'token_ids': tf.TensorSpec([None, 6], tf.int32),
               'padding_mask': tf.TensorSpec([None, 6], tf.float32)}
  report = analyze.analyze(model, input_signature=signature)
  assert report.flops == 2 * 6 * 8 * 12 + 2 * 12 * 3


class _BatchReshape(L.Layer):
  """Reshapes with the dynamic batch size, as MiT's attention does."""

  def call(self, x):
    batch = keras.ops.shape(x)[0]
    return keras.ops.reshape(x, (batch, 4 * 4, x.shape[-1]))


def test_a_reshape_by_the_dynamic_batch_size_is_traced_at_batch_one():
  inputs = keras.Input((4, 4, 3))
  x = L.Conv2D(8, 1, name='conv')(inputs)
  x = _BatchReshape()(x)
  x = L.Dense(5, name='fc')(x)
  model = keras.Model(inputs, L.GlobalAveragePooling1D()(x))
  report = analyze.analyze(model)
  assert report.flops == 2 * 16 * 3 * 8 + 2 * 16 * 8 * 5
  reg = flop_regularizer.GroupLassoFlopsRegularizer(model, 1e-4)
  assert float(reg.get_cost()) == report.flops


def test_embedding_channels_tie_to_the_residual_stream():
  ids = keras.Input((5,), dtype='int32')
  x = L.Embedding(10, 8, name='embed')(ids)
  positions = L.Embedding(5, 8, name='pos')(keras.ops.arange(5))
  x = x + positions
  x = L.Dense(8, name='fc')(x) + x
  model = keras.Model(ids, L.Dense(2, name='logits')(x))
  manager = framework.OpRegularizerManager(model)
  fc = manager.layers()['fc'].outputs[0]
  assert manager.layers()['logits'].computes[0].input is not None
  # fc's output is added to the embedding stream: one group of 8 channels.
  labels = manager.channel_labels(fc)
  stream_inputs = [c.input for c in manager.compute_ops
                   if c.op.name.endswith('MatMul') or 'fc' in c.op.name]
  assert all(np.array_equal(manager.channel_labels(t), labels)
             for t in stream_inputs)


def test_gather_of_channels_with_unknown_indices_is_an_error():
  @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32),
                                tf.TensorSpec([3], tf.int32)])
  def net(x, idx):
    return tf.gather(x, idx, axis=1)

  with pytest.raises(framework.UnsupportedOpError, match='not a constant'):
    framework.OpRegularizerManager(net.get_concrete_function())


def test_batch_one_trace_of_one_by_one_residuals_counts_every_block():
  """At batch 1 and 1x1 resolution Keras traces a residual add of two
  [1, 1, 1, C] activations as BiasAdd(x, Squeeze(y)), and an activation has
  the shape of a reshaped parameter: the branch must still be walked
  (ConvNeXt's last stage at 32 px lost 16% of its FLOPs before)."""
  x = keras.Input((4, 4, 3))
  h = keras.layers.Conv2D(8, 4, name='stem')(x)  # -> 1x1
  for i in range(2):
    branch = keras.layers.Dense(16, activation='relu', name='up%d' % i)(h)
    branch = keras.layers.Dense(8, name='down%d' % i)(branch)
    h = keras.layers.Add()([h, branch])
  model = keras.Model(x, keras.layers.Dense(3, name='logits')(
      keras.layers.Flatten()(h)))
  view = graph_view.GraphView.from_model(model)
  costs = []
  for v in (view, view.at_batch_one()):
    costs.append(cost_model.CostModel(framework.OpRegularizerManager(v),
                                      'flops').full_cost())
  expected = 2 * (4 * 4 * 3 * 8 + 2 * (8 * 16 + 16 * 8) + 8 * 3)
  assert costs == [expected, expected]


class _RowWindowAttention(keras.layers.Layer):
  """Self-attention within windows (here: the rows of a 4x4 map) that are
  folded into the batch axis, as Swin and ViTDet do."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.query = keras.layers.Dense(8, use_bias=False)

  def call(self, x):
    windows = keras.ops.reshape(x, (-1, 4, 8))  # [B * 4 rows, 4, C]
    q = self.query(windows)
    scores = keras.ops.softmax(keras.ops.einsum('bqc,bkc->bqk', q, windows))
    out = keras.ops.einsum('bqk,bkc->bqc', scores, windows)
    return keras.ops.reshape(out, (-1, 4, 4, 8))


def test_windows_folded_into_the_batch_count_per_example():
  """The reshape into the batch axis makes the tracer analyze one example,
  so the attention of all 4 windows counts (not one window's)."""
  inputs = keras.Input((4, 4, 3))
  x = keras.layers.Conv2D(8, 1, use_bias=False)(inputs)
  x = _RowWindowAttention()(x)
  model = keras.Model(inputs, keras.layers.Conv2D(2, 1, use_bias=False)(x))
  conv = 2 * 16 * 3 * 8 + 2 * 16 * 8 * 2
  dense = 2 * 16 * 8 * 8  # 4 windows x 4 tokens
  attention = 2 * (4 * 2 * 4 * 4 * 8)  # QK^T and AV in each of 4 windows
  report = analyze.analyze(model)
  assert report.flops == conv + dense + attention
  assert report.weights == 3 * 8 + 8 * 2 + 8 * 8
