"""Channel counts: what a count may be, and how one is rounded.

Private to `morph_net.keras` (see `_structure` for what counts mean).
"""

import math
import numbers

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
