"""MorphNet's expansion step: scale a learned structure back to a budget.

`expand_structure` multiplies every count of a structure by one factor w
and finds, by bisection, the largest w whose slim model costs at most the
target. Costs follow the regularizers' definitions, computed from layer
shapes (no BatchNorm or regularizer needed):

- FLOPs = 2 x positions x kernel elements x in channels x out channels
  (conv: output positions; transposed conv: input positions; Dense: the
  positions it is applied at, 1 on a 2-D input); depthwise convs are
  linear: 2 x positions x kernel elements x out channels.
- model size = kernel elements x in x out (depthwise: kernel elements x
  out); biases and BatchNorm parameters are not counted.

Example:

```python
counts = morph_net.keras.expand_structure(
    model, reg, target_cost=float(seed_flops), round_to=8)
slim = morph_net.keras.slim_model(model, counts)  # retrain from scratch
```
"""

import numbers

import keras  # pylint: disable=unused-import (doctests)
import numpy as np

from morph_net.keras import _slim_plan as plan_lib
from morph_net.keras import slim as slim_lib

__all__ = ['expand_structure', 'structure_cost']

_COSTS = {'flops': 'flops', 'model_size': 'model_size',
          'modelsize': 'model_size'}


def structure_cost(model, structure, cost='flops', round_to=1):
  """The cost of `slim_model(model, structure, round_to=round_to)`.

  Args:
    model: a functional or Sequential Keras model.
    structure: counts, alive vectors or a regularizer (see `slim_model`).
    cost: 'flops' or 'model_size'.
    round_to: as in `slim_model`.

  Returns:
    The cost per example (float), from the planned layer widths.
  """
  functional = plan_lib.as_functional(model)
  counts, _ = slim_lib.resolve_structure(functional, structure)
  plan = plan_lib.make_plan(functional, counts, None, round_to)
  return plan_cost(plan, _cost_kind(cost))


def expand_structure(model, structure, target_cost, cost='flops',
                     round_to=1):
  """Scales all counts by one factor to fit `target_cost` from below.

  Args:
    model: the model the structure was learned on (functional/Sequential).
    structure: {layer name: count}, alive vectors, or a network regularizer
      built on `model`.
    target_cost: the budget, in the unit of `cost`.
    cost: 'flops', 'model_size', or a callable keras.Model -> float applied
      to `slim_model(model, counts)` (slower: builds a model per step).
    round_to: counts are rounded up to multiples of it.

  Returns:
    {layer name: count} for the names in `structure`. Counts may exceed the
    original widths (the slim model is built with the larger layers); zero
    counts (removed branches) stay zero; layers not in `structure` keep
    their width and are not scaled.

  FLOPs of Dense(4 -> h) + Dense(h -> 2) are 2 (4 h + 2 h) = 12 h:

  >>> inputs = keras.Input((4,))
  >>> hidden = keras.layers.Dense(8, name='hidden')(inputs)
  >>> model = keras.Model(inputs, keras.layers.Dense(2, name='out')(hidden))
  >>> expand_structure(model, {'hidden': 3}, target_cost=65)
  {'hidden': 5}

  Raises:
    ValueError: target_cost is not positive, or is below the cost of the
      narrowest structure (every nonzero count = round_to).
  """
  functional = plan_lib.as_functional(model)
  counts, _ = slim_lib.resolve_structure(functional, structure)
  if (isinstance(target_cost, bool) or
      not isinstance(target_cost, numbers.Real) or not target_cost > 0):
    raise ValueError('target_cost must be a positive number, got %r.'
                     % (target_cost,))
  if callable(cost):
    def evaluate(scaled):
      return float(cost(slim_lib.slim_model(functional, scaled)))
  else:
    kind = _cost_kind(cost)

    def evaluate(scaled):
      return plan_cost(plan_lib.make_plan(functional, scaled, None), kind)

  layers = {l.name: l for l in functional.layers}

  def scale(w):
    scaled = {n: plan_lib.round_count(max(1, int(round(c * w))) if c else 0,
                                      plan_lib.out_width(layers[n]), round_to)
              for n, c in counts.items()}
    return _make_consistent(functional, scaled)

  lo = 0.0
  lowest = evaluate(scale(lo))
  if lowest > target_cost:
    raise ValueError(
        'target_cost %g is below the cost of the narrowest structure (%g, '
        'every nonzero count = %d).' % (target_cost, lowest, round_to))
  hi = 1.0
  while evaluate(scale(hi)) <= target_cost:
    lo, hi = hi, hi * 2
    if hi > 2.0 ** 24:  # The cost does not grow with the counts.
      return scale(lo)
  for _ in range(60):
    if scale(lo) == scale(hi):
      break
    mid = (lo + hi) / 2
    if evaluate(scale(mid)) <= target_cost:
      lo = mid
    else:
      hi = mid
  return scale(lo)


