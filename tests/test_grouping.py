"""Channel grouping on small Keras 3 models.

Each test derives the alive counts / FLOPs by hand from the grouping rules:
tied channels share one alive vector (OR of members) and one regularization
vector (max by default, or L2).
"""

import numpy as np
import pytest
import tensorflow as tf
import keras

from conftest import conv_bn
import morph_net.keras as mk
from morph_net.framework import grouping_regularizers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.network_regularizers import families
from morph_net.network_regularizers import flop_regularizer
from morph_net.tools import structure_exporter

THRESHOLD = 0.01
L = keras.layers


def set_gamma(model, name, gamma):
  gamma = np.asarray(gamma, np.float32)
  n = len(gamma)
  model.get_layer(name).set_weights(
      [gamma, np.zeros(n, np.float32), np.zeros(n, np.float32),
       np.ones(n, np.float32)])


def alive_counts(reg):
  return structure_exporter.StructureExporter(
      reg.op_regularizer_manager).get_alive_counts()


# ------------------------------------------------------------------ residual
def residual_model(n_out=7):
  inputs = keras.Input((8, 8, 3))
  a = conv_bn(inputs, 4, 'conv_a')
  b = conv_bn(inputs, 4, 'conv_b')
  x = L.ReLU()(L.Add()([a, b]))
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(n_out, name='logits')(x))


def test_residual_add_one_branch_keeps_channel_alive():
  model = residual_model()
  set_gamma(model, 'conv_a_bn', [0.0, 1.0, 1.0, 1.0])
  set_gamma(model, 'conv_b_bn', [1.0, 1.0, 1.0, 1.0])
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  assert alive_counts(reg) == {'conv_a': 4, 'conv_b': 4}
  # 1x1 convs, 64 positions, 3 inputs, 4 alive; dense 2 * 4 * 7.
  assert float(reg.get_cost()) == 2 * (2 * 64 * 3 * 4) + 2 * 4 * 7


def test_residual_add_zero_in_both_branches_kills_channel():
  model = residual_model()
  set_gamma(model, 'conv_a_bn', [0.0, 1.0, 1.0, 1.0])
  set_gamma(model, 'conv_b_bn', [0.005, 1.0, 1.0, 1.0])
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  assert alive_counts(reg) == {'conv_a': 3, 'conv_b': 3}
  assert float(reg.get_cost()) == 2 * (2 * 64 * 3 * 3) + 2 * 3 * 7


def test_residual_add_branches_share_channel_labels():
  model = residual_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  manager = reg.op_regularizer_manager
  convs = [c for c in manager.compute_ops if c.op.type == 'Conv2D']
  assert len(convs) == 2
  la, lb = (manager.channel_labels(c.output) for c in convs)
  np.testing.assert_array_equal(la, lb)
  assert len(set(la.tolist())) == 4  # channels are not tied to each other
  assert manager.num_regularized_classes == 4


# ---------------------------------------------------------------- concat
def concat_model():
  inputs = keras.Input((8, 8, 3))
  a = L.ReLU()(conv_bn(inputs, 3, 'conv_a'))
  b = L.ReLU()(conv_bn(inputs, 5, 'conv_b'))
  x = L.Concatenate(axis=-1)([a, b])
  x = L.ReLU()(conv_bn(x, 4, 'conv_c'))
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(6, name='logits')(x))


def test_concat_slices_map_to_producers():
  model = concat_model()
  set_gamma(model, 'conv_a_bn', [1.0, 0.0, 1.0])
  set_gamma(model, 'conv_b_bn', [0.0, 1.0, 1.0, 1.0, 0.001])
  set_gamma(model, 'conv_c_bn', [1.0, 1.0, 0.0, 1.0])
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  assert alive_counts(reg) == {'conv_a': 2, 'conv_b': 3, 'conv_c': 3}
  # conv_a: 2*64*3*2, conv_b: 2*64*3*3, conv_c: alive_in = 2 + 3 = 5,
  # 2*64*5*3; dense: 2*3*6.
  expected = 2 * 64 * 3 * 2 + 2 * 64 * 3 * 3 + 2 * 64 * 5 * 3 + 2 * 3 * 6
  assert float(reg.get_cost()) == expected


