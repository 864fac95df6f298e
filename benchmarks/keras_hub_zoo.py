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
    attention         2 x output elements x contracted size of every
                      product of two activations: 2*T*S*H*key_dim (QK^T)
                      + 2*T*S*H*value_dim (AV) for multi-head attention,
                      2*N*S*C twice for SegFormer's
  Not counted: embeddings (lookups), position embeddings and class tokens
  (additions), rotary position tables (an outer product of positions and
  frequencies: no data), normalization, activations, pooling, resizing,
  biases, softmax and the attention scale. Weight layers are found by
  wrapping each conv / dense / EinsumDense sublayer's `call`; attention
  matmuls however a model writes them (ops.einsum, ops.matmul, `@`,
  ops.dot_product_attention) by wrapping Keras's backend functions, so
  keras-hub's own attention layers count too. A layer shared by several
  calls (ALBERT) counts FLOPs per call and its kernel once.
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
import importlib
import os
import re
import sys
import tempfile
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

TOLERANCE = 5e-3  # within 0.5%


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


def _backbone_class(path):
  module, name = path.rsplit('.', 1)
  return getattr(importlib.import_module('keras_hub.src.models.' + module),
                 name)


def text(path, seq=8, vocab=50, **config):
  """A keras-hub text backbone with its dict inputs fixed to a sequence
  length (a functional wrapper: the backbone's inputs have shape (None,)).
  Token ids are random, masks ones, segment ids zeros."""
  vocab_key = config.pop('vocab_key', 'vocabulary_size')
  backbone = _backbone_class(path)(**{vocab_key: vocab}, **config)
  rs = np.random.RandomState(0)
  inputs, data = {}, {}
  for name, spec in backbone.input.items():
    inputs[name] = keras.Input((seq,), dtype=spec.dtype, name=name)
    if name == 'token_ids':
      data[name] = rs.randint(1, vocab, (1, seq)).astype(spec.dtype)
    elif 'mask' in name:
      data[name] = np.ones((1, seq), spec.dtype)
    else:
      data[name] = np.zeros((1, seq), spec.dtype)
  model = keras.Model(inputs, backbone(inputs), name=backbone.name)
  return model, data, None


def image(path, size=32, **config):
  """A keras-hub image backbone on a size x size RGB input."""
  model = _backbone_class(path)(image_shape=(size, size, 3), **config)
  return model, _image(size), None


