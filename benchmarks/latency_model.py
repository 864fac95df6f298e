"""How well does a latency model predict the real latency of slim models?

1. Build each model at uniform widths 0.25, 0.5, 0.75 and 1.0 (the fit
   samples of `morph_net.keras.profile`), and `--variants` random slim
   variants of it that the fit never sees: each channel group keeps a
   fraction drawn uniformly from [0.2, 1.0], seeded.
2. Time all of them at batch 1 in one interleaved run (`tf.function`,
   `--repeats` rounds, each round in a shuffled order), so a slow spell of
   the shared machine hits fit samples and variants alike. Each model's
   rounds are summarized by their median and by their 20th percentile
   (load only adds time); steps 3 runs once for each.
   TensorFlow runs on `--threads` threads (default 1: on a machine shared
   with other jobs one thread is what we can count on).
3. Fit HardwareSpecs on the width samples only: 'fitted' (dense peak,
   depthwise rate, bandwidth, per-op overhead), 'fitted_one_rate' (depthwise
   at the dense peak, as before depthwise_compute existed) and
   'fitted_roofline' (no overhead: the bare roofline). Predict every
   variant with them and with the data-sheet roofline presets, and report
   per model the Spearman rank correlation with the measured latency and
   the median relative error. The presets predict a GPU/TPU in its own
   units, so only their rank correlation means anything here.

Inputs are small to keep the run bounded: MobileNetV2 at 128x128, ResNet50
at 96x96 (batch 1).

Goal: rank correlation >= 0.9 per model and median relative error <= 20%
for the fitted spec.

  python benchmarks/latency_model.py                 # ~10 min on 2 busy cores
  python benchmarks/latency_model.py --quick         # 2 tiny CNNs, < 1 min

It also prices one variant with a latency regularizer that loads the saved
JSON by path and reports whether it agrees with the fitted spec. Always
exits 0.
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
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from morph_net.keras import slim_model  # pylint: disable=g-import-not-at-top
from morph_net.network_regularizers import hardware  # pylint: disable=g-import-not-at-top
from morph_net.network_regularizers import latency_regularizer  # pylint: disable=g-import-not-at-top
from morph_net.tools import analyze  # pylint: disable=g-import-not-at-top
from morph_net.keras import profile  # pylint: disable=g-import-not-at-top

PRESETS = ('K80', 'T4', 'V100', 'A100', 'H100', 'TPUv4', 'FLOP_LATENCY',
           'MEMORY_LATENCY')
GOAL_RHO, GOAL_ERROR = 0.9, 0.2
# Per-round timings are summarized twice: the median, and the 20th
# percentile (other jobs only add time, so a low quantile is the less noisy
# estimate of the unloaded latency).
STATISTICS = (('median', 0.5), ('p20', 0.2))


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


def random_structure(model, rng, widths='group'):
  """A random slim structure of `model`.

  widths='group': each channel group keeps a fraction ~ U(0.2, 1.0), so
  every variant is about 0.6 x wide and they differ in where they are
  narrow (the hard case: latencies within ~1.3x of each other).
  widths='budget': a variant-wide factor g ~ U(0.25, 1.0) times a
  per-group U(0.8, 1.0), like structures learned at different budgets.
  """
  report = analyze.analyze(model)
  keep = {}
  structure = {}
  scale = rng.uniform(0.25, 1.0) if widths == 'budget' else None
  for l in report.layers:
    if not l.prunable:
      continue
    if l.group not in keep:
      keep[l.group] = (rng.uniform(0.2, 1.0) if scale is None
                       else scale * rng.uniform(0.8, 1.0))
    structure[l.name] = max(1, int(round(keep[l.group] * l.channels)))
  return structure


def spearman(a, b):
  """Spearman rank correlation (no ties expected in timings)."""
  ra = np.argsort(np.argsort(a)).astype(np.float64)
  rb = np.argsort(np.argsort(b)).astype(np.float64)
  return float(np.corrcoef(ra, rb)[0, 1])


def _fits(width_rows, seconds):
  """{predictor: HardwareSpec} fitted on the uniform-width samples."""
  samples = [(parts, s) for (_, _, parts), s in zip(width_rows, seconds)]
  fitted, _ = profile.fit_hardware(samples, 'this-machine')
  one_rate, _ = profile.fit_hardware(samples, 'one-rate',
                                     with_depthwise=False)
  roofline, _ = profile.fit_hardware(samples, 'roofline',
                                     with_overhead=False)
  return {'fitted': fitted, 'fitted_one_rate': one_rate,
          'fitted_roofline': roofline}


def _regularizer_check(variant, parts, spec, spec_path):
  """The regularizer's cost (s) of `variant` loading the JSON by path."""
  reg = latency_regularizer.GroupLassoLatencyRegularizer(variant, 0.0,
                                                         spec_path)
  cost = 1e-9 * float(reg.get_cost())
  return {'regularizer_cost_s': cost,
          'regularizer_matches_fitted': bool(abs(
              cost / profile.predict_latency(parts, spec) - 1) < 1e-6)}


