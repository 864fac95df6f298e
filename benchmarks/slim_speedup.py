"""Do slim models run as much faster as they have fewer FLOPs?

For each model, the script draws a seeded, learned-like structure (see
`learned_like_structure`) and builds it with `morph_net.keras.slim_model`,
once with `round_to=1` and once with `round_to=8`. It then times the seed
and both slim models at batch 1 and batch 32 as an inference `tf.function`,
once without XLA and once with `jit_compile=True`. The models are:
keras.applications ResNet50, MobileNetV2 and EfficientNetB0 (weights=None),
and a small ViT built from Keras layers (`vit`).

The timings are interleaved. Each round times every variant once, and the
order rotates between rounds. The speedup is the median over rounds of
t(seed) / t(slim) within a round. So drift on a shared, noisy machine hits
seed and slim alike. For each row the script reports the FLOP ratio (seed
FLOPs / slim FLOPs, from `morph_net.tools.analyze`), the speedup, and
efficiency = speedup / FLOP ratio. An efficiency of 1 means the time falls
exactly as fast as the FLOPs do.

  python benchmarks/slim_speedup.py                  # the full run (~15-20 min)
  python benchmarks/slim_speedup.py --quick          # 2 tiny models, < 1 min
  python benchmarks/slim_speedup.py --models ViT --rounds 9 --json out.json

The script always exits 0: it is a report, not a pass/fail test.
"""

import argparse
import gc
import json
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir))

import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from morph_net.keras import slim_model  # pylint: disable=g-import-not-at-top
from morph_net.tools import analyze  # pylint: disable=g-import-not-at-top

TARGET_EFFICIENCY = 0.8

# name -> (builder(size, quick), full-run input size). Input sizes were
# chosen so the full run fits ~15-20 minutes on 2 shared CPU cores.
def _resnet50(size, quick):
  del quick
  return keras.applications.ResNet50(weights=None,
                                     input_shape=(size, size, 3))


def _mobilenet_v2(size, quick):
  return keras.applications.MobileNetV2(
      weights=None, input_shape=(size, size, 3), alpha=0.35 if quick else 1.0)


def _efficientnet_b0(size, quick):
  del quick
  return keras.applications.EfficientNetB0(weights=None,
                                           input_shape=(size, size, 3))