# Decoder LLMs: rotary embeddings, grouped-query attention, RMSNorm, gated
# MLPs; encoders: shared layers (ALBERT), relative/rotary positions; vision:
# windows (Swin, ViTDet), register tokens and LayerScale (DINOv2), a pooling
# probe (SigLIP). Each tiny: 2 layers, width 16-32.
_LM = dict(num_layers=2, hidden_dim=16, intermediate_dim=32)
MORE = {
    'llama': lambda: text('llama.llama_backbone.LlamaBackbone',
                          num_query_heads=4, num_key_value_heads=2, **_LM),
    'mistral': lambda: text('mistral.mistral_backbone.MistralBackbone',
                            num_query_heads=4, num_key_value_heads=2,
                            sliding_window=4, **_LM),
    'qwen': lambda: text('qwen.qwen_backbone.QwenBackbone',
                         num_query_heads=4, num_key_value_heads=2, **_LM),
    'qwen3': lambda: text('qwen3.qwen3_backbone.Qwen3Backbone',
                          num_query_heads=4, num_key_value_heads=2,
                          head_dim=4, **_LM),
    'phi3': lambda: text('phi3.phi3_backbone.Phi3Backbone',
                         num_query_heads=4, num_key_value_heads=2, **_LM),
    'falcon': lambda: text('falcon.falcon_backbone.FalconBackbone',
                           num_attention_heads=2, **_LM),
    'bloom': lambda: text('bloom.bloom_backbone.BloomBackbone', num_heads=2,
                          **_LM),
    'opt': lambda: text('opt.opt_backbone.OPTBackbone', num_heads=2,
                        max_sequence_length=16, dropout=0.0, **_LM),
    'distil_bert': lambda: text(
        'distil_bert.distil_bert_backbone.DistilBertBackbone', num_heads=2,
        max_sequence_length=16, dropout=0.0, **_LM),
    'roberta': lambda: text('roberta.roberta_backbone.RobertaBackbone',
                            num_heads=2, max_sequence_length=16,
                            dropout=0.0, **_LM),
    'albert': lambda: text('albert.albert_backbone.AlbertBackbone',
                           num_heads=2, embedding_dim=8,
                           max_sequence_length=16, **_LM),
    'esm': lambda: text('esm.esm_backbone.ESMBackbone', num_heads=2,
                        max_sequence_length=16, dropout=0.0, **_LM),
    'gemma': lambda: text('gemma.gemma_backbone.GemmaBackbone',
                          num_query_heads=4, num_key_value_heads=2,
                          head_dim=4, **_LM),
    'gpt_neo_x': lambda: text('gpt_neo_x.gpt_neo_x_backbone.GPTNeoXBackbone',
                              num_heads=2, max_sequence_length=16, **_LM),
    'roformer_v2': lambda: text(
        'roformer_v2.roformer_v2_backbone.RoformerV2Backbone', num_heads=2,
        head_size=8, dropout=0.0, **_LM),
    'deberta_v3': lambda: text(
        'deberta_v3.deberta_v3_backbone.DebertaV3Backbone', num_heads=2,
        max_sequence_length=16, bucket_size=4, dropout=0.0, **_LM),
    'electra': lambda: text('electra.electra_backbone.ElectraBackbone',
                            vocab_key='vocab_size', num_heads=2,
                            embedding_dim=8, max_sequence_length=16,
                            dropout=0.0, **_LM),
    'deit': lambda: image('deit.deit_backbone.DeiTBackbone', patch_size=8,
                          num_heads=2, **_LM),
    'dinov2': lambda: image('dinov2.dinov2_backbone.DINOV2Backbone',
                            size=28, patch_size=7, num_heads=2,
                            num_register_tokens=2,
                            position_embedding_shape=(28, 28, 3), **_LM),
    'dinov2_swiglu': lambda: image(
        'dinov2.dinov2_backbone.DINOV2Backbone', size=28, patch_size=7,
        num_heads=2, use_swiglu_ffn=True,
        position_embedding_shape=(28, 28, 3), **_LM),
    'swin': lambda: image(
        'swin_transformer.swin_transformer_backbone.SwinTransformerBackbone',
        embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=4,
        patch_size=2, drop_path=0.0),
    'vitdet': lambda: image(
        'vit_det.vit_det_backbone.ViTDetBackbone', hidden_size=16,
        num_layers=2, intermediate_dim=32, num_heads=2,
        global_attention_layer_indices=[1], patch_size=4,
        num_output_channels=8, window_size=4),
    'siglip': lambda: image(
        'siglip.siglip_vision_encoder.SigLIPVisionEncoder', patch_size=8,
        num_heads=2, **_LM),
    'clip': lambda: image('clip.clip_vision_encoder.CLIPVisionEncoder',
                          patch_size=8, num_heads=2, **_LM),
    'xception': lambda: image('xception.xception_backbone.XceptionBackbone',
                              stackwise_conv_filters=[[8, 16], [16, 16]],
                              stackwise_pooling=[True, False]),
    'densenet': lambda: image('densenet.densenet_backbone.DenseNetBackbone',
                              stackwise_num_repeats=[2, 2], growth_rate=8),
    'vgg': lambda: image('vgg.vgg_backbone.VGGBackbone',
                         stackwise_num_repeats=[1, 2],
                         stackwise_num_filters=[8, 16]),
}


BUILDERS = {
    'vit': vit, 'bert': bert, 'bert_backbone': bert_backbone, 'gpt2': gpt2,
    'cspdarknet': cspdarknet, 'darknet': darknet, 'cspnet': cspnet,
    'cs3net': cs3net, 'deeplabv3': deeplabv3, 'mobilenetv3': mobilenetv3,
    'mit': mit,
}
BUILDERS.update(MORE)
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


_WEIGHT_LAYERS = (
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
    keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
    keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
    keras.layers.Dense, keras.layers.EinsumDense)


class _Recorder:
  """Records one forward pass: the shapes of every weight layer's calls
  (wrapping `call` of each conv / dense / EinsumDense sublayer, found
  recursively), and every product of two activations (attention's QK^T and
  AV however a model writes them: `ops.einsum`, `ops.matmul`, `@`,
  `ops.dot_product_attention`), caught at Keras's backend functions and
  `tf.Tensor.__matmul__`. Products inside a weight layer are its own."""

  def __init__(self, model):
    self.calls = []  # (layer, input shapes, output shape)
    self.products = []  # (what, FLOPs) of activation x activation products
    self._depth = 0  # > 0 inside a weight layer's call
    self._undo = []
    for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
      if isinstance(layer, _WEIGHT_LAYERS):
        self._patch_layer(layer)
    backend = keras.src.backend
    self._patch(backend.numpy, 'einsum', self._einsum)
    self._patch(backend.numpy, 'matmul', self._matmul)
    self._patch(backend.nn, 'dot_product_attention', self._attention)
    self._patch(tf.Tensor, '__matmul__', self._matmul)

  def _patch_layer(self, layer):
    original = layer.call

    def call(*args, **kwargs):
      self._depth += 1
      try:
        out = original(*args, **kwargs)
      finally:
        self._depth -= 1
      tensors = [a for a in args if hasattr(a, 'shape')]
      self.calls.append((layer, [_shape(t) for t in tensors],
                         _shape(out[0] if isinstance(out, tuple) else out)))
      return out

    object.__setattr__(layer, 'call', call)
    self._undo.append(lambda: object.__delattr__(layer, 'call'))

  def _patch(self, owner, name, counter):
    original = getattr(owner, name)

    def patched(*args, **kwargs):
      if not self._depth:
        counter(*args, **kwargs)
      return original(*args, **kwargs)

    setattr(owner, name, patched)
    self._undo.append(lambda: setattr(owner, name, original))

  def _activation_pair(self, x, y):
    return not any(isinstance(t, (tf.Variable, keras.Variable))
                   for t in (x, y))

  def _einsum(self, equation, *operands, **kwargs):
    del kwargs
    if len(operands) != 2 or not self._activation_pair(*operands):
      return
    if min(len(x.shape) for x in operands) < 2:
      return  # an outer product of vectors: a rotary position table
    if '.' in equation:
      raise NotImplementedError('einsum with an ellipsis: %s' % equation)
    sizes = {}
    for term, x in zip(equation.split('->')[0].split(','), operands):
      sizes.update(zip(term, _shape(x)))
    self.products.append((equation, 2 * _prod(sizes.values())))

  def _matmul(self, x, y, *args, **kwargs):
    del args, kwargs
    if not hasattr(y, 'shape') or not self._activation_pair(x, y):
      return
    a, b = _shape(x), _shape(y)
    if len(a) < 2 or len(b) < 2:
      raise NotImplementedError('matmul of rank < 2: %s @ %s' % (a, b))
    batch = np.broadcast_shapes(a[:-2], b[:-2])
    self.products.append(('matmul', 2 * _prod(batch) * a[-2] * a[-1]
                          * b[-1]))

  def _attention(self, query, key, value, *args, **kwargs):
    del args, kwargs
    q, k, v = _shape(query), _shape(key), _shape(value)  # [B, T|S, N, H]
    flops = 2 * q[0] * q[1] * k[1] * q[2] * (q[3] + v[3])
    self.products.append(('dot_product_attention', flops))

  def restore(self):
    for undo in reversed(self._undo):
      undo()
    self._undo = []


