"""From a learned structure to a slim Keras 3 model.

`slim_model(model, structure)` rebuilds a functional (or Sequential) Keras
model with each prunable layer's width set to its alive channel count. The
model's analysis (the channel groups the regularizers use) says which
layers a structure may name and which widths are tied:

- prunable layers: those whose compute op sets a width (Conv1D/2D/3D,
  Conv1D/2D/3DTranspose, Dense, the pointwise half of SeparableConv1D/2D);
  `filters`/`units` are rewritten (`register_width_rule` for your own).
  Keys are the exporter's: plain layer names, or paths such as 'b1/fc'
  where nested layers share a name.
- tied layers (outputs added or multiplied together, concat slices added
  to another layer) need consistent counts; naming one member of a tie
  sets the others.
- every other layer follows: BatchNormalization, DepthwiseConv, Flatten,
  pooling, Add/Concatenate, ... get their widths from the rebuilt graph.
  Nested functional and Sequential models are rebuilt recursively.
- topology morphing: a layer with 0 alive channels removes its branch. A
  residual branch collapses to its shortcut (an Add left with one input is
  dropped), a Concatenate input disappears; any other layer fed by a removed
  tensor (e.g. a Multiply) is removed too. Where nothing would be left (the
  main chain) one channel is kept and a warning names the layer. A removed
  branch's constant contribution (e.g. a BatchNorm shift after a dead conv)
  is dropped with it.
- `transfer_weights=True` copies the surviving channels' weights (kernels
  sliced on both channel axes, biases, BatchNorm statistics, depthwise
  kernels, the rows of a Dense after Flatten).
- `LogisticSigmoidGating` layers are folded away (at inference a gate is a
  fixed mask), so the slim model holds only core Keras layers and loads
  without morph_net.

- custom layers (and subclassed models) whose `call` chains their
  sublayers are narrowed in place: a copy whose weighted sublayers are
  replaced by narrower copies (`_surgery`); the layer's own code is kept.
  A model holding such layers is a `SlimModel`, which reloads them at the
  slim widths. `slim_model` runs it and checks its cost: a layer whose
  call reads a width from its config (a head count) is named, with the
  fix.
- layers with a width rule (MultiHeadAttention, keras-hub's transformer
  and MobileNet blocks, ...) are rebuilt from their config by the rule
  (`register_width_rule(cls, sublayers=..., output=...)`, see
  `_builtin_rules`); attention keeps whole heads, and weights are
  transferred through them sublayer by sublayer.

Layer names are kept, so a structure's keys stay valid on the slim model.
Channels are on the last axis (`channels_first` models are refused).
tf_keras models are not supported (the error says how to convert one).

Example:

```python
reg = flop_regularizer.GammaFlopsRegularizer(model, gamma_threshold=1e-2)
# ... train ...
slim = morph_net.keras.slim_model(model, reg, transfer_weights=True)
# or from the exported JSON:
slim = morph_net.keras.slim_model(model, json.load(open(path)), round_to=8)
```
"""

import keras  # pylint: disable=unused-import (doctests)
import numpy as np

from morph_net.framework import keras_trace
from morph_net.keras import _blocks
from morph_net.keras import _rebuild
from morph_net.keras import _slim_plan
from morph_net.keras import _structure
from morph_net.keras import _surgery

__all__ = ['analysis_of', 'as_functional', 'resolve_structure', 'slim_model']

analysis_of = _structure.analysis_of

as_functional = _slim_plan.as_functional