def _summary(rows, models, predictors):
  summary = {}
  for p in predictors:
    rhos = []
    for m in models:
      mine = [r for r in rows if r['model'] == m.name]
      rhos.append(spearman([r[p] for r in mine],
                           [r['measured_s'] for r in mine]))
    err = [statistics.median(abs(r[p] / r['measured_s'] - 1) for r in rows
                             if r['model'] == m.name) for m in models]
    summary[p] = {'rho': rhos, 'median_relative_error': err,
                  'median_relative_error_all': statistics.median(
                      abs(r[p] / r['measured_s'] - 1) for r in rows)}
  return summary


def _evaluate(models, width_rows, built, fit_seconds, variant_seconds):
  """Fits on the width samples, predicts the variants, prints the table."""
  for (row, _, parts), s in zip(width_rows, fit_seconds):
    print('  fit sample %s x%.2f: %.3f ms, %.4g FLOPs'
          % (row['model'], row['multiplier'], 1e3 * s, parts[0].sum()),
          flush=True)
  specs = _fits(width_rows, fit_seconds)
  spec = specs['fitted']
  print('fitted: dense %.4g GFLOP/s, depthwise %s GFLOP/s, bandwidth %.4g '
        'GB/s, %.4g us per op'
        % (spec.peak_compute, '%.4g' % spec.depthwise_compute
           if spec.depthwise_compute else 'n/a', spec.memory_bandwidth,
           spec.op_overhead / 1e3), flush=True)
  spec_path = os.path.join(tempfile.mkdtemp(), 'this-machine.json')
  hardware.save_hardware(spec, spec_path)
  rows = []
  for (name, i, variant, parts), measured in zip(built, variant_seconds):
    row = {'model': name, 'variant': i, 'measured_s': measured,
           'flops': float(parts[0].sum()), 'ops': int(parts[3].sum())}
    for key, s in specs.items():
      row[key] = profile.predict_latency(parts, s)
    for key in PRESETS:
      row[key] = profile.predict_latency(parts, key)
    if i == 0:
      row.update(_regularizer_check(variant, parts, spec, spec_path))
    rows.append(row)
    print('  %s variant %2d: measured %.3f ms, fitted %.3f ms, %.4g FLOPs'
          % (name, i, 1e3 * measured, 1e3 * row['fitted'], row['flops']),
          flush=True)
  predictors = list(specs) + list(PRESETS)
  summary = _summary(rows, models, predictors)
  print('\n| predictor | ' + ' | '.join(
      'rho %s | median error %s' % (m.name, m.name) for m in models) + ' |')
  print('|---|' + '---|---|' * len(models))
  for p in predictors:
    unit = '' if p.startswith('fitted') else ' (other units)'
    print('| %s | %s |' % (p, ' | '.join(
        '%.3f | %.1f%%%s' % (r, 100 * e, unit) for r, e in zip(
            summary[p]['rho'], summary[p]['median_relative_error']))))
  best = summary['fitted']
  met = (min(best['rho']) >= GOAL_RHO and
         max(best['median_relative_error']) <= GOAL_ERROR)
  checks = [r for r in rows if 'regularizer_matches_fitted' in r]
  print('regularizer loading the JSON prices variant 0 as the fitted spec: '
        '%s' % ', '.join(str(r['regularizer_matches_fitted'])
                         for r in checks))
  print('goal rho >= %.1f and median error <= %d%% per model: %s'
        % (GOAL_RHO, 100 * GOAL_ERROR, 'MET' if met else 'NOT MET'),
        flush=True)
  return {'specs': {k: v._asdict() for k, v in specs.items()},
          'fit_samples': [dict(r, measured_s=s) for (r, _, _), s in
                          zip(width_rows, fit_seconds)],
          'rows': rows, 'summary': summary, 'met': bool(met)}


