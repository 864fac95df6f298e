"""MorphNet against the uniform width multiplier, at matched FLOPs.

Task ("cluttered digits", built from sklearn's 8x8 digits, offline): each
example is a 16x16 canvas with one digit at a random offset, two 4x4
fragments of other digits as clutter, and Gaussian noise (sigma 0.1); the
label is the whole digit. Three variants per source digit; the digits are
split 70/30 into train / held-out before the canvases are made, so no
held-out digit is seen in training.

Seed network: Conv(3x3)+BN+ReLU blocks of widths 16-32-64 (max pooling
after the first two), global average pooling, Dense(10).

Curves (every point retrained from scratch with `--seeds` seeds; mean and
95% t-interval of held-out accuracy):

- width: the seed's widths x w, w in WIDTHS;
- morphnet: `add_regularizer(seed, GammaFlopsRegularizer, target_cost=
  FLOPs(width w))` from the trained seed, the last structure exported at or
  under the target, expanded (`expand_structure`) to FLOPs(width w) so each
  MorphNet point matches a width point's FLOPs (checked: within 2%);
- cycles x1 / x2: shrink to 0.5 x seed FLOPs, expand back to the seed's
  FLOPs, retrain; x2 repeats that from the x1 network (`run_cycles`).

"Targeted regularization" figure: per-layer alive widths after shrinking
the seed with the FLOPs regularizer and with the model-size regularizer,
each to 0.5 x its own initial cost.

Usage:
  python benchmarks/pareto.py              # full run (~35 min, 2 busy cores)
  python benchmarks/pareto.py --quick --out-dir /tmp/p   # smoke (1-2 min)

Writes `<out-dir>/pareto_results.json`, `pareto.png`, `pareto_targeted.png`
and prints a Markdown table.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import keras  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import morph_net.keras as mk  # pylint: disable=g-import-not-at-top
from morph_net.keras import budget  # pylint: disable=g-import-not-at-top
from morph_net.keras import cycles as cycles_lib  # pylint: disable=g-import-not-at-top
from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
from morph_net.network_regularizers import model_size_regularizer  # pylint: disable=g-import-not-at-top

SEED_WIDTHS = (16, 32, 64)
WIDTHS = (0.25, 0.375, 0.5, 0.75, 1.0)
TARGET_WIDTHS = (0.25, 0.375, 0.5, 0.75)  # MorphNet at these points' FLOPs
THRESHOLD = 1e-2
CANVAS = 16


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true', help='smoke run')
  p.add_argument('--seeds', type=int, default=None)
  p.add_argument('--out-dir', default=os.path.dirname(os.path.abspath(
      __file__)))
  p.add_argument('--only', default='width,morphnet,cycles,targeted',
                 help='comma list of the parts to run (each retrains the '
                 'same seed network first)')
  p.add_argument('--merge', nargs='*', default=None,
                 help='only merge these pareto_results.json files into '
                 '--out-dir (table, plots); runs nothing')
  p.add_argument('--work-dir', default=None,
                 help='exported structures (default: a temporary directory)')
  return p.parse_args(argv)


def config(quick):
  if quick:
    # A smoke test that still shrinks: 210 canvases, batch 16 (14 steps an
    # epoch), 8 shrink epochs (~110 steps) and a 3x faster controller
    # (rate 0.1): under Adam the strength has to climb ~40x before a
    # channel dies, ~120 steps at the default rate.
    return dict(variants=1, digits=300, epochs=2, shrink_epochs=8, seeds=1,
                widths=(0.25, 1.0), targets=(0.5,), batch=16, cycles=1,
                rate=0.1)
  # Sized for ~30 min on 2 shared cores. Two earlier starts were stopped:
  # 3 variants x 15 epochs (~60-85 s per retrain there: too long), and
  # 2 variants x 8 epochs (the seed reached only 27% held-out accuracy).
  return dict(variants=3, digits=None, epochs=12, shrink_epochs=6, seeds=3,
              widths=WIDTHS, targets=TARGET_WIDTHS, batch=64, cycles=2)


def make_data(cfg, seed=0):
  """Cluttered, translated 16x16 digits: (x_train, y_train, x_test, y_test)."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images = (digits.images / 16.0).astype('float32')
  labels = digits.target.astype('int32')
  rng = np.random.RandomState(seed)
  order = rng.permutation(len(images))
  if cfg['digits']:
    order = order[:cfg['digits']]
  split = int(0.7 * len(order))

  def canvases(indices):
    xs, ys = [], []
    for _ in range(cfg['variants']):
      for i in indices:
        canvas = np.zeros((CANVAS, CANVAS), np.float32)
        for _ in range(2):  # clutter: 4x4 pieces of other digits
          other = images[rng.randint(len(images))]
          r, c = rng.randint(0, 5, size=2)
          pr, pc = rng.randint(0, CANVAS - 4, size=2)
          canvas[pr:pr + 4, pc:pc + 4] = np.maximum(
              canvas[pr:pr + 4, pc:pc + 4], other[r:r + 4, c:c + 4])
        r, c = rng.randint(0, CANVAS - 8 + 1, size=2)
        canvas[r:r + 8, c:c + 8] = np.maximum(canvas[r:r + 8, c:c + 8],
                                              images[i])
        canvas += rng.normal(0, 0.1, canvas.shape).astype(np.float32)
        xs.append(canvas)
        ys.append(labels[i])
    return np.stack(xs)[..., None], np.asarray(ys)

  x_train, y_train = canvases(order[:split])
  x_test, y_test = canvases(order[split:])
  return x_train, y_train, x_test, y_test


