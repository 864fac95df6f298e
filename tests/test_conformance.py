"""Handler conformance: one row per supported op type, one test over them.

Each row builds a tiny network around the op (a `tf.function` of raw ops,
or a Keras model), names the channel ties the analysis must find, and
carries the expected FLOPs and weight count from an independent count:
raw-op rows record 2 x output positions x kernel elements for every conv and
matmul while the body runs eagerly; Keras rows count from the layer shapes
Keras infers (`layer.output.shape`, kernel shapes). Adding an op type is one
table entry in `op_handlers._FAMILIES` plus one row here;
`test_every_table_op_type_has_a_row` fails until the row exists.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import errors
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.framework import recurrent
from morph_net.framework import suggest
from morph_net.network_regularizers import cost_model

_COUNT = {'flops': 0, 'weights': 0}  # filled by eager runs of row bodies


def _record(y, w):
  if tf.executing_eagerly():
    positions = int(np.prod(y.shape[1:-1], dtype=np.int64))
    _COUNT['flops'] += 2 * positions * int(np.prod(w.shape))
    _COUNT['weights'] += int(np.prod(w.shape))


def _weight(shape, seed=0):
  rng = np.random.default_rng(seed)
  return tf.Variable(rng.normal(size=shape).astype(np.float32))


def _conv(x, w, name):
  y = tf.nn.convolution(x, w, padding='SAME', name=name)
  _record(y, w)
  return y


def _pointwise(x, c_out, name, seed):
  """A 1x1 conv (Conv2D/Conv3D by rank) or a MatMul on a 2-D input."""
  rank = x.shape.rank
  shape = [1] * (rank - 2) + [x.shape[-1], c_out] if rank > 2 else [
      x.shape[-1], c_out]
  w = _weight(shape, seed)
  if rank == 2:
    return lambda t: _matmul(t, w, name)
  return lambda t: _conv(t, w, name)


def _matmul(x, w, name):
  y = tf.matmul(x, w, name=name)
  _record(y, w)
  return y


def _raw(body_fn, in_shape=(4, 4, 8), pre_channels=(8,)):
  """A builder: pre convs -> body -> a 1x1 'post' conv/matmul.

  `body_fn(*pres)` gets one tensor per entry of pre_channels (ops named
  'pre', 'pre2', ...) and names its result op 'op'. The body is run once
  eagerly (batch 1) to size the post layer and count FLOPs and weights.
  """

  def build():
    x0 = tf.zeros((1,) + tuple(in_shape))
    pres = [_pointwise(x0, c, 'pre' if i == 0 else 'pre%d' % (i + 1), i)
            for i, c in enumerate(pre_channels)]
    _COUNT.update(flops=0, weights=0)
    y0 = body_fn(*[p(x0) for p in pres])
    post = _pointwise(y0, 6, 'post', 9)
    _COUNT.update(flops=0, weights=0)
    post(body_fn(*[p(x0) for p in pres]))
    expected = dict(_COUNT)

    def net(x):
      return post(body_fn(*[p(x) for p in pres]))

    spec = tf.TensorSpec((None,) + tuple(in_shape), tf.float32)
    function = tf.function(net)
    expected['keep'] = function  # a trace only holds weak variable refs
    return function.get_concrete_function(spec), expected

  return build


def _keras(make):
  """A builder for a Keras model; counts from Keras' inferred shapes."""

  def build():
    keras.backend.clear_session()
    model = make()
    return model, _keras_count(model)

  return build


def _keras_count(model):
  flops = weights = 0
  for layer in model.layers:
    kernel = getattr(layer, 'kernel', None)
    if isinstance(layer, keras.layers.MultiHeadAttention):
      f, w = _mha_count(layer, model.input.shape[1])
      flops, weights = flops + f, weights + w
      continue
    if kernel is None:
      continue
    k = int(np.prod(kernel.shape))
    weights += k
    if isinstance(layer, (keras.layers.Conv2DTranspose,
                          keras.layers.Conv3DTranspose)):
      shape = layer.input.shape  # transposed convs: input positions
    else:
      shape = layer.output.shape
    flops += 2 * int(np.prod(shape[1:-1])) * k
  return {'flops': flops, 'weights': weights}


def _mha_count(layer, t):
  """Self-attention over T positions: projections 2 x T x kernel elements,
  QK^T and AV 2 x T x T x heads x head dim each."""
  heads, dk, dv = layer.num_heads, layer.key_dim, layer.value_dim
  kernels = [layer.query_dense.kernel, layer.key_dense.kernel,
             layer.value_dense.kernel, layer.output_dense.kernel]
  weights = sum(int(np.prod(k.shape)) for k in kernels)
  flops = 2 * t * weights + 2 * t * t * heads * (dk + dv)
  return flops, weights


@dataclasses.dataclass(frozen=True)
class Row:
  """One conformance case.

  Attributes:
    name: the case id.
    op_types: table op types the case covers (each must appear in the
      analyzed ops).
    build: () -> (output boundary, {'flops': ..., 'weights': ...}).
    ties: (a, b, mapping): channel j of tensor a is channel mapping[j] of b
      (mapping None: identity; b may be a list, concatenated).
    apart: (a, b): the two tensors share no channel class (a leaf).
  Tensors are named 'op' (exact op name in raw graphs) or 'Type:part'
  (the one op of that type whose name contains part), '#k' for output k.
  """
  name: str
  op_types: tuple
  build: object
  ties: tuple = ()
  apart: tuple = ()


def _unary(op_type, fn, in_shape=(4, 4, 8)):
  return Row(op_type, (op_type,), _raw(lambda p: fn(p, 'op'), in_shape),
             ties=(('op', 'pre', None),))


def _binary(op_type, fn):
  return Row(op_type, (op_type,), _raw(lambda a, b: fn(a, b, 'op'),
                                       pre_channels=(8, 8)),
             ties=(('op', 'pre', None), ('op', 'pre2', None)))


def _batch_norm(op):
  c = tf.ones([8])
  z = tf.zeros([8])
  return lambda p, name: op(x=p, scale=c, offset=z, mean=z, variance=c,
                            is_training=False, name=name)[0]


