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
"""

import collections
import enum
import json
import logging

import tensorflow as tf

__all__ = ['ConfigurableOps', 'FallbackRule', 'VANISHED', 'is_vanished',
           'load_parameterization']

tf1 = tf.compat.v1


class _Vanished:
  """The output of a layer configured to 0 channels (a singleton)."""

  _instance = None

  def __new__(cls):
    if cls._instance is None:
      cls._instance = super().__new__(cls)
    return cls._instance

  def __repr__(self):
    return 'VANISHED'

  def __bool__(self):
    return False

  def __reduce__(self):
    return (_Vanished, ())


VANISHED = _Vanished()


def is_vanished(x):
  """True for VANISHED (or None): the layer producing x has 0 channels."""
  return x is VANISHED or x is None


class FallbackRule(enum.Enum):
  """What a layer missing from the parameterization does."""
  pass_through = 'pass_through'
  strict = 'strict'
  zero = 'zero'


def load_parameterization(path):
  """{op name: width} from a structure JSON file (e.g. alive_<step>)."""
  with tf.io.gfile.GFile(path) as f:
    data = json.load(f)
  if not isinstance(data, dict):
    raise ValueError('%s: expected a JSON object {op name: width}.' % path)
  return {str(k): int(v) for k, v in data.items()}


class ConfigurableOps:
  """Graph-mode layer functions whose widths come from a parameterization.

  Args:
    parameterization: {op name: width}, e.g. a learned structure.
    fallback_rule: a `FallbackRule` or its name: 'pass_through' (default),
      'strict' or 'zero'.

  Attributes:
    constructed_ops: OrderedDict op name -> width used, in build order (the
      structure of the network actually built; 0 for vanished layers).

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

  def __init__(self, parameterization=None, fallback_rule='pass_through'):
    if isinstance(fallback_rule, str):
      try:
        fallback_rule = FallbackRule[fallback_rule]
      except KeyError:
        raise ValueError('fallback_rule must be one of %s, got %r.' % (
            [r.name for r in FallbackRule], fallback_rule)) from None
    if not isinstance(fallback_rule, FallbackRule):
      raise ValueError('fallback_rule must be a string or a FallbackRule, '
                       'got %r.' % (fallback_rule,))
    self._parameterization = dict(parameterization or {})
    bad = {k: v for k, v in self._parameterization.items()
           if isinstance(v, bool) or not isinstance(v, int) or v < 0}
    if bad:
      raise ValueError('Widths must be non-negative integers: %s' % bad)
    self._fallback = fallback_rule
    self.constructed_ops = collections.OrderedDict()

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
      raise KeyError('Op %r is not in the parameterization (fallback_rule='
                     "'strict'). Known ops: %s" % (
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
  def _scopes(scope):
    """Variable scope `scope`, and the name scope with the same exact path
    (so op names are SCOPE/Conv2D even if the variable scope is reused)."""
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
  def _finish(net, width, use_bias, activation_fn):
    if use_bias:
      bias = tf1.get_variable('biases', [width],
                              initializer=tf1.zeros_initializer())
      net = tf.nn.bias_add(net, bias)
    if activation_fn is not None:
      net = activation_fn(net)
    return net

  # ------------------------------------------------------------- layers
  def conv2d(self, inputs, num_outputs, kernel_size, stride=1,
             padding='SAME', rate=1, activation_fn=None, use_bias=True,
             weights_initializer=None, scope=None):
    """A 2-D convolution (NHWC); op 'SCOPE/Conv2D' sets its width."""
    self._check_scope(scope, 'conv2d')
    if is_vanished(inputs):
      return VANISHED
    width = self._width(self._op_name(scope, 'Conv2D'), num_outputs)
    if width == 0:
      return VANISHED
    kh, kw = _pair(kernel_size)
    var_scope, name_scope = self._scopes(scope)
    with var_scope, name_scope:
      kernel = tf1.get_variable(
          'weights', [kh, kw, _channels(inputs, scope), width],
          initializer=weights_initializer or tf1.glorot_uniform_initializer())
      net = tf.nn.conv2d(inputs, kernel, _pair(stride), padding,
                         dilations=_pair(rate), name='Conv2D')
      return self._finish(net, width, use_bias, activation_fn)

  def separable_conv2d(self, inputs, num_outputs, kernel_size,
                       depth_multiplier=1, stride=1, padding='SAME', rate=1,
                       activation_fn=None, use_bias=True,
                       weights_initializer=None, scope=None):
    """Depthwise then pointwise conv; op 'SCOPE/separable_conv2d' (the
    pointwise half) sets the width. num_outputs=None: depthwise only."""
    self._check_scope(scope, 'separable_conv2d')
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
    var_scope, name_scope = self._scopes(scope)
    with var_scope, name_scope:
      depthwise = tf1.get_variable('depthwise_weights',
                                   [kh, kw, c_in, depth_multiplier],
                                   initializer=init)
      strides = (1,) + _pair(stride) + (1,)
      net = tf.nn.depthwise_conv2d(inputs, depthwise, strides, padding,
                                   dilations=_pair(rate), name='depthwise')
      if width is None:
        return self._finish(net, c_in * depth_multiplier, use_bias,
                            activation_fn)
      pointwise = tf1.get_variable('pointwise_weights',
                                   [1, 1, c_in * depth_multiplier, width],
                                   initializer=init)
      net = tf.nn.conv2d(net, pointwise, 1, 'VALID', name='separable_conv2d')
      return self._finish(net, width, use_bias, activation_fn)

  def fully_connected(self, inputs, num_outputs, activation_fn=None,
                      use_bias=True, weights_initializer=None, scope=None):
    """A dense layer on a rank-2 input; op 'SCOPE/MatMul' sets its width."""
    self._check_scope(scope, 'fully_connected')
    if is_vanished(inputs):
      return VANISHED
    if inputs.shape.rank != 2:
      raise ValueError('fully_connected %r needs a rank-2 input, got shape '
                       '%s; flatten it first.' % (scope, inputs.shape))
    width = self._width(self._op_name(scope, 'MatMul'), num_outputs)
    if width == 0:
      return VANISHED
    var_scope, name_scope = self._scopes(scope)
    with var_scope, name_scope:
      kernel = tf1.get_variable(
          'weights', [_channels(inputs, scope), width],
          initializer=weights_initializer or tf1.glorot_uniform_initializer())
      net = tf.matmul(inputs, kernel, name='MatMul')
      return self._finish(net, width, use_bias, activation_fn)

  dense = fully_connected

  def batch_norm(self, inputs, center=True, scale=True, epsilon=1e-3,
                 decay=0.99, is_training=True, activation_fn=None,
                 scope=None):
    """Fused batch norm over the input's channels (a gamma source for the
    Gamma regularizers). In training, moving statistics are updated by ops
    added to tf.GraphKeys.UPDATE_OPS (run them with the train op)."""
    self._check_scope(scope, 'batch_norm')
    if is_vanished(inputs):
      return VANISHED
    c = _channels(inputs, scope)
    var_scope, name_scope = self._scopes(scope)
    with var_scope, name_scope:
      gamma = tf1.get_variable('gamma', [c], initializer=tf1.ones_initializer(),
                               trainable=scale)
      beta = tf1.get_variable('beta', [c], initializer=tf1.zeros_initializer(),
                              trainable=center)
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

  def max_pool2d(self, inputs, kernel_size, stride=2, padding='VALID',
                 scope=None):
    if is_vanished(inputs):
      return VANISHED
    return tf.nn.max_pool2d(inputs, _pair(kernel_size), _pair(stride),
                            padding, name=scope)

  def avg_pool2d(self, inputs, kernel_size, stride=2, padding='VALID',
                 scope=None):
    if is_vanished(inputs):
      return VANISHED
    return tf.nn.avg_pool2d(inputs, _pair(kernel_size), _pair(stride),
                            padding, name=scope)

  # ---------------------------------------------------------- combiners
  def concat(self, values, axis=-1, name=None):
    """tf.concat over the inputs that did not vanish (VANISHED if none)."""
    kept = [v for v in values if not is_vanished(v)]
    if not kept:
      return VANISHED
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
    if len(kept) == 2:
      return tf.add(kept[0], kept[1], name=name)
    return tf.add_n(kept, name=name)

  add_n = add


def _pair(x):
  if isinstance(x, int):
    return (x, x)
  return tuple(int(v) for v in x)


def _channels(inputs, scope):
  c = inputs.shape[-1]
  if c is None:
    raise ValueError('Layer %r: the channel count of its input %s is not '
                     'known statically.' % (scope, inputs.shape))
  return int(c)
