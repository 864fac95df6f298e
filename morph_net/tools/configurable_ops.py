"""Builds `tf.compat.v1` graph-mode networks whose widths come from a structure.

Write the network once against a `ConfigurableOps`; give it the learned
structure (the JSON `StructureExporter` writes for a graph: op name ->
alive channels) and every conv / dense layer takes its width from it:

    ops = ConfigurableOps(parameterization={'conv1/Conv2D': 12})
    net = ops.conv2d(images, 64, 3, scope='conv1')      # 12 channels
    net = ops.batch_norm(net, scope='bn1')

Keys are the names of the ops the exporter reports: 'SCOPE/Conv2D' for
conv2d, 'SCOPE/separable_conv2d' for the pointwise half of separable_conv2d,
'SCOPE/MatMul' for fully_connected, each under the enclosing name scope.

A width of 0 makes a layer vanish: it returns `VANISHED` and adds no ops.
Every op given a VANISHED input returns VANISHED; `concat` drops vanished
inputs and `add` skips vanished operands (VANISHED only if all are). So a
residual branch whose conv is 0 collapses to its shortcut and an Inception
branch disappears from its concat, as in MorphNet's topology morphing.

Fallback rules for layers missing from the structure: 'pass_through' (use
the width the code asks for), 'strict' (KeyError), 'zero' (the layer
vanishes).

Coming from the original MorphNet: open tf_slim `arg_scope`s for
`slim.conv2d` & co. apply to the matching methods (see `_slim_compat`);
`function_dict={'conv2d': my_conv, ...}` builds a layer with your function
(called as `fn(inputs, width, *args, **kwargs)`), and
`function_dict=slim_function_dict()` builds every layer with tf_slim, the
original's defaults included (e.g. ReLU after each conv).
`hijack_module_functions` swaps a module's layer functions for these, and
`configurable_keras` holds the Keras layers.
"""

import collections
import contextlib
import logging

import tensorflow as tf

from morph_net.tools import _hijack
from morph_net.tools import _slim_compat
from morph_net.tools import _vanished
from morph_net.tools.configurable_keras import ConfigurableConv2D
from morph_net.tools.configurable_keras import ConfigurableDense
from morph_net.tools.configurable_keras import ConfigurableSeparableConv2D
from morph_net.tools.configurable_keras import hijack_keras_module
from morph_net.tools.configurable_keras import PassThroughKerasLayerWrapper
from morph_net.tools._vanished import FallbackRule
from morph_net.tools._vanished import is_vanished
from morph_net.tools._vanished import load_parameterization
from morph_net.tools._vanished import UnknownFallbackRuleError
from morph_net.tools._vanished import VANISHED

__all__ = ['ConfigurableConv2D', 'ConfigurableDense', 'ConfigurableOps',
           'ConfigurableSeparableConv2D', 'FallbackRule',
           'PassThroughKerasLayerWrapper', 'UnknownFallbackRuleError',
           'VANISHED', 'decorator_from_parameterization_file',
           'hijack_keras_module', 'hijack_module_functions', 'is_vanished',
           'load_parameterization', 'recover_module_functions',
           'slim_function_dict']

slim_function_dict = _slim_compat.slim_function_dict

tf1 = tf.compat.v1

_FUNCTION_NAMES = ('conv2d', 'separable_conv2d', 'fully_connected',
                   'batch_norm', 'max_pool2d', 'avg_pool2d', 'concat',
                   'add_n')
# Width functions -> the suffix of the op whose name keys their width.
_WIDTH_SUFFIX = {'conv2d': 'Conv2D', 'separable_conv2d': 'separable_conv2d',
                 'fully_connected': 'MatMul'}
_ZEROS = tf1.zeros_initializer()


def decorator_from_parameterization_file(filename, fallback_rule='pass_through',
                                         **kwargs):
  """A `ConfigurableOps` whose widths are read from a structure JSON file."""
  return ConfigurableOps(load_parameterization(filename), fallback_rule,
                         **kwargs)


