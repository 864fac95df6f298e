"""Slimming layers that hold prunable sublayers (blocks), by their rules.

A block is a (non-functional) Keras layer with weighted sublayers: Keras's
`MultiHeadAttention`, a keras-hub transformer encoder, an inverted residual
block. `slim_model` cannot walk its `call`, so a `BlockRule`
(`register_width_rule(cls, sublayers=..., output=...)`) says which config
fields its sublayers' widths set and where its output channels come from.
The block is rebuilt from its updated config; with `rebuild_sublayers`,
each weighted sublayer is then replaced by a fresh copy with its own width
(built on first call from the shapes it receives), for configs that cannot
say everything (keras-hub blocks derive the head size from the hidden size
and the head count, so a block that lost heads keeps its head size only
this way).

The built-in rules (Keras's MultiHeadAttention, keras-hub's blocks) are in
`morph_net.keras._builtin_rules`. Private to `morph_net.keras`.
"""

import functools
import inspect
import warnings

import keras

from morph_net.framework import keras_trace
from morph_net.keras import _width_rules as rules


# Attributes a slim layer carries for `_surgery.SlimModel` (set with
# object.__setattr__, outside Keras's tracking): the config it was built
# from, and {attribute path: sublayer} swapped in after it was built.
BUILT_FROM = '_morph_net_built_from'
SWAPPED = '_morph_net_swapped'


def sublayer_paths(layer):
  """{id(sublayer): attribute path inside `layer`} ('mlp.dense_1')."""
  paths = {}

  def visit(obj, prefix, depth):
    for attr, index, child in children(obj):
      path = prefix + attr.lstrip('_') + ('' if index is None
                                          else '.%d' % index)
      if id(child) not in paths:
        paths[id(child)] = path
        if depth < 8:
          visit(child, path + '.', depth + 1)

  visit(layer, '', 0)
  return paths


def children(layer):
  """(attribute, list index or None, sublayer) of a layer's direct
  sublayers held in attributes (Keras's own bookkeeping left out)."""
  out = []
  for attr, value in vars(layer).items():
    if attr in ('_layers', '_tracker', '_inbound_nodes', '_outbound_nodes'):
      continue
    if isinstance(value, keras.layers.Layer):
      out.append((attr, None, value))
    elif isinstance(value, list):
      for i, v in enumerate(value):
        if isinstance(v, keras.layers.Layer):
          out.append((attr, i, v))
  return out


def is_block(layer):
  """A non-model layer with weighted sublayers."""
  if isinstance(layer, keras.Model) or not isinstance(layer,
                                                      keras.layers.Layer):
    return False
  return any(sub.weights for sub in layer._flatten_layers(  # pylint: disable=protected-access
      include_self=False, recursive=True))


def leaves(layer):
  return list(layer._flatten_layers(include_self=False, recursive=True))  # pylint: disable=protected-access


def find(rule_pattern, layer):
  """The sublayers of `layer` matching a rule pattern, with their paths."""
  paths = sublayer_paths(layer)
  return [(sub, paths.get(id(sub), sub.name)) for sub in leaves(layer)
          if rules.BlockRule.matches(rule_pattern, sub.name,
                                     paths.get(id(sub), ''))]


def no_rule_error(layer, changed):
  """The error for a block without a rule; `changed`: keys of the
  sublayers whose widths change."""
  cls = type(layer)
  paths = {s.name: p for s, p in find('*', layer)}
  changed = ['%s (%s.%s)' % (k, layer.name, paths[k.rsplit('/', 1)[-1]])
             if k.rsplit('/', 1)[-1] in paths else k for k in changed]
  return NotImplementedError(
      'slim_model: layer %r (%s.%s) holds prunable sublayers whose widths '
      'change (%s) but has no width rule, so slim_model cannot rebuild it. '
      'Register one, e.g. morph_net.keras.register_width_rule(%s, '
      "sublayers={'<sublayer name or attribute path>': '<config field>'}, "
      "input_field='<field of the input width>', output='input' or "
      "'<output sublayer>'), write the block as a functional model, or leave "
      'its sublayers out of the structure.'
      % (layer.name, cls.__module__, cls.__qualname__,
         ', '.join(changed) or 'its input',
         cls.__name__))


