"""Runs FLOP / model-size regularizers over keras.applications models.

For each model (built with weights=None) it prints the analysis time, our
FLOP count against an independent count from layer shapes, their ratio, the
model-size ratio, and the channel-grouping conformance check, then PASS/FAIL
(costs within 0.1% and conformance passed). Models with BatchNorm gammas use
the Gamma regularizers; the others (VGG, ConvNeXt, the scale=False
BatchNorms of Inception) use GroupLasso.

Conformance: for the channel class tied across the most regularizer sources
(e.g. a residual stream), zeroing the channel in one source leaves it alive
everywhere (when the class has several sources), and zeroing it in every
source kills it in every conv that produces it and in the exported structure.

Workflow (--workflow): a random structure (each exported count x U(0.3,
1), drawn in network order) expanded by `expand_structure` to 0.4 x the
FLOPs, slimmed by `slim_model`; its FLOPs by the independent count and by
`analyze(slim)` must equal `structure_cost`.

  python benchmarks/applications_zoo.py [--size 224] [--models ResNet50 ...]
  python benchmarks/applications_zoo.py --all --size 96   # every model
  python benchmarks/applications_zoo.py --all --size 64 --workflow
"""

import argparse
import collections
import os
import sys
import time

import keras
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
from morph_net.network_regularizers import model_size_regularizer  # pylint: disable=g-import-not-at-top
from morph_net.op_regularizers import group_lasso_regularizer  # pylint: disable=g-import-not-at-top
from morph_net.tools import structure_exporter  # pylint: disable=g-import-not-at-top
import keras_hub_zoo  # pylint: disable=g-import-not-at-top,wrong-import-order (the random structure of its workflow)

MODELS = ('ResNet50', 'ResNet50V2', 'MobileNet', 'MobileNetV2', 'InceptionV3',
          'DenseNet121', 'Xception', 'EfficientNetB0', 'VGG16')
# Beyond the named zoo: one of each further family (--extra), or every
# builder in keras.applications (--all).
EXTRA = ('ResNet101', 'MobileNetV3Small', 'MobileNetV3Large', 'NASNetMobile',
         'EfficientNetV2B0', 'ConvNeXtTiny', 'InceptionResNetV2',
         'DenseNet169', 'VGG19')
TOLERANCE = 1e-3


def _spatial(shape):
  return int(np.prod(shape[1:-1], dtype=np.int64)) if len(shape) > 2 else 1


def _layers(model):
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      yield from _layers(layer)
    else:
      yield layer


def independent_counts(model):
  """(FLOPs, weights) of every conv / dense layer, from layer shapes only.

  FLOPs: Conv 2*outHW*kh*kw*cin*cout/groups; DepthwiseConv
  2*outHW*kh*kw*cin*mult; Dense 2*in*out*positions; SeparableConv =
  depthwise + pointwise. Weights: kernel element counts.
  """
  flops = weights = 0
  for layer in _layers(model):
    if isinstance(layer, keras.layers.InputLayer):
      continue
    if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense,
                              keras.layers.DepthwiseConv2D,
                              keras.layers.SeparableConv2D)):
      continue
    out_shape = layer.output.shape
    if isinstance(layer, keras.layers.SeparableConv2D):
      dw, pw = layer.depthwise_kernel.shape, layer.pointwise_kernel.shape
      pos = _spatial(out_shape)
      flops += 2 * pos * int(np.prod(dw))
      flops += 2 * pos * int(np.prod(pw))
      weights += int(np.prod(dw)) + int(np.prod(pw))
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
      k = layer.kernel.shape
      flops += 2 * _spatial(out_shape) * int(np.prod(k))
      weights += int(np.prod(k))
    elif isinstance(layer, keras.layers.Conv2D):
      k = layer.kernel.shape  # [kh, kw, cin/groups, cout]
      flops += 2 * _spatial(out_shape) * int(np.prod(k))
      weights += int(np.prod(k))
    elif isinstance(layer, keras.layers.Dense):
      k = layer.kernel.shape
      flops += 2 * _spatial(layer.input.shape) * int(np.prod(k))
      weights += int(np.prod(k))
  return flops, weights


def has_gamma(model):
  """True if some BatchNormalization has a learned scale (a gamma)."""
  return any(isinstance(l, keras.layers.BatchNormalization) and l.scale
             for l in _layers(model))


def all_models():
  """Names of every model builder in keras.applications."""
  return sorted(n for n in dir(keras.applications)
                if n[0].isupper() and callable(getattr(keras.applications, n)))


