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

from morph_net.framework import shapes
from morph_net.keras import _blocks
from morph_net.keras import _plan_blocks
from morph_net.keras._keras_graph import Channels
from morph_net.keras._keras_graph import REMOVED
from morph_net.keras._keras_graph import as_functional
from morph_net.keras._keras_graph import check_keras3  # pylint: disable=unused-import (re-exported)
from morph_net.keras._keras_graph import expand_multiplier
from morph_net.keras._keras_graph import full
from morph_net.keras._keras_graph import graph_nodes
from morph_net.keras._keras_graph import is_model
from morph_net.keras._keras_graph import is_subclassed
from morph_net.keras._keras_graph import origin_names
from morph_net.keras._keras_graph import union_origins
from morph_net.keras._keras_graph import width
from morph_net.keras._plan_blocks import leaf_shape  # pylint: disable=unused-import (re-exported)
from morph_net.keras import _width_rules as rules
from morph_net.keras._structure import check_round_to

_RESHAPING = (keras.layers.Reshape, keras.layers.Permute,
              keras.layers.RepeatVector)
_DROPS_INPUTS = (keras.layers.Add, keras.layers.Concatenate)


def _concat_on_channels(node):
  op = node.operation
  return isinstance(op, keras.layers.Concatenate) and op.axis in (
      -1, len(node.outputs[0].shape) - 1)


def _drops_inputs(node):
  """Whether a removed input can leave the node: an Add, or a Concatenate
  along the channel axis (along another axis the output's shape, and what
  reads it, would change)."""
  if isinstance(node.operation, keras.layers.Concatenate):
    return _concat_on_channels(node)
  return isinstance(node.operation, _DROPS_INPUTS)


class Plan:
  """What survives of `model` under planned widths.

  Attributes:
    info: id(Keras tensor) -> Channels, or REMOVED.
    identity: id(node) -> the old tensor it becomes (an Add left with one
      input).
    kept_inputs: id(node) -> its surviving inputs (an Add/Concatenate that
      lost some).
    layer_width: id(layer) -> width to set in its config.
    sections: id(node) -> new split sizes of a channel split.
    removed: keys of prunable layers that disappear: zero-width ones,
      those a removed branch takes along, and those no model output reads
      any more (their only consumers disappeared; the rebuild, from the
      outputs back, leaves them out).
    dropped: keys of every analyzed layer that disappears (depthwise ones
      too): their ops cost nothing in the slim model.
    dead_calls: key -> (its number of calls, the positions per example of
      each call that disappears) for a layer called more than once that
      keeps some calls.
    calls: id(layer) -> its call nodes, in walk order (`first_node`).
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
    self.layer_width = {}
    self.sections = {}
    self.removed = set()
    self.dropped = set()
    self.dead_calls = {}
    self.calls = {}
    self.cut = set()  # keys of layers with a call that lost an input
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

  def first_node(self, layer_id):
    """The first call node of the layer with this id, or None."""
    calls = self.calls.get(layer_id)
    return calls[0] if calls else None

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
  # Per-label widths depend on `widths` only, not on which removals are
  # forced: computed once for every pass.
  values = analysis.assign(widths, fix=True)[0]
  plan = _propagate(analysis, model, widths, values, alive, round_to, set())
  if not plan.outputs_removed:
    return _drop_dead_ends(plan, analysis, widths, warn)
  order = {k: i for i, k in enumerate(analysis.entries)}
  zeros = sorted((k for k, w in widths.items() if w == 0),
                 key=order.get, reverse=True)
  forced = set()
  for key in zeros:  # Removing this one alone kills an output.
    others = set(zeros) - {key}
    if _propagate(analysis, model, widths, values, alive, round_to,
                  others).outputs_removed:
      forced.add(key)
  plan = _propagate(analysis, model, widths, values, alive, round_to, forced)
  for key in zeros:  # Removals that only kill an output together.
    if not plan.outputs_removed:
      break
    if key not in forced:
      forced.add(key)
      plan = _propagate(analysis, model, widths, values, alive, round_to,
                        forced)
  plan.forced = tuple(sorted(forced, key=order.get))
  if warn:
    for key in plan.forced:
      warnings.warn(
          'Layer %r has no alive channels but its removal would disconnect '
          'the model output; keeping %d channel(s).'
          % (key, analysis.round_count(key, 1, round_to)))
  return _drop_dead_ends(plan, analysis, widths, warn)


def _drop_dead_ends(plan, analysis, widths, warn):
  """Adds to `plan.removed` / `plan.dropped` the layers no surviving model
  output reads: walking back from the outputs over surviving tensors (a
  used nested model: from all its surviving outputs, as it is rebuilt
  whole)."""
  used, used_nodes = set(), set()
  _walk_back(plan, plan.model, used, used_nodes)
  dead = plan.seen - used
  dead = _with_sublayers(plan, dead) - _with_sublayers(plan, used)
  dead_ends = {k for i, k in analysis.key_of.items() if i in dead} - (
      plan.removed)
  if warn:
    for key in sorted(k for k in dead_ends if widths.get(k)):
      warnings.warn(
          'Layer %r (%d channels) is left out of the slim model: only '
          'removed layers read it.' % (key, widths[key]))
  plan.removed |= dead_ends
  plan.dropped = plan.removed | {k for i, k in analysis.any_key_of.items()
                                 if i in dead}
  for i, key in analysis.any_key_of.items():  # a shared layer's dead calls
    calls = plan.calls.get(i, ())
    gone = [shapes.positions(list(n.outputs[0].shape)) for n in calls
            if id(n) not in used_nodes]
    if gone and key not in plan.dropped:
      plan.dead_calls[key] = (len(calls), gone)
  return plan


def _walk_back(plan, functional, used, used_nodes):
  needed = {id(t) for t in functional.outputs if not plan.is_removed(t)}
  for node in reversed(graph_nodes(functional)):
    if not any(id(t) in needed for t in node.outputs):
      continue
    op = node.operation
    used.add(id(op))
    used_nodes.add(id(node))
    if id(node) in plan.identity:
      ins = [plan.identity[id(node)]]
    else:
      ins = plan.kept_inputs.get(id(node), node.input_tensors)
    needed |= {id(t) for t in ins if not plan.is_removed(t)}
    if is_model(op) and not is_subclassed(op):
      _walk_back(plan, as_functional(op), used, used_nodes)


def _with_sublayers(plan, layer_ids):
  """The ids and, recursively, the ids of the layers' sublayers."""
  out = set(layer_ids)
  for i in layer_ids:
    node = plan.first_node(i)
    flatten = getattr(getattr(node, 'operation', None), '_flatten_layers',
                      None)
    if flatten is not None:
      out |= {id(l) for l in flatten(include_self=False, recursive=True)}
  return out


