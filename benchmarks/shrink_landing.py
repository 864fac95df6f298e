"""Does `target_cost` land from a trained seed, on the Pareto benchmark?

`pareto.py` learns each structure by shrinking its trained seed network
toward 0.5 x its cost with `add_regularizer(..., target_cost=T)` for 6
epochs. This script runs exactly that shrink (same tasks, seed networks,
trained seeds, regularizers and METHOD knobs as `pareto.py`) for every
setting x family x optimizer, records the cost after every step, and
reports where it lands:

* end: the cost after the last step, / T; in the band if in [0.85, 1.05];
* last epoch: whether every step of the last epoch was in the band;
* lowest: the lowest cost of any step, / T (how far it undershot);
* accuracy: the held-out accuracy of the network at the end of the shrink
  (before slimming or retraining), with BatchNorm statistics recomputed on
  the training set (`recalibrated_accuracy`): a shrink changes the
  network faster than BatchNorm's moving averages follow, so inference
  with them reads near chance while the network still does its task
  ('moving_stats_accuracy' keeps that reading); against the trained
  seed's, and against
  the control: the same fit (optimizer, learning rate, epochs) of the seed
  with no regularizer (`--control`, family 'none' in the JSON).

Optimizers: Adam (pareto.py's shrink: 1e-2, constant) and SGD with
momentum 0.9 (1e-2, constant). The trained seeds are pareto.py's (its
recipe and seed), cached in the work directory.

  python benchmarks/shrink_landing.py                       # everything
  python benchmarks/shrink_landing.py --settings 'digits16/*' \\
      --families gamma --optimizers adam
  python benchmarks/shrink_landing.py --control             # no regularizer
  python benchmarks/shrink_landing.py --quick --json /tmp/l.json  # smoke
  python benchmarks/shrink_landing.py --method normalize='"auto"' \\
      --json /tmp/landing_normalize.json

Writes the JSON after every run (atomically; a rerun skips finished runs)
and prints a table. A report, not a test: it always exits 0.
"""

import argparse
import fnmatch
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # as pareto.py
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import pareto  # pylint: disable=g-import-not-at-top

BAND = (0.85, 1.05)
OPTIMIZERS = ('adam', 'momentum')
FAMILIES = ('gamma', 'grouplasso', 'figs')
DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            'shrink_landing_results.json')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--settings', default=None,
                 help='comma-separated settings or globs (default: all 8)')
  p.add_argument('--families', default=','.join(FAMILIES))
  p.add_argument('--optimizers', default=','.join(OPTIMIZERS))
  p.add_argument('--quick', action='store_true',
                 help='smoke run: 240 source digits, 2 epochs, development '
                 'setting unless --settings')
  p.add_argument('--control', action='store_true',
                 help='also fit each seed with no regularizer (accuracy)')
  p.add_argument('--method', action='append', default=[],
                 metavar='KNOB=JSON', help="a pareto.METHOD override")
  p.add_argument('--json', default=DEFAULT_JSON)
  p.add_argument('--work-dir', default=os.path.join(
      tempfile.gettempdir(), 'morphnet_shrink_landing_work'))
  return p.parse_args(argv)


def shrink(seed_model, family, resource, data, optimizer, epochs):
  """pareto.shrink's fit, with `optimizer` and a per-step cost record."""
  import keras  # pylint: disable=g-import-not-at-top
  steps = []

  class Record(keras.callbacks.Callback):

    def __init__(self, reg, target):
      super().__init__()
      self._reg, self._target = reg, target

    def on_train_batch_end(self, batch, logs=None):
      steps.append(float(logs[self._reg.cost_name]) / self._target)

  model, reg, _, target = pareto.shrink_fit(
      seed_model, family, resource, data, epochs, optimizer,
      callbacks=lambda reg, target: [Record(reg, target)], monitor=False)
  per_epoch = len(steps) // epochs
  end = float(reg.get_cost()) / target
  return dict(end=end, in_band=BAND[0] <= end <= BAND[1],
              last_epoch_in_band=all(BAND[0] <= s <= BAND[1]
                                     for s in steps[-per_epoch:]),
              lowest=min(steps), epoch_ends=[
                  round(steps[(e + 1) * per_epoch - 1], 3)
                  for e in range(epochs)],
              accuracy=recalibrated_accuracy(model, data),
              moving_stats_accuracy=pareto.accuracy(model, data))


