"""Rebuilds a planned Keras graph with fresh layers, and moves weights over.

Nested functional/Sequential models are rebuilt recursively (as functional
models of the same name). `LogisticSigmoidGating` layers are folded away:
at inference a gate is a fixed mask, so the slim model drops the gate (or,
when transferred weights keep a channel whose mask is not 1, scales by the
mask with a core `Rescaling` layer) and loads without morph_net. Private to
`morph_net.keras`.
"""

import warnings

import keras
import numpy as np

from morph_net.framework import einsum_op_handler
from morph_net.framework import op_types
from morph_net.keras import _blocks
from morph_net.keras import _slim_plan as plan_lib
from morph_net.keras import _surgery
from morph_net.keras import _width_rules as rules
from morph_net.probabilistic_gating import activation_gating


def build(plan, fold_gates=True, transfer=False):
  """Returns (new model, {id(old layer): (old, new)})."""
  new_layers = {}
  models = {}
  model = plan.model
  new_model = _build_functional(plan, model, model.name, new_layers, models,
                                fold_gates, transfer, top=True)
  return new_model, new_layers


def _build_functional(plan, functional, name, new_layers, models, fold_gates,
                      transfer, top=False):
  """Calls fresh copies of the layers along the planned graph.

  A model holding layers that are not core Keras layers (custom layers
  narrowed in place, blocks rebuilt by rules) is a `_surgery.SlimModel`,
  which saves what they were built from and reloads at the slim widths.
  """
  # pylint: disable=protected-access  (Keras 3 functional graph internals)
  tensors = {}
  new_inputs = []
  for x in functional.inputs:
    chans = plan.info[id(x)]
    new_x = keras.Input(batch_shape=tuple(x.shape[:-1]) + (chans.width,),
                        dtype=x.dtype, name=x._keras_history.operation.name)
    tensors[id(x)] = new_x
    new_inputs.append(new_x)
  for node in plan_lib.graph_nodes(functional):
    op = node.operation
    if any(plan.is_removed(t) for t in node.outputs):
      continue
    if id(node) in plan.identity:
      tensors[id(node.outputs[0])] = tensors[id(plan.identity[id(node)])]
      continue
    if isinstance(op, activation_gating.LogisticSigmoidGating) and fold_gates:
      x = tensors[id(node.input_tensors[0])]
      gate = _folded_gate(op, plan.kept_of(node.input_tensors[0]), transfer)
      tensors[id(node.outputs[0])] = x if gate is None else gate(x)
      continue
    if id(op) in plan.narrowed:
      new_op, record, _ = plan.narrowed[id(op)]
      new_layers[id(op)] = (op, new_op)
      _surgery.record_surgery(new_op, record)
    elif plan_lib.is_model(op):
      if id(op) not in models:
        models[id(op)] = _build_functional(
            plan, plan_lib.as_functional(op), op.name, new_layers, models,
            fold_gates, transfer)
      new_op = models[id(op)]
    elif id(op) in plan.blocks:
      if id(op) not in new_layers:
        record = {}  # filled when it builds (rebuild_sublayers)
        new_layers[id(op)] = (op, _new_block(plan, op, record))
        _surgery.record_surgery(new_layers[id(op)][1], record)
      new_op = new_layers[id(op)][1]
    elif isinstance(op, keras.layers.Layer):
      if id(op) not in new_layers:
        new_layers[id(op)] = (op, _blocks.clone_leaf(
            op, plan.layer_width.get(id(op)), _input_width(plan, node)))
      new_op = new_layers[id(op)][1]
    elif id(node) in plan.sections:
      new_op = _new_split(op, plan.sections[id(node)])
    else:
      new_op = op  # A stateless keras.ops operation: reuse it.
    if id(node) in plan.kept_inputs:
      # An Add/Concatenate that lost inputs to topology morphing.
      args = ([tensors[id(t)] for t in plan.kept_inputs[id(node)]],)
      kwargs = {}
    else:
      args, kwargs = node.arguments.fill_in(tensors)
    try:
      outputs = keras.tree.flatten(new_op(*args, **kwargs))
    except (ValueError, TypeError) as e:
      if not isinstance(op, keras.layers.Layer) or id(op) in plan.blocks:
        raise
      raise _leaf_error(op, node, _input_width(plan, node), e) from e
    for old, new in zip(node.outputs, outputs):
      tensors[id(old)] = new
  outputs = [tensors[id(x)] for x in functional.outputs]
  args = (keras.tree.pack_sequence_as(functional._inputs_struct, new_inputs),
          keras.tree.pack_sequence_as(functional._outputs_struct, outputs))
  model = keras.Model(*args, name=name)
  if not top or not _surgery.needs_slim_model(model):
    return model
  return _surgery.SlimModel(*args, name=name)