def _retest(models, built, times, q):
  """Per model, the rank correlation of the variants' timings from the even
  rounds with those from the odd rounds: how well the measurement ranks
  itself, an upper bound for any predictor's rho."""
  out = []
  for m in models:
    mine = [t for b, t in zip(built, times) if b[0] == m.name]
    out.append(spearman([np.quantile(t[0::2], q) for t in mine],
                        [np.quantile(t[1::2], q) for t in mine]))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='tiny models and inputs, few variants/repeats')
  parser.add_argument('--variants', type=int, default=None,
                      help='random slim variants per model (default 12; '
                      '--quick: 3)')
  parser.add_argument('--repeats', type=int, default=None,
                      help='timed rounds (default 40; --quick 3)')
  parser.add_argument('--threads', type=int, default=1,
                      help='TensorFlow intra- and inter-op threads (0: TF '
                      'default)')
  parser.add_argument('--widths', choices=('group', 'budget'),
                      default='group', help='how variants are drawn (see '
                      'random_structure)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', help='also write the results here')
  args = parser.parse_args(argv)
  if args.threads:
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
  variants = args.variants or (3 if args.quick else 12)
  repeats = args.repeats or (3 if args.quick else 40)
  multipliers = (0.5, 1.0) if args.quick else profile.DEFAULT_MULTIPLIERS
  keras.utils.set_random_seed(args.seed)
  t_start = time.perf_counter()
  load_start = os.getloadavg()
  models = _models(args.quick)

  # 1. Fit samples and random variants.
  width_rows = profile.width_variants(models, multipliers)
  rng = np.random.default_rng(args.seed)
  built = []
  for model in models:
    for i in range(variants):
      variant = slim_model(model, random_structure(model, rng,
                                                   args.widths))
      built.append((model.name, i, variant, profile.roofline_parts(variant)))
  print('built %d fit samples and %d variants in %.0f s'
        % (len(width_rows), len(built), time.perf_counter() - t_start),
        flush=True)

  # 2. One interleaved timing run over all of them.
  times = profile.measure_times(
      [v for _, v, _ in width_rows] + [b[2] for b in built], 1, repeats)
  results = {}
  for stat, q in STATISTICS:
    print('\n## %s of %d rounds' % (stat, repeats), flush=True)
    seconds = [float(np.quantile(t, q)) for t in times]
    results[stat] = _evaluate(models, width_rows, built,
                              seconds[:len(width_rows)],
                              seconds[len(width_rows):])
    results[stat]['retest_rho'] = _retest(models, built,
                                          times[len(width_rows):], q)
    print('noise ceiling: rho between even and odd rounds of the same '
          'timings: %s' % ', '.join('%s %.3f' % (m.name, r) for m, r in zip(
              models, results[stat]['retest_rho'])), flush=True)
  load_end = os.getloadavg()
  print('\n%.0f s in all; load average %.1f at the start, %.1f at the end '
        '(%d cores)' % (time.perf_counter() - t_start, load_start[0],
                        load_end[0], os.cpu_count()))
  if args.json:
    # The per-op parts too, so a model can be refitted without timing.
    np.savez_compressed(
        os.path.splitext(args.json)[0] + '_parts.npz',
        **{'fit_%d_%d' % (i, k): np.asarray(a) for i, (_, _, parts) in
           enumerate(width_rows) for k, a in enumerate(parts)},
        **{'variant_%d_%d' % (i, k): np.asarray(a) for i, b in
           enumerate(built) for k, a in enumerate(b[3])})
    with open(args.json, 'w') as f:
      json.dump(dict(results['median'], by_statistic=results,
                     times=times, threads=args.threads, repeats=repeats,
                     widths=args.widths,
                     load_average=[load_start[0], load_end[0]]), f, indent=1)
  return 0


if __name__ == '__main__':
  main()
  sys.exit(0)
