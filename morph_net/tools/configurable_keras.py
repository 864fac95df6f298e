"""Keras layers whose widths come from a learned structure.

`ConfigurableConv2D`, `ConfigurableSeparableConv2D` and `ConfigurableDense`
are Keras 3 layers that take their `filters` / `units` from a
parameterization when first called:

>>> import keras
>>> built = {}
>>> conv = ConfigurableConv2D(filters=16, kernel_size=3, name='conv1',
...                           parameterization={'conv1': 5},
...                           constructed_ops=built)
>>> conv(keras.ops.ones([1, 8, 8, 3])).shape
TensorShape([1, 6, 6, 5])
>>> built
{'conv1': 5}

A layer is found in the parameterization by its Keras layer name (the key a
structure exported from a Keras model uses) or by the graph op names the
original MorphNet used: 'NAME/Conv2D' (and Keras 3's 'NAME/convolution'),
'NAME/separable_conv2d', 'NAME/MatMul' and 'NAME/Tensordot/MatMul', each
also under the enclosing name scope. A width of 0 makes the layer return
`VANISHED`, and every layer given VANISHED returns it too;
`PassThroughKerasLayerWrapper` gives other layer classes that behaviour.
`hijack_keras_module` swaps a module's Conv2D / SeparableConv2D / Dense
(and the pass-through layers) for these, so network code written against
the module builds the learned structure.
"""

import collections
import functools

import keras
import tensorflow as tf

from morph_net.tools import _vanished
from morph_net.tools._vanished import is_vanished
from morph_net.tools._vanished import VANISHED

__all__ = ['ConfigurableConv2D', 'ConfigurableDense',
           'ConfigurableSeparableConv2D', 'PassThroughKerasLayerWrapper',
           'hijack_keras_module']


class _Configurable:
  """Mixin: resolves the width attribute from a parameterization on the
  first call (before Keras builds the layer)."""

  _WIDTH_ATTR = 'filters'
  _OP_SUFFIXES = ()

  def _init_configurable(self, parameterization, constructed_ops, is_strict,
                         sentinel):
    if sentinel is not None:
      raise ValueError('%s takes keyword arguments only (e.g. filters=..., '
                       'kernel_size=...).' % type(self).__name__)
    # Plain attributes: Keras would track (copy) a dict set on a layer, and
    # constructed_ops is shared with the caller.
    object.__setattr__(self, 'parameterization', dict(parameterization or {}))
    object.__setattr__(self, 'constructed_ops', (
        constructed_ops if constructed_ops is not None
        else collections.OrderedDict()))
    self.is_strict = is_strict
    self.is_null_op = False
    self._resolved = False

  def _candidate_names(self):
    prefix = tf.compat.v1.get_default_graph().get_name_scope()
    bases = [self.name] + ([prefix + '/' + self.name] if prefix else [])
    return [b + suffix for b in bases for suffix in ('',) + tuple(
        '/' + s for s in self._OP_SUFFIXES)]

  def _resolve_width(self):
    names = self._candidate_names()
    found = [n for n in names if n in self.parameterization]
    if len(set(found)) > 1:
      raise KeyError('Layer %r matches several parameterization keys: %s.'
                     % (self.name, found))
    if not found and self.is_strict:
      raise KeyError('Layer %r: none of %s is in the parameterization '
                     '(strict).' % (self.name, names))
    key = found[0] if found else self.name
    width = self.parameterization.get(key, getattr(self, self._WIDTH_ATTR))
    if key in self.constructed_ops:
      tf.compat.v1.logging.warning('Layer %r built more than once.', key)
    self.constructed_ops[key] = width
    self.is_null_op = width == 0
    setattr(self, self._WIDTH_ATTR, width)
    self._resolved = True

  def __call__(self, inputs, *args, **kwargs):
    if is_vanished(inputs):
      return VANISHED
    if not self._resolved:
      self._resolve_width()
    if self.is_null_op:
      return VANISHED  # no weights: the layer is gone from the network
    return super().__call__(inputs, *args, **kwargs)


@keras.saving.register_keras_serializable(package='morph_net')
class ConfigurableConv2D(_Configurable, keras.layers.Conv2D):
  """A Keras Conv2D whose `filters` come from `parameterization`.

  Args:
    sentinel: keeps the arguments keyword-only.
    parameterization: {layer name or op name: filters}.
    constructed_ops: a dict that records {key: filters used} (shared by the
      layers of one network); a new OrderedDict if None.
    is_strict: a layer missing from the parameterization raises KeyError.
    **kwargs: Conv2D's arguments.
  """

  _OP_SUFFIXES = ('Conv2D', 'convolution', 'ConfigurableConv2D')

  def __init__(self, sentinel=None, parameterization=None,
               constructed_ops=None, is_strict=False, **kwargs):
    self._init_configurable(parameterization, constructed_ops, is_strict,
                            sentinel)
    super().__init__(**kwargs)


@keras.saving.register_keras_serializable(package='morph_net')
class ConfigurableSeparableConv2D(_Configurable, keras.layers.SeparableConv2D):
  """A Keras SeparableConv2D whose `filters` (the pointwise conv's) come
  from `parameterization` (see `ConfigurableConv2D`)."""

  _OP_SUFFIXES = ('separable_conv2d',)

  def __init__(self, sentinel=None, parameterization=None,
               constructed_ops=None, is_strict=False, **kwargs):
    self._init_configurable(parameterization, constructed_ops, is_strict,
                            sentinel)
    super().__init__(**kwargs)