def build_model(widths, name='cnn'):
  inputs = keras.Input((CANVAS, CANVAS, 1), name='image')
  x = inputs
  for i, width in enumerate(widths):
    x = keras.layers.Conv2D(int(width), 3, padding='same', use_bias=False,
                            name='conv%d' % i)(x)
    x = keras.layers.BatchNormalization(name='bn%d' % i)(x)
    x = keras.layers.ReLU(name='relu%d' % i)(x)
    if i < len(widths) - 1:
      x = keras.layers.MaxPooling2D(name='pool%d' % i)(x)
  x = keras.layers.GlobalAveragePooling2D(name='gap')(x)
  return keras.Model(inputs, keras.layers.Dense(10, name='logits')(x),
                     name=name)


def scaled(w):
  return [max(1, int(round(w * c))) for c in SEED_WIDTHS]


def flops(model):
  return float(mk.structure_cost(model, {}, cost='flops'))


def _loss():
  return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def train(model, data, cfg, seed):
  """The normal recipe: Adam 3e-3, cosine decay, cfg['epochs'] epochs."""
  keras.utils.set_random_seed(seed)
  steps = cfg['epochs'] * math.ceil(len(data[0]) / cfg['batch'])
  model.compile(keras.optimizers.Adam(
      keras.optimizers.schedules.CosineDecay(3e-3, steps)), _loss(),
                metrics=['accuracy'])
  model.fit(data[0], data[1], batch_size=cfg['batch'], epochs=cfg['epochs'],
            verbose=0)


def accuracy(model, data):
  logits = model.predict(data[2], batch_size=512, verbose=0)
  return float(np.mean(np.argmax(logits, -1) == data[3]))


def retrain(seed_model, structure, data, cfg):
  """Accuracies of the slim network, retrained from scratch per seed."""
  accs, cost = [], None
  for s in range(cfg['seeds']):
    keras.utils.set_random_seed(100 + s)
    slim = keras.models.clone_model(mk.slim_model(seed_model, structure))
    cost = flops(slim)
    train(slim, data, cfg, 100 + s)
    accs.append(accuracy(slim, data))
  return accs, cost


