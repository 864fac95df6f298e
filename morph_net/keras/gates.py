"""Gates in one call: FiGS (LogisticSigmoid) gates on any functional model.

`add_gates(model)` returns a copy of a functional (or Sequential) Keras
model, with its weights, that has a `LogisticSigmoidGating` layer on the
output channels of every prunable layer (Conv, Dense, EinsumDense, the
pointwise half of a SeparableConv), placed after the channel-wise layers
that follow it (BatchNormalization, activations): a gate before a
BatchNormalization would be undone by it, and one before a ReLU would gate
its input rather than what the next layer reads. At inference a gate
multiplies by its hard mask, 1 where its logit is > 0, and new gates start
with every logit at `log_odds_init` (> 0): the gated model computes the
same outputs as the model it came from. `slim_model` folds the gates away
(an alive gate is the identity at inference), so the slim model holds only
the original's layers.

>>> import keras
>>> inputs = keras.Input((4,))
>>> hidden = keras.layers.Dense(8, activation='relu', name='hidden')(inputs)
>>> model = keras.Model(inputs, keras.layers.Dense(2, name='out')(hidden))
>>> gated = add_gates(model)
>>> [l.name for l in gated.layers if 'gate' in l.name]
['hidden_gate']
"""

import warnings

import keras

from morph_net.keras import _blocks
from morph_net.keras import _structure
from morph_net.keras import _slim_plan
from morph_net.probabilistic_gating import activation_gating

__all__ = ['GATE_DEFAULTS', 'add_gates']

# add_gates' LogisticSigmoidGating arguments unless the caller gives them.
GATE_DEFAULTS = {'straight_through': True, 'temperature': 0.5}

# Layers that act channel by channel: a gate goes after them.
_CHANNELWISE = (keras.layers.BatchNormalization, keras.layers.Activation,
                keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
                keras.layers.PReLU, keras.layers.Softmax, keras.layers.Dropout,
                keras.layers.GaussianNoise, keras.layers.LayerNormalization)


