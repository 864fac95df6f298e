"""Argument checks of `RegularizedModel` / `add_regularizer`.

Private to `morph_net.keras`.
"""

import math
import numbers

import keras
import numpy as np


def check_backend():
  backend = keras.backend.backend()
  if backend != 'tensorflow':
    raise RuntimeError(
        'morph_net.keras needs the TensorFlow backend of Keras 3, but '
        'keras.backend.backend() is %r. Set KERAS_BACKEND=tensorflow before '
        'importing keras.' % backend)


def as_number(value):
  """A 0-d tensor, array or Keras variable as a Python float; anything else
  unchanged (and checked by its consumer)."""
  if value is None or isinstance(value, (bool, numbers.Real)):
    return value
  if not hasattr(value, 'shape') or not hasattr(value, 'dtype'):
    return value
  try:
    array = np.asarray(value)
  except (TypeError, ValueError):
    return value
  if array.shape == () and array.dtype.kind in 'fiu':
    return float(array)
  return value


def check_strength(strength):
  strength = as_number(strength)
  if (isinstance(strength, bool) or
      not isinstance(strength, numbers.Real)):
    raise ValueError(
        'strength must be a non-negative real number, got %r (type %s).'
        % (strength, type(strength).__name__))
  strength = float(strength)
  if not math.isfinite(strength) or strength < 0:
    raise ValueError(
        'strength must be a finite number >= 0, got %r. A good starting '
        'value is 1 / regularizer.get_cost().' % strength)
  return strength


def check_regularizer(regularizer):
  missing = [a for a in ('get_regularization_term', 'get_cost', 'cost_name')
             if not hasattr(regularizer, a)]
  if missing:
    raise TypeError(
        'regularizer must be a morph_net network regularizer (e.g. '
        'flop_regularizer.GammaFlopsRegularizer); %r has no %s.'
        % (type(regularizer).__name__, ', '.join(missing)))
