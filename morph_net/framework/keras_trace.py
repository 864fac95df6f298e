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
    children = []
    if hasattr(layer, '_flatten_layers'):
      children = list(layer._flatten_layers(  # pylint: disable=protected-access
          include_self=False, recursive=False))
    for child in children:
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

  The innermost layer owning a variable wins: a nested model lists its
  sublayers' weights too, and parents are visited before their children.
  """
  keys = layer_keys(model)
  owner = {}
  for key, layer in keys.items():
    for v in getattr(layer, 'weights', []):
      owner[id(tf_variable(v))] = key
  return owner, keys


def input_specs(model):
  """TensorSpecs for a Keras model's inputs, or None if unknown.

  Functional models know their inputs; a subclassed model that has been
  called once remembers the shape it was built with (batch size dropped).
  """
  inputs = getattr(model, 'inputs', None)
  try:
    if inputs:
      return [tf.TensorSpec(x.shape, x.dtype) for x in inputs]
  except (AttributeError, ValueError):
    pass
  built = getattr(model, '_build_shapes_dict', None) or {}
  if len(built) == 1:
    shape = next(iter(built.values()))
    if (isinstance(shape, (tuple, list)) and shape and
        all(d is None or isinstance(d, int) for d in shape)):
      return [tf.TensorSpec([None] + list(shape[1:]), tf.float32)]
  return None


def trace(model, input_signature):
  """Traces a model in inference mode; returns (concrete, variables, owner)."""
  if isinstance(model, tf.types.experimental.ConcreteFunction):
    return model, list(model.variables), ({}, {})
  is_keras = hasattr(model, 'layers') and hasattr(model, 'variables')
  if input_signature is None and is_keras:
    input_signature = input_specs(model)
  if input_signature is None:
    raise errors.AnalysisError(
        'Cannot infer the input shape of %r. Pass input_signature=[tf.'
        'TensorSpec([None, H, W, C], tf.float32)] (or build the model by '
        'calling it once).' % (type(model).__name__,))
  input_signature = [s if isinstance(s, tf.TensorSpec)
                     else tf.TensorSpec(s, tf.float32)
                     for s in input_signature]
  if is_keras:
    single = len(input_signature) == 1

    def call(*args):
      return model(args[0] if single else list(args), training=False)

    concrete = tf.function(call).get_concrete_function(*input_signature)
    return concrete, list(model.variables), _layer_variables(model)
  if hasattr(model, 'get_concrete_function'):
    concrete = model.get_concrete_function(*input_signature)
    return concrete, list(concrete.variables), ({}, {})
  concrete = tf.function(model).get_concrete_function(*input_signature)
  return concrete, list(concrete.variables), {}
