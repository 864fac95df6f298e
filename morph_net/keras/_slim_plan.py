"""The slim plan: the channel width of every tensor of a Keras graph.

Computed in pure Python (no Keras calls) from a structure, so that
`slim_model` can rebuild the model and `expand_structure` can evaluate many
candidate widths cheaply. Private to `morph_net.keras`.
"""

import math
import numbers
import warnings

import keras
import numpy as np


def round_count(count, original, round_to):
  """Rounds a nonzero count up to a multiple of round_to (see slim_model)."""
  if count == 0:
    return 0
  rounded = int(math.ceil(count / round_to)) * round_to
  if count <= original:
    rounded = min(rounded, original)
  return rounded


# ---------------------------------------------------------------------------
# The plan: channel widths of every tensor of the original graph, computed in
# pure Python (no Keras calls), so that expansion can evaluate many widths.


CONV_TRANSPOSE = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                   keras.layers.Conv3DTranspose)
SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
DEPTHWISE = tuple(getattr(keras.layers, n) for n in (
    'DepthwiseConv1D', 'DepthwiseConv2D') if hasattr(keras.layers, n))
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_MERGE = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply,
          keras.layers.Average, keras.layers.Maximum, keras.layers.Minimum)
_RESHAPING = (keras.layers.Reshape, keras.layers.Permute,
              keras.layers.RepeatVector)
REMOVED = 'removed'


class TiedCountsError(ValueError):
  """Tensors combined elementwise (e.g. by Add) got different widths.

  Attributes:
    inputs: [(width, names of the prunable layers that set it)] per input.
  """

  def __init__(self, message, inputs):
    super().__init__(message)
    self.inputs = inputs


class Channels:
  """The channels of one tensor: new width, kept old indices, origin."""

  __slots__ = ('width', 'kept', 'origin')

  def __init__(self, width, kept=None, origin=()):
    self.width = int(width)
    self.kept = kept  # None: the first `width` old channels (all if equal).
    self.origin = tuple(origin)  # prunable layers that set this width


def is_depthwise(layer):
  """DepthwiseConv, or a Conv with one input channel per group (groups ==
  input channels, as in ConvNeXt): its output channels follow its input."""
  if isinstance(layer, DEPTHWISE):
    return True
  kernel = getattr(layer, 'kernel', None)
  return (isinstance(layer, _CONV) and getattr(layer, 'groups', 1) > 1
          and kernel is not None and kernel.shape[-2] == 1)


def depth_multiplier(layer):
  """Output channels per input channel of a depthwise(-like) conv."""
  if isinstance(layer, DEPTHWISE):
    return layer.depth_multiplier
  return layer.filters // layer.groups


def width_attr(layer):
  """'filters' or 'units' for prunable layers, else None."""
  if is_depthwise(layer):
    return None
  if isinstance(layer, _CONV + CONV_TRANSPOSE + SEPARABLE):
    return 'filters'
  if isinstance(layer, keras.layers.Dense):
    return 'units'
  return None


def out_width(layer):
  return int(getattr(layer, width_attr(layer)))


def width(tensor):
  return int(tensor.shape[-1])


def expand_multiplier(indices, multiplier):
  """Depthwise output channels of input channels: c -> c*m ... c*m+m-1."""
  indices = np.asarray(indices)
  return (indices[:, None] * multiplier + np.arange(multiplier)).ravel()


def as_functional(model):
  """The functional graph of a functional or Sequential model."""
  if isinstance(model, keras.Sequential):
    functional = getattr(model, '_functional', None)
    if functional is None:
      raise ValueError('Build the Sequential model first (start it with '
                       'keras.Input) so that it has a graph.')
    return functional
  if not hasattr(model, '_nodes_by_depth'):
    raise NotImplementedError(
        'slim_model supports functional and Sequential Keras models; %r is '
        'a subclassed model (%s), whose graph cannot be rebuilt. Write the '
        'model functionally or build it from the counts yourself.'
        % (model.name, type(model).__name__))
  return model


class Plan:
  """The widths of every tensor of `model` under a structure."""

  def __init__(self, model):
    self.model = model
    self.nodes = []
    by_depth = model._nodes_by_depth  # pylint: disable=protected-access
    for depth in sorted(by_depth, reverse=True):
      for node in by_depth[depth]:
        if node.operation is not None and not node.is_input:
          self.nodes.append(node)
    self.info = {}
    self.layer_width = {}
    self.identity = {}  # id(node) -> old tensor it becomes
    self.kept_inputs = {}  # id(node) -> old input tensors that survive
    self.first_node = {}
    self.forced = ()

  def removed(self, tensor):
    return self.info[id(tensor)] is REMOVED

  def kept_of(self, tensor):
    chans = self.info[id(tensor)]
    if chans.kept is None and chans.width == width(tensor):
      return None
    if chans.kept is None:
      return np.arange(chans.width)
    return chans.kept

  @property
  def outputs_removed(self):
    return [x for x in self.model.outputs if self.removed(x)]