class ConfigurableOps:
  """Graph-mode layer functions whose widths come from a parameterization.

  Args:
    parameterization: {op name: width}, e.g. a learned structure.
    fallback_rule: a `FallbackRule` or its name: 'pass_through' (default),
      'strict' or 'zero'.
    function_dict: optional {method name: function} replacing the native
      layers ('conv2d', 'separable_conv2d', 'fully_connected', 'batch_norm',
      'max_pool2d', 'avg_pool2d', 'concat', 'add_n'), e.g.
      `slim_function_dict()`. Width functions are called as
      `fn(inputs, width, *args, **kwargs)`.

  Attributes:
    constructed_ops: OrderedDict op name -> width used, in build order (the
      structure of the network actually built; 0 for vanished layers).

  Raises:
    UnknownFallbackRuleError: (a KeyError and a ValueError) an unknown
      fallback_rule name.
    ValueError: a fallback_rule of another type, or a bad width.

  >>> with tf.Graph().as_default():
  ...   ops = ConfigurableOps({'a/Conv2D': 3, 'b/Conv2D': 0})
  ...   x = tf1.placeholder(tf.float32, [None, 8, 8, 2])
  ...   a = ops.conv2d(x, 16, 3, scope='a')
  ...   b = ops.conv2d(x, 16, 3, scope='b')
  ...   print(a.shape, b, ops.concat([a, b]).shape)
  (None, 8, 8, 3) VANISHED (None, 8, 8, 3)
  >>> dict(ops.constructed_ops)
  {'a/Conv2D': 3, 'b/Conv2D': 0}
  """

  def __init__(self, parameterization=None, fallback_rule='pass_through',
               function_dict=None):
    fallback_rule = _vanished.fallback_rule_of(fallback_rule)
    self._parameterization = dict(parameterization or {})
    bad = {k: v for k, v in self._parameterization.items()
           if isinstance(v, bool) or not isinstance(v, int) or v < 0}
    if bad:
      raise ValueError('Widths must be non-negative integers: %s' % bad)
    unknown = sorted(set(function_dict or {}) - set(_FUNCTION_NAMES))
    if unknown:
      raise ValueError('function_dict names %s; known: %s.'
                       % (unknown, sorted(_FUNCTION_NAMES)))
    self._functions = dict(function_dict or {})
    self._fallback = fallback_rule
    self.constructed_ops = collections.OrderedDict()

  def function_for(self, name):
    """The function given for `name` in function_dict, or None (native)."""
    return self._functions.get(name)

  def _call_function(self, name, args, kwargs):
    """Calls function_dict[name] the original's way: a width function gets
    (inputs, width, *args, **kwargs); VANISHED in, VANISHED out."""
    function, args = self._functions[name], list(args)
    inputs = kwargs.pop('inputs') if 'inputs' in kwargs else args.pop(0)
    if is_vanished(inputs):
      return VANISHED
    if name not in _WIDTH_SUFFIX:
      return function(inputs, *args, **kwargs)
    requested = (kwargs.pop('num_outputs') if 'num_outputs' in kwargs
                 else args.pop(0))
    if requested is None:  # separable_conv2d: depthwise only
      return function(inputs, None, *args, **kwargs)
    scope = kwargs.get('scope') or kwargs.get('name')
    self._check_scope(scope, name)
    width = self._width(self._op_name(scope, _WIDTH_SUFFIX[name]), requested)
    if width == 0:
      return VANISHED
    return function(inputs, width, *args, **kwargs)

  @property
  def parameterization(self):
    return dict(self._parameterization)

  @property
  def fallback_rule(self):
    return self._fallback

  # ------------------------------------------------------------ helpers
  def _op_name(self, scope, suffix):
    prefix = tf1.get_default_graph().get_name_scope()
    return '/'.join(p for p in (prefix, scope, suffix) if p)

  def _width(self, op_name, requested):
    if op_name in self._parameterization:
      width = self._parameterization[op_name]
    elif self._fallback == FallbackRule.strict:
      raise KeyError('op_name "%s" not found in parameterization '
                     "(fallback_rule='strict'). Known ops: %s" % (
                         op_name, sorted(self._parameterization)[:20]))
    elif self._fallback == FallbackRule.zero:
      width = 0
    else:
      width = int(requested)
    if op_name in self.constructed_ops:
      logging.warning('ConfigurableOps: op %r built more than once; its ops '
                      'get uniquified names that the structure will not '
                      'match.', op_name)
    self.constructed_ops[op_name] = width
    return width

  @staticmethod
  def _scopes(scope, reuse=None):
    """Variable scope `scope`, and the name scope with the same exact path
    (so op names are SCOPE/Conv2D even if the variable scope is reused).
    With `reuse`, the variables are shared and the ops get a new name scope
    (SCOPE_1/Conv2D), as tf_slim does."""
    if reuse:
      return tf1.variable_scope(scope, reuse=True), contextlib.nullcontext()
    graph = tf1.get_default_graph()
    prefix = graph.get_name_scope()
    absolute = (prefix + '/' if prefix else '') + scope + '/'
    return tf1.variable_scope(scope), graph.name_scope(absolute)

  @staticmethod
  def _check_scope(scope, what):
    if not scope:
      raise ValueError('%s needs scope=...: the op name SCOPE/... is the '
                       'key looked up in the parameterization.' % what)

  @staticmethod
  def _finish(net, width, use_bias, activation_fn, normalizer_fn=None,
              normalizer_params=None, biases_initializer=None,
              trainable=True):
    """Normalizer or bias (as tf_slim: a normalizer replaces the bias),
    then the activation."""
    if normalizer_fn is not None:
      net = normalizer_fn(net, **(normalizer_params or {}))
    elif use_bias and biases_initializer is not None:
      bias = tf1.get_variable('biases', [width],
                              initializer=biases_initializer,
                              trainable=trainable)
      net = tf.nn.bias_add(net, bias)
    if activation_fn is not None:
      net = activation_fn(net)
    return net

  # ------------------------------------------------------------- layers
  # Each takes tf_slim's arguments for the same layer (reuse, normalizer_fn,
  # weights_regularizer, ...), so tf_slim arg_scopes apply; `name` is an
  # alias of `scope`.
  @_slim_compat.honors_slim_arg_scope
  def conv2d(self, inputs, num_outputs, kernel_size, stride=1,
             padding='SAME', rate=1, activation_fn=None, use_bias=True,
             weights_initializer=None, scope=None, name=None, reuse=None,
             normalizer_fn=None, normalizer_params=None,
             weights_regularizer=None, biases_initializer=_ZEROS,
             trainable=True, data_format='NHWC'):
    """A 2-D convolution (NHWC); op 'SCOPE/Conv2D' sets its width."""
    scope = scope or name
    self._check_scope(scope, 'conv2d')
    _check_nhwc(data_format, scope)
    if is_vanished(inputs):
      return VANISHED
    width = self._width(self._op_name(scope, 'Conv2D'), num_outputs)
    if width == 0:
      return VANISHED
    kh, kw = _pair(kernel_size)
    var_scope, name_scope = self._scopes(scope, reuse)
    with var_scope, name_scope:
      kernel = tf1.get_variable(
          'weights', [kh, kw, _channels(inputs, scope), width],
          initializer=weights_initializer or tf1.glorot_uniform_initializer(),
          regularizer=weights_regularizer, trainable=trainable)
      net = tf.nn.conv2d(inputs, kernel, _pair(stride), padding.upper(),
                         dilations=_pair(rate), name='Conv2D')
      return self._finish(net, width, use_bias, activation_fn, normalizer_fn,
                          normalizer_params, biases_initializer, trainable)

  @_slim_compat.honors_slim_arg_scope
  def separable_conv2d(self, inputs, num_outputs, kernel_size,
                       depth_multiplier=1, stride=1, padding='SAME', rate=1,
                       activation_fn=None, use_bias=True,
                       weights_initializer=None, scope=None, name=None,
                       reuse=None, normalizer_fn=None, normalizer_params=None,
                       weights_regularizer=None, biases_initializer=_ZEROS,
                       trainable=True, data_format='NHWC'):
    """Depthwise then pointwise conv; op 'SCOPE/separable_conv2d' (the
    pointwise half) sets the width. num_outputs=None: depthwise only."""
    scope = scope or name
    self._check_scope(scope, 'separable_conv2d')
    _check_nhwc(data_format, scope)
    if is_vanished(inputs):
      return VANISHED
    width = None
    if num_outputs is not None:
      width = self._width(self._op_name(scope, 'separable_conv2d'),
                          num_outputs)
      if width == 0:
        return VANISHED
    init = weights_initializer or tf1.glorot_uniform_initializer()
    kh, kw = _pair(kernel_size)
    c_in = _channels(inputs, scope)
    multiplier = int(depth_multiplier)
    var_scope, name_scope = self._scopes(scope, reuse)
    with var_scope, name_scope:
      depthwise = tf1.get_variable(
          'depthwise_weights', [kh, kw, c_in, multiplier], initializer=init,
          regularizer=weights_regularizer, trainable=trainable)
      strides = (1,) + _pair(stride) + (1,)
      net = tf.nn.depthwise_conv2d(inputs, depthwise, strides, padding.upper(),
                                   dilations=_pair(rate), name='depthwise')
      if width is None:
        return self._finish(net, c_in * multiplier, use_bias, activation_fn,
                            normalizer_fn, normalizer_params,
                            biases_initializer, trainable)
      pointwise = tf1.get_variable(
          'pointwise_weights', [1, 1, c_in * multiplier, width],
          initializer=init, regularizer=weights_regularizer,
          trainable=trainable)
      net = tf.nn.conv2d(net, pointwise, 1, 'VALID', name='separable_conv2d')
      return self._finish(net, width, use_bias, activation_fn, normalizer_fn,
                          normalizer_params, biases_initializer, trainable)

  @_slim_compat.honors_slim_arg_scope
  def fully_connected(self, inputs, num_outputs, activation_fn=None,
                      use_bias=True, weights_initializer=None, scope=None,
                      name=None, reuse=None, normalizer_fn=None,
                      normalizer_params=None, weights_regularizer=None,
                      biases_initializer=_ZEROS, trainable=True):
    """A dense layer on a rank-2 input; op 'SCOPE/MatMul' sets its width."""
    scope = scope or name
    self._check_scope(scope, 'fully_connected')
    if is_vanished(inputs):
      return VANISHED
    if inputs.shape.rank != 2:
      raise ValueError('fully_connected %r needs a rank-2 input, got shape '
                       '%s; flatten it first.' % (scope, inputs.shape))
    width = self._width(self._op_name(scope, 'MatMul'), num_outputs)
    if width == 0:
      return VANISHED
    var_scope, name_scope = self._scopes(scope, reuse)
    with var_scope, name_scope:
      kernel = tf1.get_variable(
          'weights', [_channels(inputs, scope), width],
          initializer=weights_initializer or tf1.glorot_uniform_initializer(),
          regularizer=weights_regularizer, trainable=trainable)
      net = tf.matmul(inputs, kernel, name='MatMul')
      return self._finish(net, width, use_bias, activation_fn, normalizer_fn,
                          normalizer_params, biases_initializer, trainable)

  dense = fully_connected

  @_slim_compat.honors_slim_arg_scope
  def batch_norm(self, inputs, center=True, scale=True, epsilon=1e-3,
                 decay=0.99, is_training=True, activation_fn=None,
                 scope=None, reuse=None, trainable=True):
    """Fused batch norm over the input's channels (a gamma source for the
    Gamma regularizers); scope 'BatchNorm' (uniquified) unless given. In
    training, moving statistics are updated by ops added to
    tf.GraphKeys.UPDATE_OPS (run them with the train op)."""
    if is_vanished(inputs):
      return VANISHED
    c = _channels(inputs, scope)
    if scope:
      var_scope, name_scope = self._scopes(scope, reuse)
    else:
      var_scope = tf1.variable_scope(None, default_name='BatchNorm',
                                     reuse=reuse)
      name_scope = contextlib.nullcontext()
    with var_scope, name_scope:
      # Without scale (center), no gamma (beta) variable: as in tf_slim.
      gamma = (tf1.get_variable('gamma', [c], initializer=tf1.ones_initializer(),
                                trainable=trainable) if scale
               else tf.ones([c]))
      beta = (tf1.get_variable('beta', [c], initializer=tf1.zeros_initializer(),
                               trainable=trainable) if center
              else tf.zeros([c]))
      mean = tf1.get_variable('moving_mean', [c], trainable=False,
                              initializer=tf1.zeros_initializer())
      var = tf1.get_variable('moving_variance', [c], trainable=False,
                             initializer=tf1.ones_initializer())
      if is_training:
        net, batch_mean, batch_var = tf1.nn.fused_batch_norm(
            inputs, gamma, beta, epsilon=epsilon, is_training=True,
            name='FusedBatchNormV3')
        for moving, value in ((mean, batch_mean), (var, batch_var)):
          update = tf1.assign_sub(moving, (1.0 - decay) * (moving - value))
          tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, update)
      else:
        net, _, _ = tf1.nn.fused_batch_norm(
            inputs, gamma, beta, mean, var, epsilon=epsilon,
            is_training=False, name='FusedBatchNormV3')
      if activation_fn is not None:
        net = activation_fn(net)
      return net

  @_slim_compat.honors_slim_arg_scope
  def max_pool2d(self, inputs, kernel_size, stride=2, padding='VALID',
                 scope=None):
    if is_vanished(inputs):
      return VANISHED
    return tf.nn.max_pool2d(inputs, _pair(kernel_size), _pair(stride),
                            padding.upper(), name=scope)

  @_slim_compat.honors_slim_arg_scope
  def avg_pool2d(self, inputs, kernel_size, stride=2, padding='VALID',
                 scope=None):
    if is_vanished(inputs):
      return VANISHED
    return tf.nn.avg_pool2d(inputs, _pair(kernel_size), _pair(stride),
                            padding.upper(), name=scope)

  # ---------------------------------------------------------- combiners
  def concat(self, values=None, axis=-1, name=None, **kwargs):
    """tf.concat over the inputs that did not vanish (VANISHED if none)."""
    if values is None or kwargs:
      raise ValueError('concat takes values=[tensors] (and axis, name); got '
                       '%s.' % sorted(set(kwargs) | {'values'} - (
                           {'values'} if values is not None else set())))
    kept = [v for v in values if not is_vanished(v)]
    if not kept:
      return VANISHED
    function = self.function_for('concat')
    if function is not None:
      extra = {'name': name} if name else {}
      return function(kept, axis=axis, **extra)
    if len(kept) == 1:
      return tf.identity(kept[0], name=name)
    return tf.concat(kept, axis, name=name)

  def add(self, inputs, *more, name=None):
    """Element-wise sum skipping vanished operands: add([a, b]) or add(a, b).

    A residual block whose branch vanished returns its shortcut unchanged.
    """
    operands = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    operands += list(more)
    kept = [v for v in operands if not is_vanished(v)]
    if not kept:
      return VANISHED
    if len(kept) == 1:
      return kept[0]
    function = self.function_for('add_n')
    if function is not None:
      return function(kept, name=name)
    if len(kept) == 2:
      return tf.add(kept[0], kept[1], name=name)
    return tf.add_n(kept, name=name)

  add_n = add