def check_no_zero(layer, zero):
  if zero:
    raise NotImplementedError(
        'Layer(s) %s inside %r (%s) would have no channels; slim_model does '
        'not remove sublayers of a custom layer. Keep at least one channel '
        '(or one head).' % (', '.join(map(repr, zero)), layer.name,
                            type(layer).__name__))


def input_widths(layer, order, leaf_input):
  """{id(block): new input width} for `layer` and its sub-blocks: the input
  width of each one's first analyzed sublayer (`order`: id -> position)."""
  widths = {}
  for block in [layer] + [s for s in leaves(layer) if is_block(s)]:
    firsts = sorted((order[id(s)], id(s)) for s in leaves(block)
                    if id(s) in order)
    if firsts:
      widths[id(block)] = leaf_input[firsts[0][1]]
  return widths


def _width(layer):
  for field in ('units', 'filters'):
    if isinstance(getattr(layer, field, None), int):
      return getattr(layer, field)
  return None


def check_rules(layer, width_of):
  """Raises now what rebuilding `layer` and its sub-blocks would raise
  later (inside Keras's call, under its wrapper): counts that are not
  whole heads, sublayers that set one field differently."""
  for block in [layer] + [s for s in leaves(layer) if is_block(s)]:
    rule = rules.block_rule(block)
    if rule is not None:
      config_updates(block, rule, width_of, None)


def output_sublayer(layer, rule):
  """The sublayer whose channels a block's output has (by its rule)."""
  found = find(rule.output, layer)
  if not found:
    raise ValueError('The width rule of %s names output sublayer %r, which '
                     'layer %r does not have.' % (type(layer).__name__,
                                                  rule.output, layer.name))
  return found[0][0]


def config_updates(layer, rule, width_of, input_width):
  """{config field: value} for a block, from its sublayers' new widths.

  Args:
    width_of: id(sublayer) -> its new width (None: unchanged).
    input_width: the block's new input width (None: unknown/unchanged).
  """
  updates, setter = {}, {}
  paths = sublayer_paths(layer)

  def put(field, value, who):
    if field in updates and updates[field] != value:
      raise ValueError(
          'slim_model: layer %r (%s) sets config field %r from %s (%r) and '
          '%s (%r), which disagree; its config builds them with one value. '
          'Give them consistent counts.' % (layer.name, type(layer).__name__,
                                            field, setter[field],
                                            updates[field], who, value))
    updates[field], setter[field] = value, who

  for pattern, field in rule.sublayers.items():
    for sub in leaves(layer):
      path = paths.get(id(sub), '')
      if not rule.matches(pattern, sub.name, path):
        continue
      width = width_of(sub)
      if width is None:
        continue
      values = field(width, layer) if callable(field) else {field: width}
      for f, v in values.items():
        put(f, v, repr(sub.name))
  if input_width is not None:
    for field in rule.input_field:
      put(field, int(input_width), 'the input width')
  return updates


def from_config(layer, config):
  """`type(layer).from_config(config)` (or `layer.from_config` for a
  class); a config holding derived entries that its own __init__ rejects
  (keras-hub's ViTPatchingAndEmbedding: num_patches; SqueezeAndExcite2D:
  spatial_dims) is retried with only the arguments __init__ names."""
  cls = layer if isinstance(layer, type) else type(layer)
  try:
    return cls.from_config(config)
  except TypeError as e:
    if 'keyword argument' not in str(e):
      raise
    params = inspect.signature(cls.__init__).parameters
    accepted = set(params)
    if _takes_base_arguments(params):
      accepted |= {'name', 'trainable', 'dtype'}
    return cls.from_config({k: v for k, v in config.items()
                            if k in accepted})


