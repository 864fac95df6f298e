"""Latency models measured on this machine: hardware JSON specs, the fit,
`morphnet profile`, and benchmarks/latency_model.py --quick."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import BENCHMARKS
from morph_net import cli
from morph_net.network_regularizers import hardware
from morph_net.network_regularizers import latency_calculator
from morph_net.network_regularizers import latency_regularizer
from morph_net.keras import profile


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
  # The calculator of the spec prices what the fit predicts.
  calculator = latency_calculator.LatencyCalculator.from_spec(
      reg.op_regularizer_manager, spec)
  expected = profile.predict_latency(profile.roofline_parts(model), spec)
  assert float(calculator.get_cost()) * 1e-9 == pytest.approx(expected,
                                                              rel=1e-6)
  # ... and so does the regularizer's own cost (its calculator is that).
  assert float(reg.get_cost()) * 1e-9 == pytest.approx(expected, rel=1e-6)


# ----------------------------------- op_overhead and depthwise_compute
def _two_convs():
  """conv1 (2 -> 4, 1x1) then conv2 (4 -> 3, 1x1) on 4x4: no other op."""
  inputs = keras.Input((4, 4, 2))
  x = keras.layers.Conv2D(4, 1, use_bias=False, name='conv1')(inputs)
  return keras.Model(inputs, keras.layers.Conv2D(3, 1, use_bias=False,
                                                 name='conv2')(x))


def _calculator(model, spec):
  reg = latency_regularizer.GroupLassoLatencyRegularizer(model, 1e-3,
                                                         'FLOP_LATENCY')
  return reg, latency_calculator.LatencyCalculator.from_spec(
      reg.op_regularizer_manager, spec)


@pytest.mark.parametrize('dead,expected', [(0, 2912.0), (2, 2616.0),
                                           (4, 1320.0)])
def test_op_overhead_is_paid_once_per_op_with_an_alive_output(dead, expected):
  """1 GFLOP/s, 1 GB/s (ns = max(FLOPs, bytes)), 1000 ns per op.

  With a alive channels between the convs (float32, 16 positions):
  conv1: FLOPs 2*16*2*a = 64a; bytes 16*4*2 in + 16*4*a out + 4*2*a weights
  = 128 + 72a; conv2: FLOPs 2*16*a*3 = 96a; bytes 64a + 16*4*3 + 4*a*3 =
  192 + 76a. Both memory-bound: 320 + 148a ns of roofline. Overhead: 2 ops,
  but conv1 dies with its last channel (its input is still read: 128 ns).
  a=4: 912 + 2000; a=2: 616 + 2000; a=0: 128 + 192 + 1000.
  """
  model = _two_convs()
  kernel = model.get_layer('conv1').kernel
  value = kernel.numpy()
  value[..., :dead] = 0.0
  kernel.assign(value)
  reg, calculator = _calculator(
      model, hardware.HardwareSpec('hand', 1.0, 1.0, op_overhead=1000.0))
  assert float(calculator.get_cost()) == expected
  # No gradient and no value in the term: the term is the roofline's.
  plain = latency_calculator.LatencyCalculator(
      reg.op_regularizer_manager, 1.0, 1.0)
  assert float(calculator.get_regularization_term()) == float(
      plain.get_regularization_term())
  assert float(plain.get_cost()) == expected - 1000.0 * (1 + (dead < 4))
  # profile's prediction counts the same ops.
  parts = calculator.roofline_parts()
  assert list(parts[3]) == [dead < 4, True]
  assert profile.predict_latency(parts, hardware.HardwareSpec(
      'hand', 1.0, 1.0, op_overhead=1000.0)) * 1e9 == pytest.approx(expected)


def test_depthwise_convs_compute_at_their_own_rate():
  """conv0 (2 -> 2, 1x1), depthwise 3x3, pw (2 -> 3, 1x1) on 4x4.

  Dense convs at 1e6 GFLOP/s (memory-bound), 1 GB/s: conv0 128 + 128 + 16
  = 272 ns, pw 128 + 192 + 24 = 344 ns. The depthwise conv: 2*16*9*2 = 576
  FLOPs, 128 + 128 + 9*4*2 = 328 bytes: 328 ns at the dense peak, 576 ns
  at depthwise_compute = 1 GFLOP/s.
  """
  inputs = keras.Input((4, 4, 2))
  x = keras.layers.Conv2D(2, 1, use_bias=False, name='conv0')(inputs)
  x = keras.layers.DepthwiseConv2D(3, padding='same', use_bias=False,
                                   name='dw')(x)
  model = keras.Model(inputs, keras.layers.Conv2D(3, 1, use_bias=False,
                                                  name='pw')(x))
  _, one_rate = _calculator(model, hardware.HardwareSpec('a', 1e6, 1.0))
  _, two_rates = _calculator(model, hardware.HardwareSpec(
      'b', 1e6, 1.0, depthwise_compute=1.0))
  assert float(one_rate.get_cost()) == 272 + 328 + 344
  assert float(two_rates.get_cost()) == 272 + 576 + 344
  flops, _, linear, _ = two_rates.roofline_parts()
  assert list(linear) == [False, True, False] and flops[1] == 576


def test_fit_recovers_a_separate_depthwise_rate():
  rng = np.random.default_rng(1)
  truth = hardware.HardwareSpec('truth', 10.0, 1.0, op_overhead=1e3,
                                depthwise_compute=0.1)
  samples = []
  for n in (10, 20, 40, 80, 120):
    linear = rng.uniform(size=n) < 0.4
    parts = (rng.uniform(1e4, 1e7, n), rng.uniform(1e3, 1e5, n), linear,
             np.ones(n, bool))
    samples.append((parts, profile.predict_latency(parts, truth)))
  spec, fit = profile.fit_hardware(samples, 'fitted')
  np.testing.assert_allclose(
      [spec.peak_compute, spec.depthwise_compute, spec.memory_bandwidth,
       spec.op_overhead], [10.0, 0.1, 1.0, 1e3], rtol=0.05)
  assert fit['median_relative_error'] < 0.02
  one_rate, _ = profile.fit_hardware(samples, 'x', with_depthwise=False)
  assert one_rate.depthwise_compute is None


def test_latency_regularizer_prices_the_whole_spec():
  model = _two_convs()
  spec = hardware.HardwareSpec('hand', 1.0, 1.0, op_overhead=1000.0)
  reg = latency_regularizer.GroupLassoLatencyRegularizer(model, 1e-3, spec)
  assert float(reg.get_cost()) == 2912.0


def test_morphnet_profile_rejects_bad_widths(tmp_path, capsys):
  code = cli.main(['profile', 'm.keras', '--name', 'x', '-o',
                   str(tmp_path / 'x.json'), '--widths', '0,2'])
  assert code == cli.EXIT_BAD_INPUT
  assert '--widths' in capsys.readouterr().err


def test_morphnet_profile_never_writes_onto_a_model_or_an_existing_spec(
    tmp_path, capsys):
  model_path = str(tmp_path / 'm.keras')
  _tiny_cnn().save(model_path)
  before = open(model_path, 'rb').read()
  code = cli.main(['profile', model_path, '--name', 'x', '-o', model_path])
  assert code == cli.EXIT_BAD_INPUT
  assert 'must end with .json' in capsys.readouterr().err
  assert open(model_path, 'rb').read() == before
  spec = tmp_path / 'x.json'
  spec.write_text('{"kept": true}')
  code = cli.main(['profile', model_path, '--name', 'x', '-o', str(spec)])
  assert code == cli.EXIT_BAD_INPUT
  assert '--overwrite' in capsys.readouterr().err
  assert spec.read_text() == '{"kept": true}'


def test_a_profiled_spec_cannot_take_a_built_in_name(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match="'T4' is a built-in"):
    profile.profile_hardware([_tiny_cnn()], 'T4')
  # A file by a built-in's name (written by hand or an older version) is
  # not silently passed over for the data sheet's numbers.
  hardware.save_hardware(hardware.HardwareSpec('T4', 12.0, 7.0),
                         str(tmp_path / 'T4.json'))
  monkeypatch.setenv(hardware.HARDWARE_PATH_ENV, str(tmp_path))
  with pytest.raises(ValueError, match='both a built-in spec and the file'):
    hardware.get_hardware('T4')
  assert hardware.get_hardware(str(tmp_path / 'T4.json')).peak_compute == 12


# ~16 s on the busy 2-core machine: a subprocess that imports TF and times
# 10 tiny models.
def test_latency_model_benchmark_quick_runs(tmp_path):
  out = tmp_path / 'latency.json'
  proc = subprocess.run(
      [sys.executable, os.path.join(BENCHMARKS, 'latency_model.py'),
       '--quick', '--json', str(out)], capture_output=True, text=True,
      timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert len(result['rows']) == 6  # 2 models x 3 variants
  assert len(result['fit_samples']) == 4  # 2 models x widths 0.5, 1
  assert {'fitted', 'fitted_one_rate', 'fitted_roofline',
          'V100'} <= set(result['summary'])
  for row in result['rows']:
    assert row['measured_s'] > 0 and row['fitted'] > 0
  assert 'regularizer_cost_s' in result['rows'][0]
  assert set(result['by_statistic']) == {'median', 'p20'}
  assert len(result['by_statistic']['p20']['retest_rho']) == 2
  assert len(result['times']) == 4 + 6  # rounds of every timed model
  for line in ('| fitted |', 'load average', 'noise ceiling'):
    assert line in proc.stdout, line


@pytest.mark.parametrize('scale', [True, False])
def test_a_batch_norm_moves_its_activations_with_or_without_gamma(scale):
  """A BatchNorm is a memory op (read and write its activation) whether
  or not it has a gamma; a Keras BatchNormalization(scale=False) traces
  x * rsqrt(var + eps) with no gamma in it."""
  def net(bn):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding='same', use_bias=False,
                            name='conv')(inputs)
    if bn:
      x = keras.layers.BatchNormalization(scale=scale, name='bn')(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.Model(inputs, keras.layers.Dense(2, name='fc')(x))
  spec = hardware.HardwareSpec('h', 10.0, 3.0)  # GFLOP/s, GB/s
  cost = {bn: float(latency_regularizer.GroupLassoLatencyRegularizer(
      net(bn), 0.0, spec).get_cost()) for bn in (True, False)}
  bn_bytes = 2 * 8 * 8 * 4 * 4  # its input and output, float32
  assert cost[True] - cost[False] == pytest.approx(bn_bytes / 3.0)
