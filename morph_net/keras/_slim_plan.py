"""The slim plan: which nodes of a Keras graph survive, and their channels.

Widths and ties come from the analysis (`_structure.Analysis`); the plan only
walks the functional graph (recursing into nested functional and Sequential
models) to decide topology morphing (a zero-width layer removes its branch)
and, for weight transfer, which old channels every tensor keeps. Private to
`morph_net.keras`.
"""

import warnings

import keras
import numpy as np

from morph_net.keras import _blocks
from morph_net.keras import _surgery
from morph_net.keras import _width_rules as rules
from morph_net.keras._structure import check_round_to
from morph_net.keras._structure import round_count

REMOVED = 'removed'
_RESHAPING = (keras.layers.Reshape, keras.layers.Permute,
              keras.layers.RepeatVector)
_DROPS_INPUTS = (keras.layers.Add, keras.layers.Concatenate)


class Channels:
  """The channels of one tensor: new width, kept old indices, origin."""

  __slots__ = ('width', 'kept', 'origin')

  def __init__(self, width, kept=None, origin=()):
    self.width = None if width is None else int(width)
    self.kept = kept  # None: the first `width` old channels (all if equal).
    self.origin = tuple(origin)  # keys of the prunable layers that set it


def width(tensor):
  """The last axis' size; None where it is unknown (e.g. the token ids of
  a text backbone, shape (batch, None)), which no layer prunes."""
  last = tensor.shape[-1] if len(tensor.shape) else 1
  return None if last is None else int(last)


def expand_multiplier(indices, multiplier):
  """Depthwise output channels of input channels: c -> c*m ... c*m+m-1."""
  indices = np.asarray(indices)
  return (indices[:, None] * multiplier + np.arange(multiplier)).ravel()


def is_model(layer):
  return isinstance(layer, keras.Model)


def is_subclassed(model):
  """A Keras 3 model that is neither functional nor Sequential."""
  return (isinstance(model, keras.Model) and
          not isinstance(model, keras.Sequential) and
          not hasattr(model, '_nodes_by_depth'))


def check_keras3(model):
  """Raises the conversion advice for a tf_keras (Keras 2) model."""
  if not isinstance(model, keras.Model):
    as_functional(model)


def as_functional(model):
  """The functional graph of a functional or Sequential Keras 3 model."""
  if not isinstance(model, keras.Model):
    if type(model).__module__.startswith('tf_keras'):
      raise NotImplementedError(
          'slimming supports Keras 3 models; %r is a tf_keras (Keras 2) %s, '
          'which can be analyzed but not slimmed. Convert it: save it from '
          "tf_keras with model.save('model.h5'), load it with Keras 3's "
          "keras.models.load_model('model.h5', compile=False) (built-in "
          'layers convert with their weights; custom layers need Keras 3 '
          'versions) and slim that model.'
          % (getattr(model, 'name', '?'), type(model).__name__))
    raise NotImplementedError(
        'slimming supports Keras 3 models (keras.Model); got %s from %s.'
        % (type(model).__name__, type(model).__module__))
  if isinstance(model, keras.Sequential):
    functional = getattr(model, '_functional', None)
    if functional is None:
      raise ValueError('Build the Sequential model %r first (start it with '
                       'keras.Input) so that it has a graph.' % model.name)
    return functional
  if not hasattr(model, '_nodes_by_depth'):
    raise NotImplementedError(
        'slim_model supports functional and Sequential Keras models; %r is '
        'a subclassed model (%s), whose graph cannot be rebuilt. Write the '
        'model functionally or build it from the counts yourself.'
        % (model.name, type(model).__name__))
  return model


def graph_nodes(functional):
  """The call nodes of a functional model, producers first."""
  nodes = []
  by_depth = functional._nodes_by_depth  # pylint: disable=protected-access
  for depth in sorted(by_depth, reverse=True):
    for node in by_depth[depth]:
      if node.operation is not None and not node.is_input:
        nodes.append(node)
  return nodes


