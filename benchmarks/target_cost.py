"""How well does `add_regularizer(..., target_cost=T)` land, over seeds?

The network and recipe of the issue's acceptance (tests/test_budget.py):
sklearn's 8x8 digits, Conv3x3(16)+BN+ReLU, Conv3x3(32)+BN+ReLU, global
average pooling, Dense(10); GammaFlopsRegularizer (threshold 1e-2), target
0.4 x the seed's FLOPs, no strength, batch 32, 15 epochs, the exporter
keeping only structures at or under T. For each optimizer and seed it
records the cost after every step and reports:

* end: the cost after the last step, / T; in the band if in [0.85, 1.05];
* last 3: whether the last 3 epochs all ended in the band;
* lowest: the lowest cost of any step, / T (how far it undershot);
* slim: the cost of the last exported structure once slimmed, / T;
* zeros_violations: steps x channels at which a gamma at or under the
  alive threshold was neither 0.0 nor had been 0.0 since it was last above
  the threshold (the exact-zeros guarantee: 0 in every run);
* strength: the lowest and highest strength of any step, / its start.

  python benchmarks/target_cost.py                   # 4 optimizers x 8 seeds
  python benchmarks/target_cost.py --quick           # SGD, 1 seed, 3 epochs
  python benchmarks/target_cost.py --seeds 0 1 --optimizers adam --json r.json

The README's table of the controller comes from the full run. The script
always exits 0: it is a report, not a pass/fail test.
"""

import argparse
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

import morph_net.keras as mk  # pylint: disable=g-import-not-at-top
from morph_net.keras import budget  # pylint: disable=g-import-not-at-top
from morph_net.keras import cycles  # pylint: disable=g-import-not-at-top
from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top

OPTIMIZERS = {
    'sgd': lambda: keras.optimizers.SGD(0.05),
    'momentum': lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    'nesterov': lambda: keras.optimizers.SGD(0.05, momentum=0.9,
                                             nesterov=True),
    'adam': lambda: keras.optimizers.Adam(1e-2),
}
BAND = (0.85, 1.05)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true', help='smoke run')
  p.add_argument('--seeds', type=int, nargs='*', default=None)
  p.add_argument('--optimizers', nargs='*', default=None,
                 choices=sorted(OPTIMIZERS))
  p.add_argument('--epochs', type=int, default=None)
  p.add_argument('--family', default='gamma', choices=('gamma', 'figs'),
                 help='figs: the network with add_gates and the '
                 'LogisticSigmoid FLOPs regularizer')
  p.add_argument('--json', default=None, help='also write the runs here')
  return p.parse_args(argv)


def digits():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  return (d.images / 16.0).astype('float32')[..., None], d.target.astype(
      'int32')


def build_model(seed):
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((8, 8, 1))
  x = inputs
  for i, width in enumerate((16, 32)):
    x = keras.layers.Conv2D(width, 3, padding='same', use_bias=False,
                            name='conv%d' % (i + 1))(x)
    x = keras.layers.BatchNormalization(name='bn%d' % (i + 1))(x)
    x = keras.layers.ReLU()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(10, name='logits')(x))


class StepLog(keras.callbacks.Callback):
  """After every step: the cost, the strength, and the exact-zeros check.

  The guarantee checked: every gamma at or under the alive threshold is
  0.0, or has been 0.0 at some step since it was last above the threshold
  (a channel falling under it is set to 0; one reviving from 0 may pass
  through (0, threshold] on its way up, for as long as it takes).
  """

  def __init__(self, name, gammas, threshold):
    super().__init__()
    self.name = name
    self.values = []
    self.strengths = []
    self._gammas = gammas
    self._threshold = threshold
    self._touched_zero = None
    self.violations = 0

  def on_train_batch_end(self, batch, logs=None):
    self.values.append(float(logs[self.name]))
    self.strengths.append(float(logs['strength']))
    if not self._gammas:
      return
    g = np.concatenate([np.asarray(v) for v in self._gammas])
    above = np.abs(g) > self._threshold
    if self._touched_zero is None:
      self._touched_zero = np.zeros(g.shape, bool)
    self._touched_zero = ~above & (self._touched_zero | (g == 0.0))
    self.violations += int(np.sum(~above & ~self._touched_zero))


