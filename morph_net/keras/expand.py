"""MorphNet's expansion step: scale a learned structure back to a budget.

`expand_structure` multiplies every count of a structure by one factor w
and finds, by bisection, the largest w whose slim model costs at most the
target. Costs are the regularizers' own: the network's `CostModel` (FLOPs,
model size or activations) evaluated over the analysis' channel groups at
the structure's widths (no BatchNorm or regularizer needed):

- FLOPs = 2 x positions x kernel elements x in channels x out channels
  (depthwise convs: linear in the out channels; grouped convs: summed
  over groups);
- model size = kernel elements x in x out (depthwise: kernel elements x
  out); biases and BatchNorm parameters are not counted.

Example:

```python
counts = morph_net.keras.expand_structure(
    model, reg, target_cost=float(seed_flops), round_to=8)
slim = morph_net.keras.slim_model(model, counts)  # retrain from scratch
```
"""

import math
import numbers
import warnings

import keras  # pylint: disable=unused-import (doctests)

from morph_net.keras import _structure
from morph_net.keras import slim as slim_lib
from morph_net.network_regularizers import cost_model

__all__ = ['expand_structure', 'structure_cost']


def structure_cost(model, structure, cost='flops', round_to=1,
                   input_signature=None):
  """The cost of `slim_model(model, structure, round_to=round_to)`.

  Args:
    model: a Keras model (functional, Sequential or subclassed), or its
      `analysis_of(model)` (traced once, shared between calls).
    structure: counts, alive vectors or a regularizer (see `slim_model`).
    cost: 'flops', 'model_size' or 'activations'.
    round_to: as in `slim_model`.
    input_signature: as in `slim_model` (the cost is per example at the
      traced shapes).

  Returns:
    The cost per example (float): the network's `CostModel` evaluated at
    the slim model's widths (the regularizers' own cost definition).
  """
  kind = _cost_kind(cost)
  analysis = _structure.analysis_of(model, input_signature)
  counts, _ = analysis.resolve(structure)
  return _cost(analysis, counts, kind, round_to)


def _cost(analysis, counts, kind, round_to=1, fix=False):
  """The CostModel's cost of a resolved structure's slim model."""
  _structure.check_round_to(round_to)
  rounded = {k: analysis.round_count(k, c, round_to)
             for k, c in counts.items()}
  values, widths, _ = (analysis.assign(rounded, fix=True) if fix else
                       analysis.check_counts(rounded))
  dropped, dead_calls = (), None
  if any(w == 0 for w in widths.values()):  # topology morphing
    plan, widths = slim_lib.plan_structure(analysis, counts, None, round_to,
                                           fix=fix)
    values = analysis.final_values(widths, plan.removed)
    dropped = plan.dropped  # branches removed, and what only they read
    dead_calls = plan.dead_calls  # calls of a shared layer they took along
  cost = analysis.cost(values, kind, dropped, dead_calls)
  # n / C per channel sums back to n only up to rounding; costs of whole
  # channels are whole numbers.
  nearest = round(cost)
  return float(nearest) if abs(cost - nearest) <= 1e-9 * max(
      1.0, abs(cost)) else cost


