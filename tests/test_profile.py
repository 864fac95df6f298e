"""Latency models measured on this machine: hardware JSON specs, the fit,
`morphnet profile`, and benchmarks/latency_model.py --quick."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from morph_net import cli
from morph_net.network_regularizers import hardware
from morph_net.network_regularizers import latency_regularizer
from morph_net.tools import profile

_BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                      'benchmarks', 'latency_model.py')


def _tiny_cnn():
  inputs = keras.Input((16, 16, 3))
  x = keras.layers.Conv2D(16, 3, padding='same', name='conv1')(inputs)
  x = keras.layers.BatchNormalization(name='bn1')(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.Conv2D(32, 3, padding='same', name='conv2')(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(4, name='head')(x))


def test_spec_json_round_trips_by_path_and_by_name(tmp_path, monkeypatch):
  spec = hardware.HardwareSpec('my-cpu', 12.5, 3.0, op_overhead=2e3)
  path = tmp_path / 'my-cpu.json'
  hardware.save_hardware(spec, str(path), fit={'note': 'ignored on load'})
  assert hardware.get_hardware(str(path)) == spec
  monkeypatch.setenv(hardware.HARDWARE_PATH_ENV, str(tmp_path))
  assert hardware.get_hardware('my-cpu') == spec
  # Data-sheet rows have no per-op overhead.
  assert hardware.get_hardware('V100').op_overhead == 0.0


def test_bad_spec_files_are_clear_errors(tmp_path):
  bad = tmp_path / 'bad.json'
  bad.write_text('{"name": "x", "peak_compute": 1')
  with pytest.raises(ValueError, match='Cannot read hardware spec'):
    hardware.get_hardware(str(bad))
  negative = tmp_path / 'neg.json'
  negative.write_text(json.dumps({'name': 'x', 'peak_compute': 1.0,
                                  'memory_bandwidth': 1.0,
                                  'op_overhead': -1.0}))
  with pytest.raises(ValueError, match='op_overhead'):
    hardware.get_hardware(str(negative))
  with pytest.raises(ValueError, match='MORPHNET_HARDWARE_PATH'):
    hardware.get_hardware('no-such-device')


def test_fit_recovers_the_parameters_that_generated_the_timings():
  rng = np.random.default_rng(0)
  truth = hardware.HardwareSpec('truth', 10.0, 1.0, op_overhead=1e3)
  samples = []
  for n in (5, 20, 40, 80):
    parts = (rng.uniform(1e4, 1e7, n), rng.uniform(1e3, 1e6, n))
    samples.append((parts, profile.predict_latency(parts, truth)))
  spec, fit = profile.fit_hardware(samples, 'fitted')
  assert spec.name == 'fitted'
  np.testing.assert_allclose(
      [spec.peak_compute, spec.memory_bandwidth, spec.op_overhead],
      [10.0, 1.0, 1e3], rtol=1e-6)
  assert fit['median_relative_error'] < 1e-6
  no_overhead, _ = profile.fit_hardware(samples, 'roofline',
                                        with_overhead=False)
  assert no_overhead.op_overhead == 0.0


def test_morphnet_profile_writes_a_spec_the_latency_regularizer_loads(
    tmp_path, capsys):
  model = _tiny_cnn()
  model_path = str(tmp_path / 'm.keras')
  model.save(model_path)
  out = str(tmp_path / 'this-cpu.json')
  code = cli.main(['profile', model_path, '--name', 'this-cpu', '-o', out,
                   '--widths', '0.5,1', '--repeats', '3'])
  assert code == cli.EXIT_OK, capsys.readouterr()
  data = json.loads(open(out).read())
  assert data['name'] == 'this-cpu' and len(data['fit']['samples']) == 2
  spec = hardware.get_hardware(out)
  assert spec.peak_compute > 0 and spec.memory_bandwidth > 0
  reg = latency_regularizer.GammaLatencyRegularizer(model, 1e-2, out)
  assert reg.cost_name == 'this-cpu Latency'
  # The regularizer prices the fitted roofline (op_overhead is a constant).
  parts = profile.roofline_parts(model)
  expected = profile.predict_latency(parts, spec._replace(op_overhead=0.0))
  assert float(reg.get_cost()) * 1e-9 == pytest.approx(expected, rel=1e-6)


def test_morphnet_profile_rejects_bad_widths(tmp_path, capsys):
  code = cli.main(['profile', 'm.keras', '--name', 'x', '-o',
                   str(tmp_path / 'x.json'), '--widths', '0,2'])
  assert code == cli.EXIT_BAD_INPUT
  assert '--widths' in capsys.readouterr().err


@pytest.mark.slow  # ~40 s: a subprocess that imports TF and times models
def test_latency_model_benchmark_quick_runs(tmp_path):
  out = tmp_path / 'latency.json'
  proc = subprocess.run([sys.executable, _BENCH, '--quick', '--json',
                         str(out)], capture_output=True, text=True,
                        timeout=300,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert len(result['rows']) == 6  # 2 models x 3 variants
  assert {'fitted', 'fitted_roofline', 'V100'} <= set(result['summary'])
  assert 'regularizer_cost_s' in result['rows'][0]
  assert '| fitted |' in proc.stdout
