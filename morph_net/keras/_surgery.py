"""Slimming a custom layer in place: narrower sublayers, its own code kept.

A custom layer whose `call` only chains its sublayers (a residual
`ConvBlock(filters)`, a layer holding a `keras.Sequential`) needs no width
rule: its copy gets, for every sublayer with weights, a copy of that
sublayer built at its new input and output widths (read from the
analysis' channel labels), and the custom layer's own code then runs
unchanged on the narrower sublayers. Its config still describes the
original widths, so `SlimModel` records the surgery and re-applies it when
the model is loaded from a `.keras` file.

Private to `morph_net.keras`.
"""

import functools
import importlib

import keras

from morph_net.framework import einsum_op_handler
from morph_net.keras import _blocks
from morph_net.keras import _keras_graph
from morph_net.keras import _width_rules as rules


def _no_rebuild(*args, **kwargs):
  """`build` of a sublayer built at its slim widths: the custom layer's
  own `build` may build its sublayers from its config (original widths);
  a built slim sublayer keeps its weights."""
  del args, kwargs


def _mark_built(layer):
  object.__setattr__(layer, 'build', _no_rebuild)
  return layer


def build_shape(layer):
  """The input shape a leaf was built with (one input), or None."""
  shapes = getattr(layer, '_build_shapes_dict', None) or {}
  if len(shapes) != 1:
    return None
  shape = next(iter(shapes.values()))
  if not isinstance(shape, (tuple, list)) or not shape or isinstance(
      shape[0], (tuple, list)):
    return None
  return tuple(shape)


def narrow_leaf(leaf, new_in, new_out, clone):
  """A fresh copy of a leaf built at `new_in` input channels, with
  `new_out` output channels set by its width rule (`clone(leaf, width)`
  makes the unbuilt copy)."""
  shape = build_shape(leaf)
  if shape is None:
    raise NotImplementedError(
        'slim_model: sublayer %r (%s) was built with several inputs (%s); '
        'slim_model narrows sublayers built from one input. Give its parent '
        'a width rule (morph_net.keras.register_width_rule).'
        % (leaf.name, type(leaf).__name__,
           getattr(leaf, '_build_shapes_dict', None)))
  axis = getattr(leaf, 'axis', -1)
  if getattr(leaf, 'data_format', None) == 'channels_first' or axis not in (
      -1, len(shape) - 1, [-1], [len(shape) - 1]):
    raise NotImplementedError(
        'slim_model: sublayer %r (%s) holds its channels on axis %r; '
        'slim_model narrows channels-last layers only.'
        % (leaf.name, type(leaf).__name__, axis))
  new = clone(leaf, new_out)
  new.build(_narrowed_shape(leaf, shape, new_in))
  return _mark_built(new)