_R = tf.raw_ops
_UNARY = {
    'Relu': lambda p, n: tf.nn.relu(p, name=n),
    'Relu6': lambda p, n: tf.nn.relu6(p, name=n),
    'Elu': lambda p, n: tf.nn.elu(p, name=n),
    'Selu': lambda p, n: tf.nn.selu(p, name=n),
    'LeakyRelu': lambda p, n: tf.nn.leaky_relu(p, name=n),
    'Sigmoid': lambda p, n: tf.sigmoid(p, name=n),
    'Tanh': lambda p, n: tf.tanh(p, name=n),
    'Softplus': lambda p, n: tf.nn.softplus(p, name=n),
    'Softsign': lambda p, n: tf.nn.softsign(p, name=n),
    'Softmax': lambda p, n: tf.nn.softmax(p, name=n),
    'LogSoftmax': lambda p, n: tf.nn.log_softmax(p, name=n),
    'Identity': lambda p, n: tf.identity(p, name=n),
    'Snapshot': lambda p, n: _R.Snapshot(input=p, name=n),
    'StopGradient': lambda p, n: tf.stop_gradient(p, name=n),
    'PreventGradient': lambda p, n: _R.PreventGradient(input=p, name=n),
    'EnsureShape': lambda p, n: tf.ensure_shape(p, [None, 4, 4, 8], name=n),
    'CheckNumerics': lambda p, n: tf.debugging.check_numerics(p, 'x',
                                                              name=n),
    'Cast': lambda p, n: tf.cast(tf.cast(p, tf.float16, name=n), tf.float32),
    'BiasAdd': lambda p, n: tf.nn.bias_add(p, tf.ones([8]), name=n),
    'MaxPool': lambda p, n: tf.nn.max_pool2d(p, 2, 2, 'VALID', name=n),
    'AvgPool': lambda p, n: tf.nn.avg_pool2d(p, 2, 2, 'VALID', name=n),
    'Neg': lambda p, n: tf.negative(p, name=n),
    'Abs': lambda p, n: tf.abs(p, name=n),
    'Square': lambda p, n: tf.square(p, name=n),
    'Sqrt': lambda p, n: tf.sqrt(p, name=n),
    'Rsqrt': lambda p, n: tf.math.rsqrt(p, name=n),
    'Exp': lambda p, n: tf.exp(p, name=n),
    'Expm1': lambda p, n: tf.math.expm1(p, name=n),
    'Log': lambda p, n: tf.math.log(p, name=n),
    'Log1p': lambda p, n: tf.math.log1p(p, name=n),
    'Erf': lambda p, n: tf.math.erf(p, name=n),
    'Erfc': lambda p, n: tf.math.erfc(p, name=n),
    'Reciprocal': lambda p, n: tf.math.reciprocal(p, name=n),
    'ClipByValue': lambda p, n: _R.ClipByValue(
        t=p, clip_value_min=-1.0, clip_value_max=1.0, name=n),
    'Round': lambda p, n: tf.round(p, name=n),
    'Floor': lambda p, n: tf.floor(p, name=n),
    'Ceil': lambda p, n: tf.math.ceil(p, name=n),
    'Sign': lambda p, n: tf.sign(p, name=n),
    'ResizeBilinear': lambda p, n: _R.ResizeBilinear(images=p, size=[8, 8],
                                                     name=n),
    'ResizeNearestNeighbor': lambda p, n: _R.ResizeNearestNeighbor(
        images=p, size=[8, 8], name=n),
    'ResizeBicubic': lambda p, n: _R.ResizeBicubic(images=p, size=[8, 8],
                                                   name=n),
    'ResizeArea': lambda p, n: _R.ResizeArea(images=p, size=[8, 8], name=n),
    'FusedBatchNorm': _batch_norm(_R.FusedBatchNorm),
    'FusedBatchNormV2': _batch_norm(_R.FusedBatchNormV2),
    'FusedBatchNormV3': _batch_norm(_R.FusedBatchNormV3),
    # Passthrough when the channel axis is left alone.
    'Mean': lambda p, n: tf.reduce_mean(p, [1, 2], keepdims=True, name=n),
    'Max': lambda p, n: tf.reduce_max(p, [1, 2], keepdims=True, name=n),
    'Min': lambda p, n: tf.reduce_min(p, [1, 2], keepdims=True, name=n),
    'Sum': lambda p, n: tf.reduce_sum(p, [1, 2], keepdims=True, name=n),
    'Prod': lambda p, n: tf.reduce_prod(p, [1, 2], keepdims=True, name=n),
    'Pad': lambda p, n: tf.pad(p, [[0, 0], [1, 1], [1, 1], [0, 0]], name=n),
    'PadV2': lambda p, n: _R.PadV2(input=p, paddings=[[0, 0], [1, 1], [1, 1],
                                                      [0, 0]],
                                   constant_values=0.0, name=n),
    'MirrorPad': lambda p, n: tf.pad(p, [[0, 0], [1, 1], [1, 1], [0, 0]],
                                     mode='REFLECT', name=n),
    'Transpose': lambda p, n: tf.transpose(p, [0, 2, 1, 3], name=n),
    'StridedSlice': lambda p, n: tf.strided_slice(
        p, [0, 1, 0, 0], [0, 3, 4, 8], begin_mask=1, end_mask=1, name=n),
    'Slice': lambda p, n: tf.slice(p, [0, 0, 0, 0], [-1, 2, 4, 8], name=n),
    'Tile': lambda p, n: tf.tile(p, [1, 2, 1, 1], name=n),
    'Squeeze': lambda p, n: tf.squeeze(
        tf.reduce_mean(p, [1, 2], keepdims=True), [1, 2], name=n),
    'ExpandDims': lambda p, n: tf.expand_dims(p, 1, name=n),
}
_UNARY_3D = {
    'MaxPool3D': lambda p, n: tf.nn.max_pool3d(p, 2, 2, 'VALID', name=n),
    'AvgPool3D': lambda p, n: tf.nn.avg_pool3d(p, 2, 2, 'VALID', name=n),
}
_BINARY = {
    'Add': lambda a, b, n: _R.Add(x=a, y=b, name=n),
    'AddV2': lambda a, b, n: tf.add(a, b, name=n),
    'Sub': lambda a, b, n: tf.subtract(a, b, name=n),
    'Mul': lambda a, b, n: tf.multiply(a, b, name=n),
    'Maximum': lambda a, b, n: tf.maximum(a, b, name=n),
    'Minimum': lambda a, b, n: tf.minimum(a, b, name=n),
    'RealDiv': lambda a, b, n: tf.math.truediv(a, b, name=n),
    'Div': lambda a, b, n: _R.Div(x=a, y=b, name=n),
    'DivNoNan': lambda a, b, n: tf.math.divide_no_nan(a, b, name=n),
    'SquaredDifference': lambda a, b, n: tf.math.squared_difference(
        a, b, name=n),
    'Pow': lambda a, b, n: tf.pow(a, b, name=n),
    'SelectV2': lambda a, b, n: tf.where(a > b, a, b, name=n),
    'Select': lambda a, b, n: _R.Select(condition=a > b, x=a, y=b, name=n),
    'AddN': lambda a, b, n: tf.add_n([a, b], name=n),
}


