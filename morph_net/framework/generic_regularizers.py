"""The regularizer interfaces: an op's channels, and a whole network's.

`OpRegularizer` is what a source (a BatchNorm gamma, a kernel, a gate)
gives its output channels: a regularization vector and an alive vector.
`NetworkRegularizer` turns those into the term to add to the loss and the
cost of the network. Custom regularizers and decorators subclass these (the
original MorphNet's names); every regularizer of this library, and any class
with the same members, is an instance of them too (structural checks), so
`isinstance` works whichever way a regularizer was written.

>>> import tensorflow as tf
>>> class Halved(OpRegularizer):
...   def __init__(self, regularizer, scale=0.5):
...     self._reg = regularizer.regularization_vector * scale
...     self._alive = regularizer.alive_vector
...   @property
...   def regularization_vector(self):
...     return self._reg
...   @property
...   def alive_vector(self):
...     return self._alive
>>> class Fixed:
...   regularization_vector = tf.constant([2.0, 0.0])
...   alive_vector = tf.constant([True, False])
>>> isinstance(Fixed(), OpRegularizer)
True
>>> Halved(Fixed()).regularization_vector.numpy().tolist()
[1.0, 0.0]
"""

import abc


def _has_members(cls, names):
  return all(any(name in base.__dict__ for base in cls.__mro__)
             for name in names)


class OpRegularizer(abc.ABC):
  """The regularization of one op's output channels.

  Subclasses define two properties of the same length (the op's output
  channel count):
    regularization_vector: float tensor, the penalty per channel.
    alive_vector: bool tensor, True for the channels that count as alive.
  """

  @property
  @abc.abstractmethod
  def regularization_vector(self):
    """Float tensor [C]: each output channel's penalty."""

  @property
  @abc.abstractmethod
  def alive_vector(self):
    """Bool tensor [C]: True for the channels that count as alive."""

  @classmethod
  def __subclasshook__(cls, subclass):
    if cls is OpRegularizer:
      return _has_members(subclass, ('regularization_vector', 'alive_vector'))
    return NotImplemented


class NetworkRegularizer(abc.ABC):
  """A network's regularization term and resource cost.

  Subclasses define `get_regularization_term(ops=None)` and
  `get_cost(ops=None)` (summed over `ops`, or over every op when `ops` is
  None or empty, as in the original MorphNet); `op_regularizer_manager`,
  `name` and `cost_name` default to None, 'Regularizer' and 'Cost'.
  """

  @abc.abstractmethod
  def get_regularization_term(self, ops=None):
    """The term to add (times a strength) to the loss."""

  @abc.abstractmethod
  def get_cost(self, ops=None):
    """The resource cost with the current alive channels."""

  @property
  def op_regularizer_manager(self):
    """The `OpRegularizerManager` behind the regularizer, or None."""
    return None

  @property
  def name(self):
    return 'Regularizer'

  @property
  def cost_name(self):
    return 'Cost'

  @classmethod
  def __subclasshook__(cls, subclass):
    if cls is NetworkRegularizer:
      return _has_members(subclass, ('get_regularization_term', 'get_cost'))
    return NotImplemented


def dimensions_are_compatible(op_regularizer):
  """True if the regularization and alive vectors have compatible shapes."""
  return op_regularizer.regularization_vector.shape.is_compatible_with(
      op_regularizer.alive_vector.shape)