def gated_name(gate_kwargs):
  """The gated seed's file stem: a seed trained with other gate arguments
  is another seed."""
  if not gate_kwargs:
    return 'gated'
  return 'gated_' + hashlib.sha1(json.dumps(
      gate_kwargs, sort_keys=True).encode()).hexdigest()[:8]


def recalibrated_accuracy(model, data):
  """Held-out accuracy after BatchNorm's moving statistics are recomputed
  from the training set (`recalibrated`)."""
  return pareto.accuracy(recalibrated(model, data[0]), data)


def recalibrated(model, x):
  """A copy of `model` whose BatchNorms' moving mean and variance are the
  exact statistics of their inputs over `x` (one pass, training mode; FiGS
  gates apply their inference masks in it, as they will at inference,
  instead of sampling)."""
  import keras  # pylint: disable=g-import-not-at-top
  from morph_net.probabilistic_gating import activation_gating  # pylint: disable=g-import-not-at-top
  copy = keras.models.clone_model(model)
  copy.set_weights(model.get_weights())
  for layer in copy.layers:
    if isinstance(layer, activation_gating.LogisticSigmoidGating):
      layer.call = _inference_call(layer)
  norms = [layer for layer in copy.layers
           if isinstance(layer, keras.layers.BatchNormalization)]
  if norms:
    probes = keras.Model(copy.inputs, [layer.input for layer in norms])
    sums = [[0.0, 0.0, 0] for _ in norms]  # sum, sum of squares, count
    for start in range(0, len(x), 512):
      outs = probes(x[start:start + 512], training=True)
      outs = outs if isinstance(outs, (list, tuple)) else [outs]
      for total, out in zip(sums, outs):
        out = np.asarray(out, np.float64).reshape(-1, out.shape[-1])
        total[0] += out.sum(0)
        total[1] += np.square(out).sum(0)
        total[2] += len(out)
    for layer, (first, second, count) in zip(norms, sums):
      mean = first / count
      layer.moving_mean.assign(mean.astype(np.float32))
      layer.moving_variance.assign(np.maximum(
          second / count - np.square(mean), 0.0).astype(np.float32))
  return copy


def _inference_call(layer):
  def call(inputs, training=None):
    del training
    return type(layer).call(layer, inputs, training=False)
  return call


def control(seed_model, data, optimizer, epochs):
  """The shrink's fit with no regularizer: what the optimizer alone does
  to the seed's held-out accuracy."""
  model = pareto.shrink_fit(seed_model, None, None, data, epochs,
                            optimizer)[0]
  return dict(accuracy=recalibrated_accuracy(model, data),
              moving_stats_accuracy=pareto.accuracy(model, data))


