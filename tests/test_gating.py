"""LogisticSigmoid (FiGS) gating: layer, recognition, regularizer, training."""

import importlib
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.network_regularizers import families
from morph_net.network_regularizers import generic_network_regularizer
from morph_net.network_regularizers import resource_function
from morph_net.op_regularizers import logistic_sigmoid_regularizer
from morph_net.probabilistic_gating import activation_gating
from morph_net.tools import structure_exporter

Gate = activation_gating.LogisticSigmoidGating
tf1 = tf.compat.v1

# conv1 / conv2 with 'same' 3x3 kernels on 8x8: k = 2 * 64 * 9.
_K = 2 * 64 * 9


def flops_regularizer(model, alive_threshold=0.1, regularize_on_mask=True,
                      mask_as_alive_vector=True):
  """What LogisticSigmoidFlopsRegularizer is: the family + FLOPs."""
  return generic_network_regularizer.NetworkRegularizer(
      model,
      families.logistic_sigmoid(
          alive_threshold, regularize_on_mask, mask_as_alive_vector),
      resource_function.flop_function, name='LogisticSigmoidFlops',
      cost_name='FLOPs')


def tiny_model(c1=4, c2=6, **gate_kwargs):
  """conv1 -> gate1 -> conv2 -> gate2 -> GAP -> dense(5)."""
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(c1, 3, padding='same', use_bias=False,
                          name='conv1')(inputs)
  x = Gate(name='gate1', **gate_kwargs)(x)
  x = keras.layers.Conv2D(c2, 3, padding='same', use_bias=False,
                          name='conv2')(x)
  x = Gate(name='gate2', **gate_kwargs)(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(5, name='logits')(x))


def set_logits(model, gate1, gate2):
  model.get_layer('gate1').mask_logits.assign(gate1)
  model.get_layer('gate2').mask_logits.assign(gate2)


_G1 = [2.5, -3.0, 1.0, -0.5]  # p = .92 .05 .73 .38
_G2 = [-4.0, -4.0, 3.0, 3.0, 3.0, -4.0]  # channel 0 kept alive


# ----------------------------------------------------------------- layer
def test_layer_config_round_trip():
  schedule = keras.optimizers.schedules.ExponentialDecay(1.0, 10, 0.5)
  gate = Gate(axis=-1, temperature=0.5, straight_through=True,
              log_odds_init=1.5, soft_mask_for_inference=True,
              keep_first_channel_alive=False, annealing_schedule=schedule,
              seed=3, name='g')
  config = gate.get_config()
  clone = Gate.from_config(config)
  assert clone.get_config() == config
  assert clone.straight_through and clone.soft_mask_for_inference
  assert not clone.keep_first_channel_alive
  assert isinstance(clone.annealing_schedule,
                    keras.optimizers.schedules.ExponentialDecay)
  assert float(clone.annealing_schedule(10)) == pytest.approx(0.5)


def test_keras_save_and_load_keeps_logits_and_outputs(tmp_path):
  model = tiny_model()
  set_logits(model, _G1, _G2)
  path = os.path.join(str(tmp_path), 'gated.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_array_equal(loaded.get_layer('gate1').mask_logits.numpy(),
                                np.float32(_G1))
  x = np.random.RandomState(0).rand(2, 8, 8, 3).astype(np.float32)
  np.testing.assert_allclose(loaded(x, training=False),
                             model(x, training=False), rtol=1e-6)
  assert isinstance(loaded.get_layer('gate2'), Gate)


def test_inference_zeroes_channels_with_negative_logits_exactly():
  gate = Gate(keep_first_channel_alive=False)
  x = tf.random.normal([2, 5, 3]) + 10.0
  gate(x)
  gate.mask_logits.assign([1.0, -0.01, 2.0])
  y = gate(x, training=False).numpy()
  assert np.all(y[..., 1] == 0.0)
  np.testing.assert_array_equal(y[..., 0], x.numpy()[..., 0])
  np.testing.assert_array_equal(y[..., 2], x.numpy()[..., 2])