class Plan:
  """What survives of `model` under planned widths.

  Attributes:
    info: id(Keras tensor) -> Channels, or REMOVED.
    identity: id(node) -> the old tensor it becomes (an Add left with one
      input).
    kept_inputs: id(node) -> its surviving inputs (an Add/Concatenate that
      lost some).
    first_node: id(layer) -> its first call node.
    layer_width: id(layer) -> width to set in its config.
    sections: id(node) -> new split sizes of a channel split.
    removed: keys of prunable layers that disappear.
    forced: keys of zero-width layers kept at `round_to` channels.
    blocks: ids of the layers with prunable sublayers (see `_blocks`) that
      are rebuilt by their width rule.
    leaf_width: id(sublayer of such a block) -> its new width.
    block_input: id(block or sub-block) -> its new input width.
  """

  def __init__(self, model):
    self.model = model
    self.info = {}
    self.identity = {}
    self.kept_inputs = {}
    self.first_node = {}
    self.layer_width = {}
    self.sections = {}
    self.removed = set()
    self.seen = set()  # ids of the layers reached as call nodes
    self.forced = ()
    self.blocks = set()
    self.leaf_width = {}
    self.block_input = {}
    self.leaf_input = {}  # id(sublayer) -> its new input width
    self.block_layers = {}  # id(block) -> {id(old): (old, new)} (rebuild)
    self.label_values = None  # per-label widths, for layers inside blocks
    self.alive_values = None  # per-label 0/1 (transfer through blocks)
    self.analysis = None
    self.alive = None
    # id(custom layer) -> (its narrowed copy, surgery record, {id(old):
    # (old, new)} of every layer made for it), see `_surgery`.
    self.narrowed = {}

  def is_removed(self, tensor):
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
    return [x for x in self.model.outputs if self.is_removed(x)]


def make_plan(analysis, widths, alive, round_to=1, warn=False):
  """Plans morphing and kept channels for {key: width} of every layer.

  Zero-width layers remove their branch; when that would remove a model
  output, the layers responsible keep `round_to` channels (warned).
  """
  check_round_to(round_to)
  model = as_functional(analysis.model)
  plan = _propagate(analysis, model, widths, alive, round_to, set())
  if not plan.outputs_removed:
    return plan
  order = {k: i for i, k in enumerate(analysis.entries)}
  zeros = sorted((k for k, w in widths.items() if w == 0),
                 key=order.get, reverse=True)
  forced = set()
  for key in zeros:  # Removing this one alone kills an output.
    others = set(zeros) - {key}
    if _propagate(analysis, model, widths, alive, round_to,
                  others).outputs_removed:
      forced.add(key)
  plan = _propagate(analysis, model, widths, alive, round_to, forced)
  for key in zeros:  # Removals that only kill an output together.
    if not plan.outputs_removed:
      break
    if key not in forced:
      forced.add(key)
      plan = _propagate(analysis, model, widths, alive, round_to, forced)
  plan.forced = tuple(sorted(forced, key=order.get))
  if warn:
    for key in plan.forced:
      warnings.warn(
          'Layer %r has no alive channels but its removal would disconnect '
          'the model output; keeping %d channel(s).'
          % (key, analysis.round_count(key, 1, round_to)))
  return plan


def _propagate(analysis, model, widths, alive, round_to, forced):
  plan = Plan(model)
  plan.analysis, plan.alive = analysis, alive
  plan.label_values = analysis.assign(widths, fix=True)[0]
  for x in model.inputs:
    plan.info[id(x)] = Channels(width(x))
  ctx = (analysis, widths, alive, round_to, forced, alive is not None)
  _walk(plan, model, ctx)
  return plan


def _walk(plan, functional, ctx):
  for node in graph_nodes(functional):
    op = node.operation
    if isinstance(op, keras.layers.Layer):
      plan.first_node.setdefault(id(op), node)
      plan.seen.add(id(op))
    ins = node.input_tensors
    live = [t for t in ins if plan.info[id(t)] is not REMOVED]
    if is_model(op) and not is_subclassed(op) and len(live) == len(ins):
      _nested(plan, node, ctx)
      continue
    if isinstance(op, _DROPS_INPUTS):
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
      key = ctx[0].key_of.get(id(op))
      if key is not None:
        plan.removed.add(key)
      continue
    if _is_channel_split(node):
      for t, chans in zip(node.outputs, _split(plan, node)):
        plan.info[id(t)] = chans
      continue
    chans = _node_channels(plan, node, live, ctx)
    if isinstance(chans, list):  # one per output
      for t, c in zip(node.outputs, chans):
        plan.info[id(t)] = c
    else:
      _set(plan, node.outputs, chans)


