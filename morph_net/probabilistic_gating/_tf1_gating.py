"""Gated activations for `tf.compat.v1` graphs, the original MorphNet's way.

In a TF1 program `activation_gating.gated_relu_activation()` returns a
function, called on each activation as `gated_relu(net, is_training=...)`:
the activation, then a gate made by a gating function (by default
`logistic_sigmoid_gating`, whose `mask_logits` variable the LogisticSigmoid
regularizers find). `gated_batch_norm()` does the same with a fused batch
norm in place of the activation. In TF2 code the same helpers return Keras
layers (see `activation_gating`).
"""

import tensorflow as tf

tf1 = tf.compat.v1


def building_graph():
  """True while building a `tf.compat.v1` graph: a TF1 program, or a
  `with tf.Graph().as_default()` block; False when executing eagerly and
  inside a `tf.function` (Keras layers are what is wanted there)."""
  if tf.executing_eagerly():
    return False
  return not getattr(tf1.get_default_graph(), 'building_function', False)


def batch_norm(inputs, is_training=True, center=True, scale=True,
               decay=0.999, epsilon=1e-3, scope=None):
  """A fused batch norm over the last axis in a `tf.compat.v1` graph.

  Variables `<scope>/gamma`, `beta`, `moving_mean`, `moving_variance`
  (scope 'BatchNorm' by default, uniquified). In training it normalizes by
  the batch statistics and adds the moving-average updates to
  `tf.GraphKeys.UPDATE_OPS`; otherwise it uses the moving statistics.
  """
  channels = inputs.shape.as_list()[-1]
  if channels is None:
    raise ValueError('batch_norm: the channel count of %r is unknown.'
                     % inputs.name)
  with tf1.variable_scope(scope, default_name='BatchNorm'):
    ones, zeros = tf1.ones_initializer(), tf1.zeros_initializer()
    gamma = tf1.get_variable('gamma', [channels], initializer=ones,
                             trainable=scale)
    beta = tf1.get_variable('beta', [channels], initializer=zeros,
                            trainable=center)
    mean = tf1.get_variable('moving_mean', [channels], initializer=zeros,
                            trainable=False)
    variance = tf1.get_variable('moving_variance', [channels],
                                initializer=ones, trainable=False)
    if not is_training:
      out, _, _ = tf1.nn.fused_batch_norm(
          inputs, gamma, beta, mean, variance, epsilon=epsilon,
          is_training=False, name='FusedBatchNormV3')
      return out
    out, batch_mean, batch_variance = tf1.nn.fused_batch_norm(
        inputs, gamma, beta, epsilon=epsilon, is_training=True,
        name='FusedBatchNormV3')
    for moving, value in ((mean, batch_mean), (variance, batch_variance)):
      update = tf1.assign_sub(moving, (1.0 - decay) * (moving - value))
      tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, update)
    return out


class GraphGatedFunction:
  """y = gate(fn(x)) in a `tf.compat.v1` graph; a new gate on every call.

  Args:
    fn: the function before the gate (an activation, a batch norm).
    gating_fn: (inputs, axis=..., is_training=..., **kwargs) -> gated
      tensor, e.g. `activation_gating.logistic_sigmoid_gating`.
    axis: the channel axis the gate multiplies.
    is_training: the default for calls that do not pass one: True samples a
      mask, False applies the deterministic one.
    gating_kwargs: more keyword arguments for `gating_fn`.
  """

  def __init__(self, fn, gating_fn, axis=-1, is_training=True,
               pass_training=False, **gating_kwargs):
    self._fn = fn
    self._gating_fn = gating_fn
    self._axis = axis
    self._is_training = is_training
    self._pass_training = pass_training  # fn takes is_training too
    self._gating_kwargs = gating_kwargs

  def __call__(self, inputs, is_training=None, scope=None):
    if is_training is None:
      is_training = self._is_training
    if self._pass_training:
      net = self._fn(inputs, is_training=is_training)
    else:
      net = self._fn(inputs)
    return self._gating_fn(net, axis=self._axis, is_training=is_training,
                           scope=scope, **self._gating_kwargs)
