"""benchmarks/slim_speedup.py runs end to end (--quick), and the FLOPs its
ratios stand on are the models' FLOPs, counted independently."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import benchmark
from conftest import BENCHMARKS
import morph_net.keras as mk
from morph_net.tools import analyze


def _flops_counted_by_a_forward_pass(name, round_to_values):
  """{round_to: (seed FLOPs, slim FLOPs, structure_cost)} per example.

  The benchmark's seeded structure is drawn again and slimmed here; each
  model's FLOPs come from one forward pass at batch 1, recording its layers
  and activation products (keras_hub_zoo.independent_counts), not from the
  analysis.
  """
  speedup, zoo = benchmark('slim_speedup'), benchmark('keras_hub_zoo')
  keras.utils.set_random_seed(0)
  seed_model = speedup.MODELS[name][0](speedup.QUICK_SIZE, True)
  structure = speedup.whole_heads(seed_model, speedup.learned_like_structure(
      analyze.analyze(seed_model), 0, speedup.KEEP_FULL.get(name, ())))
  x = np.zeros((1, speedup.QUICK_SIZE, speedup.QUICK_SIZE, 3), np.float32)
  seed_flops = zoo.independent_counts(seed_model, x)[0]
  counted = {}
  for round_to in round_to_values:
    slim = mk.slim_model(seed_model, structure, round_to=round_to)
    counted[round_to] = (seed_flops, zoo.independent_counts(slim, x)[0],
                         mk.structure_cost(seed_model, structure,
                                           round_to=round_to))
  return counted, zoo.TOLERANCE


@pytest.mark.slow  # ~2 min: traces and XLA-compiles 12 functions
def test_quick_run_reports_the_flops_of_the_models_it_times(tmp_path):
  out = tmp_path / 'rows.json'
  proc = subprocess.run(
      [sys.executable, os.path.join(BENCHMARKS, 'slim_speedup.py'),
       '--quick', '--json', str(out)],
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(out.read_text())
  # 2 models x round_to {1, 8} x batch {1, 4} x XLA {no, yes}.
  assert len(rows) == 16
  assert {r['model'] for r in rows} == {'MobileNetV2', 'ViT'}
  for name in ('MobileNetV2', 'ViT'):
    counted, tolerance = _flops_counted_by_a_forward_pass(name, (1, 8))
    for r in [r for r in rows if r['model'] == name]:
      seed, slim, promised = counted[r['round_to']]
      assert slim < seed  # the learned-like structure prunes
      assert r['seed_flops'] == pytest.approx(seed, rel=tolerance), r
      assert r['slim_flops'] == pytest.approx(slim, rel=tolerance), r
      assert promised == pytest.approx(slim, rel=tolerance), r
      assert r['flop_ratio'] == pytest.approx(seed / slim,
                                              rel=2 * tolerance), r
      assert r['speedup'] > 0 and r['seed_ms'] > 0
  assert '| MobileNetV2 | 32 | 8 | 4 | yes |' in proc.stdout