def _leaf_error(layer, node, new_width, error):
  """A layer rebuilt from its config fails at its new input width: name it,
  the config fields holding the old width, and the rule that fixes it."""
  inputs = node.input_tensors
  old_width = plan_lib.width(inputs[0]) if inputs else None
  cls = type(layer)
  try:
    config = layer.get_config()
  except Exception:  # pylint: disable=broad-except
    config = {}
  fields = [k for k, v in config.items() if isinstance(v, int) and
            not isinstance(v, bool) and v == old_width]
  fix = ('morph_net.keras.register_width_rule(%r, input_field=%r, '
         "output='input')" % ('%s.%s' % (cls.__module__, cls.__qualname__),
                              fields[0] if len(fields) == 1 else
                              '<its config field of the input width>'))
  first = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return NotImplementedError(
      'slim_model: layer %r (%s) does not run at its new input width %s '
      '(was %s) when rebuilt from its config (%s: %s). Its config holds a '
      'width of its input%s: declare it with %s.' % (
          layer.name, cls.__name__, new_width, old_width,
          type(error).__name__, first[:200],
          ' (%s)' % ', '.join('%s=%d' % (f, config[f]) for f in fields)
          if fields else '', fix))


def _input_width(plan, node):
  """The slim width of a node's first input, or None if unknown."""
  inputs = node.input_tensors
  chans = plan.info.get(id(inputs[0])) if inputs else None
  return None if chans is None else chans.width


def _new_block(plan, block, record):
  """A layer with prunable sublayers, rebuilt by its width rule."""
  made = {}
  new = _blocks.rebuild(
      block, lambda sub: plan.leaf_width.get(id(sub)),
      lambda sub: plan.block_input.get(id(sub)),
      lambda leaf: _blocks.clone_leaf(leaf, plan.leaf_width.get(id(leaf))),
      made, record)
  plan.block_layers[id(block)] = made
  return new


def _new_split(op, sizes):
  """A channel split with new slice sizes (keras.ops.split semantics)."""
  if len(set(sizes)) == 1:
    sections = len(sizes)
  else:
    sections = np.cumsum(sizes[:-1]).tolist()
  return type(op)(sections, axis=op.axis)


def _folded_gate(gate, kept, transfer):
  """None (the gate becomes the identity) or a Rescaling by its mask."""
  if not transfer:
    return None  # fresh weights: the slim model retrains without gates
  logits = np.asarray(gate.mask_logits.numpy(), np.float64)
  mask = (logits > 0).astype(np.float64)
  if gate.soft_mask_for_inference:
    mask = mask / (1.0 + np.exp(-logits))
  if gate.keep_first_channel_alive:
    mask[0] = 1.0
  if kept is not None:
    mask = mask[kept]
  if np.all(mask == 1.0):
    return None
  if gate.axis not in (-1, gate._rank - 1):  # pylint: disable=protected-access
    raise NotImplementedError(
        'Gate %r gates axis %d and keeps channels whose mask is not 1; only '
        'channels-last gates can be folded.' % (gate.name, gate.axis))
  return keras.layers.Rescaling(scale=mask.astype(np.float32).tolist(),
                                name=gate.name)


