"""A layer called more than once whose structure removes some of its calls.

slim_model rebuilds call by call: a shared conv whose one call only fed a
removed branch keeps its other call. The cost of a structure
(`structure_cost`, hence `expand_structure` and `budget.only_at_or_under`)
must be the slim model's: each removed call's FLOPs go, the layer's weights
stay while a call does. Checked against the slim model's own analysis and a
count by hand from its layers' shapes.
"""

import warnings

import keras
import numpy as np
import pytest

import morph_net.keras as mk

L = keras.layers


def _bn(x, name):
  return L.ReLU()(L.BatchNormalization(name=name)(x))


def _multi_scale():
  """stem -> one conv `shared` on the image and on its 2x2 pool -> a head
  per scale -> concat -> Dense."""
  i = keras.Input((12, 12, 3))
  x = _bn(L.Conv2D(8, 3, padding='same', name='stem')(i), 'b0')
  shared = L.Conv2D(12, 3, padding='same', name='shared')
  a = _bn(shared(x), 'ba')
  b = _bn(shared(L.MaxPooling2D()(x)), 'bb')
  a = L.GlobalAveragePooling2D()(_bn(L.Conv2D(8, 1, name='head_a')(a), 'ha'))
  b = L.GlobalAveragePooling2D()(_bn(L.Conv2D(8, 1, name='head_b')(b), 'hb'))
  return keras.Model(i, L.Dense(4, name='out')(L.Concatenate()([a, b])))


def _siamese():
  """c1, c2 -> one conv `shared` on each -> Add -> BN -> Dense."""
  i = keras.Input((12, 12, 3))
  c1 = _bn(L.Conv2D(8, 3, padding='same', name='c1')(i), 'b1')
  c2 = _bn(L.Conv2D(8, 1, name='c2')(i), 'b2')
  conv = L.Conv2D(12, 3, padding='same', name='shared')
  x = _bn(L.Add()([conv(c1), conv(c2)]), 'bs')
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(i, L.Dense(4, name='out')(x))


def _in_model(model):
  """Ids of the call nodes of `model`'s graph (a layer also records calls
  made while rebuilding that the model left out)."""
  return {id(n) for nodes in model._nodes_by_depth.values()  # pylint: disable=protected-access
          for n in nodes}


def _by_hand(model):
  """(FLOPs, weights) from the layers' shapes: 2 x multiply-adds of every
  call of a conv or Dense kernel; each kernel's weights once."""
  flops = weights = 0
  in_model = _in_model(model)
  for layer in model.layers:
    kernel = getattr(layer, 'kernel', None)
    if kernel is None:
      continue
    weights += int(np.prod(kernel.shape))
    for node in layer._inbound_nodes:  # pylint: disable=protected-access
      if id(node) not in in_model:
        continue
      positions = int(np.prod(node.output_tensors[0].shape[1:-1]))
      flops += 2 * positions * int(np.prod(kernel.shape))
  return flops, weights


def _check(model, structure):
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # a kept channel is warned about
    slim = mk.slim_model(model, structure)
  hand = _by_hand(slim)
  assert hand == (mk.structure_cost(slim, {}),
                  mk.structure_cost(slim, {}, cost='model_size'))
  assert mk.structure_cost(model, structure) == hand[0]
  assert mk.structure_cost(model, structure, cost='model_size') == hand[1]
  return slim


@pytest.mark.parametrize('dead_head', ['head_a', 'head_b'])
def test_a_removed_branch_takes_one_call_of_a_shared_conv_along(dead_head):
  model = _multi_scale()
  structure = {'stem': 8, 'shared': 12, 'head_a': 8, 'head_b': 8}
  structure[dead_head] = 0
  slim = _check(model, structure)
  nodes = slim.get_layer('shared')._inbound_nodes  # pylint: disable=protected-access
  assert sum(id(n) in _in_model(slim) for n in nodes) == 1
  _check(model, dict(structure, stem=4, shared=6,
                     **{'head_b' if dead_head == 'head_a' else 'head_a': 5}))


def test_a_shared_conv_keeps_the_call_a_kept_channel_feeds():
  """c1 and c2 both at 0: c2 keeps one channel (the output needs it), so
  `shared` keeps its call on c2 and the Dense still reads it."""
  model = _siamese()
  for structure in ({'c1': 0, 'c2': 0, 'shared': 7},
                    {'c1': 3, 'c2': 3, 'shared': 5}):  # (c1, c2 are tied)
    slim = _check(model, structure)
    assert slim.get_layer('shared').filters == structure['shared']


def test_expand_structure_prices_the_calls_the_slim_model_keeps():
  model = _multi_scale()
  full = mk.structure_cost(model, {})
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    expanded = mk.expand_structure(
        model, {'stem': 4, 'shared': 6, 'head_a': 0, 'head_b': 5},
        target_cost=0.5 * full)
  slim = _check(model, expanded)
  landed = _by_hand(slim)[0] / (0.5 * full)
  short = [str(w.message) for w in caught
           if issubclass(w.category, RuntimeWarning)]
  assert landed <= 1 and (landed >= 0.98 or short)


def test_budget_exports_price_the_kept_calls():
  """only_at_or_under reads structure_cost: a structure is under the
  target exactly when its slim model is."""
  model = _multi_scale()
  structure = {'stem': 8, 'shared': 12, 'head_a': 0, 'head_b': 8}
  slim_flops = _by_hand(_check(model, structure))[0]
  assert mk.structure_cost(model, structure) == slim_flops
  assert slim_flops < 0.5 * mk.structure_cost(model, {})


def test_grouped_conv_transfer_refusal_does_not_advise_rounding():
  i = keras.Input((6, 6, 4))
  x = _bn(L.Conv2D(8, 3, padding='same', name='c0')(i), 'b0')
  x = _bn(L.Conv2D(8, 3, padding='same', groups=2, name='g')(x), 'bg')
  model = keras.Model(i, L.Dense(3, name='out')(
      L.GlobalAveragePooling2D()(x)))
  alive = {'c0': np.array([1, 1, 1, 0, 1, 1, 1, 1], bool)}
  with pytest.raises(NotImplementedError, match='Slim from counts') as err:
    mk.slim_model(model, alive, transfer_weights=True)
  assert 'round_to' not in str(err.value)


def test_removed_calls_are_matched_to_ops_by_their_positions():
  from types import SimpleNamespace as NS  # pylint: disable=g-import-not-at-top
  from morph_net.keras import _counts  # pylint: disable=g-import-not-at-top
  ops = [NS(op=NS(name=n), positions=p) for n, p in
         (('full', 144), ('pooled', 36), ('pooled_again', 36))]
  entries = {'shared': NS(computes=ops)}
  assert _counts.call_ops(entries, {'shared': (3, [36, 144])}) == {
      'pooled', 'full'}
  assert _counts.call_ops(entries, {'shared': (3, [36, 36])}) == {
      'pooled', 'pooled_again'}
  for dead in ((3, [9]), (3, [144, 144]), (2, [36])):  # no such call
    with pytest.raises(NotImplementedError, match="Layer 'shared' is called"):
      _counts.call_ops(entries, {'shared': dead})