def vit(image=96, patch=8, dim=192, depth=6, heads=3, mlp=768, classes=1000):
  """A small ViT: patch conv, pre-norm attention + MLP blocks, mean pool.

  ViT-Tiny's widths (dim 192, 3 heads, MLP 768) at 6 blocks instead of 12,
  on 96x96 images (144 tokens). There is no class token and no position
  embedding: neither changes what is timed here.
  """
  inputs = keras.Input((image, image, 3))
  x = keras.layers.Conv2D(dim, patch, strides=patch, name='patch_embed')(
      inputs)
  x = keras.layers.Reshape(((image // patch) ** 2, dim), name='tokens')(x)
  for i in range(depth):
    h = keras.layers.LayerNormalization(epsilon=1e-6,
                                        name='block%d_ln1' % i)(x)
    h = keras.layers.MultiHeadAttention(heads, dim // heads,
                                        name='block%d_attn' % i)(h, h)
    x = keras.layers.Add(name='block%d_add1' % i)([x, h])
    h = keras.layers.LayerNormalization(epsilon=1e-6,
                                        name='block%d_ln2' % i)(x)
    h = keras.layers.Dense(mlp, activation='gelu', name='block%d_mlp1' % i)(h)
    h = keras.layers.Dense(dim, name='block%d_mlp2' % i)(h)
    x = keras.layers.Add(name='block%d_add2' % i)([x, h])
  x = keras.layers.LayerNormalization(epsilon=1e-6, name='ln')(x)
  x = keras.layers.GlobalAveragePooling1D(name='pool')(x)
  return keras.Model(inputs, keras.layers.Dense(classes, name='head')(x),
                     name='vit')


def _vit(size, quick):
  if quick:
    return vit(image=size, patch=8, dim=48, depth=2, heads=2, mlp=96,
               classes=10)
  return vit(image=size)


MODELS = {
    'ResNet50': (_resnet50, 128),
    'MobileNetV2': (_mobilenet_v2, 160),
    'EfficientNetB0': (_efficientnet_b0, 160),
    'ViT': (_vit, 96),
}
# Groups kept at full width, by model (none: the ViT's residual stream,
# heads and MLPs are all pruned; slim_model narrows a MultiHeadAttention's
# input and keeps whole heads).
KEEP_FULL = {}
QUICK_SIZE = 32


def attention_flops(model):
  """FLOPs per example of MultiHeadAttention layers, from their shapes.

  Used only when the analysis reports no Einsum op (a library version that
  did not count attention); then they are counted here: 2 x tokens x d_in x d_proj for
  each of the query, key and value projections (d_proj x d_out for the
  output one), plus
  2 x tokens^2 x d_proj for the scores and again for the weighted sum.
  Slimming leaves them unchanged except through d_in (the residual width).
  """
  total = 0
  for layer in model.layers:
    if not isinstance(layer, keras.layers.MultiHeadAttention):
      continue
    d_in = layer.query_dense.kernel.shape[0]
    d_out = layer.output_dense.kernel.shape[-1]
    d_proj = layer.num_heads * layer.key_dim
    tokens = layer.output.shape[1]
    total += (2 * tokens * d_in * d_proj * 3 + 2 * tokens * d_proj * d_out
              + 2 * 2 * tokens ** 2 * d_proj)
  return total


def _flops(model):
  report = analyze.analyze(model)
  counted = {l.op_type for l in report.layers}
  extra = 0 if any('Einsum' in t for t in counted) else attention_flops(model)
  return float(report.flops) + extra, report


def learned_like_structure(report, seed, keep_full=()):
  """A structure {layer: count} shaped like what MorphNet learns.

  Per channel group (layers tied by residual adds share one), in network
  order, with d the relative depth of the group's first layer (0 = first,
  1 = last) and e ~ Normal(0, 0.1) drawn from `seed`:
      keep = clip(0.85 - 0.55 * d + e, 0.15, 1.0)
  MorphNet keeps most of the early, cheap-per-channel layers and prunes the
  wide late ones hardest. A group tied across several layers (a residual
  stream) keeps more: keep' = 1 - (1 - keep) / 2, because cutting one of its
  channels must be paid for in every layer it feeds. The count is
  max(1, round(keep * width)). Groups tied to the output, and groups with
  a layer named in `keep_full`, are left alone.
  """
  rng = np.random.default_rng(seed)
  layers = [l for l in report.layers if l.prunable]
  groups = {}
  for l in layers:
    groups.setdefault(l.group, []).append(l)
  for g in [g for g, ls in groups.items()
            if any(l.name in keep_full for l in ls)]:
    del groups[g]
  order = {l.name: i for i, l in enumerate(report.layers)}
  last = max(len(report.layers) - 1, 1)
  structure = {}
  for group in sorted(groups, key=lambda g: order[groups[g][0].name]):
    members = groups[group]
    depth = order[members[0].name] / last
    keep = float(np.clip(0.85 - 0.55 * depth + rng.normal(0.0, 0.1), 0.15,
                         1.0))
    if len(members) > 1:
      keep = 1.0 - (1.0 - keep) / 2.0
    for l in members:
      structure[l.name] = max(1, int(round(keep * l.channels)))
  return structure


def whole_heads(model, structure):
  """Rounds MultiHeadAttention widths to whole heads (multiples of key_dim,
  at least one head): slim_model prunes attention by heads."""
  head = {layer.name: layer.key_dim for layer in model.layers
          if isinstance(layer, keras.layers.MultiHeadAttention)}
  out = dict(structure)
  for key, count in structure.items():
    # Keys of the projections: '<attention layer>/query' etc.
    size = head.get(key.split('/')[0]) if '/' in key else None
    if size and key.split('/')[-1] in ('query', 'key', 'value'):
      out[key] = max(1, int(round(count / size))) * size
  return out


def _inference_fn(model, jit_compile):
  return tf.function(lambda x: model(x, training=False),
                     jit_compile=jit_compile, reduce_retracing=True)


def _time_calls(fn, x, calls):
  t0 = time.perf_counter()
  for _ in range(calls):
    out = fn(x)
  np.asarray(out)  # wait for the result
  return (time.perf_counter() - t0) / calls


def time_interleaved(fns, x, rounds, calls, warmup=2):
  """{name: [seconds per call, per round]}; the order rotates per round."""
  names = list(fns)
  for name in names:
    _time_calls(fns[name], x, warmup)
  times = {name: [] for name in names}
  for r in range(rounds):
    shift = r % len(names)
    for name in names[shift:] + names[:shift]:
      times[name].append(_time_calls(fns[name], x, calls))
  return times


def run_model(name, args):
  builder, full_size = MODELS[name]
  size = args.size or (QUICK_SIZE if args.quick else full_size)
  keras.utils.set_random_seed(args.seed)
  t0 = time.perf_counter()
  seed_model = builder(size, args.quick)
  seed_flops, report = _flops(seed_model)
  structure = whole_heads(seed_model, learned_like_structure(
      report, args.seed, KEEP_FULL.get(name, ())))
  variants = {'seed': (seed_model, seed_flops)}
  for round_to in args.round_to:
    slim = slim_model(seed_model, structure, round_to=round_to)
    variants['slim/%d' % round_to] = (slim, _flops(slim)[0])
  print('%s %dx%d: %d groups; built and analyzed in %.1f s; FLOPs %s'
        % (name, size, size, len(set(l.group for l in report.layers)),
           time.perf_counter() - t0,
           ', '.join('%s %.4g' % (k, v[1]) for k, v in variants.items())),
        flush=True)
  rows = []
  rng = np.random.default_rng(args.seed)
  for jit in args.jit:
    for batch in args.batch:
      x = tf.constant(rng.standard_normal((batch, size, size, 3),
                                          dtype=np.float32))
      t0 = time.perf_counter()
      fns = {k: _inference_fn(v[0], jit) for k, v in variants.items()}
      for fn in fns.values():
        fn(x)  # trace (and compile) outside the timing
      compile_s = time.perf_counter() - t0
      calls = max(1, args.calls if batch == 1 else 1)
      times = time_interleaved(fns, x, args.rounds, calls)
      for k in variants:
        if k == 'seed':
          continue
        ratios = [s / t for s, t in zip(times['seed'], times[k])]
        speedup = statistics.median(ratios)
        flop_ratio = seed_flops / variants[k][1]
        rows.append({
            'model': name, 'input': size, 'round_to': int(k.split('/')[1]),
            'batch': batch, 'jit': jit, 'seed_flops': seed_flops,
            'slim_flops': variants[k][1], 'flop_ratio': flop_ratio,
            'seed_ms': 1e3 * statistics.median(times['seed']),
            'slim_ms': 1e3 * statistics.median(times[k]),
            'speedup': speedup, 'speedup_min': min(ratios),
            'speedup_max': max(ratios),
            'efficiency': speedup / flop_ratio, 'compile_s': compile_s})
        print(_format_row(rows[-1]), flush=True)
  del variants, seed_model
  gc.collect()
  return rows


HEADER = ('| model | input | round_to | batch | XLA | FLOP ratio | seed ms | '
          'slim ms | speedup (min-max) | efficiency |\n'
          '|---|---|---|---|---|---|---|---|---|---|')


def _format_row(r):
  flag = '' if r['batch'] == 1 or r['efficiency'] >= TARGET_EFFICIENCY else (
      ' (< %.1f)' % TARGET_EFFICIENCY)
  return ('| %s | %d | %d | %d | %s | %.2f | %.1f | %.1f | %.2f (%.2f-%.2f) '
          '| %.2f%s |' % (r['model'], r['input'], r['round_to'], r['batch'],
                          'yes' if r['jit'] else 'no', r['flop_ratio'],
                          r['seed_ms'], r['slim_ms'], r['speedup'],
                          r['speedup_min'], r['speedup_max'],
                          r['efficiency'], flag))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', nargs='+', choices=sorted(MODELS),
                      help='default: all four (--quick: MobileNetV2 ViT)')
  parser.add_argument('--quick', action='store_true',
                      help='tiny inputs (32x32), MobileNetV2 alpha 0.35 and '
                      'a tiny ViT, 2 rounds: a smoke test of every path')
  parser.add_argument('--size', type=int, help='override every input size')
  parser.add_argument('--batch', type=int, nargs='+', default=None,
                      help='batch sizes (default 1 32; --quick: 1 4)')
  parser.add_argument('--round-to', type=int, nargs='+', default=[1, 8])
  parser.add_argument('--jit', choices=('no', 'yes', 'both'), default='both',
                      help='tf.function without XLA, with jit_compile, or '
                      'both (default)')
  parser.add_argument('--rounds', type=int, default=None,
                      help='interleaved rounds (default 7; --quick: 2)')
  parser.add_argument('--calls', type=int, default=5,
                      help='calls per timing at batch 1 (batch > 1: one)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', help='also write the rows to this file')
  args = parser.parse_args(argv)
  args.models = args.models or (['MobileNetV2', 'ViT'] if args.quick
                                else list(MODELS))
  args.batch = args.batch or ([1, 4] if args.quick else [1, 32])
  args.rounds = args.rounds or (2 if args.quick else 7)
  args.jit = {'no': [False], 'yes': [True], 'both': [False, True]}[args.jit]
  print('tf %s, keras %s, %s CPUs; batches %s, round_to %s, %d rounds'
        % (tf.__version__, keras.__version__, os.cpu_count(), args.batch,
           args.round_to, args.rounds), flush=True)
  print(HEADER, flush=True)
  rows = []
  t0 = time.perf_counter()
  for name in args.models:
    rows.extend(run_model(name, args))
  print('\n' + HEADER)
  for r in rows:
    print(_format_row(r))
  low = [r for r in rows if r['batch'] > 1 and
         r['efficiency'] < TARGET_EFFICIENCY]
  print('%d rows at batch > 1 below efficiency %.1f; total %.0f s'
        % (len(low), TARGET_EFFICIENCY, time.perf_counter() - t0))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=1)
  return 0


if __name__ == '__main__':
  main()
  sys.exit(0)
