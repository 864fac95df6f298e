"""A manager's sources: which it keeps (`regularizer_blacklist`) and the
regularization and alive vectors of their channels."""

import numpy as np
import tensorflow as tf

from morph_net.framework import channel_graph
from morph_net.framework import keras_trace


def variable_id(variable):
  """One id for a Keras variable and the backend variable it holds."""
  return id(keras_trace.tf_variable(variable))


class VectorRegularizer:
  """One source's vectors, as handed to a regularizer_decorator."""

  def __init__(self, regularization_vector, alive_vector):
    self.regularization_vector = regularization_vector
    self.alive_vector = alive_vector


def source_vectors(source_batches, read, decorate=None, size=None,
                   relative_plan=None):
  """(regularization, alive) of every source channel, float32, in batch order.

  Args:
    source_batches: [(regularizer class, [sources])]: each class computes
      its sources' vectors at once (`batch_vectors`).
    read: source -> the value to read for its variable.
    decorate: optional op regularizer -> op regularizer, applied source by
      source (opt-in; not vectorized); `size(source)` gives its channels.
    relative_plan: `relative_plans(source_batches, normalized)`, for
      sources measured relative to their own scale (`relative`); None if
      there are none.
  """
  regs, alives = [], []
  for i, (cls, sources) in enumerate(source_batches):
    values = [read(s) for s in sources]
    settings = [s.setting for s in sources]
    if getattr(cls, 'takes_variables', False):  # e.g. gates' records
      reg, alive = cls.batch_vectors(values, settings,
                                     [s.param for s in sources])
    else:
      reg, alive = cls.batch_vectors(values, settings)
    reg = tf.cast(reg, tf.float32)
    if relative_plan and relative_plan[i] is not None:
      reg, alive = relative(reg, alive, relative_plan[i])
    regs.append(reg)
    alives.append(tf.cast(alive, tf.float32))
  reg = tf.concat(regs, 0) if len(regs) > 1 else regs[0]
  alive = tf.concat(alives, 0) if len(alives) > 1 else alives[0]
  if decorate is None:
    return reg, alive
  regs, alives, start = [], [], 0
  for _, sources in source_batches:
    for s in sources:
      n = size(s)
      decorated = decorate(VectorRegularizer(reg[start:start + n],
                                             alive[start:start + n] > 0.5))
      regs.append(tf.cast(decorated.regularization_vector, tf.float32))
      alives.append(tf.cast(decorated.alive_vector, tf.float32))
      start += n
  return tf.concat(regs, 0), tf.concat(alives, 0)


def threshold(source):
  """The alive threshold of a Gamma or group lasso source."""
  setting = source.setting
  return float(setting[0] if isinstance(setting, tuple) else setting)


def relative_plans(source_batches, normalized):
  """Per source batch, what `relative` needs (None for a batch without a
  normalized source): a channel's source index, its flag, its threshold,
  and the number of sources. It depends on the analysis only: computed
  once per manager, not per step."""
  plans = []
  for cls, sources in source_batches:
    if not any(s.op.name in normalized for s in sources):
      plans.append(None)
      continue
    counts = [cls.num_channels(s.param, s.setting) for s in sources]
    plans.append((
        np.repeat(np.arange(len(sources)), counts).astype(np.int32),
        np.repeat([s.op.name in normalized for s in sources], counts),
        np.repeat([threshold(s) if s.op.name in normalized else 0.0
                   for s in sources], counts).astype(np.float32),
        len(sources)))
  return plans


def relative(reg, alive, plan):
  """Vectors of scale-free sources measured in units of their own scale.

  A normalized source's regularization r_c becomes r_c / s, s = RMS of
  its r over its channels, and a channel is alive when r_c / s exceeds the
  threshold. The term is then 0-homogeneous in the source: its gradient
  moves mass between the channels (the smaller ones shrink, the larger
  grow) and never shrinks the layer as a whole, which the loss would not
  resist (with s held constant, an L1 penalty of step 1 / s collapsed
  whole scale-free layers). The loss does not see s (a BatchNorm feeding
  another BatchNorm), so the signal keeps its meaning whatever scale the
  layer drifts to. Other sources pass unchanged.

  Args:
    reg, alive: one batch's concatenated vectors.
    plan: the batch's entry of `relative_plans`.
  """
  ids, flags, limits, num_sources = plan
  mean_square = tf.math.unsorted_segment_mean(tf.square(reg), ids,
                                              num_sources)
  scale = tf.sqrt(mean_square + 1e-24)
  rel = reg / tf.gather(scale, ids)
  return (tf.where(flags, rel, reg),
          tf.where(flags, rel > limits, tf.cast(alive, tf.bool)))


def filter_blacklist(sources, blacklist, view):
  """The sources whose op (or the layer owning their variable) no
  blacklist pattern names.

  Raises:
    ValueError: a pattern matches no source.
  """
  patterns = channel_graph.compile_patterns(blacklist,
                                            'regularizer_blacklist')
  if not patterns:
    return list(sources)
  kept, used = [], set()
  for s in sources:
    names = [s.op.name]
    layer = view.owner_of_variable(s.param)
    if layer:
      names.append(layer)
    hits = [p.pattern for p in patterns if any(p.search(n) for n in names)]
    used.update(hits)
    if not hits:
      kept.append(s)
  unused = [p.pattern for p in patterns if p.pattern not in used]
  if unused:
    raise ValueError(
        'regularizer_blacklist patterns %s match no regularizer source. '
        'Sources are: %s' % (unused, sorted(s.op.name for s in sources)))
  return kept