def shrink_fit(cfg, data, seed=1):
  """The shrink recipe passed to run_cycles and used for the targets."""
  def fit(model, phase, callbacks):
    if phase == 'retrain':
      train(model, data, cfg, seed)
      return
    keras.utils.set_random_seed(seed)
    model.compile(keras.optimizers.Adam(1e-2), _loss(), metrics=['accuracy'])
    model.fit(data[0], data[1], batch_size=cfg['batch'],
              epochs=cfg['shrink_epochs'], verbose=0, callbacks=callbacks)
  return fit


def shrink(seed_model, make_reg, target_fraction_or_cost, cfg, data, log_dir,
           absolute=False, cost='flops'):
  """Shrinks a copy of the trained seed; returns (structure, cost, met)."""
  model = keras.models.clone_model(seed_model)
  model.set_weights(seed_model.get_weights())
  reg = make_reg(model)
  target = (target_fraction_or_cost if absolute else
            target_fraction_or_cost * float(reg.get_cost()))
  trainer = mk.add_regularizer(model, reg, target_cost=(
      budget.StrengthController(target, rate=cfg['rate']) if 'rate' in cfg
      else target))
  exporter = budget.only_at_or_under(mk.StructureExporterCallback(
      reg, log_dir, 10, summary_subdir=None), target)
  shrink_fit(cfg, data)(trainer, 'shrink', [exporter])
  structure, _ = cycles_lib.last_structure(log_dir, seed_model, target,
                                           cost=cost)
  met = structure is not None
  if not met:
    structure = {k: int(v) for k, v in mk.slim.resolve_structure(
        mk.slim.as_functional(model), reg)[0].items()}
  return structure, float(reg.get_cost()), met, target


def match_flops(seed_model, structure, target, tol=0.02):
  """Adds channels one at a time until FLOPs are within `tol` under target.

  `expand_structure` scales every layer by one factor; with integer widths
  over 3 layers that can land 6% under the target. Each step adds one
  channel to the kept layer whose increase is largest without exceeding
  the target (removed layers stay removed).
  """
  structure = {k: int(v) for k, v in structure.items()}
  cost = float(mk.structure_cost(seed_model, structure))
  while cost < (1.0 - tol / 2) * target:
    best = None
    for name, width in structure.items():
      if width <= 0:
        continue
      trial = dict(structure, **{name: width + 1})
      trial_cost = float(mk.structure_cost(seed_model, trial))
      if trial_cost <= target and (best is None or trial_cost > best[0]):
        best = (trial_cost, trial)
    if best is None:
      break
    cost, structure = best
  return structure


def mean_ci(values):
  values = np.asarray(values, np.float64)
  n = len(values)
  mean = float(values.mean())
  if n < 2:
    return mean, float('nan')
  t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}.get(n, 2.0)
  return mean, float(t * values.std(ddof=1) / math.sqrt(n))