def _narrowed_shape(leaf, shape, new_in):
  """The build shape with `new_in` input channels: on the last axis, or,
  for an EinsumDense contracting several input axes (an attention output
  projection reading [.., heads, head size]), by whole blocks of the
  first of them."""
  if new_in is None:
    return shape
  axes = 1
  if isinstance(leaf, keras.layers.EinsumDense):
    (x_spec, _), _ = einsum_op_handler.split_equation(leaf.equation)
    contracted = einsum_op_handler.kernel_letters(leaf.equation)[0]
    tail = x_spec[-len(contracted):] if contracted else ''
    if contracted and sorted(tail) == sorted(contracted):
      axes = len(contracted)
  if axes == 1:
    return shape[:-1] + (new_in,)
  inner = rules.block_size(shape, axes)
  if new_in % inner:
    raise NotImplementedError(
        'slim_model: EinsumDense %r (%s) reads channels over %d input axes '
        '%s; its new input width %d is not whole blocks of %d.'
        % (leaf.name, leaf.equation, axes, shape[-axes:], new_in, inner))
  return (shape[:len(shape) - axes] + (new_in // inner,)
          + shape[len(shape) - axes + 1:])


def replace(parent, attr, index, old, new):
  """Puts `new` where `parent` holds `old` (attribute `attr`, list index
  `index`), in Keras's layer tracking too."""
  tracker = getattr(parent, '_tracker', None)
  if tracker is not None:
    try:
      tracker.replace_tracked_value('layers', old, new)
    except ValueError:
      pass  # not tracked by Keras: the attribute is all there is
  if index is None:
    object.__setattr__(parent, attr, new)
  else:
    holder = getattr(parent, attr)
    list.__setitem__(holder, index, new)


def copy_layer(layer):
  """An unbuilt copy of a custom layer from its config (original widths)."""
  config = _blocks.layer_config(layer)
  config['name'] = layer.name
  new = _blocks.from_config(layer, config)
  if new.name != layer.name:
    new.name = layer.name
  return new


def has_own_weights(layer):
  return bool(layer._trainable_variables or layer._non_trainable_variables)  # pylint: disable=protected-access


def slim_copy(layer, leaf_shape, clone, made):
  """A copy of `layer` whose weighted leaves have their planned widths.

  Args:
    layer: a layer of the old model (a custom layer, a Sequential, a leaf).
    leaf_shape: old leaf -> (new input width, new output width), or None
      to keep it.
    clone: (old leaf, width or None) -> an unbuilt copy of the leaf.
    made: {id(old layer): (old, new)}, filled with every layer made.

  Returns:
    (new layer, record): the record lists the surgery, {attribute path
    inside the layer: the slim sublayer put there} (see `SlimModel`).
  """
  record = {}
  new = _copy(layer, leaf_shape, clone, made, record, '')
  return new, record


def _copy(layer, leaf_shape, clone, made, record, prefix):
  path = prefix.rstrip('.')
  if not _blocks.is_block(layer) and not isinstance(layer, keras.Model):
    shape = leaf_shape(layer)
    if shape is None or not layer.weights:
      new = clone(layer, None)
    else:
      new = narrow_leaf(layer, shape[0], shape[1], clone)
      record[path] = new
    made[id(layer)] = (layer, new)
    return new
  if isinstance(layer, keras.Sequential):
    inner_record = {}
    inner = [_copy(sub, leaf_shape, clone, made, inner_record, '%d.' % i)
             for i, sub in enumerate(layer.layers)]
    new = keras.Sequential(inner, name=layer.name)
    made[id(layer)] = (layer, new)
    if inner_record:  # the whole Sequential is rebuilt from its config
      record[path] = new
    return new
  if isinstance(layer, keras.Model) and hasattr(layer, '_nodes_by_depth'):
    raise NotImplementedError(
        'slim_model: functional model %r sits inside a custom layer; '
        'slim_model narrows custom layers, subclassed and Sequential models '
        'inside them. Call it in the functional graph instead.'
        % layer.name)
  if has_own_weights(layer):
    raise NotImplementedError(
        'slim_model: custom layer %r (%s) holds weights of its own (%s), '
        'not in sublayers, whose channels slim_model does not know how to '
        'narrow. Keep its sublayers out of the structure, or hold the '
        'weights in a sublayer.' % (
            layer.name, type(layer).__name__,
            ', '.join(v.path for v in (
                layer._trainable_variables  # pylint: disable=protected-access
                + layer._non_trainable_variables))))  # pylint: disable=protected-access
  new = copy_layer(layer)
  build_config = layer.get_build_config() if layer.built else None
  if build_config and _builds_itself(layer):
    new.build_from_config(build_config)  # its build makes sublayers
  made[id(layer)] = (layer, new)
  old_children = _children_by_key(layer)
  new_children = _children_by_key(new)
  _check_pairs(layer, old_children, new_children)
  for (attr, index), child in new_children.items():
    old = old_children.get((attr, index))
    if old is None or not old.weights:
      continue
    fresh = _copy(old, leaf_shape, clone, made, record,
                  '%s%s%s.' % (prefix, attr, '' if index is None
                               else '.%d' % index))
    replace(new, attr, index, child, fresh)
  return new


def _check_pairs(layer, old_children, new_children):
  """Every weighted sublayer of `layer` has its place in the copy (else
  the copy would run a fresh, untransferred sublayer there)."""
  reached = {id(c) for c in old_children.values()}
  unreached = [s.name for s in layer._flatten_layers(  # pylint: disable=protected-access
      include_self=False, recursive=False)
               if s.weights and id(s) not in reached]
  if unreached:
    raise NotImplementedError(
        'slim_model: %r (%s) holds weighted sublayer(s) %s in a container '
        'slim_model does not walk (a dict, a tuple, a nested list); it '
        'narrows sublayers held in attributes or flat lists. Hold them '
        'there.' % (layer.name, type(layer).__name__, ', '.join(
            map(repr, unreached))))
  moved = sorted('%s%s' % (a, '' if i is None else '[%d]' % i)
                 for (a, i) in set(old_children) ^ set(new_children)
                 if (a, i) in new_children or old_children[(a, i)].weights)
  if moved:
    raise NotImplementedError(
        'slim_model: %r (%s) built again from its config does not hold its '
        'sublayers where the original does (%s differ): its get_config '
        'leaves out an __init__ argument that decides them. Return every '
        '__init__ argument from get_config.' % (
            layer.name, type(layer).__name__, ', '.join(moved)))


def _children_by_key(layer):
  return {(attr, index): child
          for attr, index, child in _blocks.children(layer)}


def set_at_path(layer, path, value):
  """Puts `value` at an attribute path of `layer` ('conv1', 'blocks.2',
  'inner.conv': attributes, and list indices after a list attribute)."""
  parts = path.split('.')
  last = max(i for i, p in enumerate(parts) if not p.isdigit())
  parent = layer
  for part in parts[:last]:
    parent = parent[int(part)] if part.isdigit() else getattr(parent, part)
  attr = parts[last]
  index = int(parts[last + 1]) if last + 1 < len(parts) else None
  holder = getattr(parent, attr)
  old = holder if index is None else holder[index]
  replace(parent, attr, index, old, value)


@keras.saving.register_keras_serializable(package='morph_net')
class SlimModel(keras.Model):
  """A slim functional model holding layers that are not core Keras layers.

  A custom layer narrowed in place (or a block rebuilt by a width rule)
  carries the record of its surgery: the sublayers swapped in after it was
  built, and the config it was built from. Its own config builds it at its
  original widths (and some keras-hub layers' configs do not round-trip),
  so this model's config wraps each such layer's entry: `from_config`
  builds the layer, puts the slim sublayers back before its first call, and
  the `.keras` file reloads at the slim widths, with its weights. Loading
  needs `import morph_net.keras` (and, as for any model with custom layers,
  the module that defines them). Models of core Keras layers only are
  plain functional models and load without morph_net.
  """

  def get_config(self):
    # A custom layer whose own get_config raises (keras-hub 0.32's
    # LlamaTransformerDecoder) is saved through `_serialize` anyway; let
    # Keras's pass over every layer get its __init__ arguments meanwhile.
    patched = []
    for layer in self._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
      if _is_custom(layer) and not _config_works(layer):
        object.__setattr__(layer, 'get_config', functools.partial(
            _blocks.config_from_attributes, layer))
        patched.append(layer)
    try:
      return _wrapped(super().get_config(), self)
    finally:
      for layer in patched:
        object.__delattr__(layer, 'get_config')


def _config_works(layer):
  try:
    layer.get_config()
    return True
  except _blocks.CONFIG_ERRORS:
    return False


def needs_slim_model(model):
  """Whether a functional model holds a layer that is not core Keras."""
  return any(_is_custom(op) or (isinstance(op, keras.Model) and
                                needs_slim_model(op))
             for op in model.operations)


def record_surgery(layer, swapped):
  """Attaches {attribute path: sublayer} swapped into `layer`."""
  object.__setattr__(layer, _blocks.SWAPPED, swapped)


def _is_custom(op):
  """A layer whose class is not Keras's own, or a subclassed model
  (functional and Sequential models, and ops, are not)."""
  if isinstance(op, keras.Model):
    return _keras_graph.is_subclassed(op)
  return isinstance(op, keras.layers.Layer) and not type(
      op).__module__.startswith('keras.')


def _wrapped(config, model):
  """A functional config with each custom layer's entry wrapped in a
  `_Restored` entry (nested functional models too); no entry keeps a
  build_config (the graph builds every layer by calling it)."""
  layers = []
  by_name = {op.name: op for op in model.operations}
  for entry in config['layers']:
    entry = dict(entry)
    entry.pop('build_config', None)
    layer = by_name.get(entry['name'])
    if isinstance(layer, keras.Model) and isinstance(
        entry.get('config'), dict) and 'layers' in entry['config']:
      entry['config'] = _wrapped(entry['config'], layer)
    elif _is_custom(layer):
      entry = {
          'module': 'morph_net.keras._surgery', 'class_name': '_Restored',
          'registered_name': 'morph_net>_Restored', 'name': entry['name'],
          'inbound_nodes': entry['inbound_nodes'],
          'config': {'layer': _serialize(layer)}}
    layers.append(entry)
  return dict(config, layers=layers)


def _serialize(layer):
  """A layer as `_restore` rebuilds it: core Keras layers as Keras saves
  them; others by class, the config they were built from, how they were
  built and the slim sublayers swapped into them."""
  swapped = getattr(layer, _blocks.SWAPPED, None) or {}
  if not _is_custom(layer) and not swapped:
    return {'keras': keras.saving.serialize_keras_object(layer)}
  cls = type(layer)
  config = getattr(layer, _blocks.BUILT_FROM, None)
  if config is None:
    config = dict(_blocks.layer_config(layer), name=layer.name)
  return {
      'module': cls.__module__, 'class_name': cls.__name__,
      'registered_name': keras.saving.get_registered_name(cls),
      'config': keras.saving.serialize_keras_object(config),
      'build_config': layer.get_build_config() if layer.built else None,
      'sublayers': {path: _serialize(sub) for path, sub in swapped.items()}}


def _restore(data, top=False):
  """The layer `_serialize` described, its slim sublayers back in place."""
  if 'keras' in data:
    return keras.saving.deserialize_keras_object(data['keras'])
  config = _deserialize(data['config'])
  layer = _blocks.from_config(_class_of(data), config)
  if (data['build_config'] and not layer.built and _builds_itself(layer)
      and (data['sublayers'] or not top)):
    # Its own build makes (some of) its sublayers: build it from its
    # config first, then swap the slim ones in. (Layers of the model's
    # graph and those without a build of their own are built by their
    # first call.) Shapes as tuples, as builds get them from a call.
    layer.build_from_config(_tuples(data['build_config']))
  swapped = {}
  for path in sorted(data['sublayers'], key=lambda p: p.count('.')):
    sub = _restore(data['sublayers'][path])
    swapped[path] = _mark_built(sub) if sub.built else sub
    set_at_path(layer, path, sub)
  record_surgery(layer, swapped)
  object.__setattr__(layer, _blocks.BUILT_FROM, config)
  return layer


def _deserialize(value):
  """A serialized config: layers inside it (a block's config may hold its
  sublayers) through `_blocks.from_config`, which tolerates configs that
  their own __init__ rejects; everything else as Keras does it."""
  if isinstance(value, dict) and {'class_name', 'config'} <= set(value) and (
      'module' in value):
    try:
      cls = _class_of(value)
    except (TypeError, ImportError):
      cls = None
    if isinstance(cls, type) and issubclass(cls, keras.layers.Layer):
      return _blocks.from_config(cls, _deserialize(value['config']))
    return keras.saving.deserialize_keras_object(value)
  if isinstance(value, dict):
    return {k: _deserialize(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_deserialize(v) for v in value]
  return value


def _tuples(value):
  """Lists (JSON's shapes) as tuples, in a nested build config."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  return value


@keras.saving.register_keras_serializable(package='morph_net')
class _Restored(keras.layers.Layer):
  """Loads a custom layer of a `SlimModel` (never itself built:
  `from_config` returns the custom layer, its slim sublayers in place)."""

  @classmethod
  def from_config(cls, config):
    return _restore(config['layer'], top=True)


def _class_of(entry):
  """The class a serialized layer entry names."""
  registered = entry.get('registered_name')
  found = keras.saving.get_registered_object(registered) if registered \
      else None
  if found is None:
    found = keras.saving.get_registered_object(entry['class_name'])
  if found is None and entry.get('module'):
    module = importlib.import_module(entry['module'])
    found = getattr(module, entry['class_name'], None)
  if found is None:
    raise TypeError(
        'Could not find the class %r (module %r) of a layer of this slim '
        'model: import the module that defines it before loading.'
        % (entry['class_name'], entry.get('module')))
  return found


def _builds_itself(layer):
  """Whether the layer's class defines its own `build`."""
  return type(layer).build is not keras.layers.Layer.build