def run(optimizer, seed, epochs, data, family='gamma'):
  """One fit toward 0.4 x the seed's FLOPs; the measures, / T.

  family 'figs': the same network with `add_gates` (straight-through at
  0.5) and LogisticSigmoidFlopsRegularizer; the gammas are not regularized
  (no exact-zeros check).
  """
  model = build_model(seed)
  if family == 'figs':
    model = mk.add_gates(model)
    reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(model)
  elif family == 'gamma':
    reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  else:
    raise ValueError('family must be gamma or figs, got %r' % (family,))
  target = 0.4 * float(reg.get_cost())
  trainer = mk.add_regularizer(model, reg, target_cost=target, monitor=False)
  trainer.compile(OPTIMIZERS[optimizer](),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True), metrics=['accuracy'])
  start = trainer.strength
  costs = StepLog(reg.cost_name, [model.get_layer(n).gamma
                                 for n in ('bn1', 'bn2')]
                  if family == 'gamma' else [], 1e-2)
  with tempfile.TemporaryDirectory() as log_dir:
    exporter = budget.only_at_or_under(mk.StructureExporterCallback(
        reg, log_dir, 20, summary_subdir=None), target)
    history = trainer.fit(*data, batch_size=32, epochs=epochs, verbose=0,
                          callbacks=[costs, exporter]).history
    structure, path = cycles.last_structure(log_dir)
  slim = None
  if path is not None:
    slim = float(mk.structure_cost(mk.slim_model(model, structure),
                                   {})) / target
  ends = [c / target for c in history[reg.cost_name]]
  return dict(optimizer=optimizer, seed=seed, family=family, end=ends[-1],
              last3=all(BAND[0] <= e <= BAND[1] for e in ends[-3:]),
              lowest=min(costs.values) / target, slim=slim,
              zeros_violations=costs.violations,
              strength=[min(costs.strengths) / start,
                        max(costs.strengths) / start],
              accuracy=float(history['accuracy'][-1]),
              epoch_ends=[round(e, 3) for e in ends])


def in_band(run):
  return BAND[0] <= run['end'] <= BAND[1]


def table(runs):
  """A markdown table, one row per optimizer."""
  lines = ['| optimizer | end in [0.85, 1.05] x T | last 3 epochs in band | '
           'lowest step (median, worst) x T | exported structure <= T '
           '| exact-zeros violations | training accuracy (mean) |',
           '|---|---|---|---|---|---|---|']
  for name in OPTIMIZERS:
    rows = [r for r in runs if r['optimizer'] == name]
    if not rows:
      continue
    n = len(rows)
    lowest = [r['lowest'] for r in rows]
    lines.append('| %s | %d/%d | %d/%d | %.2f, %.2f | %d/%d | %d | %.3f |' % (
        name, sum(in_band(r) for r in rows), n,
        sum(r['last3'] for r in rows), n, statistics.median(lowest),
        min(lowest), sum(r['slim'] is not None and r['slim'] <= 1.0
                         for r in rows), n,
        sum(r.get('zeros_violations', 0) for r in rows),
        statistics.mean(r['accuracy'] for r in rows)))
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  seeds = args.seeds if args.seeds else ([0] if args.quick else range(8))
  names = args.optimizers or (['sgd'] if args.quick else list(OPTIMIZERS))
  epochs = args.epochs or (3 if args.quick else 15)
  data = digits()
  start = time.time()
  runs = []
  for name in names:
    for seed in seeds:
      r = run(name, seed, epochs, data, args.family)
      runs.append(r)
      print('[%6.0fs] %-8s seed %d: end %.2f, lowest %.2f, slim %s, '
            'epochs %s' % (time.time() - start, name, seed, r['end'],
                           r['lowest'], 'none' if r['slim'] is None else
                           '%.2f' % r['slim'], r['epoch_ends']), flush=True)
  print(table(runs), flush=True)
  result = dict(epochs=epochs, quick=bool(args.quick), runs=runs,
                wall_s=round(time.time() - start, 1))
  if args.json:
    cycles.save_json_atomically(result, args.json)
  return result


if __name__ == '__main__':
  main()
