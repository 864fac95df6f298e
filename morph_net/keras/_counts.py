"""Channel counts: what a count may be, how one is rounded, where counts
come from (a regularizer's alive vectors), and which ops a count leaves out
(the removed calls of a layer called more than once).

Private to `morph_net.keras` (see `_structure` for what counts mean).
"""

import math
import numbers

import numpy as np

from morph_net.tools import structure_exporter

# Counts may grow to this multiple of a layer's width (expansion); beyond it
# a slim model would not fit in memory, so the count is surely a mistake.
MAX_GROWTH = 64


def check_count(key, value, width):
  """A count as an int, or a one-line error naming the layer."""
  if isinstance(value, str) or not math.isfinite(value) or value < 0 or (
      value != int(value)):
    raise ValueError('Layer %r: a count must be an integer >= 0, got %r.'
                     % (key, value))
  if value > MAX_GROWTH * width:
    raise ValueError(
        'Layer %r: count %d is more than %d times its width (%d); counts '
        'that large are a mistake (a slim model that size would not fit in '
        'memory).' % (key, value, MAX_GROWTH, width))
  return int(value)


def check_round_to(round_to):
  if (not isinstance(round_to, numbers.Integral) or
      isinstance(round_to, bool) or round_to < 1):
    raise ValueError('round_to must be an integer >= 1, got %r.' % (round_to,))


def round_count(count, original, round_to):
  """Rounds a nonzero count up to a multiple of round_to (see slim_model)."""
  if count == 0:
    return 0
  rounded = int(math.ceil(count / round_to)) * round_to
  if count <= original:
    rounded = min(rounded, original)
  return rounded


def vectors_from_regularizer(regularizer):
  """{key: alive vector} of a regularizer built on a Keras model."""
  manager = regularizer.op_regularizer_manager
  if not manager.view.eager:
    raise ValueError('slim_model needs a regularizer built on a Keras '
                     'model, not on tf.compat.v1 graph ops.')
  exporter = structure_exporter.StructureExporter(manager)
  return {k: np.asarray(v) for k, v in exporter.tensors.items()}


def call_ops(entries, dead_calls):
  """Op names of the removed calls of layers called more than once:
  {key: (its number of calls, each removed call's positions per example)}.

  A shared layer's calls read tied channels, so calls at the same positions
  cost the same: each removed call takes one compute op at its positions.

  Raises:
    NotImplementedError: a layer has other than one compute op a call, or
      none at a removed call's positions.
  """
  names = set()
  for key, (calls, dead) in dead_calls.items():
    free = list(entries[key].computes)
    for positions in dead:
      match = [c for c in free if c.positions == positions]
      if len(entries[key].computes) != calls or not match:
        raise NotImplementedError(
            'Layer %r is called %d times and the structure removes %d of '
            'its calls, but its compute ops cannot be matched to its calls '
            '(one op a call, at the call\'s output positions), so the slim '
            'model\'s cost cannot be priced. Keep its calls together: give '
            'the layers that its removed calls read or feed at least one '
            'channel.' % (key, calls, len(dead)))
      free.remove(match[0])
      names.add(match[0].op.name)
  return names