def _propagate(analysis, model, widths, values, alive, round_to, forced):
  plan = Plan(model)
  plan.analysis, plan.alive = analysis, alive
  plan.label_values = values
  for x in model.inputs:
    plan.info[id(x)] = Channels(width(x))
  ctx = (analysis, widths, alive, round_to, forced, alive is not None)
  _walk(plan, model, ctx)
  for key in plan.cut:  # removed when every call lost an input
    if all(plan.is_removed(t) for n in plan.calls[id(analysis.layer(key))]
           for t in n.outputs):
      plan.removed.add(key)
  return plan


def _walk(plan, functional, ctx):
  for node in graph_nodes(functional):
    op = node.operation
    if isinstance(op, keras.layers.Layer):
      plan.seen.add(id(op))
      plan.calls.setdefault(id(op), []).append(node)
    ins = node.input_tensors
    live = [t for t in ins if plan.info[id(t)] is not REMOVED]
    if is_model(op) and not is_subclassed(op) and len(live) == len(ins):
      _nested(plan, node, ctx)
      continue
    if _drops_inputs(node):
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
        plan.cut.add(key)
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
  if full(plan, x):
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
            '(or alive vectors).' % (origin_names([chans]), sizes,
                                     chans.width, share))
      out.append(Channels(int(round(share)), None, chans.origin))
  elif chans.kept is None:  # counts: each slice keeps its share
    for s in sizes:
      share = chans.width * s / width(x)
      if share != int(share):
        raise ValueError(
            'Layer(s) %s feed a channel split into %s; a count of %d does '
            'not split into whole shares. Give counts that do (or alive '
            'vectors).' % (origin_names([chans]), sizes, chans.width))
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
    plan.info[id(x)] = (Channels(width(x)) if full(plan, outer)
                        else plan.info[id(outer)])
  _walk(plan, inner, ctx)
  for outer, y in zip(node.outputs, inner.outputs):
    plan.info[id(outer)] = plan.info[id(y)]


