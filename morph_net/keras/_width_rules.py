"""Width rules: which config field of a layer class sets its width.

`slim_model` rebuilds a layer from its config with the new width written
into one field (`filters` for convolutions, `units` for Dense). A layer
class of your own that the analysis prunes (its compute op reads its
kernel) needs a rule too:

>>> import keras
>>> class MyDense(keras.layers.Dense):
...   pass
>>> register_width_rule(MyDense, 'units')
>>> width_field(MyDense(3))
'units'

A rule may also be a function (config, width) -> None that writes the
width into the config (EinsumDense: the last entry of `output_shape`).
Subclasses inherit their base class's rule; the most specific registered
class wins.
"""

import keras

__all__ = ['register_width_rule', 'width_field']

_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
CONV_TRANSPOSE = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                  keras.layers.Conv3DTranspose)
SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
DEPTHWISE = tuple(getattr(keras.layers, n) for n in (
    'DepthwiseConv1D', 'DepthwiseConv2D') if hasattr(keras.layers, n))

# Layer class -> config field holding its output width.
_RULES = {cls: 'filters' for cls in _CONV + CONV_TRANSPOSE + SEPARABLE}
_RULES[keras.layers.Dense] = 'units'


def _einsum_output(config, width):
  shape = config['output_shape']
  shape = list(shape) if isinstance(shape, (list, tuple)) else [shape]
  config['output_shape'] = tuple(shape[:-1]) + (int(width),)


_RULES[keras.layers.EinsumDense] = _einsum_output


def register_width_rule(layer_class, config_field):
  """Declares that `layer_class`'s width is `config[config_field]`.

  Args:
    layer_class: a Keras layer class whose kernel the analysis prunes.
    config_field: the `get_config()` key holding its output channel count,
      or a function (config, width) -> None that sets it.
  """
  if not (isinstance(layer_class, type) and
          issubclass(layer_class, keras.layers.Layer)):
    raise TypeError('layer_class must be a keras.layers.Layer subclass, got '
                    '%r.' % (layer_class,))
  if not callable(config_field) and (
      not isinstance(config_field, str) or not config_field):
    raise TypeError('config_field must be a config key (str) or a function '
                    '(config, width) -> None, got %r.' % (config_field,))
  _RULES[layer_class] = config_field


def set_width(config, layer, width):
  """Writes `width` into `layer`'s config by its rule."""
  rule = width_field(layer)
  if callable(rule):
    rule(config, width)
  else:
    config[rule] = int(width)


def width_field(layer):
  """The rule (config field or function) setting `layer`'s width, or None."""
  if is_depthwise(layer):
    return None
  for cls in type(layer).__mro__:
    if cls in _RULES:
      return _RULES[cls]
  return None


def is_depthwise(layer):
  """DepthwiseConv, or a Conv with one input channel per group (groups ==
  input channels, as in ConvNeXt): its output channels follow its input."""
  if isinstance(layer, DEPTHWISE):
    return True
  kernel = getattr(layer, 'kernel', None)
  return (isinstance(layer, _CONV) and getattr(layer, 'groups', 1) > 1
          and kernel is not None and kernel.shape[-2] == 1)


def depth_multiplier(layer):
  """Output channels per input channel of a depthwise(-like) conv."""
  if isinstance(layer, DEPTHWISE):
    return layer.depth_multiplier
  return layer.filters // layer.groups