@keras.saving.register_keras_serializable(package='morph_net')
class ConfigurableDense(_Configurable, keras.layers.Dense):
  """A Keras Dense whose `units` come from `parameterization` (see
  `ConfigurableConv2D`)."""

  _WIDTH_ATTR = 'units'
  _OP_SUFFIXES = ('MatMul', 'Tensordot/MatMul')

  def __init__(self, sentinel=None, parameterization=None,
               constructed_ops=None, is_strict=False, **kwargs):
    self._init_configurable(parameterization, constructed_ops, is_strict,
                            sentinel)
    super().__init__(**kwargs)


class PassThroughKerasLayerWrapper:
  """Builds `layer_class(*args, **kwargs)` per call, skipping VANISHED.

  A single VANISHED input gives VANISHED; a list drops its VANISHED
  entries (VANISHED if none is left, the one tensor itself if one is), so
  an Add, Concatenate or Multiply whose branch vanished keeps the others.
  """

  def __init__(self, keras_layer_class, *args_for_keras_layer,
               **kwargs_for_keras_layer):
    self.keras_layer_class = keras_layer_class
    self.args_for_keras_layer = args_for_keras_layer
    self.kwargs_for_keras_layer = kwargs_for_keras_layer
    self.keras_layer_instance = None

  def __call__(self, inputs, *args, **kwargs):
    if isinstance(inputs, (list, tuple)):
      inputs = [t for t in inputs if not is_vanished(t)]
      if not inputs:
        return VANISHED
      if len(inputs) == 1:
        return inputs[0]
    elif is_vanished(inputs):
      return VANISHED
    self.keras_layer_instance = self.keras_layer_class(
        *self.args_for_keras_layer, **self.kwargs_for_keras_layer)
    return self.keras_layer_instance(inputs, *args, **kwargs)


_CONFIGURABLE = (('Conv2D', ConfigurableConv2D),
                 ('SeparableConv2D', ConfigurableSeparableConv2D),
                 ('Dense', ConfigurableDense))
_PASS_THROUGH = ('BatchNormalization', 'Activation', 'ReLU', 'UpSampling2D',
                 'Add', 'Concatenate', 'Multiply', 'MaxPooling2D',
                 'AveragePooling2D', 'GlobalAveragePooling2D', 'Flatten')


def hijack_keras_module(parameterization_or_file, module,
                        fallback_rule='pass_through',
                        remove_common_prefix=False,
                        keep_first_channel_alive=True):
  """Points a module's Keras layer classes at configurable versions.

  After it, `module.Conv2D(...)`, `module.SeparableConv2D(...)` and
  `module.Dense(...)` build `Configurable*` layers sharing one
  parameterization and one constructed_ops dict, and the module's other
  layer classes (BatchNormalization, Activation, Add, Concatenate, ...)
  pass VANISHED through (`PassThroughKerasLayerWrapper`).

  Args:
    parameterization_or_file: {name: width}, or the path of a structure
      JSON file.
    module: the module (or any object) whose attributes to replace; not a
      Keras layers module itself.
    fallback_rule: 'pass_through' or 'strict' (a `FallbackRule` or name).
    remove_common_prefix: drop the first '/'-separated part of every key.
    keep_first_channel_alive: widths of 0 become 1 (no layer vanishes).

  Returns:
    (constructed_ops, originals): the OrderedDict the layers fill, and
    {class name: original} of what was replaced.

  Raises:
    ValueError: `module` is Keras' own layers module, or a bad argument.
  """
  if module in (keras.layers, getattr(tf.keras, 'layers', None)):
    raise ValueError('hijack_keras_module would replace the Keras layers '
                     'module itself; pass the module of your network code.')
  if isinstance(parameterization_or_file, str):
    parameterization = _vanished.load_parameterization(
        parameterization_or_file)
  elif isinstance(parameterization_or_file, dict) or (
      parameterization_or_file is None):
    parameterization = dict(parameterization_or_file or {})
  else:
    raise ValueError('Expected a dict or a file name, got %r.'
                     % type(parameterization_or_file))
  if remove_common_prefix:
    parameterization = {k.split('/', 1)[-1]: v
                        for k, v in parameterization.items()}
  if keep_first_channel_alive:
    parameterization = {k: max(v, 1) for k, v in parameterization.items()}
  rule = _vanished.fallback_rule_of(fallback_rule)
  if rule == _vanished.FallbackRule.zero:
    raise ValueError("fallback_rule='zero' is not supported for Keras "
                     "layers; use 'pass_through' or 'strict'.")
  constructed_ops = collections.OrderedDict()
  originals = {}
  for class_name, configurable in _CONFIGURABLE:
    if hasattr(module, class_name):
      originals[class_name] = getattr(module, class_name)
      setattr(module, class_name, functools.partial(
          configurable, parameterization=parameterization,
          constructed_ops=constructed_ops,
          is_strict=rule == _vanished.FallbackRule.strict))
  for class_name in _PASS_THROUGH:
    if hasattr(module, class_name):
      originals[class_name] = getattr(module, class_name)
      setattr(module, class_name, functools.partial(
          PassThroughKerasLayerWrapper, originals[class_name]))
  return constructed_ops, originals