def make_plan(model, counts, alive, round_to=1, warn=False):
  """Plans widths, morphing, and the channels kept by weight transfer.

  Zero-count layers remove their branch; when that would remove a model
  output, the layers responsible keep `round_to` channels (warned).
  """
  if not isinstance(round_to, numbers.Integral) or round_to < 1:
    raise ValueError('round_to must be an integer >= 1, got %r.' % round_to)
  layers = {l.name: l for l in model.layers}
  widths = {n: round_count(c, out_width(layers[n]), round_to)
            for n, c in counts.items()}
  plan = _propagate(model, widths, alive, round_to, forced=set())
  if not plan.outputs_removed:
    return plan
  order = {l.name: i for i, l in enumerate(model.layers)}
  zeros = sorted((n for n, w in widths.items() if w == 0),
                 key=order.get, reverse=True)
  forced = set()
  for name in zeros:  # Removing this one alone kills an output.
    others = set(zeros) - {name}
    if _propagate(model, widths, alive, round_to, others).outputs_removed:
      forced.add(name)
  plan = _propagate(model, widths, alive, round_to, forced)
  for name in zeros:  # Removals that only kill an output together.
    if not plan.outputs_removed:
      break
    if name not in forced:
      forced.add(name)
      plan = _propagate(model, widths, alive, round_to, forced)
  if warn:
    for name in sorted(forced, key=order.get):
      warnings.warn(
          'Layer %r has no alive channels but its removal would disconnect '
          'the model output; keeping %d channel(s).'
          % (name, plan.layer_width[name]))
  plan.forced = tuple(sorted(forced, key=order.get))
  return plan


def _propagate(model, widths, alive, round_to, forced):
  plan = Plan(model)
  track = alive is not None
  for x in model.inputs:
    plan.info[id(x)] = Channels(width(x))
  for node in plan.nodes:
    op = node.operation
    if isinstance(op, keras.layers.Layer):
      plan.first_node.setdefault(id(op), node)
    ins = node.input_tensors
    live = [t for t in ins if plan.info[id(t)] is not REMOVED]
    if isinstance(op, (keras.layers.Add, keras.layers.Concatenate)):
      if not live:
        _set(plan, node.outputs, REMOVED)
        continue
      if len(live) == 1 and len(ins) > 1:
        plan.identity[id(node)] = live[0]
        _set(plan, node.outputs, plan.info[id(live[0])])
        continue
      if len(live) < len(ins):
        plan.kept_inputs[id(node)] = live
    elif len(live) < len(ins):
      _set(plan, node.outputs, REMOVED)
      continue
    chans = _node_channels(plan, node, live, widths, alive, round_to,
                           forced, track)
    _set(plan, node.outputs, chans)
  return plan


def _set(plan, tensors, chans):
  for t in tensors:
    plan.info[id(t)] = chans


def _full(plan, tensor):
  chans = plan.info[id(tensor)]
  return chans.kept is None and chans.width == width(tensor)


