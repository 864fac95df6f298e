"""Tracing a Keras model or function for the graph view, and layer keys.

`trace` runs a Keras 3 model (or a `tf.function`) once in inference mode and
returns the concrete function, its variables and which Keras layer owns each
variable. `layer_keys` names every layer of a model with a key that stands for
that layer alone (see `graph_view.GraphView.from_model`).
"""

import tensorflow as tf

from morph_net.framework import errors


def tf_variable(v):
  """The tf.Variable behind a Keras 3 variable (never an autocast copy)."""
  if isinstance(v, tf.Variable):
    return v
  inner = getattr(v, '_value', None)
  if isinstance(inner, tf.Variable):
    return inner
  return getattr(v, 'value', v)


def _layer_paths(model):
  """(path, layer) for every layer below `model`, parents before children.

  A path joins the names from the top: 'block1/fc' is the layer `fc` of
  the nested model (or custom layer) `block1`.
  """
  found, seen = [], set()

  def visit(layer, prefix):
    for child in _children(layer):
      if id(child) in seen:
        continue
      seen.add(id(child))
      path = prefix + child.name
      found.append((path, child))
      visit(child, path + '/')

  visit(model, '')
  return found


def layer_keys(model):
  """{key: layer} for every layer of a Keras model, each key naming one layer.

  The key is the layer's name where no other layer in the model (at any
  depth) has that name, else its path ('b1/fc', 'b2/fc'), so exported
  structures keep plain names wherever they are unambiguous.
  """
  paths = _layer_paths(model)
  counts = {}
  for _, layer in paths:
    counts[layer.name] = counts.get(layer.name, 0) + 1
  keys = {}
  for path, layer in paths:
    key = layer.name if counts[layer.name] == 1 else path
    if key in keys:  # the same path twice: only through odd attribute names
      key = '%s#%d' % (key, sum(k.split('#')[0] == key for k in keys))
    keys[key] = layer
  return keys


def _layer_variables(model):
  """(id(tf.Variable) -> key of its owning layer, key -> layer).

  The innermost layer owning a variable wins: a nested model (or a custom
  layer) lists its sublayers' weights too, and a model may reach the same
  layers through two parents (keras-hub's DeepLabV3 keeps its encoder and a
  functional model over it), so the owner is a leaf layer holding the
  variable (else the layer with the fewest weights), whatever the visit
  order.
  """
  keys = layer_keys(model)
  owner, rank = {}, {}
  for key, layer in keys.items():
    weights = getattr(layer, 'weights', [])
    # Leaves (no sublayers) first, then the layer holding fewest weights.
    mine = (bool(_children(layer)), len(weights))
    for v in weights:
      var = id(tf_variable(v))
      if var not in rank or mine < rank[var]:
        owner[var], rank[var] = key, mine
  return owner, keys


def _children(layer):
  if not hasattr(layer, '_flatten_layers'):
    return []
  return list(layer._flatten_layers(  # pylint: disable=protected-access
      include_self=False, recursive=False))


def input_specs(model):
  """TensorSpecs for a Keras model's inputs (in its input structure: one
  spec, a list, or a dict such as keras-hub's {'token_ids', 'padding_mask'}),
  or None if unknown.

  Functional models know their inputs; a subclassed model that has been
  called once remembers the shape it was built with (batch size dropped).
  """
  try:
    structure = model.input if getattr(model, 'inputs', None) else None
  except (AttributeError, ValueError):
    structure = None
  if structure is not None:
    return tf.nest.map_structure(lambda x: tf.TensorSpec(x.shape, x.dtype),
                                 structure)
  built = getattr(model, '_build_shapes_dict', None) or {}
  if len(built) == 1:
    shape = next(iter(built.values()))
    if _is_shape(shape) and shape:
      return [tf.TensorSpec([None] + list(shape[1:]), tf.float32)]
  return None


def _is_shape(x):
  return (isinstance(x, (list, tuple, tf.TensorShape)) and
          all(d is None or isinstance(d, int) for d in x))


def normalize_signature(signature):
  """TensorSpecs for a user's input_signature (see `_normalize`)."""
  return _normalize(signature)