def clone_leaf(layer, width, input_width=None):
  """An unbuilt copy of a layer from its config, its width (`filters`,
  `units`, ...) set to `width` by its width rule (None: kept), and the
  config fields its rule says follow the input (`input_field`, e.g.
  ConvNeXt's LayerScale: projection_dim) set to `input_width`. A Lambda
  is copied around its own function object (its config would need
  deserializing Python code, which Keras refuses in safe mode)."""
  if isinstance(layer, keras.layers.Lambda):
    return keras.layers.Lambda(
        layer.function, output_shape=getattr(layer, '_output_shape', None),
        mask=getattr(layer, 'mask', None),
        arguments=getattr(layer, 'arguments', None), name=layer.name)
  config = layer.get_config()
  if rules.width_field(layer) is not None and width is not None:
    rules.set_width(config, layer, width)
  if rules.is_depthwise(layer) and not isinstance(layer, rules.DEPTHWISE) and (
      width is not None):
    # A grouped conv with one input channel per group keeps that shape.
    config['filters'] = int(width)
    config['groups'] = int(width) // rules.depth_multiplier(layer)
  rule = rules.block_rule(layer)
  if rule is not None and input_width is not None:
    for field in rule.input_field:
      config[field] = int(input_width)
  if isinstance(layer, keras.layers.Reshape) and width is not None:
    config['target_shape'] = tuple(config['target_shape'][:-1]) + (
        int(width),)
  return from_config(layer, config)


def _takes_base_arguments(params):
  return any(p.kind == p.VAR_KEYWORD for p in params.values())


# What a get_config() that does not work raises (keras-hub layers without
# one, or reading attributes they never set).
CONFIG_ERRORS = (NotImplementedError, AttributeError, TypeError)


def layer_config(layer, known=()):
  """`layer.get_config()`, or for a layer without a working one (keras-hub's
  ViT MLP has none; DeiTEncoder's reads an attribute it never sets) its
  __init__ arguments read back from the attributes of the same name
  (`known`: arguments the width rule sets)."""
  try:
    return layer.get_config()
  except CONFIG_ERRORS:
    pass  # keras-hub's SwinTransformer layers call get_config on a class
  return config_from_attributes(layer, known)


def config_from_attributes(layer, known=()):
  """A layer's __init__ arguments read back from its attributes of the
  same names (see `layer_config`)."""
  params = inspect.signature(type(layer).__init__).parameters
  config = {}
  if _takes_base_arguments(params):
    config = {'name': layer.name, 'dtype': layer.dtype_policy}
  missing, defaulted = [], []
  for name, param in params.items():
    if name == 'self' or param.kind in (param.VAR_POSITIONAL,
                                        param.VAR_KEYWORD) or name in config:
      continue
    if hasattr(layer, name):
      config[name] = getattr(layer, name)
    elif name in known:
      continue
    elif param.default is param.empty:
      missing.append(name)
    else:
      defaulted.append(name)
  if missing:
    raise NotImplementedError(
        'slim_model: layer %r (%s) has no working get_config() and keeps no '
        'attribute for its argument(s) %s, so it cannot be rebuilt with new '
        'widths. Give the class a get_config().'
        % (layer.name, type(layer).__name__, ', '.join(missing)))
  if defaulted:
    warnings.warn(
        'slim_model: layer %r (%s) has no working get_config(); it is '
        'rebuilt from its attributes, and argument(s) %s, kept under other '
        'names if at all, take their defaults. Check the slim layer, or give '
        'the class a get_config().' % (layer.name, type(layer).__name__,
                                       ', '.join(defaulted)),
        RuntimeWarning, stacklevel=2)
  return config


