"""How well does a latency model predict the real latency of slim models?

1. Fit a HardwareSpec for this machine with `morph_net.tools.profile`: two
   models, each timed at uniform widths 0.25, 0.5, 0.75 and 1.0 (8 samples).
2. Draw `--variants` random slim variants of each model that the fit never
   saw. Each channel group keeps a fraction drawn uniformly from [0.2, 1.0],
   seeded. Time each variant at batch 1 (a `tf.function`, median of
   `--repeats` calls).
3. Predict each variant's latency with the fitted spec, with the fitted
   roofline alone (what the latency regularizer's cost uses, op_overhead
   ignored), and with the data-sheet roofline presets. Report the Spearman
   rank correlation with the measured latency (per model) and the median
   relative error. The presets predict a GPU/TPU in its own units, so only
   their rank correlation means anything here.

Goal: rank correlation >= 0.9 and median relative error <= 20% for the
fitted spec.

  python benchmarks/latency_model.py                 # ~6-10 min on 2 cores
  python benchmarks/latency_model.py --quick         # 2 tiny CNNs, < 1 min

It also checks that a latency regularizer loads the saved JSON by path and
prices a variant as the fitted roofline does. Always exits 0.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir))

import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from morph_net.keras import slim_model  # pylint: disable=g-import-not-at-top
from morph_net.network_regularizers import hardware  # pylint: disable=g-import-not-at-top
from morph_net.network_regularizers import latency_regularizer  # pylint: disable=g-import-not-at-top
from morph_net.tools import analyze  # pylint: disable=g-import-not-at-top
from morph_net.tools import profile  # pylint: disable=g-import-not-at-top

PRESETS = ('K80', 'T4', 'V100', 'A100', 'H100', 'TPUv4', 'FLOP_LATENCY',
           'MEMORY_LATENCY')
GOAL_RHO, GOAL_ERROR = 0.9, 0.2


def _models(quick):
  if quick:
    return [_small_cnn((16, 32, 64), 'small_cnn'),
            _small_cnn((8, 16, 32, 32), 'small_cnn4')]
  return [keras.applications.MobileNetV2(weights=None,
                                         input_shape=(128, 128, 3)),
          keras.applications.ResNet50(weights=None,
                                      input_shape=(96, 96, 3))]


def _small_cnn(widths, name):
  inputs = keras.Input((32, 32, 3))
  x = inputs
  for i, filters in enumerate(widths):
    x = keras.layers.Conv2D(filters, 3, padding='same', use_bias=False,
                            name='conv%d' % i)(x)
    x = keras.layers.BatchNormalization(name='bn%d' % i)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(10, name='head')(x),
                     name=name)


def random_structure(model, rng):
  """Each channel group keeps a fraction ~ Uniform(0.2, 1.0)."""
  report = analyze.analyze(model)
  keep = {}
  structure = {}
  for l in report.layers:
    if not l.prunable:
      continue
    if l.group not in keep:
      keep[l.group] = rng.uniform(0.2, 1.0)
    structure[l.name] = max(1, int(round(keep[l.group] * l.channels)))
  return structure


def spearman(a, b):
  """Spearman rank correlation (no ties expected in timings)."""
  ra = np.argsort(np.argsort(a)).astype(np.float64)
  rb = np.argsort(np.argsort(b)).astype(np.float64)
  return float(np.corrcoef(ra, rb)[0, 1])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='tiny models and inputs, few variants/repeats')
  parser.add_argument('--variants', type=int, default=None,
                      help='random slim variants per model (default 12; '
                      '--quick: 3)')
  parser.add_argument('--repeats', type=int, default=None,
                      help='timed calls per variant (default 15; --quick 3)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', help='also write the results here')
  args = parser.parse_args(argv)
  variants = args.variants or (3 if args.quick else 12)
  repeats = args.repeats or (3 if args.quick else 15)
  multipliers = (0.5, 1.0) if args.quick else profile.DEFAULT_MULTIPLIERS
  keras.utils.set_random_seed(args.seed)
  t_start = time.perf_counter()
  models = _models(args.quick)

  # 1. Fit.
  spec, fit = profile.profile_hardware(
      models, 'this-machine', multipliers=multipliers, repeats=repeats,
      log=lambda line: print('  fit sample ' + line, flush=True))
  print('fitted: peak %.4g GFLOP/s, bandwidth %.4g GB/s, %.4g us per op; '
        'on its own samples: median error %.1f%%'
        % (spec.peak_compute, spec.memory_bandwidth, spec.op_overhead / 1e3,
           100 * fit['median_relative_error']), flush=True)

  # 2. Random variants, timed.
  rng = np.random.default_rng(args.seed)
  rows = []
  spec_path = os.path.join(tempfile.mkdtemp(), 'this-machine.json')
  hardware.save_hardware(spec, spec_path, fit=fit)
  for model in models:
    built = []
    for i in range(variants):
      variant = slim_model(model, random_structure(model, rng))
      built.append((variant, profile.roofline_parts(variant)))
    # Round-robin timing: noise of the shared machine hits every variant.
    measured = profile.measure_latencies([v for v, _ in built], 1, repeats)
    for i, ((variant, parts), seconds) in enumerate(zip(built, measured)):
      row = {'model': model.name, 'variant': i, 'measured_s': seconds,
             'flops': float(parts[0].sum()), 'ops': len(parts[0]),
             'fitted': profile.predict_latency(parts, spec),
             'fitted_roofline': profile.predict_latency(
                 parts, spec._replace(op_overhead=0.0))}
      for name in PRESETS:
        row[name] = profile.predict_latency(parts, name)
      if i == 0:
        # The regularizer loads the JSON by path and prices the roofline.
        reg = latency_regularizer.GroupLassoLatencyRegularizer(
            variant, 0.0, spec_path)
        row['regularizer_cost_s'] = 1e-9 * float(reg.get_cost())
        assert abs(row['regularizer_cost_s'] / row['fitted_roofline'] - 1
                   ) < 1e-6, row
      rows.append(row)
      print('  %s variant %2d: measured %.3f ms, fitted %.3f ms, %.4g FLOPs'
            % (model.name, i, 1e3 * seconds, 1e3 * row['fitted'],
               row['flops']), flush=True)

  # 3. Report.
  predictors = ['fitted', 'fitted_roofline'] + list(PRESETS)
  print('\n| predictor | ' + ' | '.join(
      'rho %s' % m.name for m in models) + ' | median rel. error |')
  print('|---|' + '---|' * (len(models) + 1))
  summary = {}
  for p in predictors:
    rhos = []
    for m in models:
      mine = [r for r in rows if r['model'] == m.name]
      rhos.append(spearman([r[p] for r in mine],
                           [r['measured_s'] for r in mine]))
    err = statistics.median(abs(r[p] / r['measured_s'] - 1) for r in rows)
    summary[p] = {'rho': rhos, 'median_relative_error': err}
    unit = '' if p.startswith('fitted') else ' (other units)'
    print('| %s | %s | %.1f%%%s |' % (p, ' | '.join('%.3f' % r for r in rhos),
                                      100 * err, unit))
  best = summary['fitted']
  print('goal rho >= %.1f and median error <= %d%%: %s (%.0f s in all)'
        % (GOAL_RHO, 100 * GOAL_ERROR,
           'MET' if min(best['rho']) >= GOAL_RHO and
           best['median_relative_error'] <= GOAL_ERROR else 'NOT MET',
           time.perf_counter() - t_start))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'spec': spec._asdict(), 'fit': fit, 'rows': rows,
                 'summary': summary}, f, indent=1)
  return 0


if __name__ == '__main__':
  main()
  sys.exit(0)