def test_soft_mask_for_inference_scales_by_probability():
  gate = Gate(keep_first_channel_alive=False, soft_mask_for_inference=True)
  gate(tf.ones([1, 2]))
  gate.mask_logits.assign([1.0, -1.0])
  y = gate(tf.ones([1, 2]), training=False).numpy()[0]
  np.testing.assert_allclose(y, [1.0 / (1.0 + np.exp(-1.0)), 0.0], rtol=1e-6)


def test_keep_first_channel_alive_in_training_and_inference():
  gate = Gate(temperature=0.001)
  x = tf.ones([4, 3])
  gate(x)
  gate.mask_logits.assign([-20.0, -20.0, -20.0])
  for training in (False, True):
    y = gate(x, training=training).numpy()
    np.testing.assert_array_equal(y[:, 0], 1.0)
    np.testing.assert_allclose(y[:, 1:], 0.0, atol=1e-6)


def test_gate_on_other_axis_broadcasts():
  gate = Gate(axis=1, keep_first_channel_alive=False)
  x = tf.ones([2, 3, 4])
  gate(x)
  gate.mask_logits.assign([1.0, -1.0, 1.0])
  y = gate(x, training=False).numpy()
  assert y.shape == (2, 3, 4)
  np.testing.assert_array_equal(y[:, 1, :], 0.0)
  np.testing.assert_array_equal(y[:, 0, :], 1.0)


def test_straight_through_forward_is_hard_and_gradient_is_nonzero():
  gate = Gate(temperature=1.0, straight_through=True,
              keep_first_channel_alive=False, seed=1)
  x = tf.ones([1, 64])
  gate(x)
  gate.mask_logits.assign(np.zeros(64, np.float32))
  with tf.GradientTape() as tape:
    y = gate(x, training=True)
    loss = tf.reduce_sum(y)
  values = np.unique(y.numpy())
  assert set(values.tolist()) == {0.0, 1.0}
  grad = tape.gradient(loss, gate.mask_logits.value)
  assert grad is not None and np.all(grad.numpy() > 0)


def test_relaxed_training_mask_is_soft_with_high_temperature():
  gate = Gate(temperature=5.0, keep_first_channel_alive=False, seed=2)
  x = tf.ones([1, 32])
  gate(x)
  y = gate(x, training=True).numpy()
  assert np.all((y > 0) & (y < 1))
  assert len(np.unique(y)) > 1  # independent noise per channel


def test_temperature_setter_and_annealing_schedule():
  gate = Gate(annealing_schedule=keras.optimizers.schedules.ExponentialDecay(
      1.0, 1, 0.5))
  x = tf.ones([1, 3])
  gate(x)
  for _ in range(3):
    gate(x, training=True)
  assert int(gate._step.numpy()) == 3  # pylint: disable=protected-access
  sample = activation_gating.current_sample(gate.mask_logits.value)
  assert float(sample[1]) == pytest.approx(0.25)  # step 2: 0.5 ** 2
  gate.temperature = 0.1
  assert gate.temperature == pytest.approx(0.1)
  with pytest.raises(ValueError, match='positive'):
    gate.temperature = 0.0


def test_gated_relu_activation_applies_relu_then_gate():
  block = activation_gating.gated_relu_activation(
      name='act', keep_first_channel_alive=False)
  y = block(tf.constant([[-1.0, 2.0, 3.0]]))
  block.layers[1].mask_logits.assign([1.0, 1.0, -1.0])
  y = block(tf.constant([[-1.0, 2.0, 3.0]]), training=False).numpy()
  np.testing.assert_array_equal(y, [[0.0, 2.0, 0.0]])
  assert block.layers[1].name == 'act_gate'