def _split(a, n):
  return tf.split(a, 2, axis=-1, name=n)


def _split_v(a, n):
  return tf.split(a, [3, 5], axis=-1, name=n)


def _rotate_half(p):
  """Rotary embeddings' rotate-half: split the channels, stack the halves
  swapped on a new channel axis, reshape back: channel j is (j + 4) % 8."""
  left, right = tf.split(p, 2, axis=-1)
  stacked = tf.stack([right, left], axis=-2)
  return tf.reshape(stacked, tf.concat([tf.shape(p)[:-1], [8]], 0),
                    name='op')


def _shared_conv():
  """One 1x1 kernel applied twice (a layer called twice): FLOPs at each
  call, the weights once; both uses' inputs and outputs tied."""
  weights = []

  def body(p):
    if not weights:
      weights.append(_weight([1, 1, 8, 8], 6))
    w = weights[0]
    y = tf.nn.convolution(tf.nn.relu(_conv(p, w, 'op')), w, name='again')
    if tf.executing_eagerly():  # the second use: FLOPs, no new weights
      _COUNT['flops'] += 2 * 16 * 64
    return y

  return body


def _head_dims_slice(p):
  """A [.., 8] tensor split into 2 heads of 4, then the last 2 dims of
  every head (a partial rotary embedding's pass-through half)."""
  heads = tf.reshape(p, tf.concat([tf.shape(p)[:-1], [2, 4]], 0))
  kept = tf.identity(heads[..., 2:], name='op')
  return tf.reshape(kept, tf.concat([tf.shape(p)[:-1], [4]], 0))


def _heads(p):
  """[B, H, W, 8] -> [B, H, W, 2 heads, 4]: channels on axes (-2, -1)."""
  return tf.reshape(p, tf.concat([tf.shape(p)[:-1], [2, 4]], 0))


def _group_heads(p):
  """[.., 2 heads, 4] -> [.., 1 key/value head, 2 query heads, 4]: channel
  axes reshaped among themselves keep their row-major order."""
  grouped = tf.reshape(_heads(p), tf.concat([tf.shape(p)[:-1], [1, 2, 4]],
                                            0), name='op')
  return tf.reshape(grouped, tf.concat([tf.shape(p)[:-1], [8]], 0))


def _grouped_query_attention(q, kv):
  """Keras's TF lowering of 'btkgh,bskh->bkgts' and 'bkgts,bskh->btkgh'
  (Gemma's grouped-query attention): the query groups are merged with the
  tokens for a matmul, then split back. 2 key/value heads (K) x 2 query
  heads each (G) x head size 2; the zeros of a masking `where` tie
  nothing."""
  q = tf.transpose(tf.reshape(q, [-1, 16, 2, 2, 2]), [0, 2, 3, 1, 4])
  q = tf.reshape(q, [-1, 2, 32, 2])  # [B, K, G*T, d]
  kv = tf.transpose(tf.reshape(kv, [-1, 16, 2, 2]), [0, 2, 1, 3])
  scores = tf.matmul(q, kv, transpose_b=True)  # [B, K, G*T, S]
  scores = tf.nn.softmax(tf.reshape(scores, [-1, 2, 2, 16, 16]))
  out = tf.matmul(tf.reshape(scores, [-1, 2, 32, 16]), kv)
  out = tf.transpose(tf.reshape(out, [-1, 2, 2, 16, 2]), [0, 3, 1, 2, 4])
  out = tf.where(out > 0.0, out, tf.zeros_like(out))
  if tf.executing_eagerly():  # 2 x T x S x (K G d), twice
    _COUNT['flops'] += 2 * 2 * 16 * 16 * 8
  return tf.reshape(out, [-1, 4, 4, 8], name='op')


def _gather_head_dims(p):
  """Dims 3 and 0 of every head: a gather along a channel axis of two."""
  picked = tf.gather(_heads(p), [3, 0], axis=-1, name='op')
  return tf.reshape(picked, tf.concat([tf.shape(p)[:-1], [4]], 0))


def _gather_tokens_of_heads(p):
  """Rows 2, 0, 1 of a headed tensor: the heads' channels pass through."""
  picked = tf.gather(_heads(p), [2, 0, 1], axis=1, name='op')
  return tf.reshape(picked, tf.concat([tf.shape(picked)[:-2], [8]], 0))


def _csp(split):
  """A CSP block: split the channels, convolve one part, concat back."""
  weights = []  # created on the first (eager) call only

  def body(p):
    left, right = split(p, 'op')
    if not weights:
      weights.append(_weight([3, 3, right.shape[-1], right.shape[-1]], 5))
    w = weights[0]
    return tf.concat([left, _conv(right, w, 'mid')], -1, name='cat')

  return body


def _atrous(p):
  """tf.nn.atrous_conv2d (rate 2, SAME): counted at its real output."""
  if not _ATROUS:
    _ATROUS.append(_weight([3, 3, p.shape[-1], 5], 7))
  y = tf.nn.atrous_conv2d(p, _ATROUS[0], 2, 'SAME', name='op')
  _record(y, _ATROUS[0])
  return y


_ATROUS = []


def _keras_conv(layer, in_shape):
  def make():
    x = keras.Input(in_shape)
    y = layer()(x)
    y = keras.layers.Dense(3, name='head')(keras.layers.Flatten()(y))
    return keras.Model(x, y)
  return make


def _keras_mha():
  x = keras.Input((5, 8))
  y = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=4,
                                      name='mha')(x, x)
  return keras.Model(x, keras.layers.Dense(3, name='head')(y))