def _set(plan, tensors, chans):
  for t in tensors:
    plan.info[id(t)] = chans


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
    return _plan_blocks.block(plan, node, live, ctx)
  if rules.is_depthwise(op):
    _check_channels_last(op, not full(plan, live[0]))
    mult = rules.depth_multiplier(op)
    plan.layer_width[id(op)] = ins[0].width * mult
    kept = ins[0].kept
    if ctx[5] and kept is None:
      kept = np.arange(ins[0].width)
    return Channels(ins[0].width * mult,
                    None if kept is None else expand_multiplier(kept, mult),
                    ins[0].origin)
  if isinstance(op, keras.layers.Flatten):
    if full(plan, live[0]):
      return Channels(width(node.outputs[0]))
    _check_channels_last(op, True)
    shape = live[0].shape
    positions = shapes.positions(shape)
    kept = ins[0].kept
    if kept is not None:
      kept = (np.arange(positions)[:, None] * shape[-1] + kept).ravel()
    return Channels(positions * ins[0].width, kept, ins[0].origin)
  if _concat_on_channels(node):
    offsets = np.cumsum([0] + [width(t) for t in node.input_tensors])
    offset_of = {id(t): o for t, o in zip(node.input_tensors, offsets)}
    kept = None
    if ctx[5] or any(c.kept is not None for c in ins):
      kept = np.concatenate([
          offset_of[id(t)] + (np.arange(c.width) if c.kept is None
                              else c.kept) for t, c in zip(live, ins)])
    return Channels(sum(c.width for c in ins), kept,
                    union_origins(c.origin for c in ins))
  out_w = width(node.outputs[0])
  if all(full(plan, t) for t in live):
    return Channels(out_w, None, union_origins(
        c.origin for t, c in zip(live, ins) if width(t) == out_w))
  if isinstance(op, keras.layers.Reshape) and (
      width(live[0]) == width(node.outputs[0])):
    # Whole channel vectors move (e.g. (C,) -> (1, 1, C) in squeeze-excite).
    plan.layer_width[id(op)] = ins[0].width
    return ins[0]
  if isinstance(op, _RESHAPING):
    raise NotImplementedError(
        'Layer %r (%s) reshapes pruned channels of %s; slim_model cannot '
        'map them. Prune only layers before it or after it.'
        % (name, type(op).__name__, origin_names(ins)))
  # Channels the analysis tied (Add, Multiply, ...) were checked to agree,
  # so a merge takes its first input of the output's width.
  channel_ins = [c for t, c in zip(live, ins) if width(t) == out_w]
  # A weight over more than the channels (a channel vector such as
  # PReLU's alpha with shared_axes=[1, 2], (1, 1, C), is not).
  has_matrix = any(len(w.shape) > 1 and any(d != 1 for d in w.shape[:-1])
                   for w in getattr(op, 'weights', []))
  axis = getattr(op, 'axis', -1)
  last_axis = axis in (-1, len(live[0].shape) - 1, [-1],
                       [len(live[0].shape) - 1])
  if channel_ins and not has_matrix and (len(live) > 1 or last_axis):
    return Channels(channel_ins[0].width, channel_ins[0].kept,
                    union_origins(c.origin for c in channel_ins))
  raise NotImplementedError(
      'Layer %r (%s) receives pruned channels (from %s) but slim_model does '
      'not know how its channels map. Supported: prunable layers, '
      'depthwise convs, Flatten, merges, nested functional/Sequential '
      'models and channel-wise layers (weights of shape (C,) or (1, ..., '
      '1, C)).'
      % (name, type(op).__name__, origin_names(ins)))


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
  pruned_in = any(not full(plan, t) for t in node.input_tensors)
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


def _check_grouped(plan, node, key, op, new, track):
  """A grouped conv keeps its group count: both widths must divide by it.

  Its cost (and the analysis') is in x out / groups, which the slim conv
  has exactly when every group keeps the same number of channels.
  """
  groups = op.groups
  width_in = plan.info[id(node.input_tensors[0])].width
  if track:  # (first: the advice below does not apply to a transfer)
    raise NotImplementedError(
        'Layer %r is a grouped convolution (groups=%d) whose widths change; '
        'weight transfer through it is not supported (each group would need '
        'the same surviving channels). Slim from counts and retrain.'
        % (key, groups))
  if new % groups or width_in % groups:
    raise ValueError(
        'Layer %r is a grouped convolution (groups=%d); the slim layer keeps '
        'its %d groups, so its output width (%d) and input width (%d) must '
        'be multiples of %d. Use counts that are, or round_to=%d.'
        % (key, groups, groups, new, width_in, groups, groups))


def _check_channels_last(layer, pruned):
  if pruned and getattr(layer, 'data_format', None) == 'channels_first':
    raise NotImplementedError(
        'Layer %r uses data_format="channels_first"; slim_model supports '
        'channels_last only.' % layer.name)