# ------------------------------------------------------------- analysis
def test_flops_cost_counts_gates_with_probability_above_threshold():
  model = tiny_model()
  set_logits(model, _G1, _G2)
  reg = flops_regularizer(model, alive_threshold=0.1,
                          mask_as_alive_vector=False)
  # alive1 = 3 (p >= .1), alive2 = 3 + channel 0 kept = 4.
  expected = _K * 3 * 3 + _K * 3 * 4 + 2 * 4 * 5
  assert float(reg.get_cost()) == expected == 24232
  assert reg.cost_name == 'FLOPs'
  # Raising the threshold above p = .73 and .38 kills two more channels.
  strict = flops_regularizer(model, alive_threshold=0.8,
                             mask_as_alive_vector=False)
  assert float(strict.get_cost()) == _K * 3 * 1 + _K * 1 * 4 + 2 * 4 * 5


def test_mask_as_alive_vector_uses_the_inference_mask():
  model = tiny_model()
  set_logits(model, _G1, _G2)
  reg = flops_regularizer(model, mask_as_alive_vector=True)
  # alive1 = logits > 0 = 2, alive2 = 4.
  assert float(reg.get_cost()) == _K * 3 * 2 + _K * 2 * 4 + 2 * 4 * 5
  exporter = structure_exporter.StructureExporter(reg.op_regularizer_manager)
  assert exporter.get_alive_counts() == {'conv1': 2, 'conv2': 4}


def test_regularization_term_on_probabilities_matches_formula():
  model = tiny_model()
  set_logits(model, _G1, _G2)
  reg = flops_regularizer(model, regularize_on_mask=False,
                          mask_as_alive_vector=False)
  p1 = 1 / (1 + np.exp(-np.float64(_G1)))
  p2 = 1 / (1 + np.exp(-np.float64(_G2)))
  a1, a2 = 3, 4
  # term = k (a_in r_out + a_out r_in); the image and logits are fixed.
  expected = (_K * 3 * p1.sum() + _K * (a1 * p2.sum() + a2 * p1.sum())
              + 2 * 5 * p2.sum())
  assert float(reg.get_regularization_term()) == pytest.approx(expected,
                                                               rel=1e-5)


def test_gate_and_its_conv_share_one_group_and_plain_mul_is_not_a_source():
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, padding='same', name='conv1')(inputs)
  x = activation_gating.gated_relu_activation(name='act1')(x)
  x = keras.layers.Conv2D(4, 3, padding='same', name='conv2')(x)
  x = keras.layers.Lambda(lambda t: t * 2.0)(x)  # an ordinary Mul
  x = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, keras.layers.Dense(2)(x))
  reg = flops_regularizer(model)
  manager = reg.op_regularizer_manager
  assert len(manager.sources) == 1
  owner = manager.view.owner_of_variable(manager.sources[0].param)
  assert owner == 'act1_gate'
  conv1 = [c for c in manager.compute_ops if 'conv1' in c.op.name][0]
  conv2 = [c for c in manager.compute_ops if 'conv2' in c.op.name][0]
  assert manager.get_regularizer(conv1.op) is not None
  assert manager.get_regularizer(conv2.op) is None


