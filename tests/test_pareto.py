"""benchmarks/pareto.py --quick runs end to end and writes its outputs."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'benchmarks'))

import pareto  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_mean_ci_is_a_t_interval():
  mean, ci = pareto.mean_ci([0.8, 0.9, 1.0])
  assert mean == pytest.approx(0.9)
  assert ci == pytest.approx(4.303 * 0.1 / 3 ** 0.5)


@pytest.mark.slow  # ~10 small fits: 1-4 min on 2 shared cores
def test_quick_run_writes_table_json_and_plots(tmp_path):
  result = pareto.main(['--quick', '--out-dir', str(tmp_path),
                        '--work-dir', str(tmp_path / 'work')])
  kinds = [r['kind'] for r in result['rows']]
  assert kinds.count('width') == 2
  assert kinds.count('morphnet') == 1 and kinds.count('cycles') == 1
  # MorphNet points are matched to the width point's FLOPs from below.
  for row in result['rows']:
    if row['kind'] != 'width':
      assert -0.5 < row['match_error'] <= 1e-9
  assert set(result['targeted']) == {'FLOPs', 'ModelSize'}
  for name in ('pareto.png', 'pareto_targeted.png', 'pareto_results.json'):
    assert os.path.getsize(os.path.join(str(tmp_path), name)) > 0
  with open(os.path.join(str(tmp_path), 'pareto_results.json')) as f:
    assert json.load(f)['quick'] is True
  assert '| width |' in pareto.table(result)
