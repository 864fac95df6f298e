"""tools.analyze: per-layer groups, widths, full-width FLOPs and weights."""

import json

import keras
import pytest
import tensorflow as tf

from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.tools import analyze

tf1 = tf.compat.v1
L = keras.layers


def residual_model():
  """No BatchNorm anywhere: conv -> (1x1 conv + 3x3 conv) added -> dense."""
  inputs = keras.Input((8, 8, 3))
  x = L.Conv2D(4, 3, padding='same', name='stem')(inputs)
  a = L.Conv2D(6, 1, name='branch_a')(x)
  b = L.Conv2D(6, 3, padding='same', name='branch_b')(x)
  y = L.ReLU()(L.Add()([a, b]))
  y = L.Conv2D(5, 3, strides=2, name='down')(y)  # valid: 3x3 output
  y = L.GlobalAveragePooling2D()(y)
  return keras.Model(inputs, L.Dense(2, name='logits')(y))


# Hand-computed: FLOPs = 2 x positions x kh x kw x C_in x C_out,
# weights = kh x kw x C_in x C_out (biases not counted).
EXPECTED = {
    'stem': (2 * 64 * 9 * 3 * 4, 9 * 3 * 4, 4),
    'branch_a': (2 * 64 * 1 * 4 * 6, 4 * 6, 6),
    'branch_b': (2 * 64 * 9 * 4 * 6, 9 * 4 * 6, 6),
    'down': (2 * 9 * 9 * 6 * 5, 9 * 6 * 5, 5),
    'logits': (2 * 5 * 2, 5 * 2, 2),
}


@pytest.fixture(scope='module')
def report():
  return analyze.analyze(residual_model())


def test_layers_are_listed_in_network_order_with_hand_computed_costs(report):
  assert [l.name for l in report.layers] == list(EXPECTED)
  for layer in report.layers:
    flops, weights, channels = EXPECTED[layer.name]
    assert (layer.flops, layer.weights, layer.channels) == (
        flops, weights, channels), layer.name


def test_totals_are_hand_computed_sums(report):
  assert report.flops == sum(v[0] for v in EXPECTED.values()) == 49424
  assert report.weights == sum(v[1] for v in EXPECTED.values()) == 628


def test_residual_added_convs_share_a_group(report):
  group = {l.name: l.group for l in report.layers}
  assert group['branch_a'] == group['branch_b']
  others = [group[n] for n in ('stem', 'branch_a', 'down', 'logits')]
  assert len(set(others)) == 4


def test_output_layer_is_marked_not_prunable(report):
  prunable = {l.name: l.prunable for l in report.layers}
  assert prunable == {'stem': True, 'branch_a': True, 'branch_b': True,
                      'down': True, 'logits': False}


def test_op_types(report):
  assert report.layer('stem').op_type == 'Conv2D'
  assert report.layer('logits').op_type == 'MatMul'
  with pytest.raises(KeyError, match='nope'):
    report.layer('nope')


def test_totals_equal_regularizer_costs_with_every_channel_alive():
  model = residual_model()
  report = analyze.analyze(model)
  # Threshold 0: every channel with a nonzero kernel is alive.
  flops = flop_regularizer.GroupLassoFlopsRegularizer(model, 0.0)
  size = model_size_regularizer.GroupLassoModelSizeRegularizer(model, 0.0)
  assert float(flops.get_cost()) == pytest.approx(report.flops)
  assert float(size.get_cost()) == pytest.approx(report.weights)


def test_separable_conv_is_one_row_with_both_halves_costed():
  inputs = keras.Input((6, 6, 4))
  x = L.SeparableConv2D(8, 3, padding='same', depth_multiplier=2,
                        use_bias=False, name='sep')(inputs)
  x = L.GlobalAveragePooling2D()(x)
  report = analyze.analyze(keras.Model(inputs, L.Dense(3, name='fc')(x)))
  sep = report.layer('sep')
  assert sep.op_type == 'DepthwiseConv2dNative+Conv2D'
  assert sep.channels == 8
  # depthwise: 2*36*9*(4*2); pointwise: 2*36*(4*2)*8
  assert sep.flops == 2 * 36 * 9 * 8 + 2 * 36 * 8 * 8
  assert sep.weights == 9 * 8 + 8 * 8


def test_report_json_has_flops_weights_layers(report):
  data = json.loads(report.to_json())
  assert set(data) == {'flops', 'weights', 'layers'}
  assert data['flops'] == 49424
  assert data['layers'][0] == {
      'name': 'stem', 'op_type': 'Conv2D', 'group': 0, 'channels': 4,
      'flops': 13824.0, 'weights': 108.0, 'prunable': True}


def test_format_table_lists_every_layer_and_totals(report):
  text = analyze.format_table(report)
  lines = text.splitlines()
  for name in EXPECTED:
    assert any(line.startswith(name + ' ') for line in lines), name
  assert any(line.startswith('total') and '49.42K' in line for line in lines)
  assert 'FLOPs 49.42K (49424), weights 628 (628)' in lines[-1]
  logits_line = next(l for l in lines if l.startswith('logits'))
  assert ' %d* ' % report.layer('logits').group in logits_line  # fixed width
  assert '*' not in next(l for l in lines if l.startswith('stem'))


def test_graph_mode_names_are_op_names():
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None, 4, 4, 2])
    k1 = tf1.get_variable('k1', [3, 3, 2, 5])
    k2 = tf1.get_variable('k2', [5, 3])
    net = tf.nn.relu(tf.nn.conv2d(x, k1, 1, 'SAME', name='conv1'))
    net = tf.reduce_mean(net, [1, 2])
    out = tf.matmul(net, k2, name='fc')
    report = analyze.analyze([out.op])
  assert [(l.name, l.channels) for l in report.layers] == [('conv1', 5),
                                                           ('fc', 3)]
  assert report.flops == 2 * 16 * 9 * 2 * 5 + 2 * 5 * 3
