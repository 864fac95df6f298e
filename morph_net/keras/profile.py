"""A latency model of the machine you are on, fitted from timings.

The latency regularizers price each op with a roofline:
max(FLOPs / peak_compute, bytes / memory_bandwidth) + op_overhead. The
data-sheet peaks of `hardware.HARDWARE` describe an accelerator at its best
(and have no overhead). This module measures instead. It builds the model
at a few uniform widths (`slim_model` of a structure that keeps `m` x every
prunable layer's channels), times each one's inference on this machine, and
fits four numbers to those timings: `peak_compute` (dense convs and
matmuls), `depthwise_compute` (depthwise convs, which a CPU runs far below
its dense peak), `memory_bandwidth` and a fixed time per op
(`op_overhead`). The FLOPs and bytes of every op come from the latency
calculator itself (`LatencyCalculator.roofline_parts`), so the fitted spec
prices exactly the ops the regularizer counts.

>>> spec, fit = profile_hardware([model], 'my-cpu')     # doctest: +SKIP
>>> hardware.save_hardware(spec, 'my-cpu.json')         # doctest: +SKIP
>>> GammaLatencyRegularizer(model, 0.01, 'my-cpu.json')  # doctest: +SKIP

`morphnet profile MODEL.keras --name my-cpu -o my-cpu.json` does the same
from the command line. `benchmarks/latency_model.py` checks the fitted spec
against random slim variants it was not fitted on.

`op_overhead` is a constant for every op that survives: it has no gradient,
so it steers nothing while channels shrink; it counts when a whole op goes.
"""

import time

import numpy as np
import tensorflow as tf

from morph_net.keras import slim
from morph_net.network_regularizers import hardware
from morph_net.network_regularizers import latency_calculator
from morph_net.network_regularizers import latency_regularizer
from morph_net.tools import analyze

__all__ = ['fit_hardware', 'fit_timed_variants', 'measure_latencies',
           'measure_latency', 'measure_times', 'predict_latency', 'profile_hardware', 'roofline_parts',
           'uniform_structure', 'width_variants']

DEFAULT_MULTIPLIERS = (0.25, 0.5, 0.75, 1.0)
# Coarse fit grids: GFLOP/s, GB/s and ns per op, log-spaced; then each
# parameter is refined on a grid 4x finer, one at a time.
_PEAKS = np.logspace(-1, 6, 71)
_BANDWIDTHS = np.logspace(-2, 4, 61)
_OVERHEADS = np.concatenate([[0.0], np.logspace(1, 6, 51)])
_FINE = {'peak': np.logspace(-1, 6, 281),
         'depthwise': np.logspace(-1, 6, 281),
         'bandwidth': np.logspace(-2, 4, 241),
         'overhead': np.concatenate([[0.0], np.logspace(1, 6, 201)])}
_SWEEPS = 6


def uniform_structure(model, multiplier):
  """{layer: round(multiplier x width)} for every prunable layer."""
  report = analyze.analyze(model)
  return {l.name: max(1, int(round(multiplier * l.channels)))
          for l in report.layers if l.prunable}


def roofline_parts(model, batch_size=1):
  """(FLOPs, bytes, is depthwise, output alive) per op, as arrays.

  The ops and numbers the latency calculator counts for `model` with every
  channel alive (`LatencyCalculator.roofline_parts`).
  """
  reg = latency_regularizer.GroupLassoLatencyRegularizer(
      model, threshold=0.0, hardware='FLOP_LATENCY', batch_size=batch_size)
  calculator = latency_calculator.LatencyCalculator(
      reg.op_regularizer_manager, 1.0, 1.0, batch_size)
  return calculator.roofline_parts()


def measure_latency(model, batch_size=1, repeats=20, warmup=3, calls=1):
  """Median seconds of one inference call (`tf.function`, no XLA)."""
  return measure_latencies([model], batch_size, repeats, warmup, calls)[0]


def measure_latencies(models, batch_size=1, repeats=20, warmup=3, calls=1,
                      seed=0, quantile=0.5):
  """Seconds per inference call of each model, timed interleaved.

  Each round times every model once (`calls` calls), in an order shuffled
  per round, so a slow spell of a shared machine hits all of them alike
  instead of one, and no model always follows the same other one. Returns
  the `quantile` of each model's rounds (0.5: the median). Other jobs only
  ever add time, so a low quantile (e.g. 0.2) estimates the unloaded
  latency with less noise than the median on a shared machine.
  """
  times = measure_times(models, batch_size, repeats, warmup, calls, seed)
  return [float(np.quantile(t, quantile)) for t in times]