def slim_model(model, structure, transfer_weights=False, round_to=1,
               fold_gates=True, input_signature=None):
  """Builds the model with the channel counts of `structure`.

  Args:
    model: a Keras 3 model (functional, Sequential or subclassed), or its
      `analysis_of(model)` (traced once, shared between calls).
    structure: {layer key: alive channel count} (the exporter's JSON),
      {layer key: boolean alive vector}, or a network regularizer built on
      `model` (its alive channels are read now). Layers not named keep
      their width (unless tied to a named one); counts may exceed the
      original width (expansion, up to 64x). The layers that produce the
      model's outputs may not be named: their width is the task's. An empty
      structure is allowed and rebuilds the model unchanged (fresh weights
      unless `transfer_weights`).
    transfer_weights: copy the weights of the surviving channels; needs
      alive vectors (a regularizer or a dict of boolean vectors).
    round_to: round every nonzero count up to a multiple of it (at least
      `round_to`; never above the original width unless the count already
      is). With transfer, the added channels are the first dead ones.
    fold_gates: drop `LogisticSigmoidGating` layers (with transfer, a gate
      whose kept channels' mask is not all 1 becomes a core `Rescaling`).
      False keeps them, e.g. for another shrink cycle with gates.
    input_signature: how to trace `model` for the analysis, as for the
      regularizers (e.g. `{'token_ids': tf.TensorSpec([None, 128],
      tf.int32), ...}` for a text backbone whose sequence length is None).
      The slim model keeps the model's own input shapes.

  Returns:
    A new functional `keras.Model` with the same layer names (a
    `SlimModel` where it holds layers that are not core Keras).

  >>> inputs = keras.Input((4,))
  >>> hidden = keras.layers.Dense(8, name='hidden')(inputs)
  >>> model = keras.Model(inputs, keras.layers.Dense(2, name='out')(hidden))
  >>> slim_model(model, {'hidden': 3}).get_layer('hidden').units
  3
  >>> slim_model(model, {'hidden': 3}, round_to=4).get_layer('hidden').units
  4

  Raises:
    ValueError: unknown or non-prunable keys, output layers, invalid counts
      (negative, fractional, NaN/inf, too large), tied layers given
      inconsistent counts or alive vectors, or transfer requested from
      counts only.
    NotImplementedError: a tf_keras model; a pruned tensor reaches a layer
      whose channel mapping is unknown (e.g. a Reshape that splits
      channels); a custom layer narrowed in place whose call reads a width
      from its config, or that holds weights of its own.
  """
  if not isinstance(model, _structure.Analysis):
    _slim_plan.check_keras3(model)
  analysis = _structure.analysis_of(model, input_signature)
  model = analysis.model
  if _slim_plan.is_subclassed(model):
    return _slim_subclassed(analysis, structure, transfer_weights, round_to,
                            input_signature)
  _slim_plan.as_functional(model)
  counts, alive = _resolve(analysis, structure, transfer_weights)
  if transfer_weights and alive is None:
    alive = {}
  plan, widths = plan_structure(analysis, counts, alive, round_to, warn=True)
  new_model, new_layers = _rebuild.build(plan, fold_gates, transfer_weights)
  if plan.blocks or plan.narrowed:
    # Some layers (Keras's MultiHeadAttention) build their sublayers only
    # when first run, not when called symbolically: run the model once
    # before weights are transferred into them.
    _run_once(new_model, plan)
  if transfer_weights:
    _rebuild.transfer(plan, new_layers)
  if plan.narrowed:
    _check_narrowed(analysis, plan, widths, new_model, input_signature)
  return new_model


def _resolve(analysis, structure, transfer_weights):
  """The structure's counts and alive channels; transfer needs the latter."""
  counts, alive = analysis.resolve(structure)
  if transfer_weights and alive is None and counts:
    raise ValueError(
        'transfer_weights=True needs to know which channels are alive: pass '
        'the network regularizer or a {layer key: boolean vector} dict, '
        'not alive counts.')
  return counts, alive


def _slim_subclassed(analysis, structure, transfer_weights, round_to,
                     input_signature):
  """A subclassed model, narrowed in place like a custom layer (its `call`
  runs on narrower sublayers), inside a functional `SlimModel` over its
  inputs, which saves and reloads it at the slim widths."""
  model = analysis.model
  counts, alive = _resolve(analysis, structure, transfer_weights)
  _structure.check_round_to(round_to)
  rounded = {k: analysis.round_count(k, c, round_to)
             for k, c in counts.items()}
  values, widths, _ = analysis.check_counts(rounded, alive)
  if alive is not None:
    alive = {k: _pad(v, rounded[k], analysis.width(k))
             for k, v in alive.items()}
  zero = [k for k, w in widths.items() if w == 0]
  if zero:
    raise NotImplementedError(
        'slim_model: layer(s) %s of subclassed model %r would have no '
        'channels; its call still runs them, so slim_model cannot remove '
        'them. Keep at least one channel.' % (', '.join(map(repr, zero)),
                                              model.name))
  specs = keras_trace.specs_for(model, input_signature)
  plan = _slim_plan.Plan(model)
  plan.analysis, plan.alive = analysis, alive if transfer_weights else None
  shapes = {id(s): _slim_plan.leaf_shape(analysis, values, s)
            for s in _blocks.leaves(model) if s.weights}
  made = {}
  new, record = _surgery.slim_copy(model, lambda s: shapes.get(id(s)),
                                   _blocks.clone_leaf, made)
  _surgery.record_surgery(new, record)
  inputs = keras.tree.map_structure(
      lambda spec: keras.Input(batch_shape=tuple(spec.shape),
                               dtype=spec.dtype.name), specs)
  slim = _surgery.SlimModel(inputs, new(inputs), name=model.name)
  plan.narrowed[id(model)] = (new, record, made)
  _run_once(slim, plan)
  if transfer_weights:
    _rebuild.transfer_narrowed(plan, model)
  _check_narrowed(analysis, plan, widths, slim, input_signature)
  return slim


def _run_once(new_model, plan):
  """Calls the slim model on zeros (unknown sizes but the batch: 2)."""
  zeros = [np.zeros((2,) + tuple(2 if d is None else d for d in x.shape[1:]),
                    x.dtype) for x in new_model.inputs]
  try:
    new_model(keras.tree.pack_sequence_as(
        new_model._inputs_struct, zeros), training=False)  # pylint: disable=protected-access
  except Exception as e:  # pylint: disable=broad-except
    if not plan.narrowed:
      raise
    raise NotImplementedError(
        'slim_model: the model with custom layer(s) %s narrowed in place '
        'fails to run (%s: %s). A custom layer\'s call reads a width from '
        'its config (e.g. a head count or a reshape): register a width rule '
        'for it (morph_net.keras.register_width_rule), or leave its '
        'sublayers out of the structure.'
        % (_narrowed_names(plan), type(e).__name__,
           str(e).splitlines()[0][:300] if str(e) else '')) from e


def _check_narrowed(analysis, plan, widths, new_model, input_signature):
  """Checks that a model with custom layers narrowed in place costs what
  the structure says: a custom layer's code may read a width from its
  config (a head count, a reshape), which narrowing its sublayers does not
  change."""
  expected = analysis.cost(analysis.final_values(widths, plan.removed),
                           'flops', plan.dropped, plan.dead_calls)
  slim_analysis = _structure.Analysis(new_model, input_signature)
  names = _narrowed_names(plan)
  actual = slim_analysis.cost(np.ones(slim_analysis.num_labels), 'flops')
  if abs(actual - expected) > 1e-6 * max(1.0, expected):
    raise NotImplementedError(
        'slim_model: with custom layer(s) %s narrowed in place the model '
        'costs %g FLOPs, but the structure says %g: a custom layer\'s call '
        'reads a width from its config. Register a width rule for it '
        '(morph_net.keras.register_width_rule), or leave its sublayers out '
        'of the structure.' % (names, actual, expected))


def _narrowed_names(plan):
  return ', '.join('%r (%s)' % (made[i][0].name, type(made[i][0]).__name__)
                   for i, (_, _, made) in plan.narrowed.items())
def resolve_structure(model, structure, input_signature=None):
  """Checks a structure against `model`'s analysis.

  Args:
    model: a Keras model.
    structure: see `slim_model`.
    input_signature: see `slim_model`.

  Returns:
    ({key: count}, {key: alive channel indices} or None for counts only).
  """
  return _structure.analysis_of(model, input_signature).resolve(structure)


def plan_structure(analysis, counts, alive, round_to=1, warn=False,
                   fix=False):
  """Rounds, ties and plans a resolved structure.

  Returns:
    (plan, {key: width} of every prunable layer, forced layers included).
  """
  rounded = {k: analysis.round_count(k, c, round_to)
             for k, c in counts.items()}
  _, widths, _ = (analysis.assign(rounded, fix=True) if fix else
                  analysis.check_counts(rounded, alive))
  if alive is not None:
    alive = {k: _pad(v, rounded[k], analysis.width(k))
             for k, v in alive.items()}
    analysis.assign_alive(alive)
  plan = _slim_plan.make_plan(analysis, widths, alive, round_to, warn)
  _check_reached(analysis, plan, widths)
  for key in plan.forced:
    widths[key] = analysis.round_count(key, 1, round_to)
  return plan, widths


def _pad(kept, count, original):
  """Alive indices grown to `count` with the first dead channels."""
  if len(kept) >= count:
    return kept
  extra = np.setdiff1d(np.arange(original), kept)[:count - len(kept)]
  return np.sort(np.concatenate([kept, extra])).astype(np.int64)


def _check_reached(analysis, plan, widths):
  """Every layer whose width changes must be a node of a rebuilt graph."""
  for key, width in widths.items():
    layer = analysis.layer(key)
    if width == analysis.width(key) or id(layer) in plan.seen:
      continue
    parent = key.rsplit('/', 1)[0] if '/' in key else None
    where = analysis.manager.view.layer(parent) if parent else None
    raise NotImplementedError(
        'Layer %r (%s) lives inside %s, which slim_model cannot rebuild '
        '(only functional and Sequential models are rebuilt through their '
        'graph). Write the block as a functional model, or leave %r out of '
        'the structure.' % (
            key, type(layer).__name__,
            'layer %r (%s)' % (parent, type(where).__name__) if where
            is not None else 'a custom layer', key))
