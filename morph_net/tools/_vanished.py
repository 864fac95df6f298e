"""VANISHED, fallback rules and structure files: shared by the configurable
graph ops (`configurable_ops`) and Keras layers (`configurable_keras`)."""

import enum
import json

import tensorflow as tf


class _Vanished:
  """The output of a layer configured to 0 channels (a singleton)."""

  _instance = None

  def __new__(cls):
    if cls._instance is None:
      cls._instance = super().__new__(cls)
    return cls._instance

  def __repr__(self):
    return 'VANISHED'

  def __bool__(self):
    return False

  def __reduce__(self):
    return (_Vanished, ())


VANISHED = _Vanished()


def is_vanished(x):
  """True for VANISHED (or None): the layer producing x has 0 channels."""
  return x is VANISHED or x is None


class UnknownFallbackRuleError(KeyError, ValueError):
  """A fallback_rule name that is not a `FallbackRule` (a KeyError, as in
  the original MorphNet, and a ValueError)."""

  def __str__(self):
    return str(self.args[0]) if self.args else ''


class FallbackRule(enum.Enum):
  """What a layer missing from the parameterization does."""
  pass_through = 'pass_through'
  strict = 'strict'
  zero = 'zero'


def load_parameterization(path):
  """{op name: width} from a structure JSON file (e.g. alive_<step>)."""
  with tf.io.gfile.GFile(path) as f:
    data = json.load(f)
  if not isinstance(data, dict):
    raise ValueError('%s: expected a JSON object {op name: width}.' % path)
  return {str(k): int(v) for k, v in data.items()}


def fallback_rule_of(fallback_rule):
  """A `FallbackRule` from itself or its name.

  Raises:
    UnknownFallbackRuleError: an unknown name (a KeyError and ValueError).
    ValueError: neither a string nor a FallbackRule.
  """
  if isinstance(fallback_rule, str):
    try:
      return FallbackRule[fallback_rule]
    except KeyError:
      raise UnknownFallbackRuleError(
          'fallback_rule must be one of %s, got %r.' % (
              [r.name for r in FallbackRule], fallback_rule)) from None
  if not isinstance(fallback_rule, FallbackRule):
    raise ValueError('fallback_rule must be a string or a FallbackRule, '
                     'got %r.' % (fallback_rule,))
  return fallback_rule
