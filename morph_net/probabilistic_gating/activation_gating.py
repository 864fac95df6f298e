"""Logistic-sigmoid channel gating (FiGS): a Keras layer and a graph helper.

Each channel c has a trainable log-odds `mask_logits[c]`. In training the
gate samples per-channel Logistic noise n = log(u) - log(1 - u) and
multiplies the channel by the relaxed Bernoulli sample
sigmoid((logits + n) / temperature) (or, with `straight_through`, by the hard
sample 1[logits + n > 0] whose gradient is the relaxed one). At inference
the mask is deterministic: 1[logits > 0] (times sigmoid(logits) with
`soft_mask_for_inference`). P(channel on) = sigmoid(logits).

The regularizer (`LogisticSigmoidRegularizer`) finds the gate's variable in
the traced graph. With `regularize_on_mask=True` it needs the noise sampled
in the same training step: each gate records its latest sample in a small
side table keyed by its logits variable (`current_sample`), and the
regularizer rebuilds the mask from that noise and the live logits, so the
gradient reaches `mask_logits` whether or not the forward pass and the
regularization term share a `tf.GradientTape` or `tf.function` trace.
"""

import contextlib
import weakref

import keras
import numpy as np
import tensorflow as tf

from morph_net.framework import graph_view
from morph_net.framework import patterns
from morph_net.probabilistic_gating import _tf1_gating

LOGITS_NAME = patterns.LOGITS_NAME
_EPS = 1e-6


# --------------------------------------------------------- the mask maths
def logistic_noise(shape, seed=None, dtype=tf.float32):
  """Logistic(0, 1) samples: log(u) - log(1 - u), u ~ U(eps, 1 - eps)."""
  if isinstance(seed, keras.random.SeedGenerator):
    u = keras.random.uniform(shape, minval=_EPS, maxval=1.0 - _EPS,
                             dtype=dtype, seed=seed)
  else:
    u = tf.random.uniform(shape, _EPS, 1.0 - _EPS, dtype=dtype, seed=seed)
  return tf.math.log(u) - tf.math.log1p(-u)


def sampled_mask(logits, noise, temperature, straight_through=False):
  """The training mask: relaxed sample, or hard forward / relaxed gradient."""
  z = logits + tf.cast(noise, logits.dtype)
  relaxed = tf.sigmoid(z / tf.cast(temperature, logits.dtype))
  if not straight_through:
    return relaxed
  hard = tf.cast(z > 0, logits.dtype)
  return relaxed + tf.stop_gradient(hard - relaxed)


def logistic_sigmoid_sample(logits, temperature, straight_through=False):
  """One training mask for `logits`, with fresh Logistic noise."""
  noise = logistic_noise(tf.shape(logits), dtype=logits.dtype)
  return sampled_mask(logits, noise, temperature, straight_through)


_logistic_sigmoid_sample = logistic_sigmoid_sample  # the original's name


def inference_mask(logits, soft_mask_for_inference=False):
  """The deterministic mask: 1[logits > 0] (x sigmoid(logits) if soft)."""
  hard = tf.cast(logits > 0, logits.dtype)
  return hard * tf.sigmoid(logits) if soft_mask_for_inference else hard


def keep_first_channel(mask):
  """Forces channel 0 on (so a layer never vanishes by accident)."""
  size = mask.shape[0]
  first = tf.constant(np.eye(1, size, dtype=np.float32)[0], mask.dtype)
  return mask * (1.0 - first) + first


# ------------------------------------------------------------ side table
class _GateRecord:
  """What the regularizer needs to know about one gate."""

  def __init__(self, ref, keep_first, straight_through):
    self.ref = ref
    self.keep_first = keep_first
    self.straight_through = straight_through
    self.noise = None
    self.temperature = None
    self.diverted_to = None  # see `task_gradients_diverted`
    self.layer = None  # weak reference to the Keras layer, if one built it


_RECORDS = {}


def _key(param):
  """Variables by identity; graph-mode tensors by (graph, name)."""
  if isinstance(param, tf.Variable):
    return ('variable', id(param))
  if isinstance(param, tf.Tensor) and tf.is_symbolic_tensor(param):
    return ('tensor', id(param.graph), param.name)
  return None


def _ref(obj, key):
  """A weak reference that also drops the record when obj is freed."""
  try:
    ref = weakref.ref(obj)
  except TypeError:
    return lambda: obj
  weakref.finalize(obj, _drop, key, ref)
  return ref


def _drop(key, ref):
  rec = _RECORDS.get(key)
  if rec is not None and rec.ref is ref:
    del _RECORDS[key]


