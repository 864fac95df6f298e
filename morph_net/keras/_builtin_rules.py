"""The built-in width rules: Keras's MultiHeadAttention and keras-hub's blocks.

`morph_net.keras` imports this module once, which registers them (by
'module.QualName', so keras-hub is never imported here). Each rule states
which config fields of a block its sublayers' widths set (see
`morph_net.keras._width_rules.register_width_rule`); the README lists them
("Slimming nested models and custom layers"). Private to `morph_net.keras`.
"""

import keras

from morph_net.keras import _blocks
from morph_net.keras import _width_rules as rules


def _heads(dim_field):
  def heads(width, layer):
    dim = getattr(layer, dim_field, None) or layer.key_dim
    if width % dim:
      raise ValueError(
          'slim_model: MultiHeadAttention %r keeps whole heads of %d '
          'channels, so its query/key/value widths must be multiples of %d; '
          'got %d.' % (layer.name, dim, dim, width))
    if width == 0:
      raise ValueError('slim_model: MultiHeadAttention %r would keep no head;'
                       ' keep at least one (%d channels).' % (layer.name, dim))
    return {'num_heads': width // dim}
  return heads


def _kv_heads(pattern, count_field):
  """Heads of an LLM attention sublayer (EinsumDense [C, heads, head size])
  from its width: {count_field: heads, 'head_dim': head size}."""
  def heads(width, layer):
    found = _blocks.find(pattern, layer)
    dim = int(found[0][0].kernel.shape[-1]) if found else 0
    if not dim or width % dim or not width:
      raise ValueError(
          'slim_model: %r (%s) keeps whole heads of %d channels in %s, so '
          'its width must be a positive multiple of %d; got %d.'
          % (layer.name, type(layer).__name__, dim, pattern, dim, width))
    return {count_field: width // dim, 'head_dim': dim}
  return heads


def _register_llm_decoders(reg, hub):
  """Decoders that build their attention from (num_query_heads,
  num_key_value_heads, head_dim): the head size is kept explicitly."""
  def attention(prefix):
    return {prefix + 'query_dense': _kv_heads(prefix + 'query_dense',
                                              'num_query_heads'),
            prefix + 'key_dense': _kv_heads(prefix + 'key_dense',
                                            'num_key_value_heads'),
            prefix + 'value_dense': _kv_heads(prefix + 'value_dense',
                                              'num_key_value_heads')}
  reg(hub + 'models.mistral.mistral_transformer_decoder.'
      'MistralTransformerDecoder',
      sublayers=dict(attention('self_attention_layer.'),
                     feedforward_intermediate_dense='intermediate_dim',
                     feedforward_gate_dense='intermediate_dim'),
      output='input')
  # Gemma's gating layers are intermediate_dim // 2 wide.
  double = lambda width, layer: {'intermediate_dim': 2 * width}
  reg(hub + 'models.gemma.gemma_decoder_block.GemmaDecoderBlock',
      sublayers=dict(attention('attention.'), gating_ffw=double,
                     gating_ffw_2=double),
      input_field='hidden_dim', output='input')
  # Qwen3 takes head_dim (its get_config leaves it out).
  gated = dict(feedforward_intermediate_dense='intermediate_dim',
               feedforward_gate_dense='intermediate_dim')
  reg(hub + 'models.qwen3.qwen3_decoder.Qwen3TransformerDecoder',
      sublayers=dict(attention('self_attention_layer.'), **gated),
      output='input')


def _register_builtins():
  reg = rules.register_width_rule
  # Query/key widths are alive_heads x key_dim, value's alive_heads x
  # value_dim; the output projection keeps the residual width.
  reg(keras.layers.MultiHeadAttention,
      sublayers={'query': _heads('key_dim'), 'key': _heads('key_dim'),
                 'value': _heads('value_dim')},
      output='attention_output')
  # ConvNeXt's layer scale: a per-channel weight of its input's width.
  reg('keras.src.applications.convnext.LayerScale',
      input_field='projection_dim', output='input')
  hub = 'keras_hub.src.'
  for name in ('layers.modeling.transformer_encoder.TransformerEncoder',
               'layers.modeling.transformer_decoder.TransformerDecoder'):
    # The head size is hidden // num_heads in build(): heads are kept by
    # rebuilding the attention sublayers.
    reg(hub + name, sublayers={'feedforward_intermediate_dense':
                               'intermediate_dim'},
        output='input', rebuild_sublayers=True)
  vit = hub + 'models.vit.vit_layers.'
  reg(vit + 'MLP', sublayers={'dense_1': 'mlp_dim', 'dense_2': 'hidden_dim'},
      output='dense_2')
  reg(vit + 'ViTEncoderBlock', sublayers={'mlp.dense_1': 'mlp_dim'},
      input_field='hidden_dim', output='input', rebuild_sublayers=True)
  # One num_heads / mlp_dim for all blocks: each block is rebuilt.
  reg(vit + 'ViTEncoder', input_field='hidden_dim', output='input',
      rebuild_sublayers=True)
  mobilenet = hub + 'models.mobilenet.mobilenet_backbone.'
  reg(mobilenet + 'SqueezeAndExcite2D',
      sublayers={'conv_reduce': 'bottleneck_filters',
                 'conv_expand': 'filters'},
      input_field='filters', output='input')
  # The squeeze-excite bottleneck is rounded from the input width in
  # __init__, and the expansion to a multiple of 8: sublayers are rebuilt.
  reg(mobilenet + 'DepthwiseConvBlock', sublayers={'conv2': 'filters'},
      input_field='infilters', output='conv2', rebuild_sublayers=True)
  reg(mobilenet + 'InvertedResidualBlock',
      sublayers={'conv1': 'expansion', 'conv3': 'filters'},
      input_field='infilters', output='conv3', rebuild_sublayers=True)
  reg(mobilenet + 'ConvBnActBlock', sublayers={'conv': 'filter'},
      output='conv')
  reg(hub + 'models.deeplab_v3.deeplab_v3_layers.SpatialPyramidPooling',
      sublayers={'aspp_conv_*': 'num_channels',
                 'conv_pooling': 'num_channels',
                 'conv_projection': 'num_channels'},
      output='conv_projection')
  mit = hub + 'models.mit.mit_layers.'
  reg(mit + 'OverlappingPatchingAndEmbedding',
      sublayers={'proj': 'project_dim'}, output='proj')
  reg(mit + 'HierarchicalTransformerEncoder', input_field='project_dim',
      output='input', rebuild_sublayers=True)
  # Its call splits q/k/v into heads by the *input* width (C // heads), so
  # q, k, v, the output projection and the input must keep one width.
  reg(mit + 'SegFormerMultiheadAttention',
      sublayers={'q': 'project_dim', 'k': 'project_dim', 'v': 'project_dim',
                 'proj': 'project_dim', 'sr': 'project_dim'},
      input_field='project_dim', output='proj')
  reg(mit + 'MixFFN', sublayers={'fc1': 'mid_channels', 'fc2': 'channels'},
      output='fc2')
  # CLIP / SigLIP vision towers: the patch conv sets hidden_dim (the class
  # token and position embedding follow it); encoder layers build their
  # attention with key_dim = hidden_dim // num_heads, so it is rebuilt.
  for tower in ('clip.clip_layers.CLIP', 'siglip.siglip_layers.SigLIP'):
    reg(hub + 'models.' + tower + 'VisionEmbedding',
        sublayers={'patch_embedding': 'hidden_dim'}, output='patch_embedding')
  # Their __init__ requires hidden_dim % num_heads == 0.
  reg(hub + 'models.clip.clip_layers.CLIPEncoderLayer',
      sublayers={'dense_1': 'intermediate_dim'}, input_field='hidden_dim',
      output='input', rebuild_sublayers=True,
      divisible={'query': 'num_heads'})
  siglip = hub + 'models.siglip.siglip_layers.'
  reg(siglip + 'SigLIPMLP', sublayers={'fc1': 'intermediate_dim',
                                       'fc2': 'hidden_dim'}, output='fc2')
  dino = hub + 'models.dinov2.dinov2_layers.DINOV2'
  reg(dino + 'PatchEmbedding', sublayers={'projection': 'hidden_dim'},
      output='projection')
  # Class, register and position embeddings are built from hidden_dim.
  reg(dino + 'Embedding',
      sublayers={'patch_embeddings.projection': 'hidden_dim'},
      output='patch_embeddings.projection')
  reg(dino + 'MLP', sublayers={'fc1': 'intermediate_dim', 'fc2': 'hidden_dim'},
      output='fc2')
  reg(dino + 'Attention', input_field='hidden_dim', output='input',
      rebuild_sublayers=True)
  reg(dino + 'Layer', sublayers={'mlp.fc1': 'intermediate_dim'},
      input_field='hidden_dim', output='input', rebuild_sublayers=True)
  reg(dino + 'Encoder', input_field='hidden_dim', output='input',
      rebuild_sublayers=True)
  deit = hub + 'models.deit.deit_layers.DeiT'
  reg(deit + 'Embeddings', sublayers={'patch_embedding': 'hidden_dim'},
      output='patch_embedding')
  reg(deit + 'Intermediate', sublayers={'dense': 'intermediate_dim'},
      output='dense')
  reg(deit + 'Output', sublayers={'dense': 'hidden_dim'}, output='dense')
  reg(deit + 'EncoderBlock', sublayers={'mlp.dense': 'intermediate_dim'},
      input_field='hidden_dim', output='input', rebuild_sublayers=True)
  reg(deit + 'Encoder', input_field='hidden_dim', output='input',
      rebuild_sublayers=True)
  _register_llm_decoders(reg, hub)
  reg(siglip + 'SigLIPEncoderLayer', sublayers={'mlp.fc1': 'intermediate_dim'},
      input_field='hidden_dim', output='input', rebuild_sublayers=True,
      divisible={'query': 'num_heads'})
  # The pooling head's hidden_dim is its probe's (query's) and output width;
  # its attention reads the input (keys, values) at whatever width it has.
  reg(siglip + 'SigLIPMultiHeadAttentionPooling',
      sublayers={'mlp.fc1': 'intermediate_dim', 'mlp.fc2': 'hidden_dim'},
      output='mlp.fc2', rebuild_sublayers=True)


_register_builtins()