def _make_consistent(model, counts):
  """Re-ties counts that rounding split, e.g. Add(Concat(a, b), c).

  round(a w) + round(b w) may differ from round((a + b) w). The width set
  by several layers (a concat) wins; a layer that took such a width is
  pinned and wins over single layers later; otherwise the widest wins.
  """
  counts = dict(counts)
  pinned = set()
  for _ in range(2 * len(counts) + 1):
    try:
      plan_lib.make_plan(model, counts, None)
      return counts
    except plan_lib.TiedCountsError as e:
      joint = [w for w, origin in e.inputs if len(origin) > 1]
      fixed = [w for w, origin in e.inputs
               if len(origin) == 1 and origin[0] in pinned]
      target = max(joint or fixed or [w for w, _ in e.inputs])
      fixable = [o[0] for w, o in e.inputs
                 if len(o) == 1 and w != target and o[0] in counts and
                 o[0] not in pinned]
      if not fixable:
        raise
      for name in fixable:
        counts[name] = target
        pinned.add(name)
  return counts


def _cost_kind(cost):
  kind = _COSTS.get(str(cost).lower())
  if kind is None:
    raise ValueError("cost must be 'flops', 'model_size' or a callable, "
                     'got %r.' % (cost,))
  return kind


def _positions(tensor, layer):
  dims = tensor.shape[1:-1]
  if any(d is None for d in dims):
    raise ValueError(
        'The cost of layer %r is undefined: the spatial size of %s is not '
        'known. Build the model with a fixed input size.'
        % (layer.name, tensor.shape))
  return int(np.prod(dims, dtype=np.int64))


def plan_cost(plan, kind):
  """Sums the per-layer cost of the planned widths."""
  total = 0.0
  for node in plan.nodes:
    op = node.operation
    if (id(node) in plan.identity or not node.input_tensors or
        any(plan.removed(t) for t in node.outputs)):
      continue
    x, y = node.input_tensors[0], node.outputs[0]
    c_in, c_out = plan.info[id(x)].width, plan.info[id(y)].width
    if plan_lib.is_depthwise(op):
      pairs = [(_kernel(op), _positions(y, op), c_out)]
    elif isinstance(op, plan_lib.SEPARABLE):
      mid = c_in * op.depth_multiplier
      pos = _positions(y, op)
      pairs = [(_kernel(op), pos, mid), (1, pos, mid * c_out)]
    elif isinstance(op, plan_lib.CONV_TRANSPOSE):
      pairs = [(_kernel(op), _positions(x, op), c_in * c_out)]
    elif plan_lib.width_attr(op) == 'filters':
      groups = getattr(op, 'groups', 1)
      pairs = [(_kernel(op), _positions(y, op), c_in * c_out // groups)]
    elif plan_lib.width_attr(op) == 'units':
      pairs = [(1, _positions(x, op), c_in * c_out)]
    else:
      continue
    for kernel, pos, channels in pairs:
      coeff = 2.0 * pos * kernel if kind == 'flops' else float(kernel)
      total += coeff * channels
  return total


def _kernel(layer):
  return int(np.prod(layer.kernel_size))
