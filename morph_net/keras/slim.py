"""From a learned structure to a slim Keras 3 model.

`slim_model(model, structure)` rebuilds a functional (or Sequential) Keras
model with each prunable layer's width set to its alive channel count:

- prunable layers: Conv1D/2D/3D, Conv1D/2D/3DTranspose, Dense and
  SeparableConv1D/2D (the pointwise width); `filters`/`units` are rewritten.
- every other layer follows: BatchNormalization, DepthwiseConv, Flatten,
  pooling, Add/Concatenate, ... get their widths from the rebuilt graph.
- topology morphing: a layer with 0 alive channels removes its branch. A
  residual branch collapses to its shortcut (an Add left with one input is
  dropped), a Concatenate input disappears; any other layer fed by a removed
  tensor (e.g. a Multiply) is removed too. Where nothing would be left (the
  main chain) one channel is kept and a warning names the layer. A removed
  branch's constant contribution (e.g. a BatchNorm shift after a dead conv)
  is dropped with it.
- `transfer_weights=True` copies the surviving channels' weights (kernels
  sliced on both channel axes, biases, BatchNorm statistics, depthwise
  kernels, the rows of a Dense after Flatten).

Layer names are kept, so a structure's keys stay valid on the slim model.
Channels are assumed on the last axis (`channels_last`). Subclassed models
and nested models whose inner layers are pruned are not supported.

Example:

```python
reg = flop_regularizer.GammaFlopsRegularizer(model, gamma_threshold=1e-2)
# ... train ...
slim = morph_net.keras.slim_model(model, reg, transfer_weights=True)
# or from the exported JSON:
slim = morph_net.keras.slim_model(model, json.load(open(path)), round_to=8)
```
"""

import math
import numbers
import warnings

import keras
import numpy as np

from morph_net.tools import structure_exporter


__all__ = ['slim_model', 'resolve_structure']



def slim_model(model, structure, transfer_weights=False, round_to=1):
  """Builds the model with the channel counts of `structure`.

  Args:
    model: a functional or Sequential Keras 3 model.
    structure: {layer name: alive channel count} (the exporter's JSON),
      {layer name: boolean alive vector}, or a network regularizer built on
      `model` (its alive channels are read now). Layers not named keep
      their width; counts may exceed the original width (expansion).
    transfer_weights: copy the weights of the surviving channels; needs
      alive vectors (a regularizer or a dict of boolean vectors).
    round_to: round every nonzero count up to a multiple of it (at least
      `round_to`; never above the original width unless the count already
      is). With transfer, the added channels are the first dead ones.

  Returns:
    A new functional `keras.Model` with the same layer names.

  >>> inputs = keras.Input((4,))
  >>> hidden = keras.layers.Dense(8, name='hidden')(inputs)
  >>> model = keras.Model(inputs, keras.layers.Dense(2, name='out')(hidden))
  >>> slim_model(model, {'hidden': 3}).get_layer('hidden').units
  3
  >>> slim_model(model, {'hidden': 3}, round_to=4).get_layer('hidden').units
  4

  Raises:
    ValueError: unknown or non-prunable layer names, invalid counts, tied
      layers (outputs added together) given different counts, or transfer
      requested from counts only.
    NotImplementedError: a subclassed model; a pruned tensor reaches a
      layer whose channel mapping is unknown (e.g. a Reshape that splits
      channels); a grouped or channels_first conv.
  """
  functional = as_functional(model)
  counts, alive = resolve_structure(functional, structure)
  if transfer_weights and alive is None:
    raise ValueError(
        'transfer_weights=True needs to know which channels are alive: pass '
        'the network regularizer or a {layer name: boolean vector} dict, '
        'not alive counts.')
  plan = make_plan(functional, counts, alive, round_to, warn=True)
  new_model, new_layers = _build(functional, plan)
  if transfer_weights:
    _transfer(functional, plan, new_layers)
  return new_model


def resolve_structure(model, structure):
  """Reads a structure into ({name: count}, {name: alive indices} or None).

  Args:
    model: the functional model the structure refers to.
    structure: see `slim_model`.
  """
  if hasattr(structure, 'op_regularizer_manager'):
    structure = _vectors_from_regularizer(structure)
  if not isinstance(structure, dict):
    raise TypeError(
        'structure must be a {layer name: count or alive vector} dict or a '
        'network regularizer, got %s.' % type(structure).__name__)
  layers = {l.name: l for l in model.layers}
  unknown = sorted(k for k in structure if k not in layers)
  if unknown:
    raise ValueError(
        'The structure names layers that are not in model %r: %s. Build '
        'the regularizer on this model (keys are Keras layer names).'
        % (model.name, ', '.join(unknown)))
  not_prunable = sorted(k for k in structure
                        if width_attr(layers[k]) is None)
  if not_prunable:
    raise ValueError(
        'The structure names layers that are not prunable (only Conv, '
        'ConvTranspose, SeparableConv and Dense are): %s.'
        % ', '.join('%s (%s)' % (k, type(layers[k]).__name__)
                    for k in not_prunable))
  counts, alive = {}, {}
  for name, value in structure.items():
    width = out_width(layers[name])
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
      if value < 0 or value != int(value):
        raise ValueError('Layer %r: a count must be an integer >= 0, got %r.'
                         % (name, value))
      counts[name] = int(value)
      continue
    vector = np.asarray(value)
    if vector.ndim != 1 or vector.shape[0] != width:
      raise ValueError(
          'Layer %r: an alive vector must be 1-D with %d entries (its '
          'width), got shape %s.' % (name, width, vector.shape))
    alive[name] = np.flatnonzero(vector.astype(bool))
    counts[name] = len(alive[name])
  if alive and len(alive) != len(counts):
    alive_only = sorted(set(counts) - set(alive))
    warnings.warn('Layers given as counts (%s) are treated as keeping '
                  'their first channels.' % ', '.join(alive_only))
    for name in alive_only:
      alive[name] = np.arange(min(counts[name], out_width(layers[name])))
  return counts, (alive or None)