def rebuild(layer, width_of, input_width_of, clone_leaf, made, record=None,
            prefix=''):
  """A fresh copy of `layer` (a block or a leaf) with its planned widths.

  Args:
    layer: a layer of the old model.
    width_of: old sublayer -> its new width, or None (unchanged/follows).
    input_width_of: old block -> its new input width, or None.
    clone_leaf: old leaf -> a fresh (unbuilt) copy.
    made: {id(old layer): (old, new)}, filled with every layer made here.
    record: {attribute path: sublayer} of the sublayers swapped in after
      the block builds from its config (`rebuild_sublayers`), filled when
      that happens; a `_surgery.SlimModel` re-applies them at load.
    prefix: the attribute path of `layer` inside the top block.
  """
  if isinstance(layer, keras.Model):
    changed = [s.name for s in leaves(layer)
               if width_of(s) is not None and width_of(s) != _width(s)]
    if changed:
      raise NotImplementedError(
          'slim_model: model %r sits inside a custom layer and its layers %s '
          'change width; slim_model rebuilds nested models only where they '
          'are called in a functional graph. Give the custom layer a width '
          'rule that sets them through its config.'
          % (layer.name, ', '.join(map(repr, changed))))
  if not is_block(layer):
    new = clone_leaf(layer)
    made[id(layer)] = (layer, new)
    return new
  rule = rules.block_rule(layer)
  if rule is None:
    raise no_rule_error(layer, [s.name for s in leaves(layer)
                                if width_of(s) is not None])
  updates = config_updates(layer, rule, width_of, input_width_of(layer))
  config = layer_config(layer, updates)
  config.update(updates)
  new = from_config(layer, config)
  if new.name != layer.name:  # some blocks suffix the name they are given
    new.name = layer.name
  # Its own get_config may leave out what it was built from (keras-hub's
  # Qwen3 decoder: head_dim): a SlimModel saves this instead.
  object.__setattr__(new, BUILT_FROM, dict(config, name=layer.name))
  made[id(layer)] = (layer, new)
  if rule.rebuild_sublayers:
    _replace_after_build(new, layer, width_of, input_width_of, clone_leaf,
                         made, {} if record is None else record, prefix)
  return new


def _replace_after_build(new, old, width_of, input_width_of, clone_leaf,
                         made, record, prefix):
  """After `new` builds from its config, swap its weighted sublayers for
  fresh copies with their own widths (they build on first call)."""
  def swap():
    for attr, index, old_child in children(old):
      if not old_child.weights:
        continue
      path = prefix + attr + ('' if index is None else '.%d' % index)
      fresh = rebuild(old_child, width_of, input_width_of, clone_leaf, made,
                      record, path + '.')
      record[path] = fresh
      holder = getattr(new, attr)
      current = holder if index is None else holder[index]
      try:  # pylint: disable=protected-access
        new._tracker.replace_tracked_value('layers', current, fresh)
      except ValueError:
        pass  # not tracked by Keras: the attribute is all there is
      if index is None:
        object.__setattr__(new, attr, fresh)
      else:
        list.__setitem__(holder, index, fresh)

  if new.built:  # built in __init__ (keras-hub's TransformerDecoder)
    swap()
    return
  original = new.build

  @functools.wraps(original)  # Keras maps input shapes by its signature
  def build(*args, **kwargs):
    original(*args, **kwargs)
    swap()

  object.__setattr__(new, 'build', build)


def config_divisors(model, key_of):
  """[(key, m)]: the input channels of layer `key` must be a multiple of m
  because a block's rule says its config requires it (`divisible`).
  `key_of`: id(layer) -> structure key of every analyzed layer."""
  out = []
  for layer in keras_trace.layer_keys(model).values():
    rule = rules.block_rule(layer)
    if rule is None or not rule.divisible:
      continue
    config = layer_config(layer)
    for pattern, field in rule.divisible.items():
      value = config.get(field)
      if not isinstance(value, int) or value < 1:
        raise ValueError(
            'The width rule of %s says its sublayers %r need input widths '
            'that are multiples of config[%r], but layer %r has %r there.'
            % (type(layer).__name__, pattern, field, layer.name, value))
      for sub, _ in find(pattern, layer):
        key = key_of.get(id(sub))
        if key is not None and value > 1:
          out.append((key, value))
  return out


def config_ties(model, key_of):
  """Lists of keys whose counts must be equal: one string config field of
  a block's width rule sets them all (e.g. SegFormer attention's q, k, v
  and projection: `project_dim`). `key_of`: id(layer) -> structure key."""
  groups = []
  for layer in keras_trace.layer_keys(model).values():
    rule = rules.block_rule(layer)
    if rule is None:
      continue
    by_field = {}
    for pattern, field in rule.sublayers.items():
      if not isinstance(field, str):
        continue
      for sub, _ in find(pattern, layer):
        key = key_of.get(id(sub))
        if key is not None:
          by_field.setdefault(field, []).append(key)
    groups.extend(list(dict.fromkeys(keys)) for keys in by_field.values()
                  if len(set(keys)) > 1)
  return groups