def add_gates(model, layers=None, input_signature=None, **gate_kwargs):
  """A copy of `model` with a gate after each prunable layer.

  Args:
    model: a functional or Sequential Keras 3 model, trained or not (its
      weights are copied).
    layers: names (structure keys) of the layers to gate; None: every
      prunable layer whose width a structure may set (not the ones tied to
      the model's outputs or inputs).
    input_signature: as for the regularizers, to trace a model whose input
      shape is not known.
    **gate_kwargs: `LogisticSigmoidGating` arguments (e.g. log_odds_init,
      temperature). Unless given, the gates sample with
      `straight_through=True` at `temperature=0.5` (`GATE_DEFAULTS`): the
      forward mask is a hard 0/1 sample and the task's gradient reaches
      every logit. At the layer's own default (0.001, the original's) the
      relaxed mask is flat almost everywhere and the logits get a gradient
      in about one step in a thousand, so what they learn does not follow
      the task.

  Returns:
    A new functional model. Gate layers are named '<layer>_gate'. A layer
    whose output already goes through a gate keeps that gate (add_gates on
    a gated model adds none twice). Layers inside nested models, and layers
    called more than once, get no gate (warned; named in `layers`: an
    error).

  Raises:
    NotImplementedError: a subclassed model (add gates to its code, e.g.
      with `activation_gating.gated_relu_activation()`).
    ValueError: `layers` names a layer that is not prunable, is inside a
      nested model or is called more than once; log_odds_init is not > 0
      or soft_mask_for_inference is set (the gated model would not compute
      the original's outputs).
  """
  gate_kwargs = dict(GATE_DEFAULTS, **gate_kwargs)
  if float(gate_kwargs.get('log_odds_init', 2.5)) <= 0:
    raise ValueError(
        'log_odds_init must be > 0 so that every gate starts open and the '
        'gated model computes the same outputs; got %r.'
        % gate_kwargs['log_odds_init'])
  if gate_kwargs.get('soft_mask_for_inference'):
    raise ValueError(
        'soft_mask_for_inference=True multiplies every channel by its gate '
        'probability at inference (sigmoid(log_odds_init) < 1), so the gated '
        'model would not compute the same outputs. Leave it False (the hard '
        'mask: 1 for an open gate), or build such gates with '
        'LogisticSigmoidGating in your own code.')
  if _slim_plan.is_subclassed(model):
    raise NotImplementedError(
        'add_gates inserts gates into a functional graph; %r is a subclassed '
        'model. Put LogisticSigmoidGating layers in its call (e.g. '
        'morph_net.probabilistic_gating.activation_gating.'
        'gated_relu_activation()).' % model.name)
  functional = _slim_plan.as_functional(model)
  analysis = _structure.analysis_of(model, input_signature)
  keys = [k for k in analysis.entries if not analysis.is_fixed(k)]
  if layers is not None:
    unknown = sorted(set(layers) - set(keys))
    if unknown:
      raise ValueError(
          'add_gates: %s are not prunable layers of %r (or are tied to its '
          'outputs or inputs); gateable: %s.'
          % (', '.join(map(repr, unknown)), model.name, ', '.join(keys)))
    keys = [k for k in keys if k in set(layers)]
  targets = {}  # id(layer whose output gets a gate) -> gate name
  skipped = []
  for key in keys:
    layer = analysis.layer(key)
    if layer is None:
      continue
    last = _after_channelwise(functional, layer)
    why = _why_not(functional, layer, last)
    if why:
      if layers is not None:
        raise ValueError('add_gates: layer %r cannot be gated: %s.'
                         % (key, why))
      skipped.append('%r: %s' % (key, why))
    elif why == '':
      targets[id(last)] = key.replace('/', '_') + '_gate'
  if skipped:
    warnings.warn('add_gates: no gate for %s.' % '; '.join(skipped))

  def call(layer, *args, **kwargs):
    out = layer(*args, **kwargs)
    name = targets.get(id(originals[layer.name]))
    if name is None:
      return out
    return activation_gating.LogisticSigmoidGating(name=name,
                                                   **gate_kwargs)(out)

  originals = {l.name: l for l in functional.layers}
  gated = keras.models.clone_model(
      functional, call_function=call,
      clone_function=lambda layer: _blocks.clone_leaf(layer, None))
  for layer in functional.layers:
    if layer.weights:
      gated.get_layer(layer.name).set_weights(layer.get_weights())
  return gated


def _top_level(functional):
  return {id(l) for l in functional.layers}


def _why_not(functional, layer, last):
  """'' to gate `layer` (whose channel-wise tail ends at `last`); None if
  a gate follows it already; else why it cannot have one."""
  if _gated(functional, last):
    return None
  if id(layer) not in _top_level(functional):
    return ('it is inside a nested model (gate the nested model with '
            'add_gates before building this one)')
  calls = _calls(functional, last)
  if calls > 1:
    return ('it is called %d times (its calls share channels: a gate per '
            'call would learn different masks for them)' % calls)
  return ''


def _calls(functional, layer):
  """How many call nodes of `functional`'s graph run `layer`."""
  return sum(1 for node in _slim_plan.graph_nodes(functional)
             if node.operation is layer)


def _gated(functional, layer):
  """Whether `layer`'s output is read by a gate (and nothing else)."""
  readers = _readers(functional, layer)
  return len(readers) == 1 and isinstance(
      readers[0], activation_gating.LogisticSigmoidGating)


def _after_channelwise(functional, layer):
  """The last layer of the chain of channel-wise layers that follow
  `layer` (each the only reader of the one before), or `layer`."""
  current = layer
  while True:
    readers = _readers(functional, current)
    if len(readers) != 1 or not isinstance(readers[0], _CHANNELWISE):
      return current
    current = readers[0]


def _readers(functional, layer):
  """The layers of the graph that read `layer`'s output."""
  outputs = {id(t) for node in layer._inbound_nodes  # pylint: disable=protected-access
             for t in node.output_tensors}
  found = []
  for node in _slim_plan.graph_nodes(functional):
    if any(id(t) in outputs for t in node.input_tensors):
      if node.operation not in found:
        found.append(node.operation)
  if any(id(t) in outputs for t in functional.outputs):
    found.append(None)  # the model's output reads it too
  return found
