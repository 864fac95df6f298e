"""benchmarks/slim_speedup.py runs end to end (--quick) and reports rows."""

import json
import os
import subprocess
import sys

import pytest

_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                       'benchmarks', 'slim_speedup.py')


@pytest.mark.slow  # ~1-2 min: traces and XLA-compiles 12 functions
def test_quick_run_reports_every_row(tmp_path):
  out = tmp_path / 'rows.json'
  proc = subprocess.run(
      [sys.executable, _SCRIPT, '--quick', '--json', str(out)],
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(out.read_text())
  # 2 models x round_to {1, 8} x batch {1, 4} x XLA {no, yes}.
  assert len(rows) == 16
  assert {r['model'] for r in rows} == {'MobileNetV2', 'ViT'}
  for r in rows:
    assert r['flop_ratio'] > 1.0  # the learned-like structure prunes
    assert r['speedup'] > 0 and r['seed_ms'] > 0
    assert abs(r['efficiency'] - r['speedup'] / r['flop_ratio']) < 1e-9
  assert '| MobileNetV2 | 32 | 8 | 4 | yes |' in proc.stdout