def test_gated_mlp_counts_alive_dense_units(tmp_path):
  inputs = keras.Input((6,))
  x = keras.layers.Dense(4, name='hidden')(inputs)
  x = activation_gating.gated_relu_activation(
      name='act', keep_first_channel_alive=False)(x)
  model = keras.Model(inputs, keras.layers.Dense(3, name='out')(x))
  model.get_layer('act').layers[1].mask_logits.assign([1.0, -1.0, 1.0, 1.0])
  reg = flops_regularizer(model)
  # MatMul FLOPs = 2 x in x out: hidden 2*6*3, out 2*3*3.
  assert float(reg.get_cost()) == 2 * 6 * 3 + 2 * 3 * 3
  path = os.path.join(str(tmp_path), 'mlp.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  assert float(flops_regularizer(loaded).get_cost()) == 2 * 6 * 3 + 2 * 3 * 3


def test_tied_gates_group_probability_is_one_minus_product():
  inputs = keras.Input((4, 4, 3))
  a = keras.layers.Conv2D(3, 1, name='conv_a')(inputs)
  a = Gate(name='gate_a', keep_first_channel_alive=False)(a)
  b = keras.layers.Conv2D(3, 1, name='conv_b')(inputs)
  b = Gate(name='gate_b', keep_first_channel_alive=False)(b)
  x = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, b]))
  model = keras.Model(inputs, keras.layers.Dense(2)(x))
  la, lb = [0.0, -2.0, 1.0], [1.0, -3.0, -1.0]
  model.get_layer('gate_a').mask_logits.assign(la)
  model.get_layer('gate_b').mask_logits.assign(lb)
  reg = flops_regularizer(model, regularize_on_mask=False,
                          mask_as_alive_vector=False, alive_threshold=0.3)
  manager = reg.op_regularizer_manager
  conv_a = [c for c in manager.compute_ops if 'conv_a' in c.op.name][0]
  op_reg = manager.get_regularizer(conv_a.op)
  pa = 1 / (1 + np.exp(-np.float64(la)))
  pb = 1 / (1 + np.exp(-np.float64(lb)))
  np.testing.assert_allclose(op_reg.regularization_vector.numpy(),
                             1 - (1 - pa) * (1 - pb), rtol=1e-5)
  # OR of alive: channel 1 has p .12 and .05, both below .3.
  assert op_reg.alive_vector.numpy().tolist() == [True, False, True]


def test_graph_mode_helper_is_recognized_and_differentiable():
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf.float32, [None, 8, 8, 3])
    kernel = tf1.get_variable('kernel', [3, 3, 3, 4])
    net = tf.nn.conv2d(images, kernel, 1, 'SAME', name='conv')
    net = activation_gating.logistic_sigmoid_gating(
        tf.nn.relu(net), is_training=True, temperature=1.0, scope='gate')
    kernel2 = tf1.get_variable('kernel2', [4, 5])
    logits = tf.matmul(tf.reduce_mean(net, [1, 2]), kernel2)
    reg = flops_regularizer([logits.op], mask_as_alive_vector=False)
    assert [s.op.type for s in reg.op_regularizer_manager.sources] == ['Mul']
    cost, term = reg.get_cost(), reg.get_regularization_term()
    mask_logits = [v for v in tf1.global_variables()
                   if 'mask_logits' in v.name][0]
    grad = tf.gradients(term, mask_logits)[0]
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      cost_v, grad_v = sess.run([cost, grad])
  assert cost_v == _K * 3 * 4 + 2 * 4 * 5
  assert np.any(grad_v != 0)


# ------------------------------------------------------------ gradients
@pytest.mark.parametrize('regularize_on_mask', [False, True])
def test_gradients_reach_mask_logits_eagerly(regularize_on_mask):
  model = tiny_model(temperature=1.0)
  reg = flops_regularizer(model, regularize_on_mask=regularize_on_mask)
  x = tf.random.normal([2, 8, 8, 3])
  logits = [model.get_layer(n).mask_logits.value for n in ('gate1', 'gate2')]
  with tf.GradientTape() as tape:
    model(x, training=True)
    term = reg.get_regularization_term()
  grads = tape.gradient(term, logits)
  for g in grads:
    assert g is not None and np.any(g.numpy() != 0)


def test_regularize_on_mask_uses_the_step_sample_inside_tf_function():
  # Straight-through: the forward sample is hard, its gradient is not 0.
  model = tiny_model(temperature=1.0, straight_through=True,
                     keep_first_channel_alive=False)
  set_logits(model, np.zeros(4, np.float32), np.zeros(6, np.float32))
  reg = flops_regularizer(model, regularize_on_mask=True)
  manager = reg.op_regularizer_manager
  gate1 = model.get_layer('gate1')
  conv1 = [c for c in manager.compute_ops if 'conv1' in c.op.name][0]
  op_reg = manager.get_regularizer(conv1.op)

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      model(x, training=True)
      term = reg.get_regularization_term()
      vector = op_reg.regularization_vector
    return term, vector, tape.gradient(term, gate1.mask_logits.value)

  @tf.function
  def no_forward():
    return op_reg.regularization_vector

  _, vector, grad = step(tf.random.normal([2, 8, 8, 3]))
  # Logits are 0, so p = .5; the hard sample is 0 or 1 per channel.
  values = vector.numpy()
  assert np.all((np.abs(values) < 1e-4) | (np.abs(values - 1) < 1e-4))
  assert grad is not None and np.any(grad.numpy() != 0)
  # Without a training forward in the trace: probabilities.
  np.testing.assert_allclose(no_forward().numpy(), 0.5, rtol=1e-5)