def main(argv=None):
  args = parse_args(argv)
  if args.merge:
    return merge(args.merge, args.out_dir)
  parts = set(args.only.split(','))
  cfg = config(args.quick)
  if args.seeds:
    cfg['seeds'] = args.seeds
  os.makedirs(args.out_dir, exist_ok=True)
  work = args.work_dir or tempfile.mkdtemp(prefix='pareto_')
  start = time.time()

  def stamp(msg):
    print('[%6.0fs] %s' % (time.time() - start, msg), flush=True)

  data = make_data(cfg)
  stamp('data: %d train / %d held-out canvases' % (len(data[0]),
                                                    len(data[2])))
  keras.utils.set_random_seed(0)
  seed_model = build_model(SEED_WIDTHS, 'seed')
  train(seed_model, data, cfg, 0)
  seed_flops = flops(seed_model)
  stamp('seed trained: acc %.4f, %.0f FLOPs' % (accuracy(seed_model, data),
                                                seed_flops))
  rows = []

  def add(kind, label, structure_flops, accs, extra=None):
    mean, ci = mean_ci(accs)
    row = dict(kind=kind, label=label, flops=structure_flops,
               flops_fraction=structure_flops / seed_flops, accuracies=accs,
               mean=mean, ci95=ci, **(extra or {}))
    rows.append(row)
    cycles_lib.save_json_atomically(  # partial results survive a cut run
        dict(seed_flops=seed_flops, rows=rows, partial=True),
        os.path.join(args.out_dir, 'pareto_results.json'))
    stamp('%-9s %-22s %.3f x seed FLOPs: acc %.4f +- %.4f'
          % (kind, label, row['flops_fraction'], mean, ci))

  width_flops = {}
  for w in cfg['widths'] if 'width' in parts else ():
    model = build_model(scaled(w), 'width')
    width_flops[w] = flops(model)
    structure = {'conv%d' % i: c for i, c in enumerate(scaled(w))}
    accs, cost = retrain(seed_model, structure, data, cfg)
    add('width', 'w=%g %s' % (w, scaled(w)), cost, accs)

  for w in cfg['targets'] if 'morphnet' in parts else ():
    target = width_flops.get(w) or flops(build_model(scaled(w)))
    learned, end_cost, met, _ = shrink(
        seed_model, lambda m: flop_regularizer.GammaFlopsRegularizer(
            m, THRESHOLD), target, cfg, data,
        os.path.join(work, 'target_%g' % w), absolute=True)
    learned_cost = float(mk.structure_cost(seed_model, learned))
    matched = match_flops(seed_model, mk.expand_structure(
        seed_model, learned, target), target)
    accs, cost = retrain(seed_model, matched, data, cfg)
    add('morphnet', 'at FLOPs(w=%g)' % w, cost, accs, dict(
        learned=learned, learned_flops=learned_cost, matched=matched,
        exported_at_or_under_target=met, end_of_shrink_flops=end_cost,
        match_error=cost / target - 1.0))

  def fit_and_eval(model, phase, callbacks):
    shrink_fit(cfg, data)(model, phase, callbacks)
  n_cycles = cfg['cycles'] if 'cycles' in parts else 0
  records, models = [], []
  if n_cycles:
    cycle_seed = keras.models.clone_model(seed_model)  # run_cycles trains it
    cycle_seed.set_weights(seed_model.get_weights())
    records, models = cycles_lib.run_cycles(
        cycle_seed, fit_and_eval, evaluate=lambda m: accuracy(m, data),
        num_cycles=n_cycles, shrink_to=0.5, budget=seed_flops,
        log_dir=os.path.join(work, 'cycles'), return_models=True)
  for record, model in zip(records, models):
    # run_cycles retrained once (seed 1); retrain again with the seeds.
    matched = match_flops(model, record['expanded'], seed_flops)
    accs, cost = retrain(model, matched, data, cfg)
    add('cycles', 'x%d %s' % (record['cycle'], sorted(
        matched.items())), cost, accs, dict(
            exported=record['exported'],
            exported_flops_fraction=record['exported_cost'] / seed_flops,
            match_error=cost / seed_flops - 1.0))

  targeted = {}
  for name, make in (('FLOPs', flop_regularizer.GammaFlopsRegularizer),
                     ('ModelSize',
                      model_size_regularizer.GammaModelSizeRegularizer)
                    ) if 'targeted' in parts else ():
    learned, _, met, _ = shrink(seed_model, lambda m, make=make: make(
        m, THRESHOLD), 0.5, cfg, data, os.path.join(work, 'targeted_' + name),
                            cost='flops' if name == 'FLOPs' else 'model_size')
    targeted[name] = dict(widths=learned, at_or_under=met,
                          flops_fraction=float(mk.structure_cost(
                              seed_model, learned)) / seed_flops,
                          size_fraction=float(mk.structure_cost(
                              seed_model, learned, cost='model_size')) /
                          float(mk.structure_cost(seed_model, {},
                                                  cost='model_size')))
    stamp('targeted %s: %s' % (name, targeted[name]))

  result = dict(config={k: v for k, v in cfg.items()},
                seed_widths=SEED_WIDTHS, seed_flops=seed_flops, rows=rows,
                targeted=targeted, wall_s=round(time.time() - start, 1),
                quick=bool(args.quick))
  cycles_lib.save_json_atomically(result, os.path.join(
      args.out_dir, 'pareto_results.json'))
  plot(result, args.out_dir)
  print(table(result), flush=True)
  stamp('done')
  return result