def _keras_embedding():
  x = keras.Input((5,), dtype='int32')
  y = keras.layers.Embedding(10, 8, name='embed')(x)
  return keras.Model(x, keras.layers.Dense(3, name='head')(y))


def _resource_gather():
  """An embedding lookup from a variable: new channels, no FLOPs."""
  table, w = _weight([10, 8]), _weight([8, 3], 1)

  def net(ids):
    rows = tf.gather(table, ids, name='op')  # ResourceGather
    return tf.matmul(tf.reshape(rows, [-1, 8]), w)

  function = tf.function(net)
  concrete = function.get_concrete_function(tf.TensorSpec([None, 5],
                                                          tf.int32))
  # A Dense over 5 positions: 2 x 5 x 8 x 3.
  return concrete, {'flops': 2 * 5 * 8 * 3, 'weights': 8 * 3,
                    'keep': (function, table, w)}


def _keras_einsum(equation, shape, in_shape):
  def make():
    x = keras.Input(in_shape)
    y = keras.layers.EinsumDense(equation, shape, name='ed')(x)
    return keras.Model(x, keras.layers.Dense(3, name='head')(y))
  return make


def _batch_matmul(op, **kw):
  def body(p):
    w = tf.constant(np.ones([1, 8, 5] if op is _R.BatchMatMul else [8, 5],
                            np.float32))
    x = tf.reshape(p, [-1, 16, 8])
    y = op(x=x, y=w, name='op', **kw)
    _record(y, w)
    return tf.reshape(y, [-1, 4, 4, 5])
  return body


def _attention(p, k):
  """QK^T and AV by BatchMatMulV2 on [B, T, d] activations."""
  q = tf.reshape(p, [-1, 16, 8])
  kk = tf.reshape(k, [-1, 16, 8])
  scores = tf.nn.softmax(tf.matmul(q, kk, transpose_b=True, name='qk'))
  out = tf.matmul(scores, kk, name='op')
  if tf.executing_eagerly():  # 2 x T x S x d, twice
    _COUNT['flops'] += 2 * 2 * 16 * 16 * 8
  return tf.reshape(out, [-1, 4, 4, 8])


def _einsum_heads(p):
  """tf_keras-style MHA projections kept as Einsum ops: a Q projection
  with a new head axis, then an output projection contracting it."""
  x = tf.reshape(p, [-1, 16, 8])
  if not _EINSUM_WEIGHTS:  # created on the first (eager) call only
    _EINSUM_WEIGHTS.extend([_weight([8, 2, 3], 3), _weight([2, 3, 8], 4)])
  wq, wo = _EINSUM_WEIGHTS
  q = tf.einsum('btc,chd->bthd', x, wq, name='op')
  o = tf.einsum('bthd,hde->bte', q, wo, name='proj')
  if tf.executing_eagerly():  # 2 x T x (kernel elements), twice
    _COUNT['flops'] += 2 * 16 * (8 * 2 * 3 + 2 * 3 * 8)
    _COUNT['weights'] += 8 * 2 * 3 + 2 * 3 * 8
  return tf.reshape(o, [-1, 4, 4, 8])


_EINSUM_WEIGHTS = []


