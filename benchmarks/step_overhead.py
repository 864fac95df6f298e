"""Per-step overhead of adding the MorphNet term to a Keras training step.

Keras ResNet50(weights=None) trained with SGD inside tf.function, two variants:
  A: loss = cross-entropy
  B: loss = cross-entropy + strength * reg.get_regularization_term()
with reg = GammaFlopsRegularizer(model, 1e-2) built once before timing.
After warm-up, the variants are interleaved A,B,A,B,... for --rounds rounds
(each round times --steps steps of each variant), so that drift of the
machine affects both equally. Prints the median step time of each variant,
the median of the per-round ratios B/A and the overhead in % (target <= 2%).
It also times the term and its gradient alone in their own tf.function,
which bounds the extra work independently of step-to-step noise.
The script always exits 0.

Usage:
  python benchmarks/step_overhead.py                          # 224x224, batch 8
  python benchmarks/step_overhead.py --input-size 128 --batch 8 --rounds 10
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..'))

import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top

TARGET_OVERHEAD_PCT = 2.0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--input-size', type=int, default=224,
                      help='H = W of the input (default 224)')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--classes', type=int, default=1000)
  parser.add_argument('--rounds', type=int, default=10,
                      help='interleaved A,B rounds after warm-up')
  parser.add_argument('--steps', type=int, default=1,
                      help='steps of each variant per round')
  parser.add_argument('--warmup', type=int, default=2,
                      help='untimed steps of each variant before timing')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)

  keras.utils.set_random_seed(args.seed)
  shape = (args.input_size, args.input_size, 3)
  model = keras.applications.ResNet50(weights=None, input_shape=shape,
                                      classes=args.classes)
  t0 = time.perf_counter()
  reg = flop_regularizer.GammaFlopsRegularizer(model, gamma_threshold=1e-2)
  cost = float(reg.get_cost())
  t_reg = time.perf_counter() - t0
  strength = 1.0 / cost
  print('ResNet50 input %s batch %d, %d params; GammaFlopsRegularizer built '
        'in %.2f s, cost %.4g FLOPs (tf %s, keras %s, %s CPUs)'
        % (shape, args.batch, model.count_params(), t_reg, cost,
           tf.__version__, keras.__version__, os.cpu_count()), flush=True)

  optimizer = keras.optimizers.SGD(learning_rate=1e-3)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=False)
  weights = model.trainable_variables
  optimizer.build(weights)

  def make_step(with_reg):
    @tf.function(jit_compile=False)
    def step(x, y):
      with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
        if with_reg:
          loss = loss + strength * reg.get_regularization_term()
      grads = tape.gradient(loss, weights)
      optimizer.apply_gradients(zip(grads, weights))
      return loss
    return step

  @tf.function
  def term_only():
    # The extra work of variant B in isolation: the term and its gradient.
    with tf.GradientTape() as tape:
      term = strength * reg.get_regularization_term()
    grads = tape.gradient(term, weights)
    return term, [g for g in grads if g is not None]

  rng = np.random.default_rng(args.seed)
  x = tf.constant(rng.standard_normal((args.batch,) + shape, np.float32))
  y = tf.constant(rng.integers(0, args.classes, (args.batch,)), tf.int32)
  steps = {'A': make_step(False), 'B': make_step(True)}

  def timed(name, n):
    t0 = time.perf_counter()
    for _ in range(n):
      loss = steps[name](x, y)
    float(loss)  # wait for the last step
    return (time.perf_counter() - t0) / n

  for name in ('A', 'B'):
    t0 = time.perf_counter()
    timed(name, 1)
    print('%s: trace + first step %.2f s' % (name, time.perf_counter() - t0),
          flush=True)
    if args.warmup > 1:
      timed(name, args.warmup - 1)

  per = {'A': [], 'B': []}
  ratios = []
  for r in range(args.rounds):
    # Alternate which goes first so neither always follows the other.
    order = ('A', 'B') if r % 2 == 0 else ('B', 'A')
    for name in order:
      per[name].append(timed(name, args.steps))
    ratios.append(per['B'][-1] / per['A'][-1])
    print('round %2d: without %.4f s  with %.4f s  ratio %.4f'
          % (r, per['A'][-1], per['B'][-1], ratios[-1]), flush=True)

  term_only()  # trace
  term_times = []
  for _ in range(max(20, args.rounds)):
    t0 = time.perf_counter()
    term, _ = term_only()
    float(term)
    term_times.append(time.perf_counter() - t0)
  med_term = statistics.median(term_times)

  med_a = statistics.median(per['A'])
  med_b = statistics.median(per['B'])
  med_ratio = statistics.median(ratios)
  overhead = (med_ratio - 1.0) * 100.0
  print()
  print('median step time without regularizer: %.4f s' % med_a)
  print('median step time with regularizer:    %.4f s' % med_b)
  print('ratio of medians: %.4f' % (med_b / med_a))
  print('median of per-round ratios (with/without): %.4f -> overhead %+.2f%%'
        % (med_ratio, overhead))
  print('per-round ratio min %.4f max %.4f' % (min(ratios), max(ratios)))
  print('term + its gradient alone (own tf.function, median of %d): '
        '%.5f s = %.3f%% of the median step without regularizer'
        % (len(term_times), med_term, 100.0 * med_term / med_a))
  print('target: overhead <= %.1f%%: %s'
        % (TARGET_OVERHEAD_PCT,
           'MET' if overhead <= TARGET_OVERHEAD_PCT else 'NOT MET'))
  return 0


if __name__ == '__main__':
  main()
  sys.exit(0)
