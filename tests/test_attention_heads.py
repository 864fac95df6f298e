"""Attention heads are channel groups; channels may span several axes.

The costs here are derived by hand from the layer shapes (the README's
FLOP formulas: 2 x MACs; attention products 2 x T x S x H x d each), and
pruned heads are checked against the same network built with fewer heads.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net import framework
import morph_net.keras as mk
from morph_net.framework import errors
from morph_net.keras import budget
from morph_net.network_regularizers import cost_model
from morph_net.network_regularizers import families
from morph_net.network_regularizers import flop_regularizer
from morph_net.tools import structure_exporter

T, C = 6, 16


def _mha_model(heads, key_dim=4, value_dim=5, seed=0):
  keras.utils.set_random_seed(seed)
  x = keras.Input((T, C))
  h = keras.layers.Dense(C, name='embed')(x)
  a = keras.layers.MultiHeadAttention(num_heads=heads, key_dim=key_dim,
                                      value_dim=value_dim, name='mha')(h, h)
  y = keras.layers.Add()([h, a])
  y = keras.layers.Dense(32, activation='relu', name='mlp')(y)
  return keras.Model(x, keras.layers.Dense(8, name='head')(y))


def _mha_flops(heads, key_dim=4, value_dim=5):
  qk = 2 * (2 * T * C * heads * key_dim)
  v = 2 * T * C * heads * value_dim
  scores = 2 * T * T * heads * key_dim
  av = 2 * T * T * heads * value_dim
  out = 2 * T * heads * value_dim * C
  rest = 2 * T * (C * C + C * 32 + 32 * 8)
  return qk + v + scores + av + out + rest


def _manager(model):
  return framework.OpRegularizerManager(
      model, family=families.group_lasso(threshold=1e-3))


def _labels(manager, layer):
  (entry,) = [e for k, e in manager.layers().items() if k == layer]
  return manager.channel_labels(entry.computes[0].output)


def test_mha_heads_are_whole_channel_groups():
  manager = _manager(_mha_model(heads=3))
  q = _labels(manager, 'query').reshape(3, 4)
  k = _labels(manager, 'key').reshape(3, 4)
  v = _labels(manager, 'value').reshape(3, 5)
  # One class per head, the same across query, key and value.
  assert (q == q[:, :1]).all() and (v == v[:, :1]).all()
  assert len(set(q[:, 0])) == 3
  np.testing.assert_array_equal(q, k)
  np.testing.assert_array_equal(q[:, 0], v[:, 0])
  # The residual stream is one tie through the output projection.
  np.testing.assert_array_equal(_labels(manager, 'attention_output'),
                                _labels(manager, 'embed'))
  # MLP units are ordinary channels: 32 classes of their own.
  assert len(set(_labels(manager, 'mlp'))) == 32


@pytest.mark.parametrize('heads', [1, 3])
def test_mha_flops_are_exact(heads):
  flops = cost_model.CostModel(_manager(_mha_model(heads)), 'flops')
  assert flops.full_cost() == _mha_flops(heads)


def test_dead_heads_cost_what_fewer_heads_cost():
  manager = _manager(_mha_model(heads=4))
  alive = np.ones(manager.num_labels)
  q = _labels(manager, 'query').reshape(4, 4)
  alive[q[[1, 3], 0]] = 0.0  # heads 1 and 3 die
  pruned = cost_model.CostModel(manager, 'flops').evaluate(alive)
  fewer = cost_model.CostModel(_manager(_mha_model(heads=2)),
                               'flops').full_cost()
  assert pruned == fewer == _mha_flops(2)


def _custom_attention_model(heads=2, head_dim=4):
  """Self-attention written with Reshape/Transpose/matmul (MiT-style)."""
  width = heads * head_dim
  x = keras.Input((T, C))

  def split(t):
    t = keras.ops.reshape(t, (-1, T, heads, head_dim))
    return keras.ops.transpose(t, (0, 2, 1, 3))  # [B, H, T, d]

  q = keras.layers.Lambda(split)(keras.layers.Dense(width, name='q')(x))
  k = keras.layers.Lambda(split)(keras.layers.Dense(width, name='k')(x))
  v = keras.layers.Lambda(split)(keras.layers.Dense(width, name='v')(x))
  scores = keras.layers.Lambda(lambda t: keras.ops.softmax(
      keras.ops.matmul(t[0], keras.ops.swapaxes(t[1], -1, -2)), axis=-1))(
          [q, k])
  mixed = keras.layers.Lambda(lambda t: keras.ops.reshape(
      keras.ops.transpose(keras.ops.matmul(t[0], t[1]), (0, 2, 1, 3)),
      (-1, T, width)))([scores, v])
  y = keras.layers.Dense(C, name='proj')(mixed)
  return keras.Model(x, keras.layers.Dense(8, name='out')(y))


def test_custom_attention_ties_heads_and_counts_products():
  manager = _manager(_custom_attention_model())
  q = _labels(manager, 'q').reshape(2, 4)
  assert (q == q[:, :1]).all() and q[0, 0] != q[1, 0]
  np.testing.assert_array_equal(_labels(manager, 'k').reshape(2, 4), q)
  np.testing.assert_array_equal(_labels(manager, 'v').reshape(2, 4), q)
  flops = cost_model.CostModel(manager, 'flops').full_cost()
  dense = 2 * T * (3 * C * 8 + 8 * C + C * 8)
  products = 2 * (2 * T * T * 2 * 4)
  assert flops == dense + products


def _grouped_query_model(query_heads=4, kv_heads=2, head_dim=4):
  """Grouped-query attention written as Llama writes it: key/value heads
  repeated with ops.repeat (ExpandDims + Tile + Reshape) to the query
  heads."""
  x = keras.Input((T, C))
  groups = query_heads // kv_heads

  def split(t, heads):
    return keras.ops.reshape(t, (-1, T, heads, head_dim))

  q = keras.layers.Lambda(lambda t: split(t, query_heads))(
      keras.layers.Dense(query_heads * head_dim, name='q')(x))
  k, v = (keras.layers.Lambda(lambda t: keras.ops.repeat(
      split(t, kv_heads), groups, axis=2))(
          keras.layers.Dense(kv_heads * head_dim, name=n)(x))
          for n in ('k', 'v'))
  mixed = keras.layers.Lambda(lambda t: keras.ops.reshape(keras.ops.einsum(
      'bhqk,bkhd->bqhd', keras.ops.softmax(keras.ops.einsum(
          'bqhd,bkhd->bhqk', t[0], t[1]), axis=-1), t[2]),
      (-1, T, query_heads * head_dim)))([q, k, v])
  y = keras.layers.Dense(C, name='proj')(mixed)
  return keras.Model(x, keras.layers.Dense(8, name='out')(y))


def test_repeated_key_value_heads_live_with_their_query_heads():
  """A key/value head, the query heads it serves and their projection rows
  are one channel class (the ExpandDims before the repeat used to drop the
  head axes: key/value channels were untied per dim)."""
  manager = _manager(_grouped_query_model())
  q = _labels(manager, 'q').reshape(4, 4)
  k = _labels(manager, 'k').reshape(2, 4)
  assert (k == k[:, :1]).all() and k[0, 0] != k[1, 0]
  np.testing.assert_array_equal(q, np.repeat(k, 2, axis=0))
  np.testing.assert_array_equal(_labels(manager, 'v').reshape(2, 4), k)
  flops = cost_model.CostModel(manager, 'flops').full_cost()
  dense = 2 * T * (C * 16 + 2 * C * 8 + 16 * C + C * 8)
  products = 2 * (2 * T * T * 4 * 4)
  assert flops == dense + products


def test_channel_shuffle_is_a_permutation():
  """[N,H,W,g,c] -> swap -> merge: conv2 input channel i is conv1's
  channel perm[i], and nothing else is tied."""
  g, c = 2, 3
  x = keras.Input((5, 5, 4))
  a = keras.layers.Conv2D(g * c, 1, name='c1')(x)
  shuffled = keras.layers.Lambda(lambda t: keras.ops.reshape(
      keras.ops.transpose(keras.ops.reshape(t, (-1, 5, 5, g, c)),
                          (0, 1, 2, 4, 3)), (-1, 5, 5, g * c)))(a)
  b = keras.layers.Conv2D(4, 1, name='c2')(keras.layers.ReLU()(shuffled))
  model = keras.Model(x, b)
  manager = _manager(model)
  conv2 = manager.layers()['c2'].computes[0]
  before = _labels(manager, 'c1')
  after = manager.channel_labels(conv2.input)
  perm = np.arange(g * c).reshape(g, c).T.reshape(-1)
  np.testing.assert_array_equal(after, before[perm])
  assert len(set(before)) == g * c


def test_transposed_channels_into_a_last_axis_op_are_refused():
  """NHWC -> NCHW, then an NHWC conv: it would read W as channels."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, 6, 6, 3])
    w1 = tf.compat.v1.get_variable('w1', [1, 1, 3, 6])
    h = tf.nn.conv2d(x, w1, 1, 'SAME')
    h = tf.transpose(h, [0, 3, 1, 2])  # [N, 6, 6, 6]: C moved to axis 1
    w2 = tf.compat.v1.get_variable('w2', [1, 1, 6, 4])
    y = tf.nn.conv2d(h, w2, 1, 'SAME', name='conv_after_transpose')
  with pytest.raises(errors.UnsupportedOpError) as e:
    framework.OpRegularizerManager([y.op])
  message = str(e.value)
  assert 'conv_after_transpose' in message and 'last axis' in message