def _is_channel_split(node):
  op = node.operation
  rank = len(node.input_tensors[0].shape) if node.input_tensors else 0
  return (type(op).__name__ == 'Split' and hasattr(op, 'indices_or_sections')
          and getattr(op, 'axis', None) in (-1, rank - 1))


def _split(plan, node):
  """A channel split keeps each slice's alive channels (CSP blocks)."""
  x = node.input_tensors[0]
  chans = plan.info[id(x)]
  sizes = [width(t) for t in node.outputs]
  if _full(plan, x):
    return [Channels(s) for s in sizes]
  offsets = np.cumsum([0] + sizes)
  out = []
  labels = _labels_of(plan, chans, width(x))
  if chans.kept is None and labels is not None:
    # counts: each slice keeps the channels its labels hold (a slice tied
    # to another layer, e.g. a CSP block's residual half, has its count).
    for lo, hi in zip(offsets[:-1], offsets[1:]):
      share = float(plan.label_values[labels[lo:hi]].sum())
      if abs(share - round(share)) > 1e-6:
        raise ValueError(
            'Layer(s) %s feed a channel split into %s; a count of %d gives '
            'a slice %g channels. Give counts that split into whole slices '
            '(or alive vectors).' % (_origin_names([chans]), sizes,
                                     chans.width, share))
      out.append(Channels(int(round(share)), None, chans.origin))
  elif chans.kept is None:  # counts: each slice keeps its share
    for s in sizes:
      share = chans.width * s / width(x)
      if share != int(share):
        raise ValueError(
            'Layer(s) %s feed a channel split into %s; a count of %d does '
            'not split into whole shares. Give counts that do (or alive '
            'vectors).' % (_origin_names([chans]), sizes, chans.width))
      out.append(Channels(int(share), None, chans.origin))
  else:
    for lo, hi in zip(offsets[:-1], offsets[1:]):
      kept = chans.kept[(chans.kept >= lo) & (chans.kept < hi)] - lo
      out.append(Channels(len(kept), kept, chans.origin))
  plan.sections[id(node)] = [c.width for c in out]
  return out


def _labels_of(plan, chans, tensor_width):
  """The analysis' channel labels of a tensor that one prunable layer's
  output fills, or None."""
  if len(chans.origin) != 1 or plan.label_values is None:
    return None
  labels = plan.analysis.out_labels[chans.origin[0]][0]
  return labels if len(labels) == tensor_width else None


def _nested(plan, node, ctx):
  """A nested functional/Sequential model: its graph, with the caller's
  channels on its inputs."""
  sub = node.operation
  if sum(1 for n in getattr(sub, '_inbound_nodes', []) if n.input_tensors
         ) > 1:
    raise NotImplementedError(
        'Nested model %r is called more than once; slim_model rebuilds a '
        'nested model once. Call it once, or slim it separately.' % sub.name)
  inner = as_functional(sub)
  for outer, x in zip(node.input_tensors, inner.inputs):
    # A full input stays full where the inner shape is less static (a
    # backbone's token ids (None, None) fed from (None, 8)).
    plan.info[id(x)] = (Channels(width(x)) if _full(plan, outer)
                        else plan.info[id(outer)])
  _walk(plan, inner, ctx)
  for outer, y in zip(node.outputs, inner.outputs):
    plan.info[id(outer)] = plan.info[id(y)]


def _set(plan, tensors, chans):
  for t in tensors:
    plan.info[id(t)] = chans


def _full(plan, tensor):
  chans = plan.info[id(tensor)]
  return chans.kept is None and chans.width == width(tensor)