def measure_times(models, batch_size=1, repeats=20, warmup=3, calls=1,
                  seed=0):
  """[[seconds per call, one per round]] per model (see measure_latencies)."""
  fns, inputs = [], []
  for model in models:
    shape = [batch_size] + list(model.inputs[0].shape[1:])
    inputs.append(tf.random.stateless_normal(shape, seed=[0, 0]))
    fns.append(tf.function(lambda t, m=model: m(t, training=False)))
    for _ in range(warmup):
      np.asarray(fns[-1](inputs[-1]))
  times = [[] for _ in models]
  rng = np.random.default_rng(seed)
  for _ in range(repeats):
    for i in rng.permutation(len(models)):
      t0 = time.perf_counter()
      for _ in range(calls):
        out = fns[i](inputs[i])
      np.asarray(out)
      times[i].append((time.perf_counter() - t0) / calls)
  return times


def _unpack(parts):
  """(flops, bytes, is depthwise, counted) from 2- or 4-tuples."""
  flops, memory = np.asarray(parts[0], np.float64), np.asarray(
      parts[1], np.float64)
  if len(parts) > 2:
    linear, alive = np.asarray(parts[2], bool), np.asarray(parts[3], bool)
  else:
    linear = np.zeros(len(flops), bool)
    alive = (flops > 0) | (memory > 0)
  return flops, memory, linear, alive


def _predict(parts, peak, bandwidth, overhead, depthwise=None):
  """ns: the roofline of `latency_calculator.roofline_ns` over parts."""
  return latency_calculator.roofline_ns(*_unpack(parts), peak, bandwidth,
                                        overhead, depthwise)


def _stack(samples):
  """Samples padded to one op count: [S, ops] arrays."""
  unpacked = [_unpack(p) for p, _ in samples]
  width = max(len(u[0]) for u in unpacked)
  out = [np.zeros((len(samples), width)) for _ in range(3)]
  counts = np.zeros(len(samples))
  for i, (f, b, lin, alive) in enumerate(unpacked):
    out[0][i, :len(f)], out[1][i, :len(b)] = f, b
    out[2][i, :len(lin)] = lin
    counts[i] = alive.sum()
  return out[0], out[1], out[2].astype(bool), counts


def fit_hardware(samples, name, with_overhead=True, with_depthwise=True):
  """Fits a HardwareSpec to measured latencies.

  Args:
    samples: [(roofline_parts, measured seconds)], e.g. from
      `roofline_parts` and `measure_latencies`; parts may also be a
      (FLOPs, bytes) pair (no depthwise ops, every op counted).
    name: the spec's name.
    with_overhead: also fit a fixed time per op; else op_overhead = 0.
    with_depthwise: fit depthwise convs their own rate when the samples
      have any; else they compute at peak_compute (depthwise_compute None).

  Returns:
    (HardwareSpec, {'rms_log_error', 'median_relative_error'}) over the
    samples. The fit minimizes the mean squared log error of the predicted
    latency (ns): a grid search over the four parameters, then coordinate
    descent on grids 4x finer.
  """
  if not samples:
    raise ValueError('fit_hardware needs at least one timed sample.')
  measured = np.array([s * 1e9 for _, s in samples])  # ns
  flops, memory, linear, counts = _stack(samples)
  overheads = _OVERHEADS if with_overhead else _OVERHEADS[:1]
  separate = bool(with_depthwise and linear.any())

  def roofline(mask):
    """[rate, bandwidth, sample]: the sum over masked ops of max(F / rate,
    B / bandwidth)."""
    return (np.maximum(flops[None, None] / _PEAKS[:, None, None, None],
                       memory[None, None] / _BANDWIDTHS[None, :, None, None])
            * mask).sum(-1)

  # The latency is separable: dense part (peak, bandwidth) + depthwise part
  # (depthwise rate, bandwidth) + overhead x ops, so the 4-D grid is
  # searched one bandwidth at a time.
  dense, depthwise = roofline(~linear), roofline(linear)
  best = (np.inf, None)
  for w in range(len(_BANDWIDTHS)):
    if separate:
      ns = (dense[:, None, w, None, :] + depthwise[None, :, w, None, :]
            + overheads[None, None, :, None] * counts)
    else:  # depthwise at the dense peak: the diagonal
      ns = (dense[:, w, None, :] + depthwise[:, w, None, :])[:, None] + (
          overheads[None, None, :, None] * counts)
    error = np.mean(np.log(ns / measured) ** 2, axis=-1)
    i = np.unravel_index(np.argmin(error), error.shape)
    if error[i] < best[0]:
      best = (error[i], (i[0], i[1] if separate else i[0], w, i[2]))
  p, d, w, c = best[1]
  params = {'peak': _PEAKS[p], 'depthwise': _PEAKS[d],
            'bandwidth': _BANDWIDTHS[w], 'overhead': overheads[c]}
  free = ['peak', 'bandwidth'] + (['overhead'] if with_overhead else [])
  if separate:
    free.append('depthwise')

  def errors(key, values):
    """Mean squared log error with params[key] set to each of `values`."""
    v = {k: np.full(len(values), x, np.float64) for k, x in params.items()}
    v[key] = values
    rate = np.where(linear[None], v['depthwise'][:, None, None],
                    v['peak'][:, None, None])
    ns = (np.maximum(flops[None] / rate,
                     memory[None] / v['bandwidth'][:, None, None]).sum(-1)
          + v['overhead'][:, None] * counts[None])
    return np.mean(np.log(ns / measured) ** 2, axis=-1)

  for _ in range(_SWEEPS):
    for key in free:
      grid = _FINE[key]
      params[key] = grid[np.argmin(errors(key, grid))]
  best = errors('peak', np.array([params['peak']]))[0]
  spec = hardware.HardwareSpec(
      name, float(params['peak']), float(params['bandwidth']),
      float(params['overhead']),
      float(params['depthwise']) if 'depthwise' in free else None)
  relative = [abs(1e-9 * _predict(parts, spec.peak_compute,
                                  spec.memory_bandwidth, spec.op_overhead,
                                  spec.depthwise_compute) / s - 1.0)
              for parts, s in samples]
  return spec, {'rms_log_error': float(np.sqrt(best)),
                'median_relative_error': float(np.median(relative))}