def test_tie_axes_projection_and_permutation():
  """Unit check of the builder: shared axis names decide the ties."""
  graph = tf.Graph()
  with graph.as_default():
    a = tf.compat.v1.placeholder(tf.float32, [None, 5, 2, 3], name='a')
    b = tf.compat.v1.placeholder(tf.float32, [None, 2, 5], name='b')
    p = tf.compat.v1.placeholder(tf.float32, [None, 3, 2], name='p')
  view = framework.graph_view.GraphView.from_ops([a.op, b.op, p.op])
  builder = framework.channel_graph.ChannelGraphBuilder(view)
  builder.set_channel_axes(a, [-2, -1])  # (h, j): 6 channels
  builder.set_channel_axes(b, [-2])  # h: 2 channels
  builder.set_channel_axes(p, [-2, -1])  # (j, h): 6 channels
  builder.tie_axes(a, ['h', 'j'], b, ['h'])
  builder.tie_axes(a, ['h', 'j'], p, ['j', 'h'])
  labels = builder.solve()
  nodes = builder.tensor_nodes()
  la, lb, lp = (labels[nodes[t.name]] for t in (a, b, p))
  assert builder.channels(a) == 6 and builder.positions(a) == 5
  # a's head h is b's channel h; p is a's channels transposed.
  assert (la.reshape(2, 3) == lb[:, None]).all()
  np.testing.assert_array_equal(lp.reshape(3, 2), la.reshape(2, 3).T)
  assert lb[0] != lb[1]