def _node_channels(plan, node, live, ctx):
  """The Channels of a node's outputs (REMOVED for a dead layer)."""
  analysis = ctx[0]
  op = node.operation
  name = getattr(op, 'name', type(op).__name__)
  ins = [plan.info[id(t)] for t in live]
  key = analysis.key_of.get(id(op))
  if key is not None:
    return _prunable(plan, node, key, ctx)
  if _blocks.is_block(op) or is_subclassed(op):
    return _block(plan, node, live, ctx)
  if rules.is_depthwise(op):
    _check_channels_last(op, not _full(plan, live[0]))
    mult = rules.depth_multiplier(op)
    plan.layer_width[id(op)] = ins[0].width * mult
    kept = ins[0].kept
    if ctx[5] and kept is None:
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
    if ctx[5] or any(c.kept is not None for c in ins):
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
    plan.layer_width[id(op)] = ins[0].width
    return ins[0]
  if isinstance(op, _RESHAPING):
    raise NotImplementedError(
        'Layer %r (%s) reshapes pruned channels of %s; slim_model cannot '
        'map them. Prune only layers before it or after it.'
        % (name, type(op).__name__, _origin_names(ins)))
  # Channels the analysis tied (Add, Multiply, ...) were checked to agree,
  # so a merge takes its first input of the output's width.
  channel_ins = [c for t, c in zip(live, ins) if width(t) == out_w]
  has_matrix = any(len(w.shape) > 1 for w in getattr(op, 'weights', []))
  axis = getattr(op, 'axis', -1)
  last_axis = axis in (-1, len(live[0].shape) - 1, [-1],
                       [len(live[0].shape) - 1])
  if channel_ins and not has_matrix and (len(live) > 1 or last_axis):
    return Channels(channel_ins[0].width, channel_ins[0].kept,
                    _union(c.origin for c in channel_ins))
  raise NotImplementedError(
      'Layer %r (%s) receives pruned channels (from %s) but slim_model does '
      'not know how its channels map. Supported: prunable layers, '
      'depthwise convs, Flatten, merges, nested functional/Sequential '
      'models and channel-wise layers.'
      % (name, type(op).__name__, _origin_names(ins)))


def _prunable(plan, node, key, ctx):
  analysis, widths, alive, round_to, forced, track = ctx
  op = node.operation
  original = analysis.width(key)
  new = widths.get(key, original)
  kept = None if alive is None else alive.get(key)
  if key in forced:
    new = analysis.round_count(key, 1, round_to)
  if new == 0:
    plan.removed.add(key)
    return REMOVED
  if track and kept is not None and len(kept) != new:
    # Rounding or a forced channel: add the first dead channels.
    extra = np.setdiff1d(np.arange(original), kept)[:new - len(kept)]
    kept = np.sort(np.concatenate([kept, extra])).astype(np.int64)
  pruned_in = any(not _full(plan, t) for t in node.input_tensors)
  changed = pruned_in or new != original
  groups = getattr(op, 'groups', 1)
  if changed and groups != 1:
    _check_grouped(plan, node, key, op, new, track)
  if changed and rules.width_field(op) is None:
    raise NotImplementedError(
        'Layer %r (%s) is prunable in the analysis, but slim_model has no '
        'width rule for its class. Register one with morph_net.keras.'
        'register_width_rule(%s, config_field).'
        % (key, type(op).__name__, type(op).__name__))
  _check_channels_last(op, changed)
  plan.layer_width[id(op)] = new
  return Channels(new, kept, (key,))


def _block(plan, node, live, ctx):
  """A layer with prunable sublayers: rebuilt by its width rule when its
  input or a sublayer's width changes."""
  analysis, widths, alive, round_to, forced, _ = ctx
  op = node.operation
  subs = _blocks.leaves(op)
  plan.seen.update(id(s) for s in subs)
  keys = {id(s): analysis.key_of[id(s)] for s in subs
          if id(s) in analysis.key_of}

  def new_width(key):
    if key in forced:
      return analysis.round_count(key, 1, round_to)
    return widths.get(key, analysis.width(key))

  changed = [k for k in keys.values() if new_width(k) != analysis.width(k)]
  out_w = width(node.outputs[0])
  if not changed and all(_full(plan, t) for t in live):
    return Channels(out_w)
  _blocks.check_no_zero(op, [k for k in keys.values() if new_width(k) == 0])
  rule = rules.block_rule(op)
  if rule is None:  # narrowed in place: its own code is kept
    return _narrowed(plan, node, analysis, tuple(keys.values()))
  plan.blocks.add(id(op))
  _blocks.check_rules(op, lambda s: new_width(keys[id(s)]) if id(s) in keys
                      else None)  # whole heads, agreeing fields: fail here
  order = {}
  for s in subs:
    key = analysis.any_key_of.get(id(s))
    if key is None:
      continue
    order[id(s)] = analysis.order_of(key)
    w_in, w_out = analysis.label_widths(key, plan.label_values)
    plan.leaf_width[id(s)] = new_width(key) if key in analysis.entries \
        else w_out
    plan.leaf_input[id(s)] = w_in
  plan.block_input.update(_blocks.input_widths(op, order, plan.leaf_input))
  if live and live[0] is node.input_tensors[0]:
    plan.block_input[id(op)] = plan.info[id(live[0])].width
  if rule.output == 'input':
    if width(live[0]) != out_w:
      raise NotImplementedError(
          'The width rule of %s says its output channels are its input\'s, '
          'but layer %r maps %s channels to %s.'
          % (type(op).__name__, op.name, width(live[0]), out_w))
    return plan.info[id(live[0])]
  sub = _blocks.output_sublayer(op, rule)
  key = keys.get(id(sub))
  if key is None:
    if id(sub) in plan.leaf_width:
      return Channels(plan.leaf_width[id(sub)])
    return Channels(out_w)
  new = new_width(key)
  kept = None if alive is None else alive.get(key)
  if kept is not None and len(kept) != new:
    extra = np.setdiff1d(np.arange(analysis.width(key)), kept)
    kept = np.sort(np.concatenate([kept, extra[:new - len(kept)]])).astype(
        np.int64)
  return Channels(new, kept, (key,))


