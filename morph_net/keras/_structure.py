"""A structure read against the analysis of a model: keys, widths, ties.

`slim_model`, `structure_cost` and `expand_structure` all start here. The
analysis (`OpRegularizerManager` over the traced model, default table, no
sources) is the only source of

- structure keys: `manager.layers()` (plain layer names, or paths such as
  'b1/fc' where names collide);
- ties: two layers are tied where their output channels share channel
  labels (a residual Add, a Multiply, depthwise in/out, concat slices);
- costs: `CostModel(manager, resource).evaluate` over a per-label vector.

A structure sets, for each channel label, how much of it is alive: a layer
slimmed to n of its C channels gives each of its labels n / C (its sum is
then n through any concat, Flatten or depthwise multiplier), or, with alive
vectors, 1 for the alive channels and 0 for the dead ones. Private to
`morph_net.keras`.
"""

import math
import numbers
import warnings

import numpy as np

from morph_net.framework import constraints
from morph_net.framework import keras_trace
from morph_net.framework import op_regularizer_manager as orm
from morph_net.keras import _blocks
from morph_net.keras import _counts
from morph_net.network_regularizers import cost_model

MAX_GROWTH = _counts.MAX_GROWTH
check_count = _counts.check_count
check_round_to = _counts.check_round_to
round_count = _counts.round_count

_CACHE_ATTR = '_morph_net_analyses'  # on the model: {signature: Analysis}


def analysis_of(model, input_signature=None):
  """The `Analysis` of a model, traced once per model and signature.

  `model` may be an `Analysis` already (returned as is), or a Keras model:
  `slim_model`, `structure_cost`, `expand_structure` and `run_cycles` then
  share one trace of it instead of tracing it at every call. (The cache
  lives on the model, outside Keras's tracking, and goes with it.)
  """
  if isinstance(model, Analysis):
    return model
  key = repr(input_signature)
  cache = getattr(model, _CACHE_ATTR, None)
  if cache is None:
    cache = {}
    try:
      object.__setattr__(model, _CACHE_ATTR, cache)
    except (AttributeError, TypeError):
      pass  # an object that takes no attributes: no cache
  if key not in cache:
    cache[key] = Analysis(model, input_signature)
  return cache[key]


class TiedCountsError(ValueError):
  """Layers whose output channels are tied were given inconsistent counts."""


