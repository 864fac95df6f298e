"""Runs Gamma FLOPs / model-size regularizers over keras.applications models.

For each model (built with weights=None) it prints the analysis time, our
FLOP count against an independent count from layer shapes, their ratio, the
model-size ratio, and PASS/FAIL (both within 0.1%).

  python benchmarks/applications_zoo.py [--size 224] [--models ResNet50 ...]
"""

import argparse
import time

import keras
import numpy as np

from morph_net.framework import errors
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import model_size_regularizer

MODELS = ('ResNet50', 'ResNet50V2', 'MobileNet', 'MobileNetV2', 'InceptionV3',
          'DenseNet121', 'Xception', 'EfficientNetB0', 'VGG16')
# InceptionV3 / InceptionResNetV2 use BatchNormalization(scale=False) and VGG
# has no BatchNorm: GammaFlops must refuse them with NoRegularizerSourceError,
# and the source-free analysis must still count their FLOPs exactly.
EXTRA = ('ResNet101', 'MobileNetV3Small', 'MobileNetV3Large', 'NASNetMobile',
         'EfficientNetV2B0', 'ConvNeXtTiny', 'InceptionResNetV2')
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


def build(name, size):
  """The model with weights=None; Inception/Xception need >= 75 / 71 px."""
  fn = getattr(keras.applications, name)
  if name.startswith('Inception') or name == 'Xception':
    size = max(size, 75)
  return fn(weights=None, input_shape=(size, size, 3))


def run_one(name, size=224):
  """Returns a dict of results for one model."""
  keras.backend.clear_session()
  model = build(name, size)
  ref_flops, ref_weights = independent_counts(model)
  result = dict(model=name, ref_flops=ref_flops, ref_weights=ref_weights,
                has_gamma=has_gamma(model))
  start = time.time()
  try:
    reg = flop_regularizer.GammaFlopsRegularizer(model, gamma_threshold=1e-3)
    result['time'] = time.time() - start
    result['flops'] = float(reg.get_cost())
    result['groups'] = reg.op_regularizer_manager.num_regularized_classes
  except errors.NoRegularizerSourceError:
    result['time'] = time.time() - start
    result['flops'] = None
  size_reg = model_size_regularizer.GammaModelSizeRegularizer(
      model, gamma_threshold=1e-3) if result['flops'] is not None else None
  if size_reg is not None:
    result['weights'] = float(size_reg.get_cost())
  else:
    # No gamma sources: count weights with the plain (source-free) table.
    from morph_net.framework import op_regularizer_manager as orm  # pylint: disable=g-import-not-at-top
    from morph_net.network_regularizers import cost_calculator  # pylint: disable=g-import-not-at-top
    from morph_net.network_regularizers import resource_function  # pylint: disable=g-import-not-at-top
    manager = orm.OpRegularizerManager(model)
    result['weights'] = float(cost_calculator.CostCalculator(
        manager, resource_function.model_size_function).get_cost())
    result['flops_plain'] = float(cost_calculator.CostCalculator(
        manager, resource_function.flop_function).get_cost())
  return result


def verdict(r):
  size_ok = abs(r['weights'] / r['ref_weights'] - 1) <= TOLERANCE
  if r['flops'] is None:
    # Expected only for models without a BatchNorm gamma (VGG has no
    # BatchNorm; Inception uses BatchNormalization(scale=False)).
    flops_ok = (not r['has_gamma'] and
                abs(r['flops_plain'] / r['ref_flops'] - 1) <= TOLERANCE)
  else:
    flops_ok = abs(r['flops'] / r['ref_flops'] - 1) <= TOLERANCE
  return flops_ok and size_ok


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--models', nargs='*', default=list(MODELS))
  parser.add_argument('--extra', action='store_true',
                      help='also run %s' % (EXTRA,))
  args = parser.parse_args()
  names = list(args.models) + (list(EXTRA) if args.extra else [])
  print('%-18s %8s %16s %16s %9s %9s %7s  %s' % (
      'model', 'time_s', 'our_FLOPs', 'ref_FLOPs', 'ratio', 'size_rat',
      'groups', 'verdict'))
  failed = []
  for name in names:
    try:
      r = run_one(name, args.size)
    except Exception as e:  # pylint: disable=broad-except
      print('%-18s ERROR %s: %s' % (name, type(e).__name__,
                                    str(e).splitlines()[0][:200]))
      failed.append(name)
      continue
    ok = verdict(r)
    flops = r['flops'] if r['flops'] is not None else r['flops_plain']
    note = ('' if r['flops'] is not None else
            ' (no BatchNorm gamma: Gamma refused, counted source-free)')
    print('%-18s %8.2f %16.0f %16d %9.6f %9.6f %7s  %s%s' % (
        name, r['time'], flops, r['ref_flops'], flops / r['ref_flops'],
        r['weights'] / r['ref_weights'], r.get('groups', '-'),
        'PASS' if ok else 'FAIL', note), flush=True)
    if not ok:
      failed.append(name)
  print('FAILED: %s' % failed if failed else 'ALL PASS')
  return 1 if failed else 0


if __name__ == '__main__':
  raise SystemExit(main())