def merge(paths, out_dir):
  """Joins the rows/targeted parts of several runs; writes table, plots."""
  result = dict(rows=[], targeted={}, parts=[])
  for path in paths:
    with open(path) as f:
      part = json.load(f)
    result['rows'] += part.get('rows', [])
    result['targeted'].update(part.get('targeted', {}))
    result['parts'].append(dict(path=path, seed_flops=part.get('seed_flops'),
                                partial=part.get('partial', False),
                                wall_s=part.get('wall_s')))
    result.setdefault('seed_flops', part.get('seed_flops'))
  os.makedirs(out_dir, exist_ok=True)
  cycles_lib.save_json_atomically(result, os.path.join(
      out_dir, 'pareto_results.json'))
  plot(result, out_dir)
  print(table(result), flush=True)
  return result


def table(result):
  lines = ['| curve | point | FLOPs / seed | held-out accuracy (mean ± 95% CI) '
           '| per seed |', '|---|---|---|---|---|']
  for r in result['rows']:
    lines.append('| %s | %s | %.3f | %.2f ± %.2f | %s |' % (
        r['kind'], r['label'], r['flops_fraction'], 100 * r['mean'],
        100 * r['ci95'], ', '.join('%.1f' % (100 * a)
                                   for a in r['accuracies'])))
  return '\n'.join(lines)


def plot(result, out_dir):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  styles = {'width': ('o-', 'uniform width multiplier'),
            'morphnet': ('s--', 'MorphNet (FLOPs target)'),
            'cycles': ('^', 'MorphNet cycles x1, x2')}
  for kind, (style, label) in styles.items():
    rows = sorted([r for r in result['rows'] if r['kind'] == kind],
                  key=lambda r: r['flops'])
    if not rows:
      continue
    ax.errorbar([r['flops'] / 1e6 for r in rows],
                [100 * r['mean'] for r in rows],
                yerr=[100 * (0 if math.isnan(r['ci95']) else r['ci95'])
                      for r in rows], fmt=style, capsize=3, label=label)
  ax.set_xlabel('MFLOPs per example')
  ax.set_ylabel('held-out accuracy (%), mean ± 95% CI')
  ax.set_title('Cluttered digits: MorphNet vs width multiplier')
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, 'pareto.png'), dpi=110)
  plt.close(fig)

  targeted = result['targeted']
  if not targeted:
    return
  fig, ax = plt.subplots(figsize=(6, 3.5))
  names = ['conv%d' % i for i in range(len(SEED_WIDTHS))]
  x = np.arange(len(names))
  ax.bar(x - 0.27, SEED_WIDTHS, 0.27, label='seed', color='0.7')
  for k, (name, info) in enumerate(sorted(targeted.items())):
    ax.bar(x + 0.27 * k, [info['widths'].get(n, 0) for n in names], 0.27,
           label='%s regularizer (FLOPs %.2f, size %.2f x seed)' % (
               name, info['flops_fraction'], info['size_fraction']))
  ax.set_xticks(x)
  ax.set_xticklabels(['%s (%dpx)' % (n, CANVAS >> i)
                      for i, n in enumerate(names)])
  ax.set_ylabel('alive channels')
  ax.set_title('Targeted regularization: what each resource prunes')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, 'pareto_targeted.png'), dpi=110)
  plt.close(fig)


if __name__ == '__main__':
  tf.config.threading.set_intra_op_parallelism_threads(2)
  main()