def _normalize(signature):
  """TensorSpecs in the signature's structure; bare shapes become float32
  specs ([None, 8, 8, 3] is one shape, [[None, 8], [None, 4]] two)."""
  if isinstance(signature, tf.TensorSpec):
    return signature
  if isinstance(signature, dict):
    return {k: _normalize(v) for k, v in signature.items()}
  if _is_shape(signature) and not (isinstance(signature, (list, tuple))
                                   and not signature):
    return tf.TensorSpec(signature, tf.float32)
  if isinstance(signature, (list, tuple)):
    return type(signature)(_normalize(s) for s in signature)
  raise TypeError('input_signature must hold tf.TensorSpecs or shapes (in '
                  "the model's input structure), got %r." % (signature,))


def _at_batch_one(specs):
  return [tf.TensorSpec([1] + list(s.shape[1:]), s.dtype, s.name)
          for s in specs]


def _only_batch_unknown(flat_specs):
  """True if every input's dims but the batch are known and the batch is not
  (then a trace at batch 1 may have static shapes the batch-None one has
  not)."""
  for s in flat_specs:
    dims = s.shape.as_list() if s.shape.rank is not None else None
    if not dims or dims[0] is not None or None in dims[1:]:
      return False
  return True


def trace(model, input_signature, fixed_batch=False):
  """Traces a model in inference mode.

  Returns:
    (concrete function, variables, (variable owner keys, key -> layer),
    batch-1 signature or None). The batch-1 signature (the same structure at
    batch 1) is given when only the batch dim is unknown: the analysis
    retraces with it if the batch-None trace leaves shapes it needs unknown.
  """
  if isinstance(model, tf.types.experimental.ConcreteFunction):
    return model, list(model.variables), ({}, {}), None
  is_keras = hasattr(model, 'layers') and hasattr(model, 'variables')
  if input_signature is None and is_keras:
    input_signature = input_specs(model)
  if input_signature is None:
    raise errors.AnalysisError(
        'Cannot infer the input shape of %r. Pass input_signature=[tf.'
        'TensorSpec([None, H, W, C], tf.float32)] (or build the model by '
        'calling it once).' % (type(model).__name__,))
  structure = _normalize(input_signature)
  flat = tf.nest.flatten(structure)
  if is_keras:
    single = isinstance(structure, (list, tuple)) and len(structure) == 1

    def call(*args):
      inputs = tf.nest.pack_sequence_as(structure, list(args))
      return model(inputs[0] if single else inputs, training=False)

    function = tf.function(call)
    owners = _layer_variables(model)
  else:
    function = model if hasattr(model, 'get_concrete_function') else (
        tf.function(model))
    owners = ({}, {})
  concrete = function.get_concrete_function(*flat)
  batch_one = None
  if not fixed_batch and _only_batch_unknown(flat):
    batch_one = tf.nest.pack_sequence_as(structure, _at_batch_one(flat))
  variables = model.variables if is_keras else concrete.variables
  return concrete, list(variables), owners, batch_one


def check_channels_last(layer_items):
  """Refuses Keras layers ((key, layer) pairs) that keep their channels
  on axis 1: the analysis reads channels from the last axis (Keras's
  default, channels_last)."""
  found = [key for key, layer in layer_items
           if getattr(layer, 'data_format', None) == 'channels_first']
  if found:
    raise errors.UnsupportedOpError(
        'Layer(s) %s use data_format="channels_first"; morph_net analyzes '
        'and slims channels-last models (channels on the last axis, the '
        'Keras default). Build the model with data_format="channels_last" '
        '(or keras.config.set_image_data_format("channels_last") before '
        'building it) and load its weights into that model.'
        % ', '.join(repr(k) for k in found[:10]))


def specs_for(model, input_signature=None):
  """The TensorSpecs a model is called on (its signature, its inputs, or
  the shape a subclassed model was built with); a clear error if unknown."""
  if input_signature is not None:
    return normalize_signature(input_signature)
  specs = input_specs(model)
  if specs is None:
    raise ValueError(
        'The input shape of model %r is not known: call it once on data, or '
        'pass input_signature=[tf.TensorSpec([None, ...], tf.float32)].'
        % model.name)
  if isinstance(specs, list) and len(specs) == 1:
    return specs[0]
  return specs