def _vit_classifier(heads=4, hidden=16, mlp=32, num_layers=2):
  vit_backbone = pytest.importorskip('keras_hub.src.models.vit.vit_backbone')
  backbone = vit_backbone.ViTBackbone(
      image_shape=(8, 8, 3), patch_size=2, num_layers=num_layers,
      num_heads=heads,
      hidden_dim=hidden, mlp_dim=mlp, dropout_rate=0.0,
      attention_dropout=0.0)
  inputs = keras.Input((8, 8, 3))
  pooled = keras.layers.GlobalAveragePooling1D()(backbone(inputs))
  return keras.Model(inputs, keras.layers.Dense(10, name='logits')(pooled))


def _train_vit(digits, mlp, strength, num_layers=2, optimizer=None):
  """Trains `_vit_classifier(mlp=mlp, num_layers=num_layers)` on the
  digits (as 3-channel images) for 8 epochs (~350 steps; Adam(3e-3) unless
  `optimizer`) under GroupLasso FLOPs with exact zeros at `strength` /
  initial cost, the residual stream's producers blacklisted. Returns the
  data, the model, the regularizer, the initial cost and the alive
  counts."""
  keras.utils.set_random_seed(0)
  x, y = np.repeat(digits[0], 3, -1), digits[1]
  model = _vit_classifier(mlp=mlp, num_layers=num_layers)
  reg = flop_regularizer.GroupLassoFlopsRegularizer(
      model, threshold=1e-2,
      regularizer_blacklist=['attention_output', 'dense_2', 'patch_embedding'])
  full = float(reg.get_cost())
  trainer = mk.add_regularizer(model, reg, strength=strength / full,
                               exact_zeros=True, monitor=False)
  trainer.compile(optimizer or keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  trainer.fit(x[:1400], y[:1400], batch_size=32, epochs=8, verbose=0)
  counts = structure_exporter.StructureExporter(
      reg.op_regularizer_manager).get_alive_counts()
  return x, y, model, reg, full, counts


def _assert_slim_vit_retrains(model, counts, x, y):
  """The slim ViT costs what the structure costs and retrains from
  scratch (its training loss halves in 3 epochs)."""
  slim = mk.slim_model(model, counts, transfer_weights=False)
  assert float(mk.structure_cost(model, counts)) == pytest.approx(
      float(cost_model.CostModel(framework.OpRegularizerManager(slim),
                                 'flops').full_cost()))
  slim.compile(keras.optimizers.Adam(3e-3),
               keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  first = slim.evaluate(x[:1400], y[:1400], verbose=0)
  slim.fit(x[:1400], y[:1400], batch_size=32, epochs=3, verbose=0)
  assert slim.evaluate(x[:1400], y[:1400], verbose=0) < 0.5 * first


def test_vit_trained_with_group_lasso_loses_whole_heads(digits):
  """A keras-hub ViT on sklearn digits (17 tokens, 2 blocks of 4 heads of
  4 dims), GroupLasso FLOPs with exact zeros, 8 epochs (~350 steps).

  The residual stream is left out (blacklisted): it is tied through every
  block, so its channels are the cheapest to remove and collapse first.
  At this size a head costs ~12 MLP units' FLOPs, so heads go first; MLP
  units stay alive at strengths that leave heads alive (measured: MLP
  norms ~0.5 while 2-4 of 8 heads die). slim_model refuses a block left
  with no head (a custom layer keeps its sublayers), and the strength here
  leaves some in each block.
  """
  x, y, model, reg, full, counts = _train_vit(digits, mlp=32, strength=5.0)
  queries = {k: v for k, v in counts.items() if k.endswith('mha/query')}
  assert len(queries) == 2
  for key, n in queries.items():
    # Whole heads: query, key and value keep the same heads.
    assert n % 4 == 0, (key, n)
    assert counts[key[:-len('query')] + 'key'] == n
    assert counts[key[:-len('query')] + 'value'] == n
  alive_heads = sum(queries.values()) // 4
  assert 0 < alive_heads < 8, counts
  pruned = float(reg.get_cost())
  assert pruned < 0.9 * full
  logits = model.predict(x[1400:], verbose=0)
  assert (logits.argmax(-1) == y[1400:]).mean() > 0.5
  # The slim ViT keeps the alive heads, costs what the structure costs,
  # and retrains from scratch.
  _assert_slim_vit_retrains(model, counts, x, y)


def test_vit_loses_whole_heads_and_mlp_units_in_one_run(digits):
  """One ViT block (4 heads of 4 dims, a 128-unit MLP) under SGD with
  momentum: heads and MLP units die in the same run, and the slim ViT
  retrains.

  Under Adam the heads always go first here: Adam's step hardly depends
  on a gradient's size, so a group dies when strength x its cost weight
  outweighs the sign-consistency of its gradient, and a head weighs ~3 MLP
  units (measured with 2 blocks: no strength in [2.5, 60] / cost, MLP
  32-128 or patch 2 and 4 left a head in each block while units died).
  Under SGD a group's gradient size counts, and a redundant MLP unit's is
  small. With 2 blocks the second block's heads die first (measured), and
  a block needs a head to be slimmed, so the ViT has one block. Measured
  over seeds 0, 1, 2: 3, 1 and 3 heads left, 119, 120 and 122 units.
  """
  x, y, model, reg, full, counts = _train_vit(
      digits, mlp=128, strength=0.1, num_layers=1,
      optimizer=keras.optimizers.SGD(0.05, momentum=0.9, clipnorm=1.0))
  leaf = {k.split('/')[-1]: v for k, v in counts.items()}  # unique here
  query, units = leaf.get('query'), leaf.get('dense_1')
  assert None not in (query, units), counts
  assert query % 4 == 0 and 0 < query < 16, counts  # whole heads
  assert 0 < units < 128, counts
  assert leaf['key'] == leaf['value'] == query, counts
  assert float(reg.get_cost()) < 0.95 * full
  logits = model.predict(x[1400:], verbose=0)
  assert (logits.argmax(-1) == y[1400:]).mean() > 0.3  # chance: 0.1
  _assert_slim_vit_retrains(model, counts, x, y)


def test_a_kernel_that_keras_transposes_for_its_matmul_is_a_weight():
  """Keras lowers EinsumDense 'btd,ndh->btnh' (Gemma's projections, kernel
  [heads, C, head_dim]) to a matmul with the kernel transposed and
  reshaped. It is a weight (counted in the model size), and group lasso
  reads channel (n, j) from kernel[n, :, j]."""
  inputs = keras.Input((8, 16))
  proj = keras.layers.EinsumDense('btd,ndh->btnh', output_shape=(8, 4, 4),
                                  name='proj')
  x = keras.layers.Reshape((8, 16))(proj(inputs))
  model = keras.Model(inputs, keras.layers.Dense(2, name='out')(x))
  kernel = np.random.default_rng(0).normal(size=(4, 16, 4)).astype('float32')
  kernel[1] = 0.0  # head 1
  kernel[0, :, 3] = 0.0  # dim 3 of head 0
  proj.kernel.assign(kernel)
  manager = _manager(model)
  assert 'Transpose' in {op.type for op in manager.view.graph.get_operations()}
  assert cost_model.CostModel(manager, 'model_size').full_cost() == (
      16 * 16 + 16 * 2)
  reg = flop_regularizer.GroupLassoFlopsRegularizer(model, threshold=1e-3)
  alive = structure_exporter.StructureExporter(
      reg.op_regularizer_manager).get_alive_counts()
  assert alive['proj'] == 16 - 4 - 1
  (source,) = [s for s in reg.op_regularizer_manager.sources
               if 'proj' in s.op.name]
  assert source.setting[2] == (-3, -1)  # variable axes n and h
  assert budget.supports_exact_zeros(reg)


def test_output_channels_in_another_order_than_the_kernel_axes():
  """'btd,hdn->btnh': kernel [h, d, n] but channels (n, h): channel
  n * 2 + h reads kernel[h, :, n]."""
  inputs = keras.Input((8, 16))
  proj = keras.layers.EinsumDense('btd,hdn->btnh', output_shape=(8, 3, 2),
                                  name='proj')
  x = keras.layers.Reshape((8, 6))(proj(inputs))
  model = keras.Model(inputs, keras.layers.Dense(2, name='out')(x))
  kernel = np.random.default_rng(0).normal(size=(2, 16, 3)).astype('float32')
  kernel[1, :, 0] = 0.0  # channel (n=0, h=1) = 1
  kernel[0, :, 2] = 0.0  # channel (n=2, h=0) = 4
  proj.kernel.assign(kernel)
  reg = flop_regularizer.GroupLassoFlopsRegularizer(model, threshold=1e-3)
  manager = reg.op_regularizer_manager
  (op,) = [s.op for s in manager.sources if 'proj' in s.op.name]
  alive = manager.get_regularizer(op).alive_vector.numpy()
  np.testing.assert_array_equal(alive, [1, 0, 1, 1, 0, 1])