def build(name, size):
  """The model with weights=None; Inception/Xception need >= 75 / 71 px,
  NASNetLarge 331 px."""
  fn = getattr(keras.applications, name)
  if name.startswith('Inception') or name == 'Xception':
    size = max(size, 75)
  if name == 'NASNetLarge':
    size = 331
  return fn(weights=None, input_shape=(size, size, 3))


def regularizers(model, threshold=1e-3):
  """(family, FLOP regularizer, model-size regularizer) for a model."""
  if has_gamma(model):
    return ('Gamma',
            flop_regularizer.GammaFlopsRegularizer(model, threshold),
            model_size_regularizer.GammaModelSizeRegularizer(model, threshold))
  return ('GroupLasso',
          flop_regularizer.GroupLassoFlopsRegularizer(model, threshold),
          model_size_regularizer.GroupLassoModelSizeRegularizer(
              model, threshold))


# --------------------------------------------------------- conformance
def _members(manager, label):
  """(source, channel index) of every regularized entry in a class."""
  out = []
  for s in manager.sources:
    for i in np.flatnonzero(manager.channel_labels(s.tensor) == label):
      out.append((s, int(i)))
  return out


def _producers(manager, label):
  """Non-depthwise compute ops whose output holds the class, with the
  class's channel positions in that output."""
  out = []
  for c in manager.compute_ops:
    if c.linear:
      continue
    where = np.flatnonzero(manager.channel_labels(c.output) == label)
    if len(where):
      out.append((c, where))
  return out


def _channel_slot(source, index):
  """Index into the source's parameter that holds channel `index`."""
  if source.regularizer_cls is group_lasso_regularizer.GroupLassoRegularizer:
    axis = source.setting[2] % len(source.param.shape)
    return tuple([slice(None)] * axis + [index])
  return (index,)  # a gamma vector


def _set_channel(source, index, value):
  """Sets one channel's parameter entries; returns the old ones."""
  param = source.param.numpy()
  slot = _channel_slot(source, index)
  old = np.array(param[slot], copy=True)
  param[slot] = value
  source.param.assign(param)
  return old


def _alive_at(manager, compute, where):
  alive = np.asarray(manager.get_regularizer(compute.op).alive_vector)
  return alive[where]


def check_tied_class(manager, label):
  """Asserts that a channel class lives and dies as one (see module doc)."""
  members = _members(manager, label)
  producers = _producers(manager, label)
  assert members and producers, 'class %d has no source or producer' % label
  exporter = structure_exporter.StructureExporter(manager)
  full = exporter.get_alive_counts()
  saved = []
  try:
    if len(members) >= 2:
      # Zero in one member only: the others keep the class alive.
      saved.append((members[0], _set_channel(*members[0], 0.0)))
      assert exporter.get_alive_counts() == full
      for c, where in producers:
        assert _alive_at(manager, c, where).all(), c.op.name
    for member in members[len(saved):]:
      saved.append((member, _set_channel(*member, 0.0)))
    # Zeroed in every member: the class dies wherever it appears.
    for c, where in producers:
      assert not _alive_at(manager, c, where).any(), c.op.name
    dead = exporter.get_alive_counts()
    changed = {k for k in full if dead[k] != full[k]}
    assert changed, 'no exported layer lost the channel'
    assert all(dead[k] < full[k] for k in changed)
  finally:
    for member, old in saved:
      _set_channel(*member, old)
  assert exporter.get_alive_counts() == full


def most_tied_class(manager):
  """The regularized channel class shared by the most source entries."""
  regularized = set()
  for s in manager.sources:
    labels = manager.channel_labels(s.tensor)
    keep = manager.class_indices(s.tensor) < manager.num_regularized_classes
    regularized.update(labels[keep].tolist())
  counts = collections.Counter(
      int(l) for s in manager.sources
      for l in manager.channel_labels(s.tensor) if int(l) in regularized)
  return counts.most_common(1)[0][0]


# --------------------------------------------------------------- runs
def run_one(name, size=224, conformance=True):
  """Returns a dict of results for one model."""
  keras.backend.clear_session()
  model = build(name, size)
  ref_flops, ref_weights = independent_counts(model)
  start = time.time()
  family, flops_reg, size_reg = regularizers(model)
  result = dict(model=name, family=family, ref_flops=ref_flops,
                ref_weights=ref_weights, time=time.time() - start,
                flops=float(flops_reg.get_cost()),
                weights=float(size_reg.get_cost()),
                groups=flops_reg.op_regularizer_manager.num_regularized_classes)
  if conformance:
    manager = flops_reg.op_regularizer_manager
    label = most_tied_class(manager)
    result['tied_sources'] = len(_members(manager, label))
    check_tied_class(manager, label)
  return result