def table(runs):
  lines = ['| family | optimizer | end in [0.85, 1.05] x T | last epoch in '
           'band | end x T (median; range) | lowest step x T (median; '
           'worst) | accuracy change (median) | vs no regularizer (median) |',
           '|---|---|---|---|---|---|---|---|']
  controls = {(r['setting'], r['optimizer']): r['accuracy'] for r in runs
              if r['family'] == 'none'}
  runs = [r for r in runs if r['family'] != 'none']
  keys = sorted({(r['family'], r['optimizer']) for r in runs})
  for family, optimizer in keys:
    rows = [r for r in runs if (r['family'], r['optimizer']) ==
            (family, optimizer)]
    ends = [r['end'] for r in rows]
    lows = [r['lowest'] for r in rows]
    versus = [r['accuracy'] - controls[(r['setting'], r['optimizer'])]
              for r in rows if (r['setting'], r['optimizer']) in controls
              and family not in pareto.GATED_FAMILIES]  # plain seeds only
    lines.append('| %s | %s | %d/%d | %d/%d | %.2f; %.2f-%.2f | %.2f; %.2f '
                 '| %+.3f | %s |' % (
                     family, optimizer, sum(r['in_band'] for r in rows),
                     len(rows), sum(r['last_epoch_in_band'] for r in rows),
                     len(rows), statistics.median(ends), min(ends), max(ends),
                     statistics.median(lows), min(lows), statistics.median(
                         r['accuracy'] - r['seed_accuracy'] for r in rows),
                     '%+.3f' % statistics.median(versus) if versus else '-'))
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  pareto.apply_method(args.method)
  spec = args.settings or (pareto.DEVELOPMENT_SETTING if args.quick
                           else '*')
  patterns = [s.strip() for s in spec.split(',') if s.strip()]
  settings = [s for s in pareto.SETTINGS
              if any(fnmatch.fnmatch(s, p) for p in patterns)]
  if not settings:
    raise ValueError('no setting matches %r; the settings are %s'
                     % (spec, ', '.join(pareto.SETTINGS)))
  families = [f.strip() for f in args.families.split(',') if f.strip()]
  optimizers = [o.strip() for o in args.optimizers.split(',') if o.strip()]
  for name, chosen, known in (('families', families, pareto.FAMILIES),
                              ('optimizers', optimizers, OPTIMIZERS)):
    unknown = sorted(set(chosen) - set(known))
    if unknown:
      raise ValueError('unknown %s %s; choose from %s'
                       % (name, unknown, ', '.join(known)))
  limit = pareto.QUICK['digits'] if args.quick else None
  seed_epochs = pareto.QUICK['epochs'] if args.quick else None
  shrink_epochs = (pareto.QUICK['shrink_epochs'] if args.quick
                   else pareto.METHOD['shrink_epochs'])
  results = dict(method=dict(pareto.METHOD), quick=bool(args.quick),
                 runs=[])
  if os.path.exists(args.json):
    with open(args.json) as f:
      old = json.load(f)
    if (old.get('method'), bool(old.get('quick'))) != (results['method'],
                                                        results['quick']):
      raise ValueError('%s holds runs of another METHOD or --quick (%s, '
                       'quick=%s); pass another --json' % (
                           args.json, old.get('method'), old.get('quick')))
    results = old
  done = {(r['setting'], r['family'], r['optimizer']) for r in results['runs']}
  os.makedirs(args.work_dir, exist_ok=True)
  import keras  # pylint: disable=g-import-not-at-top
  from morph_net.keras import cycles  # pylint: disable=g-import-not-at-top
  start = time.time()
  data_cache, seeds = {}, {}

  def trained_seed(task, net, gated):
    key = (task, net, gated)
    if key not in seeds:
      if task not in data_cache:
        data_cache[task] = pareto.make_task(task, limit)
      data = data_cache[task]
      keras.utils.set_random_seed(pareto.SEED_NET_SEED)
      model = pareto.build_net(net, data[0].shape[1:], gated)
      path = os.path.join(args.work_dir, '%s%s_%s_%s.weights.h5' % (
          'quick_' if args.quick else '', task, net,
          gated_name(pareto.METHOD['gate_kwargs']) if gated else 'plain'))
      if os.path.exists(path):
        model.load_weights(path)
      else:
        pareto.train(model, data, seed_epochs or pareto.TASKS[task][
            'epochs'], pareto.SEED_NET_SEED)
        model.save_weights(path)
      seeds[key] = (model, recalibrated_accuracy(model, data))
    return seeds[key]

  for setting in settings:
    task, net, resource = setting.split('/')
    for optimizer in optimizers if args.control else ():
      if (setting, 'none', optimizer) in done:
        continue
      model, seed_accuracy = trained_seed(task, net, False)
      run = control(model, data_cache[task], optimizer, shrink_epochs)
      run.update(setting=setting, family='none', optimizer=optimizer,
                 seed_accuracy=seed_accuracy)
      results['runs'].append(run)
      cycles.save_json_atomically(results, args.json)
      print('[%5.0fs] %s no regularizer %s: accuracy %.3f -> %.3f' % (
          time.time() - start, setting, optimizer, seed_accuracy,
          run['accuracy']), flush=True)
    for family in families:
      for optimizer in optimizers:
        if (setting, family, optimizer) in done:
          continue
        t = time.time()
        model, seed_accuracy = trained_seed(
            task, net, family in pareto.GATED_FAMILIES)
        run = shrink(model, family, resource, data_cache[task], optimizer,
                     shrink_epochs)
        run.update(setting=setting, family=family, optimizer=optimizer,
                   seed_accuracy=seed_accuracy,
                   wall_s=round(time.time() - t, 1))
        results['runs'].append(run)
        cycles.save_json_atomically(results, args.json)
        print('[%5.0fs] %s %s %s: end %.2f x T, lowest %.2f, epochs %s, '
              'accuracy %.3f -> %.3f' % (
                  time.time() - start, setting, family, optimizer,
                  run['end'], run['lowest'], run['epoch_ends'],
                  seed_accuracy, run['accuracy']), flush=True)
  print(table(results['runs']), flush=True)
  return results


if __name__ == '__main__':
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(2)
  main()