def hijack_module_functions(configurable_ops, module):
  """Replaces a module's layer functions with `configurable_ops`' methods.

  Every function of `module` named like a `ConfigurableOps` layer
  ('conv2d', 'separable_conv2d', 'fully_connected', 'batch_norm',
  'max_pool2d', 'avg_pool2d', 'concat', 'add_n') then builds through
  `configurable_ops`, so network code written against the module takes its
  widths from the parameterization. The replacements honor tf_slim
  arg_scopes opened on them.

  Returns:
    {name: original function} of what was replaced (for
    `recover_module_functions`).
  """
  return _hijack.hijack_functions(configurable_ops, module, _FUNCTION_NAMES)


recover_module_functions = _hijack.recover_functions


def _pair(x):
  if isinstance(x, int):
    return (x, x)
  return tuple(int(v) for v in x)


def _check_nhwc(data_format, scope):
  if data_format != 'NHWC':
    raise ValueError('Layer %r: data_format %r is not supported; '
                     'ConfigurableOps builds NHWC layers (use function_dict='
                     'slim_function_dict() for tf_slim\'s).'
                     % (scope, data_format))


def _channels(inputs, scope):
  c = inputs.shape.as_list()[-1]
  if c is None:
    raise ValueError('Layer %r: the channel count of its input %s is not '
                     'known statically.' % (scope, inputs.shape))
  return int(c)
