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

import numbers
import warnings

import keras
import numpy as np

from morph_net.keras._slim_plan import as_functional
from morph_net.keras._slim_plan import CONV_TRANSPOSE
from morph_net.keras._slim_plan import depth_multiplier
from morph_net.keras._slim_plan import DEPTHWISE
from morph_net.keras._slim_plan import expand_multiplier
from morph_net.keras._slim_plan import is_depthwise
from morph_net.keras._slim_plan import make_plan
from morph_net.keras._slim_plan import out_width
from morph_net.keras._slim_plan import SEPARABLE
from morph_net.keras._slim_plan import width
from morph_net.keras._slim_plan import width_attr
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
  if is_depthwise(layer) and not isinstance(layer, DEPTHWISE) and (
      width is not None):
    # A grouped conv with one input channel per group keeps that shape.
    config['filters'] = int(width)
    config['groups'] = int(width) // depth_multiplier(layer)
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
  if is_depthwise(layer):  # grouped: kernel [..., 1, filters]
    return _take(value, out_idx, -1)
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
