"""Scale-free sources (framework.invariance) and their relative signals.

A BatchNorm feeding another conv + BatchNorm through a ReLU is scale-free:
halving its gamma and beta leaves the training loss unchanged, so with
`normalize='auto'` its regularization and alive vectors do not change
either. One feeding the residual sum or the classifier is not.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import morph_net.keras as mk
from morph_net.network_regularizers import combined as combined_lib
from morph_net.network_regularizers import flop_regularizer

L = keras.layers


def _model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3))
  x = L.Conv2D(8, 3, padding='same', use_bias=False, name='conv0')(inputs)
  x = L.ReLU()(L.BatchNormalization(name='bn0')(x))
  x = L.Conv2D(16, 3, padding='same', name='conv1')(x)  # a bias, then BN
  x = L.ReLU()(L.BatchNormalization(name='bn1')(x))
  r = L.Conv2D(16, 3, padding='same', use_bias=False, name='res')(x)
  r = L.BatchNormalization(name='bn_res')(r)
  x = L.ReLU()(L.Add()([x, r]))
  x = L.Conv2D(8, 1, name='plain')(x)  # a bias, a ReLU, no BatchNorm
  x = L.GlobalAveragePooling2D()(L.ReLU()(x))
  return keras.Model(inputs, L.Dense(3, name='out')(x))


def _layers_of(reg, names):
  manager = reg.op_regularizer_manager
  return sorted(
      key for key, entry in manager.layers(include_depthwise=True).items()
      if any(c.op.name in names for c in entry.computes)) + sorted(
          s.op.name.split('/')[1].rsplit('_', 1)[0] for s in manager.sources
          if s.op.name in names and 'batchnorm' in s.op.name)


def test_scale_free_sources_are_found_by_their_consumers():
  model = _model()
  gamma = flop_regularizer.GammaFlopsRegularizer(model, 1e-2,
                                                 normalize='auto')
  # bn0 and bn1 feed only convs followed by BatchNorm; bn1 also feeds the
  # residual sum, whose scale the loss sees; bn_res only the sum.
  assert _layers_of(gamma, gamma.op_regularizer_manager.normalized_sources
                    ) == ['bn0']
  lasso = flop_regularizer.GroupLassoFlopsRegularizer(model, 1e-2,
                                                      normalize='auto')
  # conv0, conv1 (through its bias) and res are batch-normalized; plain is
  # biased before a ReLU, out is the output.
  assert _layers_of(lasso, lasso.op_regularizer_manager.normalized_sources
                    ) == ['conv0', 'conv1', 'res']
  off = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  assert not off.op_regularizer_manager.normalized_sources


def _loss(model, x, y):
  logits = model(x, training=True)  # batch statistics: the invariance
  return float(tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
      y, logits, from_logits=True)))


def _scale_bn(model, name, factor):
  bn = model.get_layer(name)
  gamma, beta, mean, var = bn.get_weights()
  bn.set_weights([gamma * factor, beta * factor, mean, var])


@pytest.mark.parametrize('names,free', [(('bn0',), True),
                                        (('bn1', 'bn_res'), False)])
def test_halving_a_batchnorm_changes_the_signal_only_where_the_loss_sees_it(
    names, free):
  """bn1 and bn_res are tied by the residual sum: halved together."""
  model = _model()
  x = np.random.RandomState(0).normal(size=(16, 8, 8, 3)).astype('float32')
  y = np.arange(16) % 3
  reg = flop_regularizer.GammaFlopsRegularizer(model, 1e-2, normalize='auto')
  before_loss = _loss(model, x, y)
  before_term = float(reg.get_regularization_term())
  before_cost = float(reg.get_cost())
  for name in names:
    _scale_bn(model, name, 0.5)
  after_loss = _loss(model, x, y)
  after_term = float(reg.get_regularization_term())
  if free:  # the loss does not see it, nor does the normalized signal
    assert after_loss == pytest.approx(before_loss, rel=1e-3)
    assert after_term == pytest.approx(before_term, rel=1e-5)
  else:
    assert abs(after_loss - before_loss) > 1e-3 * abs(before_loss)
    assert after_term < before_term
  assert float(reg.get_cost()) == before_cost


def test_a_scale_free_layer_is_alive_relative_to_its_own_scale():
  """Shrunk a thousandfold, bn0's channels stay alive when normalized (the
  loss cannot tell); the absolute signal calls them all dead."""
  model = _model()
  _scale_bn(model, 'bn0', 1e-3)
  gamma = model.get_layer('bn0').gamma
  g = gamma.numpy()
  g[:2] = 0.0  # two channels really are dead
  gamma.assign(g)
  relative = flop_regularizer.GammaFlopsRegularizer(model, 1e-2,
                                                    normalize='auto')
  absolute = flop_regularizer.GammaFlopsRegularizer(model, 1e-2)
  assert mk.structure_cost(model, relative) < mk.structure_cost(model, {})
  assert sum(relative_alive(relative, 'bn0')) == 6
  assert sum(relative_alive(absolute, 'bn0')) == 0


def relative_alive(reg, layer):
  manager = reg.op_regularizer_manager
  source = next(s for s in manager.sources if '/%s_' % layer in s.op.name
                or '/%s/' % layer in s.op.name)
  return manager.get_regularizer(source.op).alive_vector.numpy().tolist()


def _conv_bn(x, channels, name):
  kernel = tf.compat.v1.get_variable(
      name + '/kernel', [3, 3, int(x.shape[-1]), channels])
  gamma = tf.compat.v1.get_variable(name + '/gamma', [channels],
                                    initializer=tf.ones_initializer())
  beta = tf.compat.v1.get_variable(name + '/beta', [channels],
                                   initializer=tf.zeros_initializer())
  h = tf.nn.conv2d(x, kernel, 1, 'SAME')
  return tf.compat.v1.nn.fused_batch_norm(h, gamma, beta, is_training=True)[0]


def test_graph_mode_keeps_absolute_gammas_unless_asked():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3])
    h = tf.nn.relu(_conv_bn(x, 8, 'a'))
    out = tf.reduce_mean(_conv_bn(h, 8, 'b'), [1, 2])
    auto = flop_regularizer.GammaFlopsRegularizer([out.op], 1e-2,
                                                  normalize='auto')
    forced = flop_regularizer.GammaFlopsRegularizer([out.op], 1e-2,
                                                    normalize=True)
  assert not auto.op_regularizer_manager.normalized_sources
  assert len(forced.op_regularizer_manager.normalized_sources) == 2


def test_bad_normalize_is_refused():
  with pytest.raises(ValueError, match='normalize'):
    flop_regularizer.GammaFlopsRegularizer(_model(), 1e-2, normalize='yes')


def test_exact_zeros_snap_relative_to_the_layer_scale():
  """With exact zeros, a normalized source's channel falling under
  threshold x its layer's RMS is set to 0, whatever the layer's scale."""
  model = _model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.2, normalize='auto')
  trainer = mk.add_regularizer(model, reg, strength=1e-9, exact_zeros=True,
                               monitor=False)
  trainer.compile(keras.optimizers.SGD(0.0), 'mse')
  step = trainer._budget_step.proximal  # pylint: disable=protected-access
  step.build()
  bn0 = model.get_layer('bn0')
  g = np.full(8, 1e-3, np.float32)
  g[0] = 1e-5  # 0.01 x the layer's scale: under 0.2 relative
  bn0.gamma.assign(g)
  step.apply(0.0)  # no shrink: only the snap of channels falling under
  after = bn0.gamma.numpy()
  assert after[0] == 0.0 and np.all(after[1:] == np.float32(1e-3))


def test_a_combined_regularizer_keeps_its_parts_normalize():
  """One part with weight 1 trains like the part itself: its normalized
  sources stay relative in the proximal step (found by probing: the
  combined view dropped `normalize`, and a channel alive relative to its
  layer's scale, 0.501 > 0.5 x RMS 0.88, was snapped to 0)."""
  x = np.random.RandomState(0).rand(16, 8, 8, 3).astype('float32')
  y = np.random.RandomState(1).rand(16, 3).astype('float32')
  gammas = []
  for combined in (False, True):
    model = _model()
    bn0 = model.get_layer('bn0')
    g = np.ones(bn0.gamma.shape[0], np.float32)
    g[0] = 0.501
    bn0.gamma.assign(g)
    reg = flop_regularizer.GammaFlopsRegularizer(model, 0.5, normalize=True)
    trainer = mk.add_regularizer(model, [(reg, 1.0)] if combined else reg,
                                 strength=1e-5, exact_zeros=True,
                                 monitor=False)
    trainer.compile(keras.optimizers.SGD(0.01), 'mse')
    trainer.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    gammas.append(bn0.gamma.numpy())
  assert gammas[0][0] > 0.4
  np.testing.assert_allclose(gammas[1], gammas[0], rtol=1e-5)


def test_a_combined_regularizer_refuses_parts_that_disagree_on_normalize():
  model = _model()
  plain = flop_regularizer.GammaFlopsRegularizer(model, 0.5)
  relative = flop_regularizer.GammaFlopsRegularizer(model, 0.5,
                                                    normalize=True)
  with pytest.raises(ValueError, match='the same normalize'):
    mk.add_regularizer(model, combined_lib.CombinedRegularizer(
        [(plain, 1.0), (relative, 1.0)], names=['absolute', 'relative']),
                       strength=1e-5, exact_zeros=True, monitor=False)
