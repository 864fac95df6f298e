"""A latency model of the machine you are on, fitted from timings.

The latency regularizers price each op with a roofline:
max(FLOPs / peak_compute, bytes / memory_bandwidth). The data-sheet peaks
of `hardware.HARDWARE` describe an accelerator at its best. This module
measures instead. It builds the model at a few uniform widths (`slim_model`
of a structure that keeps `m` x every prunable layer's channels) and times
each one's inference on this machine. It then fits `peak_compute`,
`memory_bandwidth` and a fixed time per op (`op_overhead`) to those
timings. The FLOPs and bytes of every op come from the latency calculator
itself, through the FLOP_LATENCY and MEMORY_LATENCY devices. So the fitted
spec prices exactly the ops the regularizer counts.

>>> spec, fit = profile_hardware([model], 'my-cpu')     # doctest: +SKIP
>>> hardware.save_hardware(spec, 'my-cpu.json')         # doctest: +SKIP
>>> GammaLatencyRegularizer(model, 0.01, 'my-cpu.json')  # doctest: +SKIP

`morphnet profile MODEL.keras --name my-cpu -o my-cpu.json` does the same
from the command line. `benchmarks/latency_model.py` checks the fitted spec
against random slim variants it was not fitted on.

The regularizers use `peak_compute` and `memory_bandwidth`. `op_overhead`
adds the same constant for every op that survives, and it has no gradient,
so `predict_latency` adds it (n_ops x op_overhead) when it compares
predictions with measurements.
"""

import statistics
import time

import numpy as np
import tensorflow as tf

from morph_net.keras import slim
from morph_net.network_regularizers import hardware
from morph_net.network_regularizers import latency_regularizer
from morph_net.tools import analyze

__all__ = ['roofline_parts', 'measure_latency', 'measure_latencies',
           'fit_hardware',
           'predict_latency', 'profile_hardware', 'uniform_structure']

DEFAULT_MULTIPLIERS = (0.25, 0.5, 0.75, 1.0)
# Fit grids: GFLOP/s, GB/s and ns per op, log-spaced.
_PEAKS = np.logspace(-1, 6, 71)
_BANDWIDTHS = np.logspace(-2, 4, 61)
_OVERHEADS = np.concatenate([[0.0], np.logspace(1, 6, 51)])


def uniform_structure(model, multiplier):
  """{layer: round(multiplier x width)} for every prunable layer."""
  report = analyze.analyze(model)
  return {l.name: max(1, int(round(multiplier * l.channels)))
          for l in report.layers if l.prunable}


def roofline_parts(model, batch_size=1):
  """(FLOPs, bytes) per op that the latency calculator counts, as arrays.

  Read from the calculator with the idealized devices: with FLOP_LATENCY an
  op costs its FLOPs, and with MEMORY_LATENCY it costs its bytes.
  """
  def per_op(device):
    reg = latency_regularizer.GroupLassoLatencyRegularizer(
        model, threshold=0.0, hardware=device, batch_size=batch_size)
    return reg.per_op_costs()

  flops = per_op('FLOP_LATENCY')
  memory = per_op('MEMORY_LATENCY')
  names = sorted(flops)
  # An op with no FLOPs still costs bytes / 1e20 on FLOP_LATENCY: round it.
  f = np.array([flops[n] if flops[n] >= 1.0 else 0.0 for n in names])
  b = np.array([memory[n] if memory[n] >= 1.0 else 0.0 for n in names])
  return f, b


def measure_latency(model, batch_size=1, repeats=20, warmup=3, calls=1):
  """Median seconds of one inference call (`tf.function`, no XLA)."""
  return measure_latencies([model], batch_size, repeats, warmup, calls)[0]


def measure_latencies(models, batch_size=1, repeats=20, warmup=3, calls=1):
  """Median seconds per inference call of each model, timed round-robin.

  Each round times every model once (`calls` calls), so a slow spell of a
  shared machine hits all of them alike instead of one.
  """
  fns, inputs = [], []
  for model in models:
    shape = [batch_size] + list(model.inputs[0].shape[1:])
    inputs.append(tf.random.stateless_normal(shape, seed=[0, 0]))
    fns.append(tf.function(lambda t, m=model: m(t, training=False)))
    for _ in range(warmup):
      np.asarray(fns[-1](inputs[-1]))
  times = [[] for _ in models]
  for _ in range(repeats):
    for fn, x, t in zip(fns, inputs, times):
      t0 = time.perf_counter()
      for _ in range(calls):
        out = fn(x)
      np.asarray(out)
      t.append((time.perf_counter() - t0) / calls)
  return [statistics.median(t) for t in times]


