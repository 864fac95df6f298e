"""Keras Applications models: exact costs and correct channel grouping.

Each model is built with weights=None at a small input size. Two behaviours:
* at full width, GammaFlops / GammaModelSize costs equal an independent
  count from layer shapes (benchmarks/applications_zoo.py) within 0.1%;
* tied channels live and die together: zeroing one channel's gamma in ONE
  BatchNorm of a tied group leaves it alive everywhere, zeroing it in every
  member kills it in every conv that produces it (checked through the
  StructureExporter and the manager's alive vectors).
"""

import keras
import numpy as np
import pytest

from conftest import benchmark
from morph_net.framework import errors
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.tools import structure_exporter

zoo = benchmark('applications_zoo')

TOLERANCE = 1e-3

# name -> (builder, BatchNorm pairs that must share a channel group).
# The pairs name what ties them: a residual add, depthwise in/out + SE
# multiply, a dense-block concat slice.
CASES = {
    'MobileNetV2': (
        lambda: keras.applications.MobileNetV2(
            weights=None, alpha=0.35, input_shape=(96, 96, 3)),
        # block_2 adds block_1's projection: residual tie. Depthwise:
        # expand BN and depthwise BN share channels.
        [('block_1_project_BN', 'block_2_project_BN'),
         ('block_3_expand_BN', 'block_3_depthwise_BN')]),
    'EfficientNetB0': (
        lambda: keras.applications.EfficientNetB0(
            weights=None, input_shape=(64, 64, 3)),
        # Depthwise follows its input; the SE gate multiplies those
        # channels; block2b adds block2a's projection.
        [('block2a_expand_bn', 'block2a_bn'),
         ('block2a_project_bn', 'block2b_project_bn')]),
    'ResNet50': (
        lambda: keras.applications.ResNet50(
            weights=None, input_shape=(64, 64, 3)),
        # Shortcut BN and the block's last BN meet at an Add.
        [('conv2_block1_0_bn', 'conv2_block1_3_bn'),
         ('conv2_block1_3_bn', 'conv2_block3_3_bn')]),
    'DenseNet121': (
        lambda: keras.applications.DenseNet121(
            weights=None, input_shape=(32, 32, 3)),
        # The first dense layer's BN reads the stem channels, which the next
        # layers' BNs read again through the concat (first slice).
        [('conv2_block1_0_bn', 'conv2_block2_0_bn')]),
}


@pytest.fixture(scope='module', params=sorted(CASES))
def case(request):
  keras.backend.clear_session()
  build, pairs = CASES[request.param]
  model = build()
  reg = flop_regularizer.GammaFlopsRegularizer(model, gamma_threshold=1e-3)
  return request.param, model, reg, pairs


def _rel(a, b):
  return abs(float(a) / float(b) - 1.0)


def test_full_width_costs_match_layer_shapes(case):
  _, model, reg, _ = case
  ref_flops, ref_weights = zoo.independent_counts(model)
  size = model_size_regularizer.GammaModelSizeRegularizer(
      model, gamma_threshold=1e-3)
  assert _rel(reg.get_cost(), ref_flops) <= TOLERANCE
  assert _rel(size.get_cost(), ref_weights) <= TOLERANCE


def test_every_scaled_batch_norm_is_one_source(case):
  _, model, reg, _ = case
  manager = reg.op_regularizer_manager
  names = [manager.view.owner_of_variable(s.param) for s in manager.sources]
  expected = sorted(l.name for l in zoo._layers(model)  # pylint: disable=protected-access
                    if isinstance(l, keras.layers.BatchNormalization)
                    and l.scale)
  assert sorted(names) == expected


def _sources_by_layer(manager):
  return {manager.view.owner_of_variable(s.param): s
          for s in manager.sources}


def test_named_batch_norms_are_tied(case):
  _, _, reg, pairs = case
  manager = reg.op_regularizer_manager
  sources = _sources_by_layer(manager)
  for a, b in pairs:
    labels_a = set(manager.channel_labels(sources[a].tensor).tolist())
    labels_b = set(manager.channel_labels(sources[b].tensor).tolist())
    assert labels_a & labels_b, '%s and %s share no channel' % (a, b)


def test_tied_channels_live_and_die_together(case):
  _, _, reg, pairs = case
  manager = reg.op_regularizer_manager
  sources = _sources_by_layer(manager)
  labels = []
  for a, b in pairs:
    shared = (set(manager.channel_labels(sources[a].tensor).tolist())
              & set(manager.channel_labels(sources[b].tensor).tolist()))
    labels.append(min(shared))
  # And the class tied across the most BatchNorms in the model.
  labels.append(zoo.most_tied_class(manager))
  for label in labels:
    zoo.check_tied_class(manager, label)


