"""Checks shared by the op regularizers: thresholds and finite sources.

A diverged run (NaN or inf gammas, kernels or gate logits) must not turn
into a plausible structure: NaN compares False with any threshold, so every
NaN channel would silently count as dead. In eager mode the sources' values
are checked on every read (one reduction; the per-variable breakdown runs
only on failure); inside a `tf.function` nothing is added to the graph.
"""

import math
import numbers

import numpy as np
import tensorflow as tf

__all__ = ['NonFiniteSourceError', 'check_threshold', 'check_finite']

_MAX_VARIABLES_SHOWN = 3
_MAX_CHANNELS_SHOWN = 5


class NonFiniteSourceError(ValueError):
  """A regularizer source (gamma, kernel, gate logits) holds NaN or inf."""


def check_threshold(name, value, upper=None):
  """Returns `value` as a float, or raises naming the argument.

  Args:
    name: the argument's name, for the message (e.g. 'gamma_threshold').
    value: the threshold given.
    upper: an inclusive upper bound (e.g. 1.0 for a probability), or None.

  Raises:
    ValueError: `value` is not a real number, not finite, negative or above
      `upper`.

  >>> check_threshold('gamma_threshold', 0.01)
  0.01
  >>> check_threshold('gamma_threshold', float('nan'))
  Traceback (most recent call last):
  ...
  ValueError: gamma_threshold must be a finite number >= 0, got nan.
  """
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError('%s must be a finite number >= 0, got %r (type %s).'
                     % (name, value, type(value).__name__))
  value = float(value)
  if not math.isfinite(value) or value < 0:
    hint = (' A negative threshold keeps every channel alive forever.'
            if value < 0 else '')
    raise ValueError('%s must be a finite number >= 0, got %r.%s'
                     % (name, value, hint))
  if upper is not None and value > upper:
    raise ValueError('%s must be at most %r, got %r.' % (name, upper, value))
  return value


def _variable_name(param):
  op = getattr(param, 'op', None)  # a graph read: name its variable
  while op is not None and op.type in ('ReadVariableOp', 'Identity') and (
      op.inputs):
    param, op = op.inputs[0], op.inputs[0].op
  name = getattr(param, 'path', None) or getattr(param, 'name', None)
  name = str(name) if name else '<unnamed tensor>'
  return name[:-2] if name.endswith(':0') else name


def check_finite(values, params, sizes, what):
  """Raises NonFiniteSourceError if `values` (eager) holds NaN or inf.

  In a `tf.compat.v1` graph, returns `values` checked when the session
  runs them (a NaN/inf raises InvalidArgumentError naming the sources),
  so no cost or exported structure is computed from them; inside a
  `tf.function` (a Keras training step) `values` as they are.

  Args:
    values: the concatenated per-channel values of `params` (1-D).
    params: the source variables, in concatenation order.
    sizes: the number of channels of each param.
    what: what a value is, for the message (e.g. 'gamma', 'kernel norm').
  """
  if not tf.executing_eagerly():
    if tf.compat.v1.get_default_graph().building_function:
      return values
    return tf.debugging.check_numerics(values, (
        'Non-finite %s in regularizer sources %s: NaN/inf channels cannot '
        'be classified alive or dead (training probably diverged: lower the '
        'learning rate or the strength)' % (what, ', '.join(
            repr(_variable_name(p)) for p in params[:_MAX_VARIABLES_SHOWN]))))
  finite = tf.math.is_finite(values)
  if bool(tf.reduce_all(finite)):
    return values
  values = np.asarray(values)
  bad_variables = []
  start = 0
  for param, size in zip(params, sizes):
    part = values[start:start + size]
    start += size
    bad = np.flatnonzero(~np.isfinite(part))
    if bad.size:
      shown = ', '.join('channel %d: %s' % (i, part[i])
                        for i in bad[:_MAX_CHANNELS_SHOWN])
      more = ', ...' if bad.size > _MAX_CHANNELS_SHOWN else ''
      bad_variables.append('variable %r (%d of %d channels; %s%s)' % (
          _variable_name(param), bad.size, size, shown, more))
  count = len(bad_variables)
  listed = '; '.join(bad_variables[:_MAX_VARIABLES_SHOWN])
  if count > _MAX_VARIABLES_SHOWN:
    listed += '; and %d more' % (count - _MAX_VARIABLES_SHOWN)
  raise NonFiniteSourceError(
      'Non-finite %s in %d regularizer source%s: %s. NaN/inf channels '
      'cannot be classified alive or dead (training probably diverged: '
      'lower the learning rate or the strength).'
      % (what, count, '' if count == 1 else 's', listed))