# ------------------------------------------------------- weight transfer
def transfer(plan, new_layers):
  """Copies the surviving channels' weights into the slim model."""
  _check_channel_ops(plan)
  for old, new in new_layers.values():
    if not old.weights:
      continue
    if id(old) in plan.blocks:
      _transfer_block(plan, old)
      continue
    if id(old) in plan.narrowed:
      transfer_narrowed(plan, old)
      continue
    node = plan.first_node(id(old))
    by_labels = _kept_by_labels(plan, old)
    in_idx = None
    if node.input_tensors:
      in_idx = _agreed(plan, node.input_tensors[0], by_labels[0])
    out_idx = _agreed(plan, node.outputs[0], by_labels[1])
    in_width = (plan_lib.width(node.input_tensors[0]) if node.input_tensors
                else None)
    _set_sliced(old, new, in_idx, out_idx, in_width)


def _check_channel_ops(plan):
  """Before a transfer, the ops whose outputs a slim model cannot
  reproduce from the surviving channels alone: a roll of pruned channels
  (rolled over fewer channels, the survivors land in another order than
  in the full model; refused) and a mean or softmax over pruned channels
  (LayerNormalization, RMSNorm, a softmax over channels: over fewer
  channels the statistics change even where the pruned ones were zero;
  warned)."""
  manager = plan.analysis.manager
  alive = _alive_values(plan)
  mixing = []
  for op in manager.ops:
    if (op.type not in ('Roll', 'Mean', 'Softmax', 'LogSoftmax')
        or not manager.has_channels(op.inputs[0])):
      continue
    before = manager.channel_labels(op.inputs[0])
    if (alive[before] > 0.5).all():
      continue
    same = manager.has_channels(op.outputs[0]) and np.array_equal(
        before, manager.channel_labels(op.outputs[0]))
    if op.type == 'Roll' and not same:
      raise NotImplementedError(
          'Cannot transfer weights through op %r (Roll): it rolls channels '
          'some of which are pruned, and over fewer channels the survivors '
          'land in another order than in the full model. Slim without '
          'transfer_weights and retrain, or leave the layers before the '
          'roll out of the structure.' % op.name)
    if op.type == 'Roll':
      continue
    reduced = [-1] if op.type != 'Mean' else manager.view.static_value(
        op.inputs[1])
    if _mixes(manager, alive, op.inputs[0], reduced):
      mixing.append('%s (%s)' % (op.name, op.type))
  if mixing:
    warnings.warn(
        'transfer_weights: %s read%s pruned channels together with the '
        'others (a mean or softmax over channels, as in LayerNormalization '
        'or RMSNorm): over fewer channels the slim model computes other '
        'values, even where the pruned channels were zero. Its outputs '
        'differ from the full model\'s; fine-tune or retrain it.'
        % (', '.join(mixing[:3]) + (' and %d more' % (len(mixing) - 3)
                                    if len(mixing) > 3 else ''),
           's' if len(mixing) == 1 else ''))


def _mixes(manager, alive, tensor, reduced):
  """Whether reducing `tensor` over axes `reduced` (None: unknown) takes
  pruned and surviving channels together (a LayerNorm over a stream with
  some channels pruned; not a per-head norm of whole pruned heads, nor a
  spatial mean)."""
  shape = manager.view.shape(tensor)
  rank = len(shape)
  axes = [a % rank for a in manager.channel_axes(tensor)]
  state = alive[manager.channel_labels(tensor)] > 0.5
  if reduced is None:
    return not state.all()
  reduced = {int(a) % rank for a in np.ravel(reduced)}
  inner = [i for i, a in enumerate(axes) if a in reduced]
  if not inner:
    return False
  outer = [i for i in range(len(axes)) if i not in inner]
  groups = np.transpose(state.reshape([shape[a] for a in axes]),
                        outer + inner).reshape(
                            int(np.prod([shape[axes[i]] for i in outer])), -1)
  return bool((groups.any(1) & ~groups.all(1)).any())


