"""Keras Applications models: exact costs and correct channel grouping.

Each model is built with weights=None at a small input size. Two behaviours:
* at full width, GammaFlops / GammaModelSize costs equal an independent
  count from layer shapes (benchmarks/applications_zoo.py) within 0.1%;
* tied channels live and die together: zeroing one channel's gamma in ONE
  BatchNorm of a tied group leaves it alive everywhere, zeroing it in every
  member kills it in every conv that produces it (checked through the
  StructureExporter and the manager's alive vectors).
"""

import collections
import importlib.util
import os

import keras
import numpy as np
import pytest

from morph_net.framework import errors
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.tools import structure_exporter

_ZOO_PATH = os.path.join(os.path.dirname(__file__), os.pardir, 'benchmarks',
                         'applications_zoo.py')
_spec = importlib.util.spec_from_file_location('applications_zoo', _ZOO_PATH)
zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo)

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


def _members(manager, label):
  """(source, channel index) of every gamma entry in a channel class."""
  out = []
  for s in manager.sources:
    for i in np.flatnonzero(manager.channel_labels(s.tensor) == label):
      out.append((s, int(i)))
  return out


def _producers(manager, label):
  """Compute ops (non-depthwise) whose output holds the class, with its
  per-op channel positions."""
  out = []
  for c in manager.compute_ops:
    if c.linear:
      continue
    where = np.flatnonzero(manager.channel_labels(c.output) == label)
    if len(where):
      out.append((c, where))
  return out


def _alive_of(manager, compute):
  regularizer = manager.get_regularizer(compute.op)
  return np.asarray(regularizer.alive_vector)


def _set_gamma(source, index, value):
  gamma = source.param.numpy()
  gamma[index] = value
  source.param.assign(gamma)


def _check_tied_class(manager, label):
  members = _members(manager, label)
  producers = _producers(manager, label)
  assert len(members) >= 2 and producers
  exporter = structure_exporter.StructureExporter(manager)
  full = exporter.get_alive_counts()
  originals = [(s, i, float(s.param.numpy()[i])) for s, i in members]
  try:
    # Zero in one member only: the others keep the class alive.
    _set_gamma(members[0][0], members[0][1], 0.0)
    assert exporter.get_alive_counts() == full
    for c, where in producers:
      assert _alive_of(manager, c)[where].all(), c.op.name
    # Zero in every member: the class dies wherever it appears.
    for s, i in members:
      _set_gamma(s, i, 0.0)
    for c, where in producers:
      assert not _alive_of(manager, c)[where].any(), c.op.name
    dead = exporter.get_alive_counts()
    changed = {k for k in full if dead[k] != full[k]}
    assert changed, 'no exported layer lost the channel'
    for k in changed:
      assert dead[k] < full[k]
  finally:
    for s, i, v in originals:
      _set_gamma(s, i, v)
  assert exporter.get_alive_counts() == full


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
  counts = collections.Counter(
      int(l) for s in manager.sources for l in manager.channel_labels(
          s.tensor))
  labels.append(counts.most_common(1)[0][0])
  for label in labels:
    _check_tied_class(manager, label)


def test_models_without_gamma_are_refused_but_still_counted():
  """VGG has no BatchNorm: Gamma refuses it; the plain analysis counts it."""
  keras.backend.clear_session()
  model = keras.applications.VGG16(weights=None, include_top=False,
                                   input_shape=(32, 32, 3))
  with pytest.raises(errors.NoRegularizerSourceError):
    flop_regularizer.GammaFlopsRegularizer(model, gamma_threshold=1e-3)
  from morph_net.framework import op_regularizer_manager as orm  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import cost_calculator  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import resource_function  # pylint: disable=g-import-not-at-top
  manager = orm.OpRegularizerManager(model)
  ref_flops, _ = zoo.independent_counts(model)
  flops = cost_calculator.CostCalculator(
      manager, resource_function.flop_function).get_cost()
  assert _rel(flops, ref_flops) <= TOLERANCE


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
