"""benchmarks/target_cost.py --quick runs end to end and reports."""

import json

from conftest import benchmark

target_cost = benchmark('target_cost')


def _row(table, optimizer):
  """{column header: cell} of the optimizer's row of a markdown table."""
  lines = [[c.strip() for c in line.strip('|').split('|')]
           for line in table.splitlines()]
  (row,) = [cells for cells in lines[2:] if cells[0] == optimizer]
  return dict(zip(lines[0], row))


def test_quick_run_reaches_the_target_and_reports_it(tmp_path):
  path = str(tmp_path / 'runs.json')
  result = target_cost.main(['--quick', '--json', path])
  (run,) = result['runs']
  assert run['optimizer'] == 'sgd' and len(run['epoch_ends']) == 3
  # 3 epochs from 2.5 x T: the cost moved, and no step was above the seed.
  assert run['lowest'] < 2.5 and run['epoch_ends'][0] <= 2.5
  # T was reached: a structure at or under it was exported, and the slim
  # model built from it costs at most T.
  assert run['slim'] is not None and 0.0 < run['slim'] <= 1.0 + 1e-9
  assert run['zeros_violations'] == 0
  with open(path) as f:
    assert json.load(f)['runs'] == json.loads(json.dumps(result['runs']))
  row = _row(target_cost.table(result['runs']), 'sgd')
  assert row['exported structure <= T'] == '1/1'
  assert row['exact-zeros violations'] == '0'


def test_quick_run_with_gates_records_its_family():
  """--family figs: the same net with add_gates and the LogisticSigmoid
  FLOPs regularizer; the run moves the cost and says which family ran."""
  result = target_cost.main(['--quick', '--family', 'figs'])
  (run,) = result['runs']
  assert run['family'] == 'figs' and run['lowest'] < 2.5
  assert run['zeros_violations'] == 0  # no gammas are checked for gates


def test_an_unknown_family_is_refused():
  import pytest  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='family must be gamma or figs'):
    target_cost.run('sgd', 0, 1, None, family='lasso')


def test_table_counts_the_band_per_optimizer():
  runs = [dict(optimizer='adam', end=e, last3=l3, lowest=lo, slim=s,
               accuracy=0.9, zeros_violations=z)
          for e, l3, lo, s, z in [(0.94, True, 0.6, 0.94, 0),
                                  (1.10, False, 0.8, None, 3)]]
  row = target_cost.table(runs).splitlines()[-1]
  assert row == '| adam | 1/2 | 1/2 | 0.70, 0.60 | 1/2 | 3 | 0.900 |'