class Analysis:
  """The analysis of a Keras model, seen as its prunable layers.

  Attributes:
    model: the Keras model.
    manager: its `OpRegularizerManager` (default table, no sources),
      traced with `input_signature` if given (a model whose inputs have
      unknown non-batch dims, e.g. a text backbone's sequence length).
    entries: {key: LayerEntry} of the layers whose width a structure sets.
  """

  def __init__(self, model, input_signature=None):
    self.model = model
    self.manager = orm.OpRegularizerManager(model,
                                            input_signature=input_signature)
    self.entries = self.manager.layers()
    self._all_entries = self.manager.layers(include_depthwise=True)
    self.key_of = {id(e.layer): k for k, e in self.entries.items()
                   if e.layer is not None}
    self._order = {k: i for i, k in enumerate(self.entries)}
    # Depthwise layers too (their width follows their input).
    self.any_key_of = {id(e.layer): k for k, e in self._all_entries.items()
                       if e.layer is not None}
    self._any_order = {k: i for i, k in enumerate(self._all_entries)}
    # Label arrays of each output a layer's width sets (one per call).
    self.out_labels = {k: [self.manager.channel_labels(t) for t in e.outputs]
                       for k, e in self.entries.items()}
    self.output_labels = self.manager.output_labels()
    self.input_labels = self.manager.input_labels()
    self._costs = {}
    self._var_ops = None  # id(tf.Variable) -> an analyzed op reading it
    # Narrowed copies of custom layers, by layer and widths (planning
    # builds them to learn their output widths; see _slim_plan._narrowed).
    self.narrowed_cache = {}
    self._quanta = self._tie_groups = self._divisors = None  # lazy

  @property
  def num_labels(self):
    return self.manager.num_labels

  def width(self, key):
    """The layer's width in the model (its output channel count)."""
    return len(self.out_labels[key][0])

  def layer(self, key):
    return self.entries[key].layer

  def is_fixed(self, key):
    """Whether a layer's width is the task's or the data's (its channels
    are tied to the model's outputs or inputs): no structure may name it."""
    return self._tied_to(key, self.output_labels, self.input_labels)

  def _tied_to(self, key, *labels):
    return any(np.isin(l, x).any() for l in self.out_labels[key]
               for x in labels)

  def weight_labels(self, layer):
    """Channel labels of the activation a channel-wise layer (a norm)
    scales: the output of the first analyzed op reading one of its
    weights; None if no such op."""
    if self._var_ops is None:
      self._var_ops = self._ops_scaled_by_variables()
    for w in layer.weights:
      op = self._var_ops.get(id(keras_trace.tf_variable(w)))
      if op is not None:
        return self.manager.channel_labels(op.outputs[0])
    return None

  def leaf_labels(self, layer):
    """(input labels, output labels) of a layer holding weights: those of
    its compute ops (the first one's input, the last one's output), or for
    a channel-wise layer (a norm, a gate) the labels of the activation its
    weights scale, both ways; None where no analyzed op reads its weights.
    """
    key = self.any_key_of.get(id(layer))
    if key is not None:
      computes = self._all_entries[key].computes
      return (self.labels_or_none(computes[0].input),
              self.labels_or_none(computes[-1].output))
    labels = self.weight_labels(layer)
    return None if labels is None else (labels, labels)

  def _ops_scaled_by_variables(self):
    """id(variable) -> the analyzed op with channels whose parameter input
    is computed from it (a BatchNorm's gamma reaches its Mul through
    gamma * rsqrt(variance + eps))."""
    view = self.manager.view
    found = {}
    for op in self.manager.ops:
      if not op.outputs or not self.manager.has_channels(op.outputs[0]):
        continue
      stack, seen = [t for t in op.inputs], 0
      while stack and seen < 16:
        t = stack.pop()
        seen += 1
        var = view.variable(t)
        if var is not None:
          found.setdefault(id(var), op)
        elif not self.manager.has_channels(t):
          stack.extend(t.op.inputs)
    return found

  def quantum(self, key):
    """A layer's count must be a multiple of this (a split into equal
    shares, whole attention heads, a grouped conv's groups; see
    `framework.constraints`)."""
    if self._quanta is None:
      self._quanta = constraints.count_quanta(self.manager,
                                              self.config_divisors())
    return self._quanta.get(key, 1)

  def round_count(self, key, count, round_to=1):
    """A nonzero count rounded up to a multiple of round_to and, for
    round_to > 1, of the layer's quantum (not above its width unless the
    count is). Unrounded counts must be multiples already
    (`check_counts`)."""
    step = round_to if round_to == 1 else math.lcm(round_to, self.quantum(key))
    return round_count(count, self.width(key), step)

  def config_divisors(self):
    """[(tensor, m)]: a block's config requires the tensor's width to be a
    multiple of m (a width rule's `divisible`, e.g. hidden_dim % num_heads
    in an encoder's __init__)."""
    if self._divisors is None:
      self._divisors = [
          (self._all_entries[key].computes[0].input, m) for key, m in
          _blocks.config_divisors(self.model, self.any_key_of)]
    return self._divisors

  def tie_groups(self):
    """Lists of keys whose counts must be equal because one config field
    of their block's width rule sets them all (e.g. SegFormer attention's
    q, k, v and projection: `project_dim`)."""
    if self._tie_groups is None:
      self._tie_groups = [
          sorted(group, key=self.order_index) for group in
          _blocks.config_ties(self.model, self.key_of)]
    return self._tie_groups

  def group_size(self, key):
    """Channels per channel group of a layer: a label standing for several
    of its channels (an attention head: head-size channels) lives or dies
    as a whole, so its counts come in multiples of this; 1 otherwise."""
    _, sizes = np.unique(self.out_labels[key][0], return_counts=True)
    return int(sizes[0]) if len(set(sizes.tolist())) == 1 else 1

  def order_index(self, key):
    """Network order of a prunable layer."""
    return self._order[key]

  def order_of(self, key):
    """Network order of an analyzed layer (depthwise ones included)."""
    return self._any_order[key]

  def compute_of(self, key):
    """The first compute op of an analyzed layer (depthwise included)."""
    return self._all_entries[key].computes[0]

  def labels_or_none(self, tensor):
    if tensor is None or not self.manager.has_channels(tensor):
      return None
    return self.manager.channel_labels(tensor)

  def label_widths(self, key, values):
    """(input, output) widths of an analyzed layer's first compute op
    under per-label widths `values` (see `assign`); None where unknown."""
    compute = self._all_entries[key].computes[0]

    def total(tensor):
      if tensor is None or not self.manager.has_channels(tensor):
        return None
      return int(round(values[self.manager.channel_labels(tensor)].sum()))

    return total(compute.input), total(compute.output)

  # ------------------------------------------------------------ resolve
  def resolve(self, structure):
    """Checks a structure; returns ({key: count}, {key: alive idx} or None).

    Args:
      structure: {key: count or boolean alive vector}, or a network
        regularizer built on the model (its alive vectors are read now).
    """
    if hasattr(structure, 'op_regularizer_manager'):
      structure = _counts.vectors_from_regularizer(structure)
    if not isinstance(structure, dict):
      raise TypeError(
          'structure must be a {layer key: count or alive vector} dict or a '
          'network regularizer, got %s.' % type(structure).__name__)
    self._check_keys(structure)
    counts, alive = {}, {}
    for key, value in structure.items():
      width = self.width(key)
      if isinstance(value, (bool, np.bool_)):
        raise ValueError(
            'Layer %r: %r is neither a count nor an alive vector. Give an '
            'integer count (0..%d), or a boolean vector of its %d channels '
            '(True = alive).' % (key, value, MAX_GROWTH * width, width))
      if isinstance(value, (numbers.Real, str)):
        counts[key] = check_count(key, value, width)
        continue
      vector = np.asarray(value)
      if vector.ndim != 1 or vector.shape[0] != width:
        raise ValueError(
            'Layer %r: an alive vector must be 1-D with %d entries (its '
            'width), got shape %s.' % (key, width, vector.shape))
      if vector.dtype.kind == 'f' and not np.all(np.isfinite(vector)):
        raise ValueError('Layer %r: the alive vector holds NaN or inf.' % key)
      alive[key] = np.flatnonzero(vector.astype(bool))
      counts[key] = len(alive[key])
    if alive and len(alive) != len(counts):
      alive_only = sorted(set(counts) - set(alive), key=self._order.get)
      warnings.warn('Layers given as counts (%s) are treated as keeping '
                    'their first channels.' % ', '.join(alive_only))
      for key in alive_only:
        alive[key] = np.arange(min(counts[key], self.width(key)))
    return counts, (alive or None)

  def check_counts(self, counts, alive=None):
    """Raises unless a slim model exists for these counts (after rounding):
    every analyzed tensor gets a whole number of channels (a split's
    slices, whole attention heads) and layers one config field sets have
    equal counts. Layers given alive vectors keep whichever channels are
    alive, so only pure counts are checked for whole slices. Returns
    `assign(counts)`, which the check computed."""
    values, widths, fixed = self.assign(counts)
    for group in self.tie_groups():
      if len({widths[k] for k in group}) > 1:
        raise TiedCountsError(
            'Layers %s are sized by one config field of their block, so they '
            'need equal widths (a layer not in the structure keeps its '
            'own); they would get %s.' % (
                ', '.join(map(repr, group)),
                ', '.join('%s: %d' % (k, widths[k]) for k in group)))
    for tensor, m in self.config_divisors():
      total = int(round(float(values[self.manager.channel_labels(tensor)]
                              .sum())))
      if total % m:
        raise self._count_error(
            counts, tensor.op.name, self.manager.channel_labels(tensor),
            '%d input channels; its layer\'s block requires a multiple of %d '
            '(a config check such as hidden_dim %% num_heads == 0)'
            % (total, m))
    for op_name, labels in [] if alive else self._tensor_labels():
      total = float(values[labels].sum())
      if abs(total - round(total)) > 1e-6:
        raise self._count_error(
            counts, op_name, labels, '%g channels: it keeps a share of their '
            'channels (a split into parts, whole attention heads, a grouped '
            'convolution\'s groups)' % total)
    return values, widths, fixed

  def _count_error(self, counts, op_name, labels, what):
    """The error for counts giving op `op_name` (`labels`) `what`."""
    keys = [k for k in counts if any(np.isin(l, labels).any()
                                     for l in self.out_labels[k])]
    return ValueError(
        'The counts of %s give op %r %s. Give counts that are multiples of '
        '%s (round_to or expand_structure give such counts).'
        % (', '.join(map(repr, keys)) or 'the structure', op_name, what,
           ', '.join('%d for %r' % (self.quantum(k), k) for k in keys)))

  def _tensor_labels(self):
    """(op name, channel labels) of every analyzed tensor."""
    if getattr(self, '_tensors', None) is None:
      self._tensors = [(op.name, self.manager.channel_labels(t))
                       for op in self.manager.ops for t in op.outputs
                       if self.manager.has_channels(t)]
    return self._tensors

  def _check_keys(self, structure):
    view = self.manager.view
    unknown = [k for k in structure if k not in self.entries]
    missing = [k for k in unknown if view.layer(k) is None]
    ambiguous = {k: [e for e in self.entries if e.endswith('/' + str(k))]
                 for k in missing}
    ambiguous = {k: v for k, v in ambiguous.items() if v}
    if ambiguous:
      raise ValueError(
          'The structure key(s) %s name several layers of model %r; use '
          'their paths: %s.' % (
              ', '.join(map(repr, sorted(ambiguous))), self.model.name,
              ', '.join(e for v in ambiguous.values() for e in v)))
    if missing:
      raise ValueError(
          'The structure names layers that are not in model %r: %s. Keys '
          'are Keras layer names, or paths such as %r where nested layers '
          'share a name; known keys: %s.'
          % (self.model.name, ', '.join(sorted(map(str, missing))),
             'block/fc', ', '.join(list(self.entries)[:20])))
    if unknown:
      depthwise = [k for k in unknown if k in self._all_entries]
      raise ValueError(
          'The structure names layers that are not prunable (only Conv, '
          'ConvTranspose, SeparableConv and Dense are%s): %s.'
          % ('; a depthwise conv follows its input' if depthwise else '',
             ', '.join('%s (%s)' % (k, type(view.layer(k)).__name__)
                       for k in sorted(unknown))))
    fixed = [k for k in structure if self._tied_to(k, self.output_labels)]
    if fixed:
      raise ValueError(
          'The structure names layers that produce the model\'s outputs (or '
          'are tied to them): %s. Their width is the task\'s (e.g. the '
          'number of classes); remove them from the structure.'
          % ', '.join(sorted(fixed, key=self._order.get)))
    inputs = [k for k in structure if self._tied_to(k, self.input_labels)]
    if inputs:
      raise ValueError(
          'The structure names layers whose output channels are tied to '
          'the model\'s inputs or an embedding lookup (e.g. added to them): '
          '%s. Their width is the data\'s or a table\'s; remove them.'
          % ', '.join(sorted(inputs, key=self._order.get)))

  # ------------------------------------------------------ label vectors
  def assign(self, counts, fix=False):
    """Per-label alive fractions for {key: count}, and every layer's width.

    Layers are taken from the narrowest: a layer whose labels are already
    set by narrower ones (a concat of two sliced layers, a tied residual
    member) must agree with them.

    Args:
      counts: {key: count}; layers not named keep their width unless tied
        to a named one.
      fix: resolve disagreements instead of raising: the width set by the
        layers taken first wins (what rounding in expansion needs).

    Returns:
      (label values, {key: width} for every layer, {key: count} as fixed).

    Raises:
      TiedCountsError: tied layers disagree (unless `fix`), or a layer's
        width is left fractional by counts of layers tied to it.
    """
    value = np.ones(self.num_labels)
    setter = np.full(self.num_labels, -1, np.int64)  # index into `keys`
    keys = list(self.entries)
    index = {k: i for i, k in enumerate(keys)}
    fixed = dict(counts)
    for key in sorted(counts, key=lambda k: (self.width(k), self._order[k])):
      for labels in self.out_labels[key]:
        # Per channel: a label may stand for several channels of one layer
        # (a whole attention head), and a count is of channels.
        known = setter[labels] >= 0
        total = value[labels[known]].sum()
        free_channels = labels[~known]
        free = np.unique(free_channels)
        rest = fixed[key] - total
        if (not len(free) and abs(rest) > 1e-6) or rest < -1e-6:
          if not fix:
            others = [keys[i] for i in np.unique(setter[labels[known]])]
            raise TiedCountsError(
                'Layers %s have tied output channels (added, multiplied or '
                'concatenated together), but %r is given %d channels where '
                '%s set %g. Tied layers need consistent counts.' % (
                    ', '.join(repr(k) for k in [key] + others), key,
                    fixed[key], ', '.join(map(repr, others)), total))
          fixed[key] = int(round(total)) if not len(free) else max(
              fixed[key], int(round(total)))
          rest = max(fixed[key] - total, 0.0)
        if len(free):
          value[free] = rest / len(free_channels)
          setter[free] = index[key]
    widths = {}
    for key in keys:
      sums = [value[l].sum() for l in self.out_labels[key]]
      width = sums[0]
      if any(abs(s - round(s)) > 1e-6 or abs(s - width) > 1e-6 for s in sums):
        tied = sorted({keys[i] for l in self.out_labels[key]
                       for i in setter[l] if i >= 0}, key=self._order.get)
        raise TiedCountsError(
            'The counts of %s do not determine the width of layer %r, '
            'whose output channels are tied to theirs (it would get %g). '
            'Give %r a count too.' % (', '.join(map(repr, tied)), key, width,
                                      key))
      widths[key] = int(round(width))
    return value, widths, fixed

  def assign_alive(self, alive):
    """Per-label 0/1 values for {key: alive indices} (all labels of the
    named layers; others stay 1).

    Raises:
      ValueError: tied layers name different alive channels.
    """
    value = np.ones(self.num_labels)
    setter = {}
    for key in sorted(alive, key=self._order.get):
      for labels in self.out_labels[key]:
        state = np.zeros(len(labels))
        state[alive[key]] = 1.0
        for lab, s in zip(labels.tolist(), state.tolist()):
          other = setter.setdefault(lab, (key, s))
          if other[1] != s:
            raise ValueError(
                'Layers %r and %r have tied output channels (added or '
                'multiplied together) but their alive channels differ; the '
                'weights cannot be transferred. Give them the same alive '
                'vector.' % (other[0], key))
        value[labels] = state
    return value

  def final_values(self, widths, removed):
    """Label values of the slim model: surviving layers' widths, and 0 for
    channels only removed layers carried."""
    survivors = {k: w for k, w in widths.items() if k not in removed}
    value, _, _ = self.assign(survivors, fix=True)
    carried = [self.input_labels] + [l for k in survivors
                                     for l in self.out_labels[k]]
    gone = [l for k in removed for l in self.out_labels[k]]
    if gone:
      dead = np.setdiff1d(np.concatenate(gone), np.concatenate(carried))
      value[dead] = 0.0
    return value

  # --------------------------------------------------------------- cost
  def cost(self, values, resource, dropped=(), dead_calls=None):
    """The cost at label `values`; `dropped` layers' ops cost nothing, nor
    do the ops of `dead_calls` {key: call indices} of layers called more
    than once (but their weights, which a kept call still reads)."""
    if resource not in self._costs:
      self._costs[resource] = cost_model.CostModel(self.manager, resource)
    gone = {c.op.name for k in dropped for c in self._all_entries[k].computes}
    if resource != 'model_size':
      gone |= _counts.call_ops(self._all_entries, dead_calls or {})
    per_op = self._costs[resource].per_op(values)
    return float(sum(v for n, v in per_op.items() if n not in gone))