def test_concat_op_slices():
  model = concat_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  manager = reg.op_regularizer_manager
  concat = [op for op in manager.ops if op.type == 'ConcatV2']
  assert len(concat) == 1
  slices = manager.get_op_slices(concat[0])
  assert [(s.slice.start_index, s.slice.size) for s in slices] == [
      (0, 3), (3, 5)]
  for s in slices:
    group = manager.get_op_group(s)
    assert group is not None and group.size == s.slice.size
    assert group.source_op_slices  # each slice is regularized by a BN


# -------------------------------------------------------------- depthwise
def depthwise_model():
  inputs = keras.Input((8, 8, 3))
  x = L.ReLU()(conv_bn(inputs, 4, 'conv1'))
  x = L.DepthwiseConv2D(3, depth_multiplier=2, padding='same',
                        use_bias=False, name='dw')(x)
  x = L.BatchNormalization(name='dw_bn')(x)
  x = L.ReLU()(conv_bn(L.ReLU()(x), 5, 'conv2'))
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(2, name='logits')(x))


def _depthwise_cost(alive1):
  dw_out = 2 * alive1
  return (2 * 64 * 1 * 3 * alive1  # conv1
          + 2 * 64 * 9 * dw_out  # depthwise: linear in alive_out
          + 2 * 64 * 1 * dw_out * 5  # conv2
          + 2 * 5 * 2)  # dense


def test_depthwise_multiplier_channel_alive_through_output_bn():
  model = depthwise_model()
  # Input channel 1 of dw is dead in conv1's BN but outputs 2, 3 live.
  set_gamma(model, 'conv1_bn', [1.0, 0.0, 1.0, 1.0])
  set_gamma(model, 'dw_bn', [1.0] * 8)
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  assert alive_counts(reg) == {'conv1': 4, 'conv2': 5}
  assert float(reg.get_cost()) == _depthwise_cost(4)


