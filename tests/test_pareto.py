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


def test_quick_run_writes_table_json_and_plots(tmp_path):
  """--quick end to end (~70 s of fits on 2 shared cores): both curves, the
  cycle and the targeted shrinks, FLOPs matched within 2%, the files."""
  result = pareto.main(['--quick', '--out-dir', str(tmp_path),
                        '--work-dir', str(tmp_path / 'work')])
  kinds = [r['kind'] for r in result['rows']]
  assert kinds.count('width') == 2
  assert kinds.count('morphnet') == 1 and kinds.count('cycles') == 1
  # MorphNet points are matched to their budget's FLOPs from below, within
  # the 2%.
  for row in result['rows']:
    if row['kind'] != 'width':
      assert -0.02 <= row['match_error'] <= 1e-9, row
  morphnet = [r for r in result['rows'] if r['kind'] == 'morphnet'][0]
  # The shrink did something: the learned structure is under the seed.
  assert morphnet['learned_flops'] < result['seed_flops']
  assert set(result['targeted']) == {'FLOPs', 'ModelSize'}
  for name in ('pareto.png', 'pareto_targeted.png', 'pareto_results.json'):
    assert os.path.getsize(os.path.join(str(tmp_path), name)) > 0
  with open(os.path.join(str(tmp_path), 'pareto_results.json')) as f:
    saved = json.load(f)
  assert saved['quick'] is True and len(saved['rows']) == 4
  assert '| width |' in pareto.table(result)


def test_match_flops_fills_to_within_two_percent_from_below():
  seed = pareto.build_model(pareto.SEED_WIDTHS)
  target = 0.5 * pareto.flops(seed)
  start = {'conv0': 8, 'conv1': 10, 'conv2': 20}  # well under the target
  matched = pareto.match_flops(seed, start, target)
  cost = float(pareto.mk.structure_cost(seed, matched))
  assert 0.98 * target <= cost <= target
  assert all(matched[k] >= v for k, v in start.items())