def expand_structure(model, structure, target_cost, cost='flops',
                     round_to=1, input_signature=None):
  """Scales all counts by one factor to fit `target_cost` from below.

  The factor may be above 1 (expansion back to a budget, MorphNet's
  expand step) or below (the same learned proportions at a smaller
  budget: the paper's recipe learns one structure and scales it to each
  budget). The result costs at most `target_cost`; where it costs less
  than 98% of it (counts move in whole channels, quanta of split shares
  or heads, or cannot grow), a RuntimeWarning says why.

  Args:
    model: the model the structure was learned on, or its
      `analysis_of(model)`.
    structure: {layer name: count}, alive vectors, or a network regularizer
      built on `model`.
    target_cost: the budget, in the unit of `cost`.
    cost: 'flops', 'model_size', 'activations', or a callable keras.Model -> float applied
      to `slim_model(model, counts)` (slower: builds a model per step).
    round_to: counts are rounded up to multiples of it.
    input_signature: as in `slim_model`.

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
    ValueError: target_cost is not positive and finite, is below the cost
      of the narrowest structure (every nonzero count = round_to), or needs
      counts beyond 64x the structure's.
  """
  if (isinstance(target_cost, bool) or
      not isinstance(target_cost, numbers.Real) or
      not math.isfinite(target_cost) or not target_cost > 0):
    raise ValueError('target_cost must be a positive finite number, got %r.'
                     % (target_cost,))
  kind = None if callable(cost) else _cost_kind(cost)
  analysis = _structure.analysis_of(model, input_signature)
  counts, _ = analysis.resolve(structure)

  quanta = {k: analysis.quantum(k) for k in counts}
  ties = analysis.tie_groups()

  scaled_at, cost_at = {}, {}  # the search asks for a w more than once

  def scale(w):
    if w not in scaled_at:
      scaled_at[w] = _scaled(w)
    return scaled_at[w]

  def _scaled(w):
    # Multiples of each layer's quantum (split shares, whole attention
    # heads, groups; see framework.constraints) and of round_to.
    scaled = {k: analysis.round_count(
        k, max(1, int(round(c * w / quanta[k]))) * quanta[k] if c else 0,
        round_to) for k, c in counts.items()}
    # Re-tie counts that rounding split, e.g. Add(Concat(a, b), c):
    # round(a w) + round(b w) may differ from round((a + b) w); the layers
    # set first (the narrower, here a and b) win. Layers one config field
    # sets (`tie_groups`) take one count: the widest, or the one that
    # channel ties impose on a member.
    counts_now = scaled
    for _ in range(len(ties) + 2):
      _, widths, fixed = analysis.assign(counts_now, fix=True)
      if all(len({widths[k] for k in g}) <= 1 for g in ties):
        break
      counts_now = _equalized(analysis, fixed, ties, widths, scaled)
    else:
      _, widths, fixed = analysis.assign(counts_now, fix=True)
    return fixed

  def evaluate(scaled):
    key = tuple(sorted(scaled.items()))
    if key not in cost_at:
      cost_at[key] = (float(cost(slim_lib.slim_model(
          analysis, scaled, input_signature=input_signature)))
                      if kind is None else
                      _cost(analysis, scaled, kind, fix=True))
    return cost_at[key]

  lo = 0.0
  lowest = evaluate(scale(lo))
  if lowest > target_cost:
    raise ValueError(
        'target_cost %g is below the cost of the narrowest structure (%g, '
        'every nonzero count = %d).' % (target_cost, lowest, round_to))
  hi = 1.0
  while evaluate(scale(hi)) <= target_cost:
    if scale(2 * hi) == scale(hi):  # The cost does not grow with the counts.
      _warn_if_short(evaluate(scale(hi)), target_cost, counts, stalled=True)
      return scale(hi)
    lo, hi = hi, hi * 2
    if hi > _structure.MAX_GROWTH:
      raise ValueError(
          'target_cost %g is above the cost of the structure scaled by %d '
          '(%g); counts that large are a mistake.'
          % (target_cost, _structure.MAX_GROWTH, evaluate(scale(lo))))
  for _ in range(60):
    if scale(lo) == scale(hi):
      break
    mid = (lo + hi) / 2
    if evaluate(scale(mid)) <= target_cost:
      lo = mid
    else:
      hi = mid
  result = scale(lo)
  _warn_if_short(evaluate(result), target_cost, counts, stalled=False)
  return result


# expand_structure warns when its result costs less than this fraction of
# the target (counts move in whole channels, so a few % is granularity).
LANDING = 0.98


def _warn_if_short(cost, target_cost, counts, stalled):
  """A structure that cannot grow to its target: say so, and why
  (`stalled`: doubling the scale no longer changed the counts)."""
  if cost >= LANDING * target_cost:
    return
  if not any(counts.values()):
    why = ('every layer of the structure has 0 channels (removed '
           'branches), and zero counts stay zero: there is nothing to scale')
  elif stalled:
    why = ('the counts cannot grow further: the layers it names are at '
           '%dx their width or their growth does not raise the cost, and '
           'the layers it does not name keep their width'
           % _structure.MAX_GROWTH)
  else:
    why = ('the next step up (one more channel, or quantum of channels, '
           'on every layer) would cost more than the target')
  warnings.warn(
      'expand_structure: the result costs %g, %.1f%% of target_cost %g: %s.'
      % (cost, 100.0 * cost / target_cost, target_cost, why),
      RuntimeWarning, stacklevel=3)


def _equalized(analysis, counts, ties, widths, wanted):
  """`counts` with each tie group's named members set to one count: the
  width of a member the structure does not name (it keeps its width), else
  a count that the group's channel ties leave standing (a member tied to a
  layer outside the group, such as a projection onto a residual stream,
  must take that stream's width), preferring one that ties changed from
  `wanted`, then the largest."""
  counts = dict(counts)
  for group in ties:
    named = [k for k in group if k in counts]
    if len({widths[k] for k in group}) <= 1 or not named:
      continue
    unnamed = [widths[k] for k in group if k not in counts]
    if unnamed:
      counts.update({k: min(unnamed) for k in named})
      continue
    forced = {counts[k] for k in named if counts[k] != wanted.get(k)}
    candidates = sorted(forced, reverse=True) + sorted(
        {counts[k] for k in named} - forced, reverse=True)
    for value in candidates:
      trial = dict(counts, **{k: value for k in named})
      _, trial_widths, _ = analysis.assign(trial, fix=True)
      if len({trial_widths[k] for k in group}) <= 1:
        break
    else:
      value = candidates[0]
    counts.update({k: value for k in named})
  return counts


def _cost_kind(cost):
  try:
    return cost_model.resource_name(cost)
  except ValueError:
    raise ValueError("cost must be 'flops', 'model_size', 'activations' (or "
                     "an alias such as 'FLOPs', 'ModelSize', 'weights') or a "
                     'callable keras.Model -> float, got %r.' % (cost,)) from None