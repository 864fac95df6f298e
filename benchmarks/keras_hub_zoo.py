"""keras-hub backbones from small explicit configs: analysis vs. a forward pass.

For each backbone (built from an explicit config: no presets, no downloads)
it checks, against an INDEPENDENT count from the layer shapes recorded in a
real forward pass (batch 1, so every number is per example):

- FLOPs: `analyze(model).flops` = weight layers + attention matmuls, where
    Conv (any rank)   2 x output positions x kernel elements (kh*kw*cin/g*cout)
    DepthwiseConv     2 x output positions x kernel elements (kh*kw*cin*mult)
    SeparableConv     depthwise + pointwise
    Dense             2 x input positions x cin x cout
    EinsumDense       2 x output elements x contracted kernel elements
    MultiHeadAttention (and subclasses): 2*T*S*H*key_dim (QK^T)
                      + 2*T*S*H*value_dim (AV)
    SegFormer (MiT) attention: 2*N*S*C for q@k^T and the same for attn@v
                      (C = heads x head dim).
  Not counted: embeddings (lookups), position embeddings and class tokens
  (additions), normalization, activations, pooling, resizing, biases,
  softmax and the attention scale.
- Model size: `analyze(model).weights` = kernel elements of those conv /
  dense / EinsumDense layers (no biases, embeddings, norms or position
  embeddings).
- Slim: every exported alive count halved (GroupLasso FLOPs regularizer,
  `StructureExporter.get_alive_counts()`), `slim_model` builds a model that
  runs, and its independent FLOP count equals `structure_cost(model, half)`.

  python benchmarks/keras_hub_zoo.py                 # the CI set
  python benchmarks/keras_hub_zoo.py --all           # also larger configs
  python benchmarks/keras_hub_zoo.py --models vit bert
"""

import argparse
import os
import sys
import time
import traceback

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir))

from morph_net import keras as morph_keras  # pylint: disable=g-import-not-at-top
from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
from morph_net.tools import analyze as analyze_lib  # pylint: disable=g-import-not-at-top
from morph_net.tools import structure_exporter  # pylint: disable=g-import-not-at-top

TOLERANCE = 5e-3  # issue 10: within 0.5%


# ------------------------------------------------------------ the builders
# Each returns (model, example inputs at batch 1, input_signature or None).
def _image(size, channels=3):
  return np.random.RandomState(0).uniform(
      size=(1, size, size, channels)).astype('float32')


def vit(size=32, layers=2, heads=2, hidden=16, mlp=32, patch=8):
  from keras_hub.src.models.vit.vit_backbone import ViTBackbone  # pylint: disable=g-import-not-at-top
  model = ViTBackbone(image_shape=(size, size, 3), patch_size=patch,
                      num_layers=layers, num_heads=heads, hidden_dim=hidden,
                      mlp_dim=mlp)
  return model, _image(size), None


def bert(seq=8, layers=2, heads=2, hidden=16, intermediate=32, vocab=50):
  """BERT with its dict inputs fixed to a sequence length (a functional
  wrapper around the backbone: the backbone's inputs have shape (None,))."""
  from keras_hub.src.models.bert.bert_backbone import BertBackbone  # pylint: disable=g-import-not-at-top
  backbone = BertBackbone(vocabulary_size=vocab, num_layers=layers,
                          num_heads=heads, hidden_dim=hidden,
                          intermediate_dim=intermediate,
                          max_sequence_length=max(16, seq), dropout=0.0)
  names = ('token_ids', 'segment_ids', 'padding_mask')
  inputs = {n: keras.Input((seq,), dtype='int32', name=n) for n in names}
  model = keras.Model(inputs, backbone(inputs), name='bert')
  rs = np.random.RandomState(0)
  data = {'token_ids': rs.randint(0, vocab, (1, seq)).astype('int32'),
          'segment_ids': np.zeros((1, seq), 'int32'),
          'padding_mask': np.ones((1, seq), 'int32')}
  return model, data, None


def gpt2(seq=8, layers=2, heads=2, hidden=16, intermediate=32, vocab=50):
  """GPT-2 (keras-hub TransformerDecoder blocks, causal self-attention),
  its dict inputs fixed to a sequence length like `bert`."""
  from keras_hub.src.models.gpt2.gpt2_backbone import GPT2Backbone  # pylint: disable=g-import-not-at-top
  backbone = GPT2Backbone(vocabulary_size=vocab, num_layers=layers,
                          num_heads=heads, hidden_dim=hidden,
                          intermediate_dim=intermediate,
                          max_sequence_length=max(16, seq), dropout=0.0)
  inputs = {n: keras.Input((seq,), dtype='int32', name=n)
            for n in ('token_ids', 'padding_mask')}
  model = keras.Model(inputs, backbone(inputs), name='gpt2')
  data = {'token_ids': np.random.RandomState(0).randint(
      0, vocab, (1, seq)).astype('int32'),
          'padding_mask': np.ones((1, seq), 'int32')}
  return model, data, None


def bert_backbone(seq=8, layers=2, heads=2, hidden=16, intermediate=32,
                  vocab=50):
  """The bare BertBackbone (sequence length unknown): analyzed with an
  input_signature in the model's dict input structure."""
  from keras_hub.src.models.bert.bert_backbone import BertBackbone  # pylint: disable=g-import-not-at-top
  model = BertBackbone(vocabulary_size=vocab, num_layers=layers,
                       num_heads=heads, hidden_dim=hidden,
                       intermediate_dim=intermediate,
                       max_sequence_length=max(16, seq), dropout=0.0)
  _, data, _ = bert(seq, layers, heads, hidden, intermediate, vocab)
  signature = {n: tf.TensorSpec([None, seq], tf.int32) for n in data}
  return model, data, signature


def cspnet(size=32, stage_type='csp', block_type='bottleneck_block'):
  """CSPNet; the ratios of CSPDarkNet-53 (the cross-stage split's half
  must equal the block width: block_ratio = expand_ratio / 2)."""
  from keras_hub.src.models.cspnet.cspnet_backbone import CSPNetBackbone  # pylint: disable=g-import-not-at-top
  model = CSPNetBackbone(
      stem_filters=8, stem_kernel_size=3, stem_strides=2,
      stackwise_depth=[1, 2], stackwise_strides=[1, 2],
      stackwise_num_filters=[16, 32], stage_type=stage_type,
      block_type=block_type, expand_ratio=[2.0], block_ratio=[1.0],
      bottle_ratio=[0.5], image_shape=(size, size, 3))
  return model, _image(size), None


def cspdarknet(size=32):
  """CSPDarkNet-style: csp stages of dark blocks."""
  return cspnet(size, stage_type='csp', block_type='dark_block')


def darknet(size=32):
  return cspnet(size, stage_type='dark', block_type='dark_block')


def cs3net(size=32):
  return cspnet(size, stage_type='cs3', block_type='bottleneck_block')


def _tiny_resnet(size):
  from keras_hub.src.models.resnet.resnet_backbone import ResNetBackbone  # pylint: disable=g-import-not-at-top
  # keras-hub requires 64 filters in the stem and the first stage.
  return ResNetBackbone(
      input_conv_filters=[64], input_conv_kernel_sizes=[3],
      stackwise_num_filters=[64, 16], stackwise_num_blocks=[1, 1],
      stackwise_num_strides=[1, 2], block_type='basic_block',
      image_shape=(size, size, 3))


def deeplabv3(size=32):
  """DeepLabV3 (atrous spatial pyramid pooling with dilated convs) on a
  tiny ResNet image encoder."""
  from keras_hub.src.models.deeplab_v3.deeplab_v3_backbone import DeepLabV3Backbone  # pylint: disable=g-import-not-at-top
  model = DeepLabV3Backbone(
      image_encoder=_tiny_resnet(size), spatial_pyramid_pooling_key='P3',
      low_level_feature_key='P2', upsampling_size=2, dilation_rates=[2, 4],
      projection_filters=8, image_shape=(size, size, 3))
  return model, _image(size), None


def mobilenetv3(size=32):
  """MobileNetV3-style: inverted residual blocks with squeeze-excite."""
  from keras_hub.src.models.mobilenet.mobilenet_backbone import MobileNetBackbone  # pylint: disable=g-import-not-at-top
  model = MobileNetBackbone(
      stackwise_expansion=[[16, 24], [32, 48]],
      stackwise_num_blocks=[2, 2],
      stackwise_num_filters=[[8, 8], [16, 16]],
      stackwise_kernel_size=[[3, 3], [5, 5]],
      stackwise_num_strides=[[2, 1], [2, 1]],
      stackwise_se_ratio=[[None, None], [0.25, 0.25]],
      stackwise_activation=[['relu', 'relu'], ['hard_swish', 'hard_swish']],
      stackwise_padding=[[1, 1], [2, 2]],
      output_num_filters=32, depthwise_filters=8, depthwise_stride=2,
      depthwise_residual=False, last_layer_filter=32,
      squeeze_and_excite=0.5, image_shape=(size, size, 3))
  return model, _image(size), None


def mit(size=32):
  """MiT (SegFormer's encoder): overlapping patches, sequence-reduced
  attention, Mix-FFN with a depthwise conv."""
  from keras_hub.src.models.mit.mit_backbone import MiTBackbone  # pylint: disable=g-import-not-at-top
  model = MiTBackbone(
      layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2],
      layerwise_sr_ratios=[2, 1], max_drop_path_rate=0.0,
      layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2],
      hidden_dims=[8, 16], image_shape=(size, size, 3))
  return model, _image(size), None


BUILDERS = {
    'vit': vit, 'bert': bert, 'bert_backbone': bert_backbone, 'gpt2': gpt2,
    'cspdarknet': cspdarknet, 'darknet': darknet, 'cspnet': cspnet,
    'cs3net': cs3net, 'deeplabv3': deeplabv3, 'mobilenetv3': mobilenetv3,
    'mit': mit,
}
CI_SET = ('vit', 'bert', 'gpt2', 'cspdarknet', 'deeplabv3', 'mobilenetv3',
          'mit')
LARGER = {
    'vit_base_like': lambda: vit(size=64, layers=4, heads=4, hidden=64,
                                 mlp=128, patch=16),
    'bert_small_like': lambda: bert(seq=32, layers=4, heads=4, hidden=64,
                                    intermediate=128, vocab=200),
    'deeplabv3_64': lambda: deeplabv3(64),
    'mobilenetv3_64': lambda: mobilenetv3(64),
    'mit_64': lambda: mit(64),
}


# ------------------------------------------------- the independent counter
def _prod(shape):
  return int(np.prod([int(d) for d in shape], dtype=np.int64))


def _shape(x):
  return tuple(int(d) for d in x.shape)


class _Recorder:
  """Wraps `call` of every counted sublayer to record its shapes."""

  COUNTED = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
             keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
             keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
             keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
             keras.layers.Dense, keras.layers.EinsumDense,
             keras.layers.MultiHeadAttention)

  def __init__(self, model):
    self.calls = []  # (layer, input shapes, keyword shapes, output shape)
    self.last_input = {}  # id(layer) -> shape of its latest input
    self._patched = []
    for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
      if isinstance(layer, self.COUNTED) or _is_segformer_attention(layer):
        self._patch(layer)

  def _patch(self, layer):
    original = layer.call

    def call(*args, **kwargs):
      out = original(*args, **kwargs)
      tensors = [a for a in args if hasattr(a, 'shape')]
      extra = {k: _shape(v) for k, v in kwargs.items()
               if k in ('query', 'value', 'key') and hasattr(v, 'shape')}
      if _is_segformer_attention(layer):
        # S: the sequence the key projection saw (after sequence reduction).
        extra['key'] = self.last_input[id(layer.k)]
      if tensors:
        self.last_input[id(layer)] = _shape(tensors[0])
      self.calls.append((layer, [_shape(t) for t in tensors], extra,
                         _shape(out[0] if isinstance(out, tuple) else out)))
      return out

    object.__setattr__(layer, 'call', call)
    self._patched.append(layer)

  def restore(self):
    for layer in self._patched:
      object.__delattr__(layer, 'call')


def _is_segformer_attention(layer):
  return type(layer).__name__ == 'SegFormerMultiheadAttention'


def _layer_cost(layer, ins, kw, out):
  """(FLOPs, kernel weights) of one recorded call."""
  L = keras.layers
  if isinstance(layer, L.MultiHeadAttention):
    query = kw.get('query', ins[0] if ins else None)
    value = kw.get('value', ins[1] if len(ins) > 1 else query)
    t, s = _prod(query[1:-1]), _prod(value[1:-1])
    heads = layer.num_heads
    key_dim = layer.key_dim
    value_dim = layer.value_dim or key_dim
    # QK^T and AV; the projections are EinsumDense sublayers, counted there.
    return 2 * t * s * heads * (key_dim + value_dim), 0
  if _is_segformer_attention(layer):
    n, s = _prod(ins[0][1:-1]), _prod(kw['key'][1:-1])
    c = int(layer.q.kernel.shape[-1])  # heads x head dim
    return 2 * n * s * c * 2, 0  # q @ k^T and attn @ v
  if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
    dw, pw = _prod(layer.depthwise_kernel.shape), _prod(
        layer.pointwise_kernel.shape)
    return 2 * _prod(out[:-1]) * (dw + pw), dw + pw
  if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose)):
    k = _prod(layer.kernel.shape)
    return 2 * _prod(ins[0][:-1]) * k, k
  if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D, L.DepthwiseConv1D,
                        L.DepthwiseConv2D)):
    # Batch 1: output positions = prod(out[:-1]); dilation changes nothing.
    k = _prod(layer.kernel.shape)
    return 2 * _prod(out[:-1]) * k, k
  if isinstance(layer, L.Dense):
    k = _prod(layer.kernel.shape)
    return 2 * _prod(ins[0][:-1]) * k, k
  if isinstance(layer, L.EinsumDense):
    lhs, out_spec = layer.equation.split('->')
    kernel_spec = lhs.split(',')[1]
    contracted = _prod(d for c, d in zip(kernel_spec, layer.kernel.shape)
                       if c not in out_spec)
    return 2 * _prod(out) * contracted, _prod(layer.kernel.shape)
  raise TypeError(type(layer).__name__)


def independent_counts(model, inputs):
  """(FLOPs, kernel weights) per example from a recorded forward pass."""
  recorder = _Recorder(model)
  try:
    model(inputs, training=False)
  finally:
    recorder.restore()
  flops = weights = 0
  seen = set()
  for layer, ins, kw, out in recorder.calls:
    f, w = _layer_cost(layer, ins, kw, out)
    flops += f
    if id(layer) not in seen:  # a shared layer's kernel counts once
      seen.add(id(layer))
      weights += w
  return flops, weights, recorder.calls


# ------------------------------------------------------------- the checks
def half_structure(model, input_signature=None):
  """Every exported alive count halved (at least 1); an attention
  projection's count (alive heads x head size) by whole heads: half the
  heads, at least one."""
  reg = flop_regularizer.GroupLassoFlopsRegularizer(
      model, 1e-4, input_signature=input_signature)
  manager = reg.op_regularizer_manager
  counts = structure_exporter.StructureExporter(manager).get_alive_counts()
  half = {}
  for key, count in counts.items():
    layer = manager.view.layer(key)
    kernel = getattr(layer, 'kernel', None)
    if isinstance(layer, keras.layers.EinsumDense) and len(kernel.shape) == 3:
      head = int(kernel.shape[-1])  # kernel [C, heads, head size]
      half[key] = max(1, count // head // 2) * head
    else:
      half[key] = max(1, count // 2)
  return half


def rel(a, b):
  return abs(a - b) / max(abs(b), 1)


def check(name, builder=None, do_slim=True):
  """A dict of the measured numbers for one backbone."""
  keras.utils.set_random_seed(0)
  model, data, signature = (builder or BUILDERS[name])()
  row = {'name': name, 'params': model.count_params()}
  t0 = time.time()
  report = analyze_lib.analyze(model, input_signature=signature)
  row['analyze_s'] = time.time() - t0
  flops, weights, _ = independent_counts(model, data)
  row.update(flops=report.flops, flops_ref=flops, weights=report.weights,
             weights_ref=weights)
  row['ok'] = (rel(report.flops, flops) <= TOLERANCE
               and rel(report.weights, weights) <= TOLERANCE)
  # slim_model / structure_cost take no input_signature: models that need
  # one are checked for the analysis only.
  if do_slim and signature is None:
    try:
      half = half_structure(model)
      slim = morph_keras.slim_model(model, half)
      slim(data, training=False)  # it runs
      row['cost'] = morph_keras.structure_cost(model, half)
      row['slim_flops'] = independent_counts(slim, data)[0]
      row['ok'] = row['ok'] and rel(row['slim_flops'],
                                    row['cost']) <= TOLERANCE
    except Exception as e:  # pylint: disable=broad-except
      msg = str(e).strip().splitlines()
      row['slim_error'] = '%s: %s' % (type(e).__name__,
                                      msg[0][:200] if msg else '')
      row['ok'] = False
      if os.environ.get('MORPHNET_TRACEBACK'):
        traceback.print_exc()
  return row


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', nargs='*', default=None)
  parser.add_argument('--all', action='store_true',
                      help='every builder and the larger configs')
  parser.add_argument('--no-slim', action='store_true')
  args = parser.parse_args(argv)
  todo = {n: BUILDERS[n] for n in (args.models or CI_SET)}
  if args.all:
    todo = dict(BUILDERS, **LARGER)
  failed = 0
  for name, builder in todo.items():
    try:
      r = check(name, builder, do_slim=not args.no_slim)
      if 'slim_error' in r:
        extra = ' slim ERROR ' + r['slim_error']
      elif 'cost' in r:
        extra = ' slim %d cost %d (%.4f)' % (r['slim_flops'], r['cost'],
                                             r['slim_flops'] / r['cost'])
      else:
        extra = ' slim n/a'
      print('%-16s %6.1fs FLOPs %d ref %d (%.4f) weights %d ref %d (%.4f)%s '
            '%s' % (name, r['analyze_s'], r['flops'], r['flops_ref'],
                    r['flops'] / r['flops_ref'], r['weights'],
                    r['weights_ref'], r['weights'] / r['weights_ref'], extra,
                    'PASS' if r['ok'] else 'FAIL'), flush=True)
      failed += not r['ok']
    except Exception as e:  # pylint: disable=broad-except
      failed += 1
      msg = str(e).strip().splitlines()
      print('%-16s ERROR %s: %s' % (name, type(e).__name__,
                                    msg[0][:300] if msg else ''), flush=True)
      if os.environ.get('MORPHNET_TRACEBACK'):
        traceback.print_exc()
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