def _agreed(plan, tensor, alive):
  """The kept channels of a tensor a top-level layer reads or writes.

  The plan walks channels layer by layer; the analysis' labels (`alive`:
  the alive channels there, None for all) follow them through ops the walk
  does not see into: a custom layer narrowed in place (its output order is
  its own code's), a Lambda that reverses the channels. Where the labels
  name exactly as many alive channels as the slim tensor has, they are
  the kept ones; where the plan keeps more (channels kept to round to a
  multiple, or to keep an output), the plan's, if they hold every alive
  one, else the alive ones and then the first dead ones.
  """
  kept = plan.kept_of(tensor)
  if alive is None:
    return kept
  new = plan.info[id(tensor)].width
  if len(alive) == new:
    return alive
  if len(alive) > new:  # the structure keeps fewer than are alive
    return kept
  if kept is not None and np.isin(alive, kept).all():
    return kept
  dead = np.setdiff1d(np.arange(plan_lib.width(tensor)), alive)
  return np.sort(np.concatenate([alive, dead[:new - len(alive)]])).astype(
      np.int64)


def _set_sliced(old, new, in_idx, out_idx, in_width):
  values = [np.asarray(w) for w in old.get_weights()]
  names = [w.path.split('/')[-1] for w in old.weights]
  shapes = [tuple(w.shape) for w in new.weights]
  new_values = [
      _slice_weight(old, name, value, in_idx, out_idx, in_width, shape)
      for name, value, shape in zip(names, values, shapes)]
  for name, value, shape in zip(names, new_values, shapes):
    if tuple(value.shape) != shape:
      raise NotImplementedError(
          'Cannot transfer weight %r of layer %r (%s): sliced shape %s, '
          'slim layer expects %s.' % (name, old.name, type(old).__name__,
                                      value.shape, shape))
  new.set_weights(new_values)


def _transfer_block(plan, block):
  """Weights of a block rebuilt by its rule: each sublayer's surviving
  channels, read from the analysis (its input and output channel labels,
  or for a norm the activation its weights scale)."""
  for old, new in _leaf_pairs(plan.block_layers[id(block)]):
    if not old.weights:
      continue
    _set_sliced(old, new, *_kept_by_labels(plan, old))
  for old, _ in plan.block_layers[id(block)].values():
    own = _blocks.is_block(old) and (
        old._trainable_variables or old._non_trainable_variables)  # pylint: disable=protected-access
    if own:
      raise NotImplementedError(
          'Cannot transfer the weights of %r (%s): the layer holds weights '
          'of its own (not in sublayers) whose channels slim_model does not '
          'know. Slim without transfer and retrain.'
          % (old.name, type(old).__name__))


def _alive_values(plan):
  """Per-label 0/1 of the plan's alive channels (computed once)."""
  if plan.alive_values is None:
    plan.alive_values = plan.analysis.assign_alive(plan.alive or {})
  return plan.alive_values


def _kept_by_labels(plan, layer):
  """(kept input channels, kept output channels, input width) of a weighted
  leaf, from the analysis' labels (None: all kept)."""
  analysis = plan.analysis
  values = _alive_values(plan)

  def kept(labels):
    if labels is None:
      return None
    idx = np.flatnonzero(values[labels] > 0.5)
    return None if len(idx) == len(labels) else idx

  labels = analysis.leaf_labels(layer)
  if labels is None:
    return None, None, None
  return (kept(labels[0]), kept(labels[1]),
          None if labels[0] is None else len(labels[0]))


def transfer_narrowed(plan, container):
  """Weights of a custom layer narrowed in place: each weighted leaf's
  surviving channels (read from the analysis' labels)."""
  _, _, made = plan.narrowed[id(container)]
  for old, new in made.values():
    if not old.weights or _blocks.is_block(old) or isinstance(old,
                                                              keras.Model):
      continue
    _set_sliced(old, new, *_kept_by_labels(plan, old))


