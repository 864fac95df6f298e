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

import keras

from morph_net.keras import _blocks
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
  new.build(shape[:-1] + (new_in if new_in is not None else shape[-1],))
  return _mark_built(new)


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
  if isinstance(layer, keras.Model):
    raise NotImplementedError(
        'slim_model: model %r (%s) sits inside a custom layer; slim_model '
        'narrows custom layers and Sequential models inside them. Call it '
        'in the functional graph instead.' % (layer.name,
                                              type(layer).__name__))
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
  made[id(layer)] = (layer, new)
  old_children = _children_by_key(layer)
  for (attr, index), child in _children_by_key(new).items():
    old = old_children.get((attr, index))
    if old is None or not old.weights:
      continue
    fresh = _copy(old, leaf_shape, clone, made, record,
                  '%s%s%s.' % (prefix, attr, '' if index is None
                               else '.%d' % index))
    replace(new, attr, index, child, fresh)
  return new


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


_TAG = 'morph_net_surgery'


@keras.saving.register_keras_serializable(package='morph_net')
class SlimModel(keras.Model):
  """A slim functional model whose custom layers were narrowed inside.

  A custom layer's config builds it at its original widths; this model's
  config also records, for each such layer, which of its sublayers were
  replaced by narrower ones (their own configs, built at the slim widths),
  and `from_config` puts them back before the layer is first called, so a
  `.keras` file reloads at the slim widths and with its weights. Loading
  needs `import morph_net.keras` (and, as for any model with custom
  layers, the module that defines them).
  """

  def __init__(self, *args, surgery=None, **kwargs):
    super().__init__(*args, **kwargs)
    # {layer path in the model ('block1', 'nested/block1'): {attribute
    # path inside it: slim sublayer}}.
    self._morph_net_surgery = dict(surgery or {})

  def get_config(self):
    config = super().get_config()
    config[_TAG] = {
        owner: {path: keras.saving.serialize_keras_object(sub)
                for path, sub in record.items()}
        for owner, record in self._morph_net_surgery.items()}
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    surgery = config.pop(_TAG, {})
    config = _with_proxies(config, surgery, '')
    model = super().from_config(config, custom_objects=custom_objects)
    return model


def _with_proxies(config, surgery, prefix):
  """The functional config with each recorded layer's entry wrapped in a
  `_Narrowed` entry (nested functional models too)."""
  layers = []
  for entry in config['layers']:
    name = entry.get('name') or entry['config'].get('name')
    path = prefix + name
    if path in surgery:
      entry = dict(entry, module='morph_net.keras._surgery',
                   class_name='_Narrowed',
                   registered_name='morph_net>_Narrowed',
                   config={'layer': {k: v for k, v in entry.items()
                                     if k not in ('inbound_nodes',)},
                           'sublayers': surgery[path]})
      entry.pop('build_config', None)
    elif isinstance(entry.get('config'), dict) and 'layers' in entry[
        'config'] and any(k.startswith(path + '/') for k in surgery):
      entry = dict(entry, config=_with_proxies(entry['config'], surgery,
                                               path + '/'))
    layers.append(entry)
  return dict(config, layers=layers)


@keras.saving.register_keras_serializable(package='morph_net')
class _Narrowed(keras.layers.Layer):
  """Loads a custom layer and puts its slim sublayers back (never built:
  `from_config` returns the custom layer itself)."""

  @classmethod
  def from_config(cls, config):
    entry = dict(config['layer'])
    entry.pop('build_config', None)  # built on first call, at slim widths
    layer = keras.saving.deserialize_keras_object(entry)
    for path in sorted(config['sublayers'], key=lambda p: p.count('.')):
      sub = keras.saving.deserialize_keras_object(config['sublayers'][path])
      set_at_path(layer, path, _mark_built(sub))
    return layer