def register_gate(param, keep_first_channel_alive, straight_through):
  """Declares a gate's logits (a variable, or a graph-mode tensor)."""
  param = graph_view.tf_variable(param)
  key = _key(param)
  if key is None:
    raise TypeError('Gate logits must be a variable or a graph tensor, got '
                    '%r.' % (param,))
  _RECORDS[key] = _GateRecord(
      _ref(param, key), bool(keep_first_channel_alive), bool(straight_through))


def gate_record(param):
  """The gate's record, or None for a gate this module did not build."""
  param = graph_view.tf_variable(param)
  key = _key(param)
  rec = _RECORDS.get(key) if key is not None else None
  # A variable's id may be reused once it is freed: check it is the same.
  if rec is None or (key[0] == 'variable' and rec.ref() is not param):
    return None
  return rec


def record_sample(param, noise, temperature):
  rec = gate_record(param)
  if rec is not None:
    rec.noise, rec.temperature = noise, temperature


@contextlib.contextmanager
def task_gradients_diverted(slots):
  """While the body runs (builds or traces a training step), gates take no
  gradient through their training mask: each adds it to its slot instead.

  `slots`: pairs (a gate's logits variable, a variable of its shape). The
  gradient of the loss with respect to the logits, through the mask, is
  added to the slot, and the logits variable receives zeros from that path,
  so an optimizer leaves the logits alone and whoever owns the slots steps
  them (`morph_net.keras._proximal.ProximalStep`). The switch is read when
  the gate is called: a `tf.function` traced inside the body keeps it, one
  traced outside does not have it.
  """
  records = []
  for param, slot in slots:
    rec = gate_record(param)
    if rec is None:
      raise ValueError('%r is not the logits variable of a gate.' % (param,))
    records.append((rec, rec.diverted_to))
    rec.diverted_to = slot
  try:
    yield
  finally:
    for rec, previous in records:
      rec.diverted_to = previous


def _diverted(logits, slot):
  """logits, whose gradient is added to `slot` (and not passed on)."""

  @tf.custom_gradient
  def identity(x):
    def grad(upstream):
      with tf.control_dependencies([slot.assign_add(
          tf.cast(upstream, slot.dtype))]):
        return tf.zeros_like(upstream)
    return tf.identity(x), grad

  return identity(logits)


def current_sample(param):
  """(noise, temperature) sampled in the current context, or None.

  A sample is current when it lives in the graph being built now (inside a
  `tf.function`, or a `tf.compat.v1` graph), or, executing eagerly, when it
  is an eager tensor (the latest forward pass). Otherwise (e.g. a
  `tf.function` trace reading an eager sample) there is none.
  """
  rec = gate_record(param)
  if rec is None or rec.noise is None:
    return None
  noise = rec.noise
  if tf.is_symbolic_tensor(noise):
    if tf.executing_eagerly():
      return None
    if noise.graph is not tf.compat.v1.get_default_graph():
      return None
  elif not tf.executing_eagerly():
    return None
  return noise, rec.temperature


