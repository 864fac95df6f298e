"""benchmarks/target_cost.py --quick runs end to end and reports."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'benchmarks'))

import target_cost  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_quick_run_reports_every_measure_and_writes_json(tmp_path):
  path = str(tmp_path / 'runs.json')
  result = target_cost.main(['--quick', '--json', path])
  (run,) = result['runs']
  assert run['optimizer'] == 'sgd' and len(run['epoch_ends']) == 3
  # 3 epochs from 2.5 x T: the cost moved, and no step was above the seed.
  assert run['lowest'] < 2.5 and run['epoch_ends'][0] <= 2.5
  assert run['slim'] is None or run['slim'] <= 1.0 + 1e-9
  assert run['zeros_violations'] == 0
  with open(path) as f:
    assert json.load(f)['runs'][0]['seed'] == 0
  assert '| sgd | ' in target_cost.table(result['runs'])


def test_table_counts_the_band_per_optimizer():
  runs = [dict(optimizer='adam', end=e, last3=l3, lowest=lo, slim=s,
               accuracy=0.9, zeros_violations=z)
          for e, l3, lo, s, z in [(0.94, True, 0.6, 0.94, 0),
                                  (1.10, False, 0.8, None, 3)]]
  row = target_cost.table(runs).splitlines()[-1]
  assert row == '| adam | 1/2 | 1/2 | 0.70, 0.60 | 1/2 | 3 | 0.900 |'