def predict_latency(parts, spec):
  """Predicted seconds for `roofline_parts` output on a HardwareSpec."""
  spec = hardware.get_hardware(spec)
  return 1e-9 * _predict(parts, spec.peak_compute, spec.memory_bandwidth,
                         spec.op_overhead, spec.depthwise_compute)


def width_variants(models, multipliers=DEFAULT_MULTIPLIERS, batch_size=1):
  """[(row, variant, roofline_parts)]: each model at each uniform width."""
  out = []
  for model in models:
    for m in multipliers:
      variant = (model if m == 1.0 else
                 slim.slim_model(model, uniform_structure(model, m)))
      out.append(({'model': model.name, 'multiplier': m}, variant,
                   roofline_parts(variant, batch_size)))
  return out


def fit_timed_variants(variants, seconds, name, batch_size=1, log=None):
  """Fits a spec to `width_variants` output timed as `seconds`.

  Returns:
    (HardwareSpec, report dict: the fit errors, the batch size, and per
    sample its width, measured and predicted seconds, FLOPs, bytes, ops).
  """
  rows = []
  samples = [(parts, s) for (_, _, parts), s in zip(variants, seconds)]
  for (row, _, parts), s in zip(variants, seconds):
    f, b, _, alive = _unpack(parts)
    row = dict(row, measured_s=s, flops=float(f.sum()), bytes=float(b.sum()),
               ops=int(alive.sum()))
    rows.append(row)
    if log:
      log('%s x%.2f: %.3f ms, %.4g FLOPs, %d ops'
          % (row['model'], row['multiplier'], 1e3 * s, row['flops'],
             row['ops']))
  spec, errors = fit_hardware(samples, name)
  for row, (parts, _) in zip(rows, samples):
    row['predicted_s'] = predict_latency(parts, spec)
  return spec, dict(errors, batch_size=batch_size, samples=rows)


def profile_hardware(models, name, multipliers=DEFAULT_MULTIPLIERS,
                     batch_size=1, repeats=20, log=None):
  """Times `models` at uniform widths and fits a HardwareSpec.

  Args:
    models: Keras models (functional or Sequential) with static input
      shapes, ideally the ones you will regularize.
    name: the name of the fitted spec.
    multipliers: the widths at which each model is built and timed.
    batch_size: examples per inference.
    repeats: timed rounds over all variants (the median is kept).
    log: optional callable(str) for progress lines.

  Returns:
    (HardwareSpec, fit report dict with the samples' widths, measured and
    predicted seconds, and the fit errors).

  Raises:
    ValueError: `name` is a built-in spec's (get_hardware(name) would
      return the built-in one, not this fit).
  """
  if name in hardware.HARDWARE:
    raise ValueError(
        'name %r is a built-in hardware spec (%s); a profiled spec by that '
        'name would never be found by name. Choose another, e.g. %r.'
        % (name, ', '.join(sorted(hardware.HARDWARE)), name + '-measured'))
  variants = width_variants(models, multipliers, batch_size)
  seconds = measure_latencies([v for _, v, _ in variants], batch_size,
                              repeats)
  return fit_timed_variants(variants, seconds, name, batch_size, log)
