"""tf.distribute helpers for the Keras workflow."""

import tensorflow as tf


def in_replica_context(fn):
  """fn() where a tape can watch mirrored variables.

  Under a strategy's scope (cross-replica context) a `GradientTape` cannot
  watch a `MirroredVariable`; fn runs in each replica instead, and since
  every replica computes the same value the first replica's is returned.
  fn must return a list of tensors.
  """
  if not tf.distribute.in_cross_replica_context():
    return fn()
  strategy = tf.distribute.get_strategy()
  results = strategy.run(fn)
  return [strategy.experimental_local_results(r)[0] for r in results]