# ------------------------------------------------------------- the layer
@keras.saving.register_keras_serializable(package='morph_net')
class LogisticSigmoidGating(keras.layers.Layer):
  """Multiplies each channel by a learned stochastic 0/1 gate (FiGS).

  Args:
    axis: the channel axis. The MorphNet analysis recognizes channels-last
      gates (axis=-1 or the last axis).
    temperature: relaxation temperature of the training sample (kept in a
      non-trainable weight; change it with the `temperature` setter).
    straight_through: forward the hard 0/1 sample, backpropagate the
      relaxed one.
    log_odds_init: initial logits; sigmoid(2.5) ~ 0.92 of channels on.
    soft_mask_for_inference: at inference multiply 1[logits > 0] by
      sigmoid(logits) instead of using the hard mask alone.
    keep_first_channel_alive: channel 0 is always on.
    annealing_schedule: optional serializable callable step -> temperature
      (e.g. a `keras.optimizers.schedules.ExponentialDecay`); the step counts
      this layer's training calls. Overrides `temperature` in training.
    seed: seed of the noise generator.

  >>> gate = LogisticSigmoidGating()
  >>> y = gate(tf.ones([2, 3]))
  >>> _ = gate.mask_logits.assign([2.0, -1.0, -1.0])
  >>> gate(tf.ones([1, 3])).numpy().tolist()
  [[1.0, 0.0, 0.0]]
  """

  def __init__(self, axis=-1, temperature=0.001, straight_through=False,
               log_odds_init=2.5, soft_mask_for_inference=False,
               keep_first_channel_alive=True, annealing_schedule=None,
               seed=None, **kwargs):
    super().__init__(**kwargs)
    if float(temperature) <= 0:
      raise ValueError('temperature must be positive, got %r.'
                       % (temperature,))
    self.axis = int(axis)
    self._initial_temperature = float(temperature)
    self.straight_through = bool(straight_through)
    self.log_odds_init = float(log_odds_init)
    self.soft_mask_for_inference = bool(soft_mask_for_inference)
    self.keep_first_channel_alive = bool(keep_first_channel_alive)
    if isinstance(annealing_schedule, dict):
      annealing_schedule = keras.saving.deserialize_keras_object(
          annealing_schedule)
    if annealing_schedule is not None and not callable(annealing_schedule):
      raise ValueError('annealing_schedule must be callable (step -> '
                       'temperature), got %r.' % (annealing_schedule,))
    self.annealing_schedule = annealing_schedule
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)
    self.supports_masking = True

  def build(self, input_shape):
    channels = input_shape[self.axis]
    if channels is None:
      raise ValueError('LogisticSigmoidGating needs a known channel count '
                       'on axis %d, got shape %s.' % (self.axis, input_shape))
    self._rank = len(input_shape)
    self.mask_logits = self.add_weight(
        name=LOGITS_NAME, shape=(channels,),
        initializer=keras.initializers.Constant(self.log_odds_init),
        trainable=True)
    self._temperature = self.add_weight(
        name='temperature', shape=(),
        initializer=keras.initializers.Constant(self._initial_temperature),
        trainable=False)
    self._step = None
    if self.annealing_schedule is not None:
      self._step = self.add_weight(name='anneal_step', shape=(),
                                   dtype='int64', initializer='zeros',
                                   trainable=False)
    register_gate(self.mask_logits, self.keep_first_channel_alive,
                  self.straight_through)
    gate_record(self.mask_logits).layer = weakref.ref(self)

  @property
  def temperature(self):
    return float(self._temperature.numpy())

  @temperature.setter
  def temperature(self, value):
    if float(value) <= 0:
      raise ValueError('temperature must be positive, got %r.' % (value,))
    self._temperature.assign(float(value))

  def _current_temperature(self):
    if self._step is None:
      return tf.convert_to_tensor(self._temperature)
    step = self._step.assign_add(1)
    return tf.cast(self.annealing_schedule(step - 1), tf.float32)

  def probabilities(self):
    """P(channel on) = sigmoid(mask_logits)."""
    return tf.sigmoid(tf.convert_to_tensor(self.mask_logits))

  def call(self, inputs, training=None):
    logits = tf.cast(tf.convert_to_tensor(self.mask_logits), tf.float32)
    if training:
      rec = gate_record(self.mask_logits)
      if rec is not None and rec.diverted_to is not None:
        logits = _diverted(logits, rec.diverted_to)
      noise = logistic_noise(logits.shape, self.seed_generator)
      temperature = self._current_temperature()
      mask = sampled_mask(logits, noise, temperature, self.straight_through)
      record_sample(self.mask_logits, noise, temperature)
    else:
      mask = inference_mask(logits, self.soft_mask_for_inference)
    return _apply(inputs, mask, self.axis, self.keep_first_channel_alive)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update({
        'axis': self.axis,
        'temperature': self._initial_temperature,
        'straight_through': self.straight_through,
        'log_odds_init': self.log_odds_init,
        'soft_mask_for_inference': self.soft_mask_for_inference,
        'keep_first_channel_alive': self.keep_first_channel_alive,
        'annealing_schedule': (
            None if self.annealing_schedule is None else
            keras.saving.serialize_keras_object(self.annealing_schedule)),
        'seed': self.seed,
    })
    return config


def _apply(inputs, mask, axis, keep_first):
  """inputs * mask broadcast on `axis`. The [C] mask is the output of an op
  named 'LogisticSigmoidGating' (in the gate's scope), where the original
  MorphNet's users find it."""
  if keep_first:
    mask = keep_first_channel(mask)
  mask = tf.identity(tf.cast(mask, inputs.dtype),
                     name='LogisticSigmoidGating')
  rank = inputs.shape.rank
  if axis % rank != rank - 1:
    shape = [1] * rank
    shape[axis] = -1
    mask = tf.reshape(mask, shape)
  return inputs * mask


