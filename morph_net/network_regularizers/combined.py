"""Several network regularizers trained at once: a weighted sum of terms.

Use it for two budgets (e.g. FLOPs and model size) or two parts of a model
(one regularizer per part, built with `input_boundary`/`regularizer_blacklist`
or on sub-models):

>>> combined = CombinedRegularizer([(flops_reg, 1 / flops0),
...                                 (size_reg, 1 / size0)])  # doctest: +SKIP
>>> trainer = add_regularizer(model, combined, strength=1.0)  # doctest: +SKIP

`add_regularizer(model, [(reg_a, w_a), (reg_b, w_b)], strength)` builds one
for you. The logs then hold, besides 'loss', the combined cost
('combined_cost', the weighted sum of the parts' costs) and term, and for
each part `<name>` (its cost) and `<name>_term` (its unscaled term); a
part's name is its `cost_name` (e.g. 'FLOPs') unless `names` is given.
"""

import contextlib
import math
import numbers

import tensorflow as tf

__all__ = ['CombinedRegularizer']

COST_NAME = 'combined_cost'
_RESERVED = ('loss', 'regularization_term', COST_NAME, 'strength')


class _SourcesView:
  """The parts' regularizer sources, each variable once.

  What budget tools (`morph_net.keras.budget`: the proximal step, the
  monitor) read from `op_regularizer_manager.sources`. It is not a full
  manager: export structures from each part's own manager.
  """

  def __init__(self, regularizers):
    self._regularizers = regularizers

  @contextlib.contextmanager
  def substituted_sources(self, values):
    """Every part's manager reads `values` for its sources (see
    `OpRegularizerManager.substituted_sources`)."""
    values = list(values)  # read by every part
    managers = {id(r.op_regularizer_manager): r.op_regularizer_manager
                for r in self._regularizers}
    with contextlib.ExitStack() as stack:
      for manager in managers.values():
        stack.enter_context(manager.substituted_sources(values))
      yield

  @property
  def normalized_sources(self):
    """Source ops the parts measure relative to their own scale
    (`normalize`); a source one part measures so and another absolutely
    has no one proximal step: refused."""
    relative, absolute = set(), set()
    for reg in self._regularizers:
      manager = reg.op_regularizer_manager
      mine = getattr(manager, 'normalized_sources', frozenset())
      relative |= set(mine)
      absolute |= {s.op.name for s in manager.sources} - set(mine)
    if relative & absolute:
      raise ValueError(
          'CombinedRegularizer: source %s is measured relative to its own '
          'scale by one part (normalize) and absolutely by another; give '
          'the parts the same normalize.' % sorted(relative & absolute)[0])
    return frozenset(relative)

  @property
  def sources(self):
    seen, out = set(), []
    for reg in self._regularizers:
      for s in reg.op_regularizer_manager.sources:
        if id(s.param) not in seen:
          seen.add(id(s.param))
          out.append(s)
    return out


class CombinedRegularizer:
  """sum_i weight_i x regularizer_i, with each part's cost and term logged.

  Args:
    parts: a list of network regularizers or (regularizer, weight) pairs;
      a weight is a finite number >= 0 (1.0 if not given).
    names: optional list of log keys, one per part; by default each part's
      `cost_name`. Keys must be distinct.

  Raises:
    ValueError: no parts, a bad weight, or duplicate or reserved names
      (e.g. two FLOPs regularizers without `names`).
    TypeError: a part is not a network regularizer (or is itself
      combined: flatten the list instead).
  """

  def __init__(self, parts, names=None):
    if isinstance(parts, CombinedRegularizer) or not isinstance(
        parts, (list, tuple)) or not parts:
      raise ValueError('parts must be a non-empty list of regularizers or '
                       '(regularizer, weight) pairs, got %r.' % (parts,))
    regularizers, weights = [], []
    for i, part in enumerate(parts):
      reg, weight = part if isinstance(part, (list, tuple)) else (part, 1.0)
      if isinstance(reg, CombinedRegularizer):
        raise TypeError('Part %d is itself a CombinedRegularizer: pass its '
                        'parts in one flat list instead.' % i)
      missing = [a for a in ('get_regularization_term', 'get_cost',
                             'cost_name') if not hasattr(reg, a)]
      if missing:
        raise TypeError('Part %d (%s) is not a network regularizer: it has '
                        'no %s.' % (i, type(reg).__name__,
                                    ', '.join(missing)))
      regularizers.append(reg)
      weights.append(_check_weight(i, weight))
    if names is None:
      names = [r.cost_name for r in regularizers]
    names = [str(n) for n in names]
    if len(names) != len(regularizers):
      raise ValueError('names has %d entries for %d parts.'
                       % (len(names), len(regularizers)))
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
      raise ValueError(
          'Parts share the log key%s %s: pass names=[...] with one distinct '
          'name per part (e.g. names=["FLOPs_backbone", "FLOPs_head"]).'
          % ('s' if len(duplicates) > 1 else '', ', '.join(duplicates)))
    reserved = [n for n in names if n in _RESERVED or
                any(n == m + '_term' for m in names)]
    if reserved:
      raise ValueError('Part names %s collide with other log keys (%s, and '
                       '<name>_term of each part).'
                       % (reserved, ', '.join(_RESERVED)))
    self._regularizers = regularizers
    self._weights = weights
    self._names = names
    self._sources = _SourcesView(regularizers)

  @property
  def regularizers(self):
    """The parts, in order."""
    return list(self._regularizers)

  @property
  def weights(self):
    return list(self._weights)

  @property
  def names(self):
    return list(self._names)

  @property
  def name(self):
    return 'Combined(%s)' % ', '.join(self._names)

  @property
  def cost_name(self):
    return COST_NAME

  @property
  def op_regularizer_manager(self):
    """A sources-only view (see `_SourcesView`); not a full manager."""
    return self._sources

  def get_regularization_term(self, ops=None):
    """sum_i weight_i x term_i."""
    return tf.add_n([w * tf.cast(r.get_regularization_term(ops), tf.float32)
                     for r, w in zip(self._regularizers, self._weights)])

  def get_cost(self, ops=None):
    """sum_i weight_i x cost_i (each part's cost is logged on its own), in
    float64 like every regularizer's cost."""
    return tf.add_n([w * tf.cast(r.get_cost(ops), tf.float64)
                     for r, w in zip(self._regularizers, self._weights)])

  def logged_values(self):
    """{name: cost, name + '_term': unscaled term} of every part."""
    out = {}
    for name, reg in zip(self._names, self._regularizers):
      out[name] = tf.cast(reg.get_cost(), tf.float32)
      out[name + '_term'] = tf.cast(reg.get_regularization_term(),
                                    tf.float32)
    return out


def _check_weight(index, weight):
  if (isinstance(weight, bool) or not isinstance(weight, numbers.Real) or
      not math.isfinite(float(weight)) or weight < 0):
    raise ValueError('The weight of part %d must be a finite number >= 0, '
                     'got %r.' % (index, weight))
  return float(weight)
