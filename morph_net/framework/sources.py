"""A manager's sources: which it keeps (`regularizer_blacklist`) and the
regularization and alive vectors of their channels."""

import tensorflow as tf

from morph_net.framework import channel_graph


def variable_id(variable):
  """One id for a Keras variable and the backend variable it holds."""
  inner = getattr(variable, 'value', None)
  return id(inner if isinstance(inner, tf.Variable) else variable)


class VectorRegularizer:
  """One source's vectors, as handed to a regularizer_decorator."""

  def __init__(self, regularization_vector, alive_vector):
    self.regularization_vector = regularization_vector
    self.alive_vector = alive_vector


def source_vectors(source_batches, read, decorate=None, size=None):
  """(regularization, alive) of every source channel, float32, in batch order.

  Args:
    source_batches: [(regularizer class, [sources])]: each class computes
      its sources' vectors at once (`batch_vectors`).
    read: source -> the value to read for its variable.
    decorate: optional op regularizer -> op regularizer, applied source by
      source (opt-in; not vectorized); `size(source)` gives its channels.
  """
  regs, alives = [], []
  for cls, sources in source_batches:
    values = [read(s) for s in sources]
    settings = [s.setting for s in sources]
    if getattr(cls, 'takes_variables', False):  # e.g. gates' records
      reg, alive = cls.batch_vectors(values, settings,
                                     [s.param for s in sources])
    else:
      reg, alive = cls.batch_vectors(values, settings)
    regs.append(tf.cast(reg, tf.float32))
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