def _group_lasso_with_exact_costs(model):
  """Checks the zoo picks GroupLasso and counts exactly; its manager."""
  family, flops, size = zoo.regularizers(model)
  assert family == 'GroupLasso'
  ref_flops, ref_weights = zoo.independent_counts(model)
  assert _rel(flops.get_cost(), ref_flops) <= TOLERANCE
  assert _rel(size.get_cost(), ref_weights) <= TOLERANCE
  return flops.op_regularizer_manager


def test_models_without_gamma_use_group_lasso():
  """VGG has no BatchNorm: Gamma refuses it; GroupLasso counts it exactly
  and its channel classes pass the conformance check."""
  keras.backend.clear_session()
  model = keras.applications.VGG16(weights=None, include_top=False,
                                   input_shape=(32, 32, 3))
  with pytest.raises(errors.NoRegularizerSourceError):
    flop_regularizer.GammaFlopsRegularizer(model, gamma_threshold=1e-3)
  manager = _group_lasso_with_exact_costs(model)
  zoo.check_tied_class(manager, zoo.most_tied_class(manager))


def test_convnext_grouped_convs_with_group_lasso():
  """ConvNeXt: depthwise convs are Conv2D(groups=C) in nested XLA calls,
  LayerNorm instead of BatchNorm, Dense on 4-D inputs, layer scale."""
  keras.backend.clear_session()
  model = keras.applications.ConvNeXtTiny(weights=None,
                                          input_shape=(32, 32, 3))
  manager = _group_lasso_with_exact_costs(model)
  computes = {manager.view.owner_layer(c.op, c.weight_index): c
              for c in manager.compute_ops}
  depthwise = computes['convnext_tiny_stage_0_block_0_depthwise_conv']
  assert depthwise.linear and depthwise.op.type == 'Conv2D'
  # The depthwise conv's output channels are its input's (the stream).
  np.testing.assert_array_equal(manager.channel_labels(depthwise.output),
                                manager.channel_labels(depthwise.input))
  zoo.check_tied_class(manager, zoo.most_tied_class(manager))


@pytest.mark.slow
@pytest.mark.parametrize('name', zoo.all_models())
def test_zoo_model(name):
  """Every keras.applications model at 96 px: exact costs, conformance."""
  result = zoo.run_one(name, size=96, conformance=True)
  assert zoo.verdict(result), result


@pytest.mark.parametrize('name', ['MobileNetV3Small', 'EfficientNetB0'])
def test_slim_workflow(name):
  """A random structure expanded to 0.4 x the FLOPs slims, and the slim
  model's FLOPs by layer shapes and by its own analysis equal
  structure_cost (benchmarks/applications_zoo.py --workflow)."""
  row = zoo.workflow(name, size=32)
  assert row['ok'], row
  assert 0.3 < row['ratio'] <= 0.4


@pytest.mark.slow
@pytest.mark.parametrize('name', zoo.all_models())
def test_zoo_workflow(name):
  """Every keras.applications model slims to a random expanded structure
  at its exact cost."""
  row = zoo.workflow(name, size=64)  # build() raises the minimum sizes
  assert row['ok'], row


def test_spatial_crop_passes_channels_but_channel_slice_does_not():
  """Cropping2D (NASNet) keeps channels; slicing the channel axis cuts ties."""
  keras.backend.clear_session()
  x = keras.Input((8, 8, 3))
  a = keras.layers.BatchNormalization(name='bn_a')(
      keras.layers.Conv2D(4, 3, padding='same')(x))
  b = keras.layers.BatchNormalization(name='bn_b')(
      keras.layers.Conv2D(4, 3)(a))
  cropped = keras.layers.Cropping2D(1)(a)
  y = keras.layers.Add()([cropped, b])
  sliced = keras.layers.Lambda(lambda t: t[..., :2])(y)
  c = keras.layers.BatchNormalization(name='bn_c')(
      keras.layers.Conv2D(2, 1)(sliced))
  model = keras.Model(x, c)
  manager = flop_regularizer.GammaFlopsRegularizer(
      model, gamma_threshold=1e-3).op_regularizer_manager
  sources = _sources_by_layer(manager)
  labels = {k: manager.channel_labels(s.tensor).tolist()
            for k, s in sources.items()}
  assert labels['bn_a'] == labels['bn_b']
  assert not set(labels['bn_c']) & set(labels['bn_a'])