def _layer_cost(layer, ins, out):
  """(FLOPs, kernel weights) of one recorded weight-layer call (batch 1:
  output positions = prod(out[:-1]); dilation changes nothing)."""
  L = keras.layers
  if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
    dw, pw = _prod(layer.depthwise_kernel.shape), _prod(
        layer.pointwise_kernel.shape)
    return 2 * _prod(out[:-1]) * (dw + pw), dw + pw
  if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose)):
    k = _prod(layer.kernel.shape)
    return 2 * _prod(ins[0][:-1]) * k, k
  if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D, L.DepthwiseConv1D,
                        L.DepthwiseConv2D)):
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
  """(FLOPs, kernel weights, recorder) per example from one forward pass
  at batch 1: weight layers plus activation products."""
  recorder = _Recorder(model)
  try:
    model(inputs, training=False)
  finally:
    recorder.restore()
  flops = sum(f for _, f in recorder.products)
  weights = 0
  seen = set()
  for layer, ins, out in recorder.calls:
    f, w = _layer_cost(layer, ins, out)
    flops += f
    if id(layer) not in seen:  # a shared layer's kernel counts once
      seen.add(id(layer))
      weights += w
  return flops, weights, recorder


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
    heads = (isinstance(layer, keras.layers.EinsumDense)
             and len(kernel.shape) == 3 and tuple(kernel.shape[-2:])
             == tuple(layer.partial_output_shape[-2:]))
    if heads:  # a projection into heads: kernel [C, heads, head size]
      head = int(kernel.shape[-1])
      half[key] = max(1, count // head // 2) * head
    else:
      half[key] = max(1, count // 2)
  return half


def rel(a, b):
  return abs(a - b) / max(abs(b), 1)


def check(name, builder=None, do_slim=True):
  """A dict of the measured numbers for one backbone.

  'analysis_ok': FLOPs and weights equal the independent count.
  'slim': 'ok' (the halved slim model's FLOPs equal structure_cost),
  'wrong' (they differ), 'no rule' (slim_model names a block class that
  has no width rule: a gap, reported as such), 'error' (anything else),
  or 'n/a' (not tried).
  """
  keras.utils.set_random_seed(0)
  model, data, signature = (builder or BUILDERS[name])()
  row = {'name': name, 'params': model.count_params(), 'slim': 'n/a'}
  t0 = time.time()
  report = analyze_lib.analyze(model, input_signature=signature)
  row['analyze_s'] = time.time() - t0
  flops, weights, _ = independent_counts(model, data)
  row.update(flops=report.flops, flops_ref=flops, weights=report.weights,
             weights_ref=weights)
  row['analysis_ok'] = (rel(report.flops, flops) <= TOLERANCE
                        and rel(report.weights, weights) <= TOLERANCE)
  if do_slim:
    try:
      half = half_structure(model, signature)
      slim = morph_keras.slim_model(model, half, input_signature=signature)
      slim(data, training=False)  # it runs
      row['cost'] = morph_keras.structure_cost(model, half,
                                               input_signature=signature)
      row['slim_flops'] = independent_counts(slim, data)[0]
      row['slim'] = ('ok' if rel(row['slim_flops'], row['cost']) <= TOLERANCE
                     else 'wrong')
    except Exception as e:  # pylint: disable=broad-except
      msg = str(e).strip().splitlines()
      row['slim_error'] = '%s: %s' % (type(e).__name__,
                                      msg[0][:200] if msg else '')
      row['slim'] = ('no rule' if isinstance(e, NotImplementedError)
                     and 'has no width rule' in str(e) else 'error')
      if os.environ.get('MORPHNET_TRACEBACK'):
        traceback.print_exc()
  row['ok'] = row['analysis_ok'] and row['slim'] in ('ok', 'n/a', 'no rule')
  return row


# Backbones the analysis refuses, each with a message naming the op and
# why (run with --all to see them): not counted wrong, not counted at all.
REFUSED = {
    # A per-head weight shared across positions ('bind,snd->bnis': segment
    # embeddings per head) is neither a projection nor an attention product.
    'xlnet': lambda: text('xlnet.xlnet_backbone.XLNetBackbone', num_heads=2,
                          **_LM),
    # Fourier mixing (FFT / Real): no handler.
    'f_net': lambda: text('f_net.f_net_backbone.FNetBackbone',
                          max_sequence_length=16, dropout=0.0, **_LM),
}


def random_structure(model, analysis, signature, seed, low=0.3):
  """Each count the exporter writes for `model`, times U(low, 1)."""
  reg = flop_regularizer.GroupLassoFlopsRegularizer(
      model, 1e-4, input_signature=signature)
  counts = structure_exporter.StructureExporter(
      reg.op_regularizer_manager).get_alive_counts()
  # Drawn in network order: layer names (and so the exporter's key order)
  # depend on how many layers the process built before this one.
  rng = np.random.RandomState(seed)
  return {k: max(1, int(counts[k] * rng.uniform(low, 1.0)))
          for k in sorted(counts, key=analysis.order_index)}


def workflow(name, builder=None, fraction=0.4, seed=0, save_dir=None):
  """The slim workflow on one backbone, as a user runs it; a dict of what
  held.

  A random structure (each exported count x U(0.3, 1)) is scaled by
  `expand_structure` to `fraction` x the model's FLOPs (or 1.2 x the
  narrowest structure's, when that is more), then: 'slim' (slim_model
  succeeds), 'counted' (its FLOPs by an independent forward pass equal
  `structure_cost`), 'reanalyzed' (`analyze(slim)` too), 'reloaded' (a
  .keras round trip reproduces its outputs), 'trains' (a gradient step on
  every trainable variable is finite). 'error' holds the first failure.
  """
  keras.utils.set_random_seed(seed)
  model, data, signature = (builder or BUILDERS[name])()
  row = {'name': name}
  try:
    analysis = morph_keras.analysis_of(model, signature)
    full = morph_keras.structure_cost(analysis, {})
    start = random_structure(model, analysis, signature, seed)
    target = fraction * full
    try:
      structure = morph_keras.expand_structure(analysis, start,
                                               target_cost=target)
    except ValueError as e:
      found = re.search(r'narrowest structure \(([0-9.e+]+)', str(e))
      if not found:
        raise
      target = 1.2 * float(found.group(1))
      structure = morph_keras.expand_structure(analysis, start,
                                               target_cost=target)
    row['target'] = target / full
    slim = morph_keras.slim_model(analysis, structure,
                                  input_signature=signature)
    row['slim'] = True
    cost = morph_keras.structure_cost(analysis, structure)
    out = slim(data, training=False)
    row['counted'] = rel(independent_counts(slim, data)[0], cost) <= 1e-9
    row['reanalyzed'] = rel(analyze_lib.analyze(
        slim, input_signature=signature).flops, cost) <= 1e-9
    path = os.path.join(save_dir or tempfile.mkdtemp(), name + '.keras')
    slim.save(path)
    loaded = keras.models.load_model(path)
    row['reloaded'] = all(
        np.allclose(a, b, atol=1e-5) for a, b in zip(
            keras.tree.flatten(out),
            keras.tree.flatten(loaded(data, training=False))))
    with tf.GradientTape() as tape:
      outputs = keras.tree.flatten(slim(data, training=True))
      loss = tf.add_n([tf.reduce_mean(tf.square(tf.cast(o, tf.float32)))
                       for o in outputs if o.dtype.is_floating])
    grads = tape.gradient(loss, slim.trainable_variables)
    row['trains'] = bool(grads) and all(
        g is None or bool(np.all(np.isfinite(tf.convert_to_tensor(g))))
        for g in grads)
  except Exception as e:  # pylint: disable=broad-except
    msg = str(e).strip().splitlines()
    row['error'] = '%s: %s' % (type(e).__name__, msg[0][:300] if msg else '')
    if os.environ.get('MORPHNET_TRACEBACK'):
      traceback.print_exc()
  row['ok'] = all(row.get(k) for k in ('slim', 'counted', 'reanalyzed',
                                       'reloaded', 'trains'))
  return row


def _print_workflow(todo):
  checks = ('slim', 'counted', 'reanalyzed', 'reloaded', 'trains')
  print('%-16s %s' % ('backbone', ' '.join('%-10s' % c for c in checks)))
  rows = []
  for name, builder in todo.items():
    row = workflow(name, builder)
    rows.append(row)
    print('%-16s %s %s' % (name, ' '.join(
        '%-10s' % ('yes' if row.get(c) else 'NO') for c in checks),
                           row.get('error', '')[:200]), flush=True)
  print('%d of %d backbones pass every check'
        % (sum(r['ok'] for r in rows), len(rows)))
  return 0 if all(r['ok'] for r in rows) else 1


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', nargs='*', default=None)
  parser.add_argument('--all', action='store_true',
                      help='every builder, the larger configs and the '
                      'backbones the analysis refuses')
  parser.add_argument('--no-slim', action='store_true')
  parser.add_argument('--workflow', action='store_true',
                      help='the slim workflow instead (see `workflow`): '
                      'expand a random structure to 0.4 x the FLOPs, slim, '
                      'count, re-analyze, reload, train')
  args = parser.parse_args(argv)
  todo = {n: BUILDERS[n] for n in (args.models or CI_SET)}
  if args.all:
    todo = dict(BUILDERS, **LARGER)
  if args.workflow:
    return _print_workflow(todo)
  failed = 0
  print('%-16s %7s %6s %6s %-8s %s' % ('backbone', 'analyze', 'FLOPs',
                                       'size', 'analysis', 'slim'))
  for name, builder in todo.items():
    try:
      r = check(name, builder, do_slim=not args.no_slim)
    except Exception as e:  # pylint: disable=broad-except
      failed += 1
      msg = str(e).strip().splitlines()
      print('%-16s ERROR %s: %s' % (name, type(e).__name__,
                                    msg[0][:300] if msg else ''), flush=True)
      if os.environ.get('MORPHNET_TRACEBACK'):
        traceback.print_exc()
      continue
    slim = r['slim']
    if 'cost' in r:
      slim += ' (slim %d / cost %d)' % (r['slim_flops'], r['cost'])
    elif 'slim_error' in r:
      slim += ': ' + r['slim_error'][:160]
    print('%-16s %6.1fs %6.4f %6.4f %-8s %s' % (
        name, r['analyze_s'], r['flops'] / r['flops_ref'],
        r['weights'] / r['weights_ref'],
        'PASS' if r['analysis_ok'] else 'FAIL', slim), flush=True)
    failed += not r['ok']
  if args.all:
    for name, builder in REFUSED.items():
      model, _, signature = builder()
      try:
        analyze_lib.analyze(model, input_signature=signature)
        print('%-16s analyzes now: move it to MORE' % name)
        failed += 1
      except Exception as e:  # pylint: disable=broad-except
        print('%-16s refused: %s: %s' % (name, type(e).__name__,
                                         str(e).splitlines()[0][:160]))
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