# ------------------------------------------------------- Keras helpers
def gated_activation(activation='relu', name=None, gating_fn=None, axis=-1,
                     is_training=True, **gating_kwargs):
  """An activation followed by a gate.

  In TF2 code: a `keras.Sequential` of the activation and a
  `LogisticSigmoidGating` layer. While building a `tf.compat.v1` graph (a
  TF1 program, as the original MorphNet's helpers were used): a function
  `gated(net, is_training=...)` applying the activation and
  `gating_fn(net, axis=axis, is_training=..., **gating_kwargs)`
  (`logistic_sigmoid_gating` by default), a new gate per call.

  >>> block = gated_activation('relu')
  >>> block(tf.constant([[-1.0, 2.0]])).numpy().tolist()
  [[0.0, 2.0]]
  """
  if _tf1_gating.building_graph():
    return _tf1_gating.GraphGatedFunction(
        keras.activations.get(activation),
        gating_fn or logistic_sigmoid_gating, axis, is_training,
        **gating_kwargs)
  if gating_fn is not None:
    raise ValueError('gating_fn is for tf.compat.v1 graphs; in TF2 code the '
                     'gate is a LogisticSigmoidGating layer (pass its '
                     'arguments as keywords).')
  gate_name = name + '_gate' if name else None
  return keras.Sequential(
      [keras.layers.Activation(activation),
       LogisticSigmoidGating(axis=axis, name=gate_name, **gating_kwargs)],
      name=name)


def gated_relu_activation(name=None, **gating_kwargs):
  """ReLU followed by a gate (see `gated_activation`)."""
  return gated_activation('relu', name=name, **gating_kwargs)


def gated_relu6_activation(name=None, **gating_kwargs):
  """ReLU6 followed by a gate (see `gated_activation`)."""
  return gated_activation('relu6', name=name, **gating_kwargs)


def gated_batch_norm(name=None, gating_fn=None, axis=-1, is_training=True,
                     **gating_kwargs):
  """BatchNorm followed by a gate (the original MorphNet's helper).

  In TF2 code: a `keras.Sequential` of `BatchNormalization(axis=axis)` and a
  `LogisticSigmoidGating`. In a `tf.compat.v1` graph: a function
  `gated(net, is_training=...)` applying a fused batch norm (scope
  'BatchNorm', scale and center on) and the gate.
  """
  if _tf1_gating.building_graph():
    return _tf1_gating.GraphGatedFunction(
        _tf1_gating.batch_norm, gating_fn or logistic_sigmoid_gating, axis,
        is_training, pass_training=True, **gating_kwargs)
  if gating_fn is not None:
    raise ValueError('gating_fn is for tf.compat.v1 graphs; in TF2 code the '
                     'gate is a LogisticSigmoidGating layer.')
  gate_name = name + '_gate' if name else None
  return keras.Sequential(
      [keras.layers.BatchNormalization(axis=axis),
       LogisticSigmoidGating(axis=axis, name=gate_name, **gating_kwargs)],
      name=name)


# -------------------------------------------------- tf.compat.v1 graphs
def logistic_sigmoid_gating(inputs, axis=-1, is_training=True,
                            temperature=0.001, straight_through=False,
                            log_odds_init=2.5, soft_mask_for_inference=False,
                            keep_first_channel_alive=True, scope=None):
  """Gates `inputs` in a `tf.compat.v1` graph; returns the gated tensor.

  Creates `<scope>/mask_logits` with `tf.compat.v1.get_variable` (so it
  honours variable scopes and reuse; scope 'logistic_sigmoid_gating' by
  default, uniquified) and names the op that outputs the [C] mask
  `<scope>/LogisticSigmoidGating`, as the original MorphNet did.
  `is_training` is a Python bool: True samples a mask (and records it for
  `regularize_on_mask`), False applies the deterministic mask.
  """
  tf1 = tf.compat.v1
  channels = inputs.shape.as_list()[axis]  # an int, also for V1 shapes
  if channels is None:
    raise ValueError('The channel count of %r on axis %d is unknown.'
                     % (inputs.name, axis))
  with tf1.variable_scope(scope, default_name='logistic_sigmoid_gating'):
    var = tf1.get_variable(
        LOGITS_NAME, shape=[channels], dtype=tf.float32,
        initializer=tf1.constant_initializer(log_odds_init), trainable=True)
    logits = tf.identity(var, name='mask_logits_value')
    register_gate(logits, keep_first_channel_alive, straight_through)
    if is_training:
      noise = logistic_noise([channels])
      mask = sampled_mask(logits, noise, temperature, straight_through)
      record_sample(logits, noise, tf.constant(temperature, tf.float32))
    else:
      mask = inference_mask(logits, soft_mask_for_inference)
    return _apply(inputs, mask, axis, keep_first_channel_alive)