def _leaf_pairs(made):
  """(old, new) of every rebuilt leaf; a block rebuilt from its config
  alone pairs its sublayers by attribute path."""
  for old, new in made.values():
    if not _blocks.is_block(old):
      yield old, new
      continue
    if rules.block_rule(old).rebuild_sublayers:
      continue  # its sublayers are in `made` themselves
    new_at = _by_path(new)
    for path, sub in _by_path(old).items():
      if not _blocks.is_block(sub) and path in new_at:
        yield sub, new_at[path]


def _by_path(layer):
  paths = _blocks.sublayer_paths(layer)
  return {paths[id(s)]: s for s in _blocks.leaves(layer) if id(s) in paths}


def _slice_einsum(layer, name, value, in_idx, out_idx, shape):
  """An EinsumDense weight whose channels span several axes (attention:
  kernel [C, heads, head size], bias [heads, head size], output kernel
  [heads, head size, E]): the channels are those axes flattened row-major,
  so whole heads are whole blocks of rows or columns."""
  if name != 'kernel':  # the bias: over the output channel axes
    flat = value.reshape(-1)
    return _take(flat, out_idx, 0).reshape(shape)
  (_, kernel_spec), out = einsum_op_handler.split_equation(layer.equation)
  n_in = len(einsum_op_handler.kernel_letters(layer.equation)[0])
  if any(c in out for c in kernel_spec[:n_in]) or shape is None:
    raise NotImplementedError(
        'Cannot transfer the kernel of EinsumDense %r (%s): its input '
        'channel axes do not lead the kernel.' % (layer.name, layer.equation))
  rows = int(np.prod(value.shape[:n_in]))
  matrix = value.reshape(rows, -1)
  matrix = _take(_take(matrix, in_idx, 0), out_idx, 1)
  return matrix.reshape(shape)


def _take(array, indices, axis):
  if indices is None:
    return array
  return np.take(array, indices, axis=axis)


def _slice_weight(layer, name, value, in_idx, out_idx, in_width, shape=None):
  """The surviving part of one weight of `layer` (`shape`: the slim
  layer's, for kernels whose channels span several axes)."""
  if isinstance(layer, rules.DEPTHWISE):
    if name in ('depthwise_kernel', 'kernel'):
      return _take(value, in_idx, -2)
    return _take(value, out_idx, 0)
  if rules.is_depthwise(layer):  # grouped: kernel [..., 1, filters]
    return _take(value, out_idx, -1)
  if isinstance(layer, rules.SEPARABLE):
    if name == 'depthwise_kernel':
      return _take(value, in_idx, -2)
    if name == 'pointwise_kernel':
      mult = value.shape[-2] // layer.depthwise_kernel.shape[-2]
      mid = None if in_idx is None else plan_lib.expand_multiplier(in_idx,
                                                                   mult)
      return _take(_take(value, mid, -2), out_idx, -1)
    return _take(value, out_idx, 0)
  if isinstance(layer, keras.layers.EinsumDense) and len(
      layer.kernel.shape) != 2 and (in_idx is not None or
                                    out_idx is not None):
    return _slice_einsum(layer, name, value, in_idx, out_idx, shape)
  if rules.width_field(layer) is not None:
    in_axis, out_axis = op_types.kernel_channel_axes(
        transposed=isinstance(layer, rules.CONV_TRANSPOSE))
    if name == 'kernel':
      return _take(_take(value, in_idx, in_axis), out_idx, out_axis)
    if name == 'bias':
      return _take(value, out_idx, 0)
  # Channel-wise layers (BatchNormalization, PReLU, ...): weights over the
  # input channels, (C,) or (1, ..., 1, C); anything else must not depend
  # on the width.
  if (in_idx is not None and value.ndim >= 1 and value.shape[-1] == in_width
      and all(d == 1 for d in value.shape[:-1])):
    return _take(value, in_idx, -1)
  return value