ROWS = (
    [_unary(t, f) for t, f in _UNARY.items()]
    + [_unary(t, f, (2, 4, 4, 8)) for t, f in _UNARY_3D.items()]
    + [_binary(t, f) for t, f in _BINARY.items()]
    + [
        Row('IdentityN', ('IdentityN',),
            _raw(lambda a, b: tf.identity_n([a, b], name='op')[1],
                 pre_channels=(8, 4)),
            ties=(('op#1', 'pre2', None), ('op#0', 'pre', None))),
        Row('BroadcastTo', ('BroadcastTo',),
            _raw(lambda p: tf.broadcast_to(p, [tf.shape(p)[0], 3, 4, 8],
                                           name='op'), in_shape=(1, 4, 8)),
            ties=(('op', 'pre', None),)),
        Row('GatherV2-tokens', ('GatherV2',),
            _raw(lambda p: tf.gather(p, [0, 2], axis=1, name='op')),
            ties=(('op', 'pre', None),)),
        Row('GatherV2-channels', ('GatherV2',),
            _raw(lambda p: tf.gather(p, [1, 3, 5], axis=3, name='op')),
            ties=(('op', 'pre', np.array([1, 3, 5])),)),
        # keras.ops.take maps negative indices with where(i < 0, i + dim,
        # i) over the input's shape (batch unknown): still constant.
        Row('GatherV2-keras-take-channels', ('GatherV2',),
            _raw(lambda p: tf.identity(keras.ops.take(p, [5, 0, 2, 2],
                                                      axis=-1), name='op')),
            ties=(('op', 'pre', np.array([5, 0, 2, 2])),)),
        Row('GatherV2-head-dims', ('GatherV2', 'Reshape'),
            _raw(_gather_head_dims),
            ties=(('op', 'pre', np.arange(8).reshape(2, 4)[:, [3, 0]].ravel()),
                  )),
        Row('GatherV2-tokens-of-heads', ('GatherV2', 'Reshape'),
            _raw(_gather_tokens_of_heads),
            ties=(('op', 'pre', None),)),
        Row('Reshape-group-heads', ('Reshape',), _raw(_group_heads),
            ties=(('op', 'pre', None),)),
        # Query channel (k, g, j) meets key/value channel (k, j).
        Row('Reshape-query-groups-with-tokens', ('Reshape', 'BatchMatMulV2'),
            _raw(_grouped_query_attention, pre_channels=(8, 4)),
            ties=(('op', 'pre', None),
                  ('pre', 'pre2', np.array([0, 1, 0, 1, 2, 3, 2, 3])))),
        Row('GatherV2-Embedding', ('GatherV2',), _keras(_keras_embedding)),
        Row('ResourceGather', ('ResourceGather',), _resource_gather),
        Row('Mean-over-channels', ('Mean',),
            _raw(lambda p: tf.reduce_mean(p, -1, keepdims=True, name='op')),
            apart=(('op', 'pre'),)),
        Row('Reshape-flatten', ('Reshape',),
            _raw(lambda p: tf.reshape(p, [-1, 128], name='op')),
            ties=(('op', 'pre', np.arange(128) % 8),)),
        Row('ConcatV2', ('ConcatV2',),
            _raw(lambda a, b: tf.concat([a, b], -1, name='op'),
                 pre_channels=(8, 4)),
            ties=(('op', ['pre', 'pre2'], None),)),
        Row('Split', ('Split', 'ConcatV2'), _raw(_csp(_split)),
            ties=(('op#0', 'pre', np.arange(0, 4)),
                  ('op#1', 'pre', np.arange(4, 8)),
                  ('cat', ['op#0', 'mid'], None))),
        Row('SplitV', ('SplitV',), _raw(_csp(_split_v)),
            ties=(('op#0', 'pre', np.arange(0, 3)),
                  ('op#1', 'pre', np.arange(3, 8)))),
        Row('Split-spatial', ('Split',),
            _raw(lambda p: tf.concat(tf.split(p, 2, axis=1, name='op'), 1)),
            ties=(('op#0', 'pre', None), ('op#1', 'pre', None))),
        Row('Pack-tokens', ('Pack',),
            _raw(lambda a, b: tf.stack([a, b], axis=1, name='op'),
                 pre_channels=(8, 8)),
            ties=(('op', 'pre', None), ('op', 'pre2', None))),
        Row('Pack-channels', ('Pack', 'Split'), _raw(_rotate_half),
            ties=(('op', 'pre', (np.arange(8) + 4) % 8),)),
        Row('Unpack', ('Unpack', 'Pack'),
            _raw(lambda p: tf.stack(tf.unstack(p, axis=1, name='op')[::-1],
                                    axis=1)),
            ties=(('op#0', 'pre', None), ('op#3', 'pre', None))),
        Row('Roll-space', ('Roll',),
            _raw(lambda p: tf.roll(p, shift=1, axis=1, name='op')),
            ties=(('op', 'pre', None),)),
        Row('Roll-channels', ('Roll',),
            _raw(lambda p: tf.roll(p, shift=2, axis=-1, name='op')),
            ties=(('op', 'pre', np.roll(np.arange(8), 2)),)),
        Row('ReverseV2-space', ('ReverseV2',),
            _raw(lambda p: tf.reverse(p, axis=[1], name='op')),
            ties=(('op', 'pre', None),)),
        Row('ReverseV2-channels', ('ReverseV2',),  # keras.ops.flip
            _raw(lambda p: tf.reverse(p, axis=[-1], name='op')),
            ties=(('op', 'pre', np.arange(8)[::-1]),)),
        Row('Conv2D-shared-weight', ('Conv2D',), _raw(_shared_conv()),
            ties=(('op', 'again', None), ('op', 'pre', None))),
        Row('StridedSlice-channels', ('StridedSlice',),
            _raw(lambda p: tf.identity(p[..., 1::3], name='op')),
            ties=(('op', 'pre', np.array([1, 4, 7])),)),
        # x[..., None, 1:]: a new unit axis holds no channel (ViTDet's
        # relative-position terms broadcast onto the scores this way).
        Row('StridedSlice-new-axis', ('StridedSlice', 'Sum'),
            _raw(lambda p: tf.reduce_sum(p[..., None, 1:], 3, name='op')),
            ties=(('op', 'pre', np.arange(1, 8)),)),
        Row('StridedSlice-class-token', ('StridedSlice',),
            _raw(lambda p: p[:, 0], in_shape=(4, 8)),
            ties=(('StridedSlice:', 'pre', None),)),
        Row('StridedSlice-head-dims', ('StridedSlice', 'Reshape'),
            _raw(_head_dims_slice),
            ties=(('op', 'pre', (np.arange(8).reshape(2, 4)[:, 2:]).ravel()),
                  )),
        # Depth channel k is channel k mod C of the shallow side.
        Row('SpaceToDepth', ('SpaceToDepth',),
            _raw(lambda p: tf.nn.space_to_depth(p, 2, name='op')),
            ties=(('op', 'pre', np.arange(32) % 8),)),
        Row('DepthToSpace', ('DepthToSpace',),
            _raw(lambda p: tf.nn.depth_to_space(p, 2, name='op')),
            ties=(('pre', 'op', np.arange(8) % 2),)),
        Row('BatchMatMulV2-weight', ('BatchMatMulV2',),
            _raw(_batch_matmul(_R.BatchMatMulV2))),
        Row('BatchMatMulV3-weight', ('BatchMatMulV3',),
            _raw(_batch_matmul(_R.BatchMatMulV3, Tout=tf.float32))),
        Row('BatchMatMul-weight', ('BatchMatMul',),
            _raw(_batch_matmul(_R.BatchMatMul))),
        Row('BatchMatMulV2-attention', ('BatchMatMulV2', 'Softmax'),
            _raw(_attention, pre_channels=(8, 8)),
            ties=(('pre', 'pre2', None), ('op', 'pre2', None)),
            apart=(('qk', 'pre'),)),
        Row('Conv2D', ('Conv2D', 'MatMul', 'Reshape'), _keras(_keras_conv(
            lambda: keras.layers.Conv2D(6, 3, name='conv'), (6, 6, 4))),
            ties=(('Reshape:flatten', 'Conv2D:conv', np.arange(96) % 6),)),
        Row('Conv2D-grouped', ('Conv2D',), _keras(_keras_conv(
            lambda: keras.layers.Conv2D(6, 3, groups=2, name='conv'),
            (6, 6, 4)))),
        Row('Conv3D', ('Conv3D',), _keras(_keras_conv(
            lambda: keras.layers.Conv3D(4, 3, name='conv'), (4, 4, 4, 2)))),
        Row('Conv2DBackpropInput', ('Conv2DBackpropInput',),
            _keras(_keras_conv(lambda: keras.layers.Conv2DTranspose(
                4, 3, strides=2, name='conv'), (3, 3, 2)))),
        Row('Conv3DBackpropInputV2', ('Conv3DBackpropInputV2',),
            _keras(_keras_conv(lambda: keras.layers.Conv3DTranspose(
                3, 2, strides=2, name='conv'), (2, 2, 2, 2)))),
        Row('DepthwiseConv2dNative', ('DepthwiseConv2dNative',),
            _keras(_keras_conv(lambda: keras.layers.DepthwiseConv2D(
                3, depth_multiplier=2, name='dw'), (5, 5, 3))),
            ties=(('DepthwiseConv2dNative:dw', 'Placeholder:',
                   np.arange(6) // 2),)),
        # Dilated convs trace as SpaceToBatchND -> conv -> BatchToSpaceND;
        # the pattern pass gives the conv its real output positions.
        Row('Conv2D-dilated-valid', ('SpaceToBatchND', 'BatchToSpaceND'),
            _keras(_keras_conv(lambda: keras.layers.Conv2D(
                5, 3, dilation_rate=2, name='conv'), (9, 9, 3)))),
        Row('Conv2D-dilated-same', ('SpaceToBatchND', 'BatchToSpaceND'),
            _keras(_keras_conv(lambda: keras.layers.Conv2D(
                4, 3, dilation_rate=3, padding='same', name='conv'),
                                (8, 8, 2)))),
        Row('DepthwiseConv2D-dilated', ('SpaceToBatchND', 'BatchToSpaceND',
                                        'DepthwiseConv2dNative'),
            _keras(_keras_conv(lambda: keras.layers.DepthwiseConv2D(
                3, dilation_rate=2, padding='same', name='dw'), (6, 6, 3))),
            ties=(('DepthwiseConv2dNative:dw', 'Placeholder:', None),)),
        Row('atrous_conv2d', ('SpaceToBatchND', 'BatchToSpaceND'),
            _raw(_atrous)),
        Row('MatMul-Dense', ('MatMul',), _keras(_keras_conv(
            lambda: keras.layers.Dense(5, name='fc'), (7,)))),
        Row('Einsum-head-axes', ('Einsum',), _raw(_einsum_heads)),
        Row('Einsum-EinsumDense', ('Einsum',), _keras(_keras_einsum(
            '...c,cd->...d', (7,), (5, 8)))),
        Row('BatchMatMulV2-EinsumDense', ('BatchMatMulV2',),
            _keras(_keras_einsum('abc,cd->abd', (5, 6), (5, 8)))),
        Row('Einsum-attention', ('Einsum', 'BatchMatMulV2', 'Softmax'),
            _keras(_keras_mha),
            ties=(('AddV2:query', 'AddV2:key', None),
                  ('Einsum:einsum_1/', 'AddV2:value', None))),
    ])

# Op types with no row, and why.
EXEMPT = {
    t: 'terminal: the walk starts there; every row reads placeholders and '
       'variables'
    for t in ('Placeholder', 'PlaceholderWithDefault', 'Const',
              'ReadVariableOp', 'VarHandleOp', 'VariableV2', 'Variable',
              'RandomUniform', 'RandomStandardNormal', 'TruncatedNormal')}
EXEMPT.update({
    t: 'refused: a loop or its TensorList plumbing (tests/test_recurrent.py)'
    for t in recurrent.LOOP_OP_TYPES})


def _op(manager, selector):
  """The tensor a selector names (see `Row`)."""
  selector, _, index = selector.partition('#')
  if ':' in selector:
    op_type, part = selector.split(':', 1)
    ops = [op for op in manager.ops if op.type == op_type and part in op.name]
  else:
    ops = [op for op in manager.ops if op.name == selector]
  assert len(ops) == 1, (selector, [op.name for op in manager.ops])
  return ops[0].outputs[int(index or 0)]


def _labels(manager, selector):
  if isinstance(selector, list):
    return np.concatenate([_labels(manager, s) for s in selector])
  return manager.channel_labels(_op(manager, selector))


@pytest.mark.parametrize('row', ROWS, ids=lambda r: r.name)
def test_handler_conformance(row):
  boundary, expected = row.build()
  manager = orm.OpRegularizerManager(boundary)
  seen = {op.type for op in manager.ops}
  assert set(row.op_types) <= seen, sorted(seen)
  for a, b, mapping in row.ties:
    la, lb = _labels(manager, a), _labels(manager, b)
    if mapping is not None:
      lb = lb[mapping]
    np.testing.assert_array_equal(la, lb, err_msg='%s ~ %s' % (a, b))
  for a, b in row.apart:
    shared = set(_labels(manager, a)) & set(_labels(manager, b))
    assert not shared, (a, b)
  assert cost_model.CostModel(manager, 'flops').full_cost() == pytest.approx(
      expected['flops'], rel=1e-9)
  size = cost_model.CostModel(manager, 'model_size').full_cost()
  assert size == pytest.approx(expected['weights'], rel=1e-9)


def test_grouped_query_heads_live_per_key_value_head():
  """Gemma's lowering: a key/value head and its query heads are one class,
  and the two key/value heads are two."""
  row = next(r for r in ROWS if r.name == 'Reshape-query-groups-with-tokens')
  boundary, expected = row.build()  # `expected` keeps the weights alive
  manager = orm.OpRegularizerManager(boundary)
  labels = _labels(manager, 'pre')
  assert len(set(labels[:4])) == 1 and len(set(labels[4:])) == 1
  assert labels[0] != labels[4]
  del expected


def test_every_table_op_type_has_a_row():
  covered = {t for row in ROWS for t in row.op_types}
  missing = set(op_handlers.default_op_handler_dict()) - covered - set(EXEMPT)
  assert not missing, sorted(missing)
  stale = set(EXEMPT) - set(op_handlers.default_op_handler_dict())
  assert not stale, sorted(stale)


# ----------------------------------------------------- errors, suggestions
def _graph_op(body, *shapes):
  """The op named 'op' in the trace of `body` (a GraphView of it too)."""
  specs = [tf.TensorSpec(s, tf.float32) for s in shapes]
  function = tf.function(body)
  concrete = function.get_concrete_function(*specs)
  view = orm.make_view(concrete)
  return concrete.graph.get_operation_by_name('op'), view, function


def test_einsum_with_per_position_weights_names_equation_and_the_rule():
  w = _weight([5, 8, 3])  # a kernel per position t
  with pytest.raises(errors.UnsupportedOpError) as e:
    orm.OpRegularizerManager(tf.function(
        lambda x: tf.einsum('btc,tcd->btd', x, w, name='op')
    ).get_concrete_function(tf.TensorSpec([None, 5, 8], tf.float32)))
  message = str(e.value)
  assert 'Einsum' in message and 'btc,tcd->btd' in message
  assert 'Supported' in message and "'op/Einsum'" in message


def test_a_weight_read_transposed_by_a_second_op_is_an_error():
  """x @ w and h @ w^T read one weight with its axes swapped: their
  channels cannot be tied use to use, so the analysis names both ops."""
  w = _weight([8, 4])
  w0 = _weight([6, 8], 1)

  def body(x):
    h = tf.nn.relu(tf.matmul(tf.matmul(x, w0), w, name='op'))
    return tf.matmul(h, w, transpose_b=True, name='again')

  with pytest.raises(errors.UnsupportedOpError) as e:
    orm.OpRegularizerManager(tf.function(body).get_concrete_function(
        tf.TensorSpec([None, 6], tf.float32)))
  message = str(e.value)
  assert "'op'" in message and "'again'" in message
  assert 'own weight' in message


def test_batch_matmul_with_adjoint_activation_and_weight_is_an_error():
  w = tf.constant(np.ones([5, 3], np.float32))
  with pytest.raises(errors.UnsupportedOpError, match='adj_x=True'):
    orm.OpRegularizerManager(tf.function(
        lambda x: tf.raw_ops.BatchMatMulV2(x=x, y=w, adj_x=True, name='op')
    ).get_concrete_function(tf.TensorSpec([None, 5, 8], tf.float32)))


def test_attention_walks_both_operands():
  """The key path (only reachable through QK^T's second operand) is
  analyzed and its projection counted."""
  wq, wk = _weight([8, 4]), _weight([8, 4], 1)

  def net(q_in, k_in):
    q, k = tf.matmul(q_in, wq), tf.matmul(k_in, wk)
    return tf.einsum('btd,bsd->bts', q, k, name='op')

  spec = tf.TensorSpec([None, 5, 8], tf.float32)
  concrete = tf.function(net).get_concrete_function(spec, spec)
  manager = orm.OpRegularizerManager(concrete)
  weighted = [c for c in manager.compute_ops if c.weight_index is not None]
  assert len(weighted) == 2
  # 2 x 5 x 8 x 4 per projection, 2 x 5 x 5 x 4 for the scores.
  assert cost_model.CostModel(manager).full_cost() == (
      2 * (2 * 5 * 8 * 4) + 2 * 5 * 5 * 4)


def _suggestion(body, *shapes):
  op, view, keep = _graph_op(body, *shapes)
  del keep
  return suggest.suggest_handler(op, view)


def test_suggests_grouping_for_one_activation_with_the_output_width():
  text = _suggestion(lambda x: tf.nn.relu(x, name='op'), [None, 4, 8])
  assert 'GroupingOpHandler' in text and 'LeafOpHandler' not in text


def test_suggests_leaf_when_channels_change_and_nothing_else_is_read():
  text = _suggestion(lambda x: tf.nn.space_to_depth(x, 2, name='op'),
                     [None, 4, 4, 8])
  assert 'LeafOpHandler' in text and 'GroupingOpHandler' not in text


def test_a_loss_as_the_output_boundary_is_told_to_pass_the_logits():
  # It was told to register the loss as a LeafOpHandler.
  text = _suggestion(lambda x: tf.nn.l2_loss(x, name='op'), [None, 8])
  assert 'looks like a loss' in text and 'LeafOpHandler' not in text


def test_suggests_nothing_for_a_second_activation_input():
  text = _suggestion(lambda a, b: tf.concat([a, b], -1, name='op'),
                     [None, 4, 8], [None, 4, 3])
  assert 'Handler()' not in text.replace('MyHandler()', '')
  assert 'inputs [0, 1]' in text and 'write one' in text


def test_suggests_nothing_for_an_op_with_a_kernel():
  w = tf.constant(np.ones([8, 3], np.float32))
  text = _suggestion(lambda x: tf.matmul(x, w, name='op'), [None, 8])
  assert 'GroupingOpHandler' not in text and 'LeafOpHandler' not in text
  assert 'weight of shape (8, 3)' in text


def test_suggests_nothing_for_a_passthrough_width_of_a_second_input():
  """A Split of a [.., 8] tensor along an int axis input: the activation is
  input 1, which a grouping or leaf handler would not follow."""
  text = _suggestion(lambda x: tf.raw_ops.Split(axis=1, value=x, num_split=2,
                                                name='op')[0],
                     [None, 4, 8])
  assert 'inputs [1]' in text and 'LeafOpHandler' not in text


def test_unknown_op_error_quotes_the_suggestion():
  table = op_handlers.default_op_handler_dict()
  del table['SpaceToDepth']
  op = lambda x: tf.nn.space_to_depth(x, 2, name='op')
  with pytest.raises(errors.UnsupportedOpError, match='LeafOpHandler'):
    orm.OpRegularizerManager(
        tf.function(op).get_concrete_function(
            tf.TensorSpec([None, 4, 4, 8], tf.float32)), table)


def test_vit_backbone_counts_weight_layers_and_attention_matmuls():
  """keras-hub ViT (2 blocks): FLOPs = patch conv + per block (Q, K, V, O
  projections, QK^T and AV, the MLP), weights = every kernel; counted from
  the config, independently of the analysis."""
  keras_hub = pytest.importorskip('keras_hub')
  keras.backend.clear_session()
  model = keras_hub.models.ViTBackbone(
      image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2,
      hidden_dim=16, mlp_dim=32)
  patches, dim, mlp = (32 // 8) ** 2, 16, 32
  tokens = patches + 1  # the class token
  block = (2 * tokens * 4 * dim * dim  # Q, K, V, O projections
           + 2 * 2 * tokens * tokens * dim  # QK^T and AV, all heads
           + 2 * 2 * tokens * dim * mlp)  # the MLP's two Dense layers
  flops = 2 * patches * 8 * 8 * 3 * dim + 2 * block
  weights = 8 * 8 * 3 * dim + 2 * (4 * dim * dim + 2 * dim * mlp)
  manager = orm.OpRegularizerManager(model)
  assert cost_model.CostModel(manager, 'flops').full_cost() == flops
  assert cost_model.CostModel(manager, 'model_size').full_cost() == weights


def test_keras_hub_cspnet_splits_analyze_exactly():
  """A CSP stage splits its channels (Split) and concats them back; FLOPs
  equal the conv count from every (nested) layer's Keras output shape."""
  keras_hub = pytest.importorskip('keras_hub')
  keras.backend.clear_session()
  model = keras_hub.models.CSPNetBackbone(
      stem_filters=8, stem_kernel_size=3, stem_strides=2,
      stackwise_depth=[1, 1], stackwise_strides=[2, 2],
      stackwise_num_filters=[16, 32], block_type='bottleneck_block',
      stage_type='csp', bottle_ratio=[0.5], expand_ratio=[2.0],
      image_shape=(32, 32, 3))
  flops = 0
  for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
    if isinstance(layer, keras.layers.Conv2D):
      flops += 2 * int(np.prod(layer.output.shape[1:-1])) * int(
          np.prod(layer.kernel.shape))
  manager = orm.OpRegularizerManager(model)
  assert 'Split' in {op.type for op in manager.ops}
  assert cost_model.CostModel(manager, 'flops').full_cost() == flops


# ------------------------------------------- batch 1, whatever feeds the graph
# Whether an elementwise operand is an activation follows from what it is
# computed from, never from a batch of 1 (where an activation at 1x1 and a
# [1, 1, 1, C] parameter look alike) nor from "is it a placeholder": TF1
# graphs are fed by constants, tf.data iterators and queues as well.
_FEEDS = ('constant', 'iterator', 'queue', 'placeholder')


def _feed(kind, batch):
  shape = [batch, 4, 4, 3]
  if kind == 'constant':
    return tf.zeros(shape)
  if kind == 'iterator':
    data = tf.data.Dataset.from_tensors(np.zeros(shape, np.float32))
    return tf.compat.v1.data.make_one_shot_iterator(data.repeat()).get_next()
  if kind == 'queue':
    queue = tf.compat.v1.FIFOQueue(2, [tf.float32], shapes=[shape])
    return queue.dequeue()
  return tf.compat.v1.placeholder(tf.float32, shape)


def _squeezed(b):
  return tf.reduce_mean(b, [1, 2], keepdims=True)


_BROADCASTING = dict(
    {name: (lambda fn: lambda a, b: fn(a, b, 'op'))(fn)
     for name, fn in _BINARY.items()},
    gate=lambda a, b: tf.multiply(a, tf.sigmoid(_squeezed(b)), name='op'),
    BroadcastTo=lambda a, b: tf.add(
        a, tf.broadcast_to(_squeezed(b), tf.shape(a)), name='op'),
    Tile=lambda a, b: tf.add(a, tf.tile(_squeezed(b), [1, 4, 4, 1]),
                             name='op'))


def _fed_graph(kind, batch, body):
  """input -> conv a, conv b (8 channels each) -> body -> 1x1 conv (6)."""
  rng = np.random.default_rng(0)
  x = _feed(kind, batch)
  w = lambda *s: tf.compat.v1.get_variable(  # pylint: disable=g-long-lambda
      'w%d' % len(tf.compat.v1.global_variables()),
      initializer=rng.normal(size=s).astype(np.float32))
  a = tf.nn.conv2d(x, w(1, 1, 3, 8), 1, 'SAME', name='a')
  b = tf.nn.conv2d(x, w(1, 1, 3, 8), 1, 'SAME', name='b')
  y = body(a, b)
  out = tf.nn.conv2d(y, w(1, 1, 8, 6), 1, 'SAME', name='post')
  return orm.OpRegularizerManager([out.op]), a, b, y


# conv a + conv b + post at 4x4 positions: 2 x 16 x (3x8 + 3x8 + 8x6).
_FED_FLOPS = 2 * 16 * (24 + 24 + 48)


@pytest.mark.parametrize('kind', _FEEDS)
@pytest.mark.parametrize('name', sorted(_BROADCASTING))
def test_elementwise_operands_at_batch_one_follow_the_data(name, kind):
  for batch in (1, 2):
    with tf.Graph().as_default():
      manager, a, b, y = _fed_graph(kind, batch, _BROADCASTING[name])
      flops = cost_model.CostModel(manager, 'flops').full_cost()
      assert flops == _FED_FLOPS, (batch, flops)  # per example
      labels = manager.channel_labels(y)
      np.testing.assert_array_equal(manager.channel_labels(a), labels)
      np.testing.assert_array_equal(manager.channel_labels(b), labels)


@pytest.mark.parametrize('kind', _FEEDS)
@pytest.mark.parametrize('param', ['variable', 'constant', 'bias'])
def test_parameter_operands_at_batch_one_are_not_activations(param, kind):
  """A [1, 1, 1, C] variable or constant scale and a BiasAdd bias: never
  walked or tied, at batch 1 as at batch 2, whatever feeds the graph."""
  def body(a, b):
    del b
    if param == 'bias':
      return tf.nn.bias_add(a, tf.compat.v1.get_variable('bias', [8]))
    if param == 'variable':
      scale = tf.compat.v1.get_variable('scale', [1, 1, 1, 8])
    else:
      scale = tf.constant(np.arange(8, dtype=np.float32).reshape(1, 1, 1, 8))
    return tf.multiply(a, scale, name='op')

  for batch in (1, 2):
    with tf.Graph().as_default():
      manager, a, _, y = _fed_graph(kind, batch, body)
      np.testing.assert_array_equal(manager.channel_labels(a),
                                    manager.channel_labels(y))
      assert not any(op.name.startswith(('scale', 'bias', 'Const'))
                     for op in manager.ops), [op.name for op in manager.ops]
      # conv b feeds nothing the output reads: only a and post count.
      assert cost_model.CostModel(manager, 'flops').full_cost() == (
          2 * 16 * (24 + 48))


def test_the_walk_stops_at_iterators_and_queues_not_at_inner_handles():
  """IteratorGetNext and QueueDequeue read a source's handle: the network's
  input. A TensorList built inside the network (an RNN loop's) is not."""
  with tf.Graph().as_default():
    x = _feed('iterator', 1)
    y = _feed('queue', 1)
    stacked = tf.TensorArray(tf.float32, size=2).unstack(
        tf.stack([x, y])).stack()
    out = tf.nn.conv2d(stacked[0], tf.ones([1, 1, 3, 2]), 1, 'SAME')
    view = orm.make_view([out.op])
    assert view.is_network_input(x.op) and view.is_network_input(y.op)
    assert not view.is_network_input(stacked.op)
    assert view.depends_on_input(stacked)
