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

A custom layer that holds prunable sublayers (a transformer block, an
inverted residual block) gets a *block rule* instead: which config fields
its sublayers' widths set, which field follows its input width, and where
its output channels come from (see `morph_net.keras._blocks`, which also
holds the built-in rules for Keras's MultiHeadAttention and the keras-hub
blocks):

>>> class Mlp(keras.layers.Layer):
...   def __init__(self, hidden, **kwargs):
...     super().__init__(**kwargs)
...     self.hidden = hidden
...     self.up = keras.layers.Dense(hidden, name='up')
...   def call(self, x):
...     return self.up(x)
...   def get_config(self):
...     return dict(super().get_config(), hidden=self.hidden)
>>> register_width_rule(Mlp, sublayers={'up': 'hidden'}, output='up')
>>> block_rule(Mlp(4)).output
'up'
"""

import fnmatch

import keras

from morph_net.framework import einsum_op_handler
from morph_net.framework import op_types

__all__ = ['BlockRule', 'block_rule', 'register_width_rule', 'width_field']

_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
CONV_TRANSPOSE = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                  keras.layers.Conv3DTranspose)
SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
DEPTHWISE = tuple(getattr(keras.layers, n) for n in (
    'DepthwiseConv1D', 'DepthwiseConv2D') if hasattr(keras.layers, n))

# Layer class -> config field holding its output width.
_RULES = {cls: 'filters' for cls in _CONV + CONV_TRANSPOSE + SEPARABLE}
_RULES[keras.layers.Dense] = 'units'


def einsum_channel_axes(equation):
  """How many trailing output axes of an EinsumDense are its channels (the
  kernel's new output axes: 2 for 'abc,cde->abde')."""
  return max(1, len(einsum_op_handler.kernel_letters(equation)[1]))


def block_size(shape, axes):
  """Channels per step of the first of `shape`'s last `axes` axes (the
  channels are those axes flattened row-major: a head of head-size
  channels, for [.., heads, head size])."""
  size = 1
  for d in shape[len(shape) - axes + 1:]:
    size *= int(d)
  return size


def _einsum_output(config, width):
  """Channels over several output axes (heads x head size) are flattened
  row-major, so a width must be whole blocks of the first axis: that axis
  shrinks, the others keep their size."""
  shape = config['output_shape']
  shape = list(shape) if isinstance(shape, (list, tuple)) else [shape]
  n = min(einsum_channel_axes(config['equation']), len(shape))
  rest = block_size(shape, n)
  if width % rest:
    raise ValueError(
        'EinsumDense %r (%s) has channels over %d output axes %s; slim_model '
        'keeps the inner axes, so its width (%d) must be a multiple of %d '
        '(whole blocks of the first channel axis).'
        % (config.get('name'), config['equation'], n, shape[len(shape) - n:],
           width, rest))
  shape[len(shape) - n] = int(width) // rest
  config['output_shape'] = tuple(shape)


_RULES[keras.layers.EinsumDense] = _einsum_output


class BlockRule:
  """How the config of a layer with prunable sublayers sets their widths.

  Attributes:
    sublayers: {pattern: config field, or function (width, layer) ->
      {field: value}}. A pattern (fnmatch) is matched against a sublayer's
      name and its attribute path inside the layer ('mlp.dense_1',
      'encoder_layers.0'); the sublayer's new width is written into the
      field. Sublayers that set one field must agree.
    input_field: config field(s) that follow the layer's input width.
    output: 'input' (the output channels are the input's: a residual
      block) or the pattern of the sublayer whose channels the output has.
    rebuild_sublayers: the config cannot express every sublayer width
      (e.g. a head count that also sets the head size): after the layer is
      built from its config, each sublayer with weights is replaced by a
      fresh copy built with its own width (so the layer's config keeps its
      original head count and does not describe the slim layer).
    divisible: {sublayer pattern: config field}: the matched sublayers'
      input channels must be a multiple of the layer's config[field] (e.g.
      an encoder whose __init__ requires hidden_dim % num_heads == 0:
      {'query': 'num_heads'}). The analysis makes it a count quantum.
  """

  def __init__(self, sublayers=None, input_field=(), output='input',
               rebuild_sublayers=False, divisible=None):
    self.sublayers = dict(sublayers or {})
    self.divisible = dict(divisible or {})
    self.input_field = ((input_field,) if isinstance(input_field, str)
                        else tuple(input_field))
    self.output = output
    self.rebuild_sublayers = bool(rebuild_sublayers)

  @staticmethod
  def matches(pattern, name, path):
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(
        path, pattern)


_BLOCKS = {}  # class or 'module.QualName' -> BlockRule


def register_width_rule(layer_class, config_field=None, sublayers=None,
                        input_field=(), output=None,
                        rebuild_sublayers=False, divisible=None):
  """Declares how a layer class's config sets its width(s).

  A prunable layer: `config[config_field]` is its width. A layer with
  prunable sublayers (a block): `sublayers`, `input_field`, `output` and
  `rebuild_sublayers` as in `BlockRule`.

  Args:
    layer_class: a Keras layer class, or its 'module.QualName' (so a rule
      needs no import of an optional package).
    config_field: the `get_config()` key holding its output channel count,
      or a function (config, width) -> None that sets it.
    sublayers: for a block, {sublayer pattern: config field or function}.
    input_field: for a block, config field(s) following its input width.
    output: for a block, 'input' or the pattern of its output sublayer.
    rebuild_sublayers: for a block, see `BlockRule`.
    divisible: for a block, see `BlockRule`.
  """
  if isinstance(layer_class, str):
    if config_field is not None:
      raise TypeError('A layer given by name takes a block rule only.')
  elif not (isinstance(layer_class, type) and
            issubclass(layer_class, keras.layers.Layer)):
    raise TypeError('layer_class must be a keras.layers.Layer subclass, got '
                    '%r.' % (layer_class,))
  if config_field is None:
    if output is None:
      raise TypeError('A block rule needs `output`: \'input\' or the '
                      'pattern of the sublayer producing its output.')
    _BLOCKS[layer_class] = BlockRule(sublayers, input_field, output,
                                     rebuild_sublayers, divisible)
    return
  if not callable(config_field) and (
      not isinstance(config_field, str) or not config_field):
    raise TypeError('config_field must be a config key (str) or a function '
                    '(config, width) -> None, got %r.' % (config_field,))
  _RULES[layer_class] = config_field


def block_rule(layer):
  """The `BlockRule` of `layer`'s class (or a base class), or None."""
  for cls in type(layer).__mro__:
    for key in (cls, '%s.%s' % (cls.__module__, cls.__qualname__)):
      if key in _BLOCKS:
        return _BLOCKS[key]
  return None


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
  if not isinstance(layer, _CONV):
    return isinstance(layer, DEPTHWISE)
  kernel = getattr(layer, 'kernel', None)
  return op_types.is_depthwise(False, getattr(layer, 'groups', 1),
                               None if kernel is None else kernel.shape)


def depth_multiplier(layer):
  """Output channels per input channel of a depthwise(-like) conv."""
  if isinstance(layer, DEPTHWISE):
    return layer.depth_multiplier
  return layer.filters // layer.groups