def leaf_shape(analysis, values, layer):
  """(new input width, new output width) of a weighted leaf under
  per-label widths `values`, or None where both are unchanged or not
  known from the analysis (its weights feed no analyzed op)."""
  labels = analysis.leaf_labels(layer)
  if labels is None:
    return None
  in_labels, out_labels = labels
  shape = tuple(None if l is None else int(round(values[l].sum()))
                for l in (in_labels, out_labels))
  original = tuple(None if l is None else len(l) for l in labels)
  return None if shape == original else shape


def _narrowed(plan, node, analysis, keys):
  """A custom layer without a width rule: a copy whose weighted sublayers
  are narrowed (`_surgery`); its output width is what its own code makes
  of them."""
  op = node.operation
  values = plan.label_values
  shapes = {id(s): leaf_shape(analysis, values, s)
            for s in _blocks.leaves(op) if s.weights}
  signature = tuple(sorted((k, v) for k, v in shapes.items()
                           if v is not None))
  new_inputs = {}
  for t in node.input_tensors:
    chans = plan.info[id(t)]
    new_inputs[id(t)] = keras.KerasTensor(
        tuple(t.shape[:-1]) + (chans.width,), dtype=t.dtype)
  in_sig = tuple(new_inputs[id(t)].shape for t in node.input_tensors)
  cache = analysis.narrowed_cache
  key = (id(op), signature, in_sig)
  if key not in cache:
    made = {}
    new, record = _surgery.slim_copy(
        op, lambda s: shapes.get(id(s)), _blocks.clone_leaf, made)
    args, kwargs = node.arguments.fill_in(new_inputs)
    try:
      spec = new.compute_output_spec(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      raise NotImplementedError(
          'slim_model: custom layer %r (%s) fails when its sublayers are '
          'narrowed (%s: %s). Its call reads a width from its config (e.g. '
          'a head count or a reshape): register a width rule for it '
          '(morph_net.keras.register_width_rule), or leave its sublayers '
          'out of the structure.' % (op.name, type(op).__name__,
                                     type(e).__name__, e)) from e
    cache[key] = (new, record, made, keras.tree.flatten(spec))
  new, record, made, specs = cache[key]
  plan.narrowed[id(op)] = (new, record, made)
  if len(specs) != len(node.outputs):
    raise NotImplementedError(
        'slim_model: custom layer %r returns %d tensors where the model '
        'used %d.' % (op.name, len(specs), len(node.outputs)))
  chans = [Channels(width(spec), None, keys) for spec in specs]
  return chans if len(chans) > 1 else chans[0]


def _check_grouped(plan, node, key, op, new, track):
  """A grouped conv keeps its group count: both widths must divide by it.

  Its cost (and the analysis') is in x out / groups, which the slim conv
  has exactly when every group keeps the same number of channels.
  """
  groups = op.groups
  width_in = plan.info[id(node.input_tensors[0])].width
  if new % groups or width_in % groups:
    raise ValueError(
        'Layer %r is a grouped convolution (groups=%d); the slim layer keeps '
        'its %d groups, so its output width (%d) and input width (%d) must '
        'be multiples of %d. Use counts that are, or round_to=%d.'
        % (key, groups, groups, new, width_in, groups, groups))
  if track:
    raise NotImplementedError(
        'Layer %r is a grouped convolution (groups=%d) whose widths change; '
        'weight transfer through it is not supported (each group would need '
        'the same surviving channels). Slim from counts and retrain.'
        % (key, groups))


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
