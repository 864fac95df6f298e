"""How the graph analysis scales with network depth (tf.compat.v1 graphs).

Builds a residual network of N blocks
    conv3x3 - FusedBatchNorm - ReLU - conv3x3 - FusedBatchNorm (+ skip) - ReLU
on a small input (8x8, 16 channels, so the graph itself is cheap) and times
GammaFlopsRegularizer(...) construction + get_cost() + get_regularization_term()
(building the tensors; the graph is built before the clock starts). The
analysis is repeated --repeats times on the same graph and the median is
reported. Optionally
also one sess.run of [cost, term] (timed separately).

Targets: 400 blocks <= 5 s, growth t(400)/t(100) <= 5x. The script always
exits 0; it prints whether each target is met.

Usage:
  python benchmarks/analysis_scaling.py                 # N = 100 200 400
  python benchmarks/analysis_scaling.py --blocks 50 100 --sess-run
  python benchmarks/analysis_scaling.py --blocks 400 --repeats 1 --profile 25
"""

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..'))

import tensorflow as tf  # pylint: disable=g-import-not-at-top

from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top

tf1 = tf.compat.v1

TARGET_SECONDS_400 = 5.0
TARGET_GROWTH = 5.0


def _conv_bn(net, channels, name):
  in_ch = int(net.shape[-1])
  kernel = tf1.get_variable(name + '/kernel', [3, 3, in_ch, channels])
  gamma = tf1.get_variable(name + '/gamma', initializer=tf.ones([channels]))
  beta = tf1.get_variable(name + '/beta', initializer=tf.zeros([channels]))
  net = tf.nn.conv2d(net, kernel, 1, 'SAME', name=name + '/conv')
  net, _, _ = tf1.nn.fused_batch_norm(net, gamma, beta, name=name + '/bn')
  return net


def build_resnet_graph(num_blocks, size=8, channels=16):
  """Returns (graph, logits) for a residual net of `num_blocks` blocks."""
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf.float32, [None, size, size, 3], name='images')
    net = tf.nn.relu(_conv_bn(images, channels, 'stem'))
    for i in range(num_blocks):
      name = 'block%d' % i
      shortcut = net
      net = tf.nn.relu(_conv_bn(net, channels, name + '/a'))
      net = _conv_bn(net, channels, name + '/b')
      net = tf.nn.relu(tf.add(net, shortcut, name=name + '/add'))
    logits = tf.reduce_mean(net, [1, 2], name='logits')
  return graph, logits


def analyze(graph, logits):
  """The timed part: regularizer construction + cost + term tensors."""
  with graph.as_default():
    reg = flop_regularizer.GammaFlopsRegularizer([logits.op], 1e-2)
    cost = reg.get_cost()
    term = reg.get_regularization_term()
  return reg, cost, term


def run_one(num_blocks, size, channels, sess_run, profile_top, repeats):
  t0 = time.perf_counter()
  graph, logits = build_resnet_graph(num_blocks, size, channels)
  t_build = time.perf_counter() - t0
  num_ops = len(graph.get_operations())

  profiler = cProfile.Profile() if profile_top else None
  samples = []
  for _ in range(max(1, repeats)):
    # Each repeat builds a fresh regularizer on the same graph (its few
    # cost/term ops are added to the graph again, which is negligible).
    t0 = time.perf_counter()
    if profiler:
      profiler.enable()
    _, cost, term = analyze(graph, logits)
    if profiler:
      profiler.disable()
    samples.append(time.perf_counter() - t0)
  t_analysis = statistics.median(samples)

  t_sess = None
  values = None
  if sess_run:
    with graph.as_default(), tf1.Session(graph=graph) as sess:
      sess.run(tf1.global_variables_initializer())
      t0 = time.perf_counter()
      values = sess.run([cost, term])
      t_sess = time.perf_counter() - t0

  line = ('N=%4d  graph ops=%6d  graph build %6.2f s  analysis %7.3f s '
          '(median of %d: %s)'
          % (num_blocks, num_ops, t_build, t_analysis, len(samples),
             ' '.join('%.3f' % t for t in samples)))
  if t_sess is not None:
    line += '  first sess.run %6.3f s (cost=%.4g term=%.4g)' % (
        t_sess, values[0], values[1])
  print(line, flush=True)

  if profiler:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats('cumulative').print_stats(profile_top)
    out.write('\n--- by own (tottime) ---\n')
    stats.sort_stats('tottime').print_stats(profile_top)
    print(out.getvalue(), flush=True)
  return t_analysis


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--blocks', type=int, nargs='+', default=[100, 200, 400],
                      help='numbers of residual blocks (default 100 200 400)')
  parser.add_argument('--size', type=int, default=8, help='spatial size')
  parser.add_argument('--channels', type=int, default=16)
  parser.add_argument('--sess-run', action='store_true',
                      help='also time one sess.run([cost, term])')
  parser.add_argument('--repeats', type=int, default=3,
                      help='analyses per graph; the median is reported')
  parser.add_argument('--profile', type=int, default=0, metavar='TOP',
                      help='cProfile the analysis, print TOP functions')
  args = parser.parse_args(argv)

  tf1.disable_eager_execution()  # not required, but keeps graph mode pure
  print('GammaFlopsRegularizer analysis scaling (tf %s, %s CPUs)'
        % (tf.__version__, os.cpu_count()))
  times = {}
  for n in args.blocks:
    times[n] = run_one(n, args.size, args.channels, args.sess_run,
                       args.profile, args.repeats)

  print()
  smallest, largest = min(times), max(times)
  if 400 in times:
    ok = times[400] <= TARGET_SECONDS_400
    print('target: 400 blocks <= %.1f s: %.3f s -> %s'
          % (TARGET_SECONDS_400, times[400], 'MET' if ok else 'NOT MET'))
  else:
    print('target: 400 blocks <= %.1f s: not measured (no N=400)'
          % TARGET_SECONDS_400)
  if 100 in times and 400 in times:
    growth = times[400] / times[100]
    ok = growth <= TARGET_GROWTH
    print('target: growth t(400)/t(100) <= %.1fx: %.2fx -> %s'
          % (TARGET_GROWTH, growth, 'MET' if ok else 'NOT MET'))
    print('        (linear scaling would be 4.0x, quadratic 16x)')
  elif smallest != largest:
    growth = times[largest] / times[smallest]
    print('growth t(%d)/t(%d) = %.2fx (size ratio %.1fx); the growth target '
          'is defined for 400/100 only'
          % (largest, smallest, growth, largest / smallest))
  return 0


if __name__ == '__main__':
  main()
  sys.exit(0)