def _node_channels(plan, node, live, widths, alive, round_to, forced, track):
  """The Channels of a node's outputs (REMOVED for a dead layer)."""
  op = node.operation
  name = getattr(op, 'name', type(op).__name__)
  ins = [plan.info[id(t)] for t in live]
  if width_attr(op) is not None:
    return _prunable(plan, node, widths, alive, round_to, forced, track)
  if is_depthwise(op):
    _check_channels_last(op, not _full(plan, live[0]))
    mult = depth_multiplier(op)
    plan.layer_width[op.name] = ins[0].width * mult
    kept = ins[0].kept
    if track and kept is None:
      kept = np.arange(ins[0].width)
    return Channels(ins[0].width * mult,
                    None if kept is None else expand_multiplier(kept, mult),
                    ins[0].origin)
  if isinstance(op, keras.layers.Flatten):
    if _full(plan, live[0]):
      return Channels(width(node.outputs[0]))
    _check_channels_last(op, True)
    shape = live[0].shape
    positions = int(np.prod(shape[1:-1]))
    kept = ins[0].kept
    if kept is not None:
      kept = (np.arange(positions)[:, None] * shape[-1] + kept).ravel()
    return Channels(positions * ins[0].width, kept, ins[0].origin)
  if isinstance(op, keras.layers.Concatenate) and (
      op.axis in (-1, len(node.outputs[0].shape) - 1)):
    offsets = np.cumsum([0] + [width(t) for t in node.input_tensors])
    offset_of = {id(t): o for t, o in zip(node.input_tensors, offsets)}
    kept = None
    if track or any(c.kept is not None for c in ins):
      kept = np.concatenate([
          offset_of[id(t)] + (np.arange(c.width) if c.kept is None
                              else c.kept) for t, c in zip(live, ins)])
    return Channels(sum(c.width for c in ins), kept,
                    _union(c.origin for c in ins))
  out_w = width(node.outputs[0])
  if all(_full(plan, t) for t in live):
    return Channels(out_w, None, _union(c.origin for t, c in zip(live, ins)
                                        if width(t) == out_w))
  if isinstance(op, keras.layers.Reshape) and (
      width(live[0]) == width(node.outputs[0])):
    # Whole channel vectors move (e.g. (C,) -> (1, 1, C) in squeeze-excite).
    plan.layer_width[op.name] = ins[0].width
    return ins[0]
  if isinstance(op, _RESHAPING):
    raise NotImplementedError(
        'Layer %r (%s) reshapes pruned channels of %s; slim_model cannot '
        'map them. Prune only layers before it or after it.'
        % (name, type(op).__name__, _origin_names(ins)))
  channel_ins = [(t, c) for t, c in zip(live, ins) if width(t) == out_w]
  if len(live) > 1 or isinstance(op, (_MERGE, keras.layers.Concatenate)):
    return _merge(op, name, channel_ins, track)
  has_matrix = any(len(w.shape) > 1 for w in getattr(op, 'weights', []))
  axis = getattr(op, 'axis', -1)
  last_axis = axis in (-1, len(live[0].shape) - 1, [-1],
                       [len(live[0].shape) - 1])
  if len(channel_ins) == 1 and not has_matrix and last_axis:
    return ins[0]  # Channel-wise: BatchNorm, activations, pooling, ...
  raise NotImplementedError(
      'Layer %r (%s) receives pruned channels (from %s) but slim_model does '
      'not know how its channels map. Supported: prunable layers, '
      'depthwise convs, Flatten, merges, and channel-wise layers.'
      % (name, type(op).__name__, _origin_names(ins)))


def _prunable(plan, node, widths, alive, round_to, forced, track):
  op = node.operation
  original = out_width(op)
  new = widths.get(op.name, original)
  kept = None if alive is None else alive.get(op.name)
  if op.name in forced:
    new = round_count(1, original, round_to)
  if new == 0:
    return REMOVED
  if track and kept is not None and len(kept) != new:
    # Rounding or a forced channel: add the first dead channels.
    extra = np.setdiff1d(np.arange(original), kept)[:new - len(kept)]
    kept = np.sort(np.concatenate([kept, extra])).astype(np.int64)
  pruned_in = any(not _full(plan, t) for t in node.input_tensors)
  changed = pruned_in or new != original
  if changed and getattr(op, 'groups', 1) != 1:
    raise NotImplementedError('Layer %r is a grouped convolution (groups=%d);'
                              ' slim_model cannot prune it.'
                              % (op.name, op.groups))
  _check_channels_last(op, changed)
  plan.layer_width[op.name] = new
  return Channels(new, kept, (op.name,) if op.name in widths else ())


def _merge(op, name, channel_ins, track):
  """Tied inputs (Add, Multiply, ...) must agree on their channels."""
  if not channel_ins:
    raise NotImplementedError('Cannot match the channels of the inputs of '
                              'layer %r (%s).' % (name, type(op).__name__))
  counts = sorted({c.width for _, c in channel_ins})
  if len(counts) > 1:
    raise TiedCountsError(
        'Layer %r (%s) combines tensors with different channel counts %s, '
        'set by layers %s. Channels tied by this layer need one count.'
        % (name, type(op).__name__, counts,
           _origin_names([c for _, c in channel_ins])),
        [(c.width, c.origin) for _, c in channel_ins])
  first = channel_ins[0][1]
  if track:
    vectors = [c.kept for _, c in channel_ins]
    if any(v is None for v in vectors):
      vectors = [np.arange(first.width) if v is None else v for v in vectors]
    if any(not np.array_equal(vectors[0], v) for v in vectors[1:]):
      raise ValueError(
          'Layer %r (%s) ties layers %s whose alive channels differ; weights '
          'cannot be transferred.' % (name, type(op).__name__,
                                      _origin_names([c for _, c in
                                                     channel_ins])))
  return Channels(first.width, first.kept,
                  _union(c.origin for _, c in channel_ins))


def _union(origins):
  return tuple(dict.fromkeys(n for origin in origins for n in origin))


def _origin_names(chans):
  names = sorted({n for c in chans for n in c.origin})
  return ', '.join(repr(n) for n in names) or '(unpruned layers)'


def _check_channels_last(layer, pruned):
  if pruned and getattr(layer, 'data_format', None) == 'channels_first':
    raise NotImplementedError(
        'Layer %r uses data_format="channels_first"; slim_model supports '
        'channels_last only.' % layer.name)