def _vectors_from_regularizer(regularizer):
  manager = regularizer.op_regularizer_manager
  if not manager.view.eager:
    raise ValueError('slim_model needs a regularizer built on a Keras '
                     'model, not on tf.compat.v1 graph ops.')
  exporter = structure_exporter.StructureExporter(manager)
  return {k: np.asarray(v) for k, v in exporter.tensors.items()}


def _clone(layer, width):
  config = layer.get_config()
  attr = width_attr(layer)
  if attr is not None and width is not None:
    config[attr] = int(width)
  if isinstance(layer, keras.layers.Reshape) and width is not None:
    config['target_shape'] = tuple(config['target_shape'][:-1]) + (
        int(width),)
  return type(layer).from_config(config)


def _build(model, plan):
  """Calls fresh copies of the layers along the planned graph."""
  # pylint: disable=protected-access  (Keras 3 functional graph internals)
  tensors = {}
  new_inputs = []
  for x in model.inputs:
    new_x = keras.Input(batch_shape=x.shape, dtype=x.dtype,
                        name=x._keras_history.operation.name)
    tensors[id(x)] = new_x
    new_inputs.append(new_x)
  new_layers = {}
  for node in plan.nodes:
    op = node.operation
    if any(plan.removed(t) for t in node.outputs):
      continue
    if id(node) in plan.identity:
      tensors[id(node.outputs[0])] = tensors[id(plan.identity[id(node)])]
      continue
    if isinstance(op, keras.layers.Layer):
      if id(op) not in new_layers:
        new_layers[id(op)] = (op, _clone(op, plan.layer_width.get(op.name)))
      new_op = new_layers[id(op)][1]
    else:
      new_op = op  # A stateless keras.ops operation: reuse it.
    if id(node) in plan.kept_inputs:
      # An Add/Concatenate that lost inputs to topology morphing.
      args = ([tensors[id(t)] for t in plan.kept_inputs[id(node)]],)
      kwargs = {}
    else:
      args, kwargs = node.arguments.fill_in(tensors)
    outputs = keras.tree.flatten(new_op(*args, **kwargs))
    for old, new in zip(node.outputs, outputs):
      tensors[id(old)] = new
  outputs = [tensors[id(x)] for x in model.outputs]
  new_model = keras.Model(
      keras.tree.pack_sequence_as(model._inputs_struct, new_inputs),
      keras.tree.pack_sequence_as(model._outputs_struct, outputs),
      name=model.name)
  return new_model, new_layers


def _take(array, indices, axis):
  if indices is None:
    return array
  return np.take(array, indices, axis=axis)


def _transfer(model, plan, new_layers):
  """Copies the surviving channels' weights into the slim model."""
  del model
  for old, new in new_layers.values():
    if not old.weights:
      continue
    node = plan.first_node[id(old)]
    in_idx = plan.kept_of(node.input_tensors[0]) if node.input_tensors else None
    out_idx = plan.kept_of(node.outputs[0])
    in_width = width(node.input_tensors[0]) if node.input_tensors else None
    values = [np.asarray(w) for w in old.get_weights()]
    names = [w.path.split('/')[-1] for w in old.weights]
    new_values = [
        _slice_weight(old, name, value, in_idx, out_idx, in_width)
        for name, value in zip(names, values)]
    shapes = [tuple(w.shape) for w in new.weights]
    for name, value, shape in zip(names, new_values, shapes):
      if tuple(value.shape) != shape:
        raise NotImplementedError(
            'Cannot transfer weight %r of layer %r (%s): sliced shape %s, '
            'slim layer expects %s.' % (name, old.name, type(old).__name__,
                                        value.shape, shape))
    new.set_weights(new_values)


def _slice_weight(layer, name, value, in_idx, out_idx, in_width):
  """The surviving part of one weight of `layer`."""
  if isinstance(layer, DEPTHWISE):
    if name in ('depthwise_kernel', 'kernel'):
      return _take(value, in_idx, -2)
    return _take(value, out_idx, 0)
  if isinstance(layer, SEPARABLE):
    if name == 'depthwise_kernel':
      return _take(value, in_idx, -2)
    if name == 'pointwise_kernel':
      mult = value.shape[-2] // layer.depthwise_kernel.shape[-2]
      mid = None if in_idx is None else expand_multiplier(in_idx, mult)
      return _take(_take(value, mid, -2), out_idx, -1)
    return _take(value, out_idx, 0)
  if width_attr(layer) is not None:
    in_axis, out_axis = (-1, -2) if isinstance(layer, CONV_TRANSPOSE) else (
        -2, -1)
    if name == 'kernel':
      return _take(_take(value, in_idx, in_axis), out_idx, out_axis)
    if name == 'bias':
      return _take(value, out_idx, 0)
  # Channel-wise layers (BatchNormalization, gating, ...): 1-D weights over
  # the input channels; anything else must not depend on the width.
  if in_idx is not None and value.ndim == 1 and value.shape[0] == in_width:
    return _take(value, in_idx, 0)
  return value


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


def width_attr(layer):
  """'filters' or 'units' for prunable layers, else None."""
  if isinstance(layer, DEPTHWISE):
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
  if isinstance(op, DEPTHWISE):
    _check_channels_last(op, not _full(plan, live[0]))
    mult = op.depth_multiplier
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