def test_regularizer_alone_reads_probabilities_without_a_sample():
  logits = tf.Variable([3.0, -3.0])
  reg = logistic_sigmoid_regularizer.LogisticSigmoidRegularizer(
      logits, alive_threshold=0.1, regularize_on_mask=True)
  np.testing.assert_allclose(reg.regularization_vector.numpy(),
                             1 / (1 + np.exp([-3.0, 3.0])), rtol=1e-6)
  assert reg.alive_vector.numpy().tolist() == [True, False]


def test_batch_vectors_mix_sampled_and_unsampled_gates():
  sampled = Gate(temperature=1e-3, straight_through=True)
  idle = Gate(keep_first_channel_alive=False)
  for gate in (sampled, idle):
    gate(tf.ones([1, 3]))
    gate.mask_logits.assign([0.0, 0.0, 0.0])
  sampled(tf.ones([1, 3]), training=True)
  reg, alive = logistic_sigmoid_regularizer.LogisticSigmoidRegularizer.\
      batch_vectors([sampled.mask_logits.value, idle.mask_logits.value],
                    [(0.1, True, True), (0.4, True, False)])
  reg, alive = reg.numpy(), alive.numpy()
  assert reg[0] == 1.0  # kept channel
  assert set(reg[1:3].tolist()) <= {0.0, 1.0}  # hard samples, not p = .5
  np.testing.assert_allclose(reg[3:], 0.5)  # no sample: probabilities
  # Mask-alive: logits > 0 plus the kept channel; then p = .5 >= .4.
  assert alive.tolist() == [True, False, False, True, True, True]


# ------------------------------------------------------------- training
def _train(strength, steps=200, seed=0):
  keras.utils.set_random_seed(seed)
  model = tiny_model()
  reg = flops_regularizer(model, regularize_on_mask=False,
                          mask_as_alive_vector=False, alive_threshold=0.1)
  initial = float(reg.get_cost())
  optimizer = keras.optimizers.Adam(0.05)
  rng = np.random.RandomState(seed)
  x = tf.constant(rng.rand(16, 8, 8, 3).astype(np.float32))
  y = tf.constant(rng.randint(0, 5, 16))
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  scale = strength / initial

  @tf.function
  def train_step():
    with tf.GradientTape() as tape:
      loss = loss_fn(y, model(x, training=True))
      loss += scale * reg.get_regularization_term()
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

  for _ in range(steps):
    train_step()
  return initial, float(reg.get_cost())


def test_training_with_strength_lowers_cost_and_without_does_not():
  initial, final = _train(strength=20.0)
  assert initial == _K * 3 * 4 + _K * 4 * 6 + 2 * 6 * 5
  assert final < 0.5 * initial
  initial0, final0 = _train(strength=0.0)
  assert final0 == initial0


# ------------------------------------------------------------ API
def test_public_names_resolve():
  package = importlib.import_module('morph_net.probabilistic_gating')
  assert 'LogisticSigmoidGating' in package.__all__
  for attr in package.__all__:
    assert getattr(package, attr) is not None


def test_records_of_freed_gates_are_dropped():
  gate = Gate()
  gate(tf.ones([1, 3]))
  variable = gate.mask_logits.value
  key = activation_gating._key(variable)  # pylint: disable=protected-access
  assert key in activation_gating._RECORDS  # pylint: disable=protected-access
  del gate, variable
  import gc  # pylint: disable=g-import-not-at-top
  gc.collect()
  assert key not in activation_gating._RECORDS  # pylint: disable=protected-access