def workflow(name, size=64, fraction=0.4, seed=1):
  """The slim workflow on one model; a dict: 'ok', 'ratio' (the expanded
  structure's FLOPs / the model's), 'counted' and 'reanalyzed' (the slim
  model's independent count and its own analysis equal structure_cost),
  or 'error'."""
  import morph_net.keras as mk  # pylint: disable=g-import-not-at-top
  from morph_net.tools import analyze  # pylint: disable=g-import-not-at-top
  keras.backend.clear_session()
  keras.utils.set_random_seed(0)
  row = {'model': name}
  try:
    model = build(name, size)
    analysis = mk.analysis_of(model)
    start = keras_hub_zoo.random_structure(model, analysis, None, seed)
    full = mk.structure_cost(analysis, {})
    structure = mk.expand_structure(analysis, start,
                                    target_cost=fraction * full)
    cost = mk.structure_cost(analysis, structure)
    slim = mk.slim_model(analysis, structure)
    row['ratio'] = cost / full
    row['counted'] = abs(independent_counts(slim)[0] - cost) <= 1e-9 * cost
    row['reanalyzed'] = abs(analyze.analyze(slim).flops - cost) <= (
        1e-9 * cost)
  except Exception as e:  # pylint: disable=broad-except
    row['error'] = '%s: %s' % (type(e).__name__,
                               (str(e).strip().splitlines() or [''])[0][:300])
  row['ok'] = bool(row.get('counted') and row.get('reanalyzed'))
  return row


def verdict(r):
  return (abs(r['flops'] / r['ref_flops'] - 1) <= TOLERANCE
          and abs(r['weights'] / r['ref_weights'] - 1) <= TOLERANCE)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--models', nargs='*', default=list(MODELS))
  parser.add_argument('--extra', action='store_true',
                      help='also run %s' % (EXTRA,))
  parser.add_argument('--all', action='store_true',
                      help='run every model in keras.applications')
  parser.add_argument('--no-conformance', action='store_true',
                      help='skip the channel-grouping check')
  parser.add_argument('--workflow', action='store_true',
                      help='slim each model to a random expanded structure '
                      '(module docstring)')
  args = parser.parse_args()
  names = list(args.models) + (list(EXTRA) if args.extra else [])
  if args.all:
    names = all_models()
  if args.workflow:
    rows = []
    for name in names:
      start = time.time()
      row = workflow(name, args.size)
      rows.append(row)
      print('%-18s %s %6.3f %5.0fs %s' % (
          name, 'PASS' if row['ok'] else 'FAIL', row.get('ratio', 0.0),
          time.time() - start, row.get('error', '')), flush=True)
    failed = [r['model'] for r in rows if not r['ok']]
    print('FAILED: %s' % failed if failed else 'ALL PASS (%d models)'
          % len(rows))
    return 1 if failed else 0
  print('%-18s %-10s %7s %14s %14s %9s %9s %6s %5s  %s' % (
      'model', 'family', 'time_s', 'our_FLOPs', 'ref_FLOPs', 'ratio',
      'size_rat', 'groups', 'tied', 'verdict'))
  failed = []
  for name in names:
    try:
      r = run_one(name, args.size, conformance=not args.no_conformance)
    except Exception as e:  # pylint: disable=broad-except
      text = (str(e).splitlines() or [''])[0][:200]
      print('%-18s ERROR %s: %s' % (name, type(e).__name__, text),
            flush=True)
      failed.append(name)
      continue
    ok = verdict(r)
    print('%-18s %-10s %7.2f %14.0f %14d %9.6f %9.6f %6d %5s  %s' % (
        name, r['family'], r['time'], r['flops'], r['ref_flops'],
        r['flops'] / r['ref_flops'], r['weights'] / r['ref_weights'],
        r['groups'], r.get('tied', r.get('tied_sources', '-')),
        'PASS' if ok else 'FAIL'), flush=True)
    if not ok:
      failed.append(name)
  print('FAILED: %s' % failed if failed else 'ALL PASS (%d models)'
        % len(names))
  return 1 if failed else 0


if __name__ == '__main__':
  raise SystemExit(main())