def _predict(parts, peak, bandwidth, overhead):
  flops, memory = parts
  return (np.maximum(flops / peak, memory / bandwidth).sum()
          + overhead * len(flops))


def fit_hardware(samples, name, with_overhead=True):
  """Fits a HardwareSpec to measured latencies.

  Args:
    samples: [((flops, bytes) per op, measured seconds)], e.g. from
      `roofline_parts` and `measure_latency`.
    name: the spec's name.
    with_overhead: also fit a fixed time per op; else op_overhead = 0.

  Returns:
    (HardwareSpec, {'rms_log_error', 'median_relative_error'}) over the
    samples. The fit minimizes the mean squared log error of the predicted
    latency (ns), over log-spaced grids of the three parameters.
  """
  if not samples:
    raise ValueError('fit_hardware needs at least one timed sample.')
  measured = np.array([s * 1e9 for _, s in samples])  # ns
  width = max(len(p[0]) for p, _ in samples)
  flops = np.zeros((len(samples), width))
  memory = np.zeros((len(samples), width))
  counts = np.array([len(p[0]) for p, _ in samples], np.float64)
  for i, ((f, b), _) in enumerate(samples):
    flops[i, :len(f)], memory[i, :len(b)] = f, b
  # roofline[p, w, s]: the sum over ops of max(F / peak, B / bandwidth).
  roofline = np.maximum(
      flops[None, None] / _PEAKS[:, None, None, None],
      memory[None, None] / _BANDWIDTHS[None, :, None, None]).sum(-1)
  overheads = _OVERHEADS if with_overhead else _OVERHEADS[:1]
  predicted = (roofline[..., None, :]
               + overheads[None, None, :, None] * counts)
  error = np.mean(np.log(predicted / measured) ** 2, axis=-1)
  p, w, c = np.unravel_index(np.argmin(error), error.shape)
  spec = hardware.HardwareSpec(name, float(_PEAKS[p]),
                               float(_BANDWIDTHS[w]), float(overheads[c]))
  relative = np.abs(predicted[p, w, c] / measured - 1.0)
  return spec, {'rms_log_error': float(np.sqrt(error[p, w, c])),
                'median_relative_error': float(np.median(relative))}


def predict_latency(parts, spec):
  """Predicted seconds for `roofline_parts` output on a HardwareSpec."""
  spec = hardware.get_hardware(spec)
  return 1e-9 * _predict(parts, spec.peak_compute, spec.memory_bandwidth,
                         spec.op_overhead)


def profile_hardware(models, name, multipliers=DEFAULT_MULTIPLIERS,
                     batch_size=1, repeats=20, log=None):
  """Times `models` at uniform widths and fits a HardwareSpec.

  Args:
    models: Keras models (functional or Sequential) with static input
      shapes, ideally the ones you will regularize.
    name: the name of the fitted spec.
    multipliers: the widths at which each model is built and timed.
    batch_size: examples per inference.
    repeats: timed calls per variant (the median is kept).
    log: optional callable(str) for progress lines.

  Returns:
    (HardwareSpec, fit report dict with the samples' widths, measured and
    predicted seconds, and the fit errors).
  """
  variants, rows = [], []
  for model in models:
    for m in multipliers:
      variant = (model if m == 1.0 else
                 slim.slim_model(model, uniform_structure(model, m)))
      variants.append((variant, roofline_parts(variant, batch_size)))
      rows.append({'model': model.name, 'multiplier': m})
  seconds = measure_latencies([v for v, _ in variants], batch_size, repeats)
  samples = [(parts, s) for (_, parts), s in zip(variants, seconds)]
  for row, (parts, s) in zip(rows, samples):
    row.update(measured_s=s, flops=float(parts[0].sum()),
               bytes=float(parts[1].sum()), ops=len(parts[0]))
    if log:
      log('%s x%.2f: %.3f ms, %.4g FLOPs, %d ops'
          % (row['model'], row['multiplier'], 1e3 * s, row['flops'],
             row['ops']))
  spec, errors = fit_hardware(samples, name)
  for row, (parts, _) in zip(rows, samples):
    row['predicted_s'] = predict_latency(parts, spec)
  report = dict(errors, batch_size=batch_size, samples=rows)
  return spec, report