def test_depthwise_multiplier_cost_linear():
  model = depthwise_model()
  set_gamma(model, 'conv1_bn', [1.0, 0.0, 1.0, 1.0])
  # dw outputs 2 and 3 come from input channel 1: kill them too.
  set_gamma(model, 'dw_bn', [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  assert alive_counts(reg) == {'conv1': 3, 'conv2': 5}
  assert float(reg.get_cost()) == _depthwise_cost(3)
  per_op = reg.per_op_costs()
  dw = [v for k, v in per_op.items() if 'dw' in k]
  assert dw == [2 * 64 * 9 * 6]


def test_depthwise_one_dead_output_does_not_kill_pair():
  model = depthwise_model()
  set_gamma(model, 'conv1_bn', [1.0, 0.0, 1.0, 1.0])
  # Output 2 dead, output 3 (same input channel) alive: the channel lives.
  set_gamma(model, 'dw_bn', [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  assert alive_counts(reg) == {'conv1': 4, 'conv2': 5}


# ---------------------------------------------------------------- flatten
def test_flatten_dense_counts_positions_times_alive_channels():
  inputs = keras.Input((4, 4, 3))
  x = L.ReLU()(conv_bn(inputs, 5, 'conv'))
  x = L.Flatten()(x)
  model = keras.Model(inputs, L.Dense(7, name='logits')(x))
  set_gamma(model, 'conv_bn', [1.0, 0.0, 1.0, 0.0, 1.0])
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  assert alive_counts(reg) == {'conv': 3}
  # conv: 2*16*1*3*3; dense: 2 * (4*4*3 alive inputs) * 7.
  assert float(reg.get_cost()) == 2 * 16 * 3 * 3 + 2 * (16 * 3) * 7


def _tiled_model():
  """conv (4) -> tile channels x2 -> conv (3), on 6x6 positions."""
  inputs = keras.Input((6, 6, 2))
  x = conv_bn(inputs, 4, 'conv1')
  x = L.Lambda(lambda t: tf.tile(t, [1, 1, 1, 2]), name='tile')(x)
  return keras.Model(inputs, conv_bn(x, 3, 'conv2'))


def test_tile_along_channels_repeats_the_producers_channels():
  """Copy j of a tiled channel is that channel: conv2 reads 2 copies of
  each alive conv1 channel (was: a leaf, conv2 costed at 8 inputs)."""
  model = _tiled_model()
  set_gamma(model, 'conv1_bn', [1.0, 0.0, 0.0, 1.0])
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  assert float(reg.get_cost()) == 2 * 36 * (2 * 2 + (2 * 2) * 3)
  counts = alive_counts(reg)
  assert counts['conv1'] == 2
  assert mk.structure_cost(model, counts) == float(reg.get_cost())
  # slim_model cannot see inside a Lambda and says so, naming it.
  with pytest.raises(NotImplementedError, match="'tile' \\(Lambda\\)"):
    mk.slim_model(model, reg)


# --------------------------------------------------------------------- SE
def test_squeeze_excite_multiply_ties_gate_to_channels():
  inputs = keras.Input((8, 8, 3))
  x = L.ReLU()(conv_bn(inputs, 4, 'conv'))
  g = L.GlobalAveragePooling2D(keepdims=True)(x)
  g = L.Conv2D(2, 1, activation='relu', name='se_reduce')(g)
  g = L.Conv2D(4, 1, activation='sigmoid', name='se_expand')(g)
  y = L.Multiply()([x, g])
  y = L.ReLU()(conv_bn(y, 5, 'conv2'))
  y = L.GlobalAveragePooling2D()(y)
  model = keras.Model(inputs, L.Dense(2, name='logits')(y))
  set_gamma(model, 'conv_bn', [0.0, 1.0, 1.0, 1.0])
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  manager = reg.op_regularizer_manager
  counts = alive_counts(reg)
  # se_expand's output channels are tied to conv's: it is prunable too.
  assert counts == {'conv': 3, 'se_expand': 3, 'conv2': 5}
  expected = (2 * 64 * 3 * 3  # conv
              + 2 * 1 * 3 * 2  # se_reduce: 1 position, 3 alive in
              + 2 * 1 * 2 * 3  # se_expand: 3 alive out
              + 2 * 64 * 3 * 5  # conv2
              + 2 * 5 * 2)  # dense
  assert float(reg.get_cost()) == expected
  convs = {c.op.name: c for c in manager.compute_ops}
  conv = [c for n, c in convs.items() if 'se_' not in n and 'conv2' not in n
          and c.op.type == 'Conv2D']
  expand = [c for n, c in convs.items() if 'se_expand' in n]
  assert len(conv) == 1 and len(expand) == 1
  np.testing.assert_array_equal(manager.channel_labels(conv[0].output),
                                manager.channel_labels(expand[0].output))


# ------------------------------------------------------ grouping regularizer
GAMMA_A = [0.3, 0.4, 1.0, 1.0]
GAMMA_B = [0.4, 0.3, 1.0, 2.0]


def _residual_with_gammas():
  model = residual_model(n_out=7)
  set_gamma(model, 'conv_a_bn', GAMMA_A)
  set_gamma(model, 'conv_b_bn', GAMMA_B)
  return model


@pytest.mark.parametrize('grouping,expected_reg', [
    (grouping_regularizers.MaxGroupingRegularizer,
     [0.4, 0.4, 1.0, 2.0]),
    (grouping_regularizers.L2GroupingRegularizer,
     [0.5, 0.5, np.sqrt(2.0), np.sqrt(5.0)]),
])
def test_grouping_regularizer_class_vectors(grouping, expected_reg):
  model = _residual_with_gammas()
  manager = orm.OpRegularizerManager(
      model, family=families.gamma(THRESHOLD),
      create_grouping_regularizer=grouping)
  reg, alive = manager.class_vectors()
  reg, alive = np.asarray(reg), np.asarray(alive)
  assert manager.num_regularized_classes == 4
  # Last entry stands for unregularized channels: reg 0, alive.
  assert reg[-1] == 0.0 and alive[-1] == 1.0
  np.testing.assert_allclose(sorted(reg[:-1]), sorted(expected_reg),
                             rtol=1e-6)
  np.testing.assert_array_equal(alive[:-1], [1.0] * 4)


@pytest.mark.parametrize('grouping', [
    grouping_regularizers.MaxGroupingRegularizer,
    grouping_regularizers.L2GroupingRegularizer,
])
def test_grouping_regularizer_gradient(grouping):
  model = _residual_with_gammas()
  manager = orm.OpRegularizerManager(
      model, family=families.gamma(THRESHOLD),
      create_grouping_regularizer=grouping)
  ga = model.get_layer('conv_a_bn').gamma
  with tf.GradientTape() as tape:
    total = tf.reduce_sum(manager.class_vectors()[0])
  grad = np.asarray(tape.gradient(total, ga))
  if grouping is grouping_regularizers.L2GroupingRegularizer:
    # d sqrt(a^2 + b^2) / da = a / sqrt(a^2 + b^2).
    norm = np.sqrt(np.square(GAMMA_A) + np.square(GAMMA_B))
    np.testing.assert_allclose(grad, np.array(GAMMA_A) / norm, rtol=1e-5)
  else:
    # max picks b for channels 0 and 3 and a for channel 1; channel 2 is a
    # tie (1.0 vs 1.0), so only the strict ones are checked.
    assert grad[0] == 0.0 and grad[3] == 0.0
    assert grad[1] == pytest.approx(1.0)


def test_regularizer_op_vectors_on_residual():
  model = _residual_with_gammas()
  manager = orm.OpRegularizerManager(
      model, family=families.gamma(THRESHOLD))
  convs = [c for c in manager.compute_ops if c.op.type == 'Conv2D']
  assert len(convs) == 2
  for c in convs:
    op_reg = manager.get_regularizer(c.op)
    assert op_reg is not None
    np.testing.assert_allclose(np.asarray(op_reg.regularization_vector),
                               [0.4, 0.4, 1.0, 2.0], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(op_reg.alive_vector),
                                  [True] * 4)


# ------------------------------------------------------- Dense on N-D input
def test_dense_on_4d_input_counts_positions():
  inputs = keras.Input((8, 8, 3))
  x = L.ReLU()(conv_bn(inputs, 4, 'conv'))
  x = L.Dense(5, use_bias=False, name='fc')(x)  # per-position dense
  x = L.BatchNormalization(name='fc_bn')(x)
  x = L.GlobalAveragePooling2D()(L.ReLU()(x))
  model = keras.Model(inputs, L.Dense(2, name='logits')(x))
  set_gamma(model, 'conv_bn', [1.0, 0.0, 1.0, 1.0])
  set_gamma(model, 'fc_bn', [1.0, 1.0, 0.0, 0.0, 1.0])
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  assert alive_counts(reg) == {'conv': 3, 'fc': 3}
  expected = (2 * 64 * 3 * 3  # conv
              + 2 * 64 * 3 * 3  # fc: 2 x 64 positions x 3 in x 3 out
              + 2 * 3 * 2)  # logits
  assert float(reg.get_cost()) == expected


# --------------------------------------------------- blacklist, force_group
def test_regularizer_blacklist_leaves_conv_unregularized_full_width():
  model = concat_model()
  set_gamma(model, 'conv_a_bn', [1.0, 0.0, 1.0])
  set_gamma(model, 'conv_b_bn', [0.0, 1.0, 1.0, 1.0, 0.001])
  set_gamma(model, 'conv_c_bn', [1.0, 1.0, 0.0, 1.0])
  reg = flop_regularizer.GammaFlopsRegularizer(
      model, THRESHOLD, regularizer_blacklist=['conv_b_bn'])
  # conv_b has no regularizer: full width 5, not exported.
  assert alive_counts(reg) == {'conv_a': 2, 'conv_c': 3}
  expected = 2 * 64 * 3 * 2 + 2 * 64 * 3 * 5 + 2 * 64 * 7 * 3 + 2 * 3 * 6
  assert float(reg.get_cost()) == expected


def test_regularizer_blacklist_unmatched_pattern_is_error():
  model = concat_model()
  with pytest.raises(ValueError):
    flop_regularizer.GammaFlopsRegularizer(
        model, THRESHOLD, regularizer_blacklist=['no_such_layer_xyz'])


def test_force_group_ties_unrelated_convs():
  inputs = keras.Input((8, 8, 3))
  a = L.ReLU()(conv_bn(inputs, 4, 'conv_a'))
  b = L.ReLU()(conv_bn(a, 4, 'conv_b'))
  x = L.GlobalAveragePooling2D()(b)
  model = keras.Model(inputs, L.Dense(2, name='logits')(x))
  set_gamma(model, 'conv_a_bn', [0.0, 0.0, 1.0, 1.0])
  set_gamma(model, 'conv_b_bn', [0.0, 1.0, 0.0, 1.0])
  plain = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  assert alive_counts(plain) == {'conv_a': 2, 'conv_b': 2}
  manager = plain.op_regularizer_manager
  convs = [c for c in manager.compute_ops if c.op.type == 'Conv2D']
  pattern = '|'.join(c.op.name for c in convs)
  grouped = flop_regularizer.GammaFlopsRegularizer(
      model, THRESHOLD, force_group=[pattern])
  # Tied channel-by-channel: alive = OR -> [0, 1, 1, 1].
  assert alive_counts(grouped) == {'conv_a': 3, 'conv_b': 3}
  assert float(grouped.get_cost()) == (2 * 64 * 3 * 3 + 2 * 64 * 3 * 3
                                       + 2 * 3 * 2)


# ----------------------------------------------- more tied-channel patterns
def test_bn_after_concat_regularizes_both_producers():
  inputs = keras.Input((8, 8, 3))
  a = L.Conv2D(3, 1, use_bias=False, name='conv_a')(inputs)
  b = L.Conv2D(5, 1, use_bias=False, name='conv_b')(inputs)
  x = L.Concatenate()([a, b])
  x = L.BatchNormalization(name='cat_bn')(x)
  x = L.GlobalAveragePooling2D()(L.ReLU()(x))
  model = keras.Model(inputs, L.Dense(2, name='logits')(x))
  set_gamma(model, 'cat_bn', [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  assert alive_counts(reg) == {'conv_a': 2, 'conv_b': 3}
  assert float(reg.get_cost()) == (2 * 64 * 3 * 2 + 2 * 64 * 3 * 3
                                   + 2 * 5 * 2)


def test_identity_shortcut_same_group_in_and_out():
  inputs = keras.Input((8, 8, 3))
  x = L.ReLU()(conv_bn(inputs, 4, 'conv_a'))
  y = conv_bn(x, 4, 'conv_b', kernel=3)
  z = L.ReLU()(L.Add()([x, y]))
  z = L.GlobalAveragePooling2D()(z)
  model = keras.Model(inputs, L.Dense(2, name='logits')(z))
  ga = [0.5, 0.0, 0.25, 0.0]
  gb = [0.0, 0.0, 1.0, 0.001]
  set_gamma(model, 'conv_a_bn', ga)
  set_gamma(model, 'conv_b_bn', gb)
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  # One group: alive = [1, 0, 1, 0] -> 2; reg (max) = 0.5+0+1+0.001.
  assert alive_counts(reg) == {'conv_a': 2, 'conv_b': 2}
  a, r = 2, 0.5 + 0.0 + 1.0 + 0.001
  k_a, k_b, k_d = 2 * 64, 2 * 64 * 9, 2
  assert float(reg.get_cost()) == k_a * 3 * a + k_b * a * a + k_d * a * 2
  expected_term = (k_a * (3 * r + a * 0.0) + k_b * (a * r + a * r)
                   + k_d * (a * 0.0 + 2 * r))
  assert float(reg.get_regularization_term()) == pytest.approx(
      expected_term, rel=1e-5)


def test_separable_depth_multiplier_two():
  inputs = keras.Input((8, 8, 3))
  x = L.ReLU()(conv_bn(inputs, 4, 'conv1'))
  x = L.SeparableConv2D(5, 3, depth_multiplier=2, padding='same',
                        use_bias=False, name='sep')(x)
  x = L.BatchNormalization(name='sep_bn')(x)
  x = L.GlobalAveragePooling2D()(L.ReLU()(x))
  model = keras.Model(inputs, L.Dense(2, name='logits')(x))
  set_gamma(model, 'conv1_bn', [1.0, 0.0, 1.0, 1.0])
  set_gamma(model, 'sep_bn', [1.0, 0.0, 1.0, 1.0, 1.0])
  reg = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  assert alive_counts(reg) == {'conv1': 3, 'sep': 4}
  # depthwise out = 2 * 3 alive = 6 (linear); pointwise 6 -> 4 alive.
  expected = (2 * 64 * 3 * 3 + 2 * 64 * 9 * 6 + 2 * 64 * 6 * 4
              + 2 * 4 * 2)
  assert float(reg.get_cost()) == expected
