"""The Keras graph a slim plan walks: its nodes, tensors' channels, models.

Private to `morph_net.keras`.
"""

import keras
import numpy as np

REMOVED = 'removed'


class Channels:
  """The channels of one tensor: new width, kept old indices, origin."""

  __slots__ = ('width', 'kept', 'origin')

  def __init__(self, width, kept=None, origin=()):
    self.width = None if width is None else int(width)
    self.kept = kept  # None: the first `width` old channels (all if equal).
    self.origin = tuple(origin)  # keys of the prunable layers that set it


def width(tensor):
  """The last axis' size; None where it is unknown (e.g. the token ids of
  a text backbone, shape (batch, None)), which no layer prunes."""
  last = tensor.shape[-1] if len(tensor.shape) else 1
  return None if last is None else int(last)


def expand_multiplier(indices, multiplier):
  """Depthwise output channels of input channels: c -> c*m ... c*m+m-1."""
  indices = np.asarray(indices)
  return (indices[:, None] * multiplier + np.arange(multiplier)).ravel()


def is_model(layer):
  return isinstance(layer, keras.Model)


def is_subclassed(model):
  """A Keras 3 model that is neither functional nor Sequential."""
  return (isinstance(model, keras.Model) and
          not isinstance(model, keras.Sequential) and
          not hasattr(model, '_nodes_by_depth'))


def check_keras3(model):
  """Raises the conversion advice for a tf_keras (Keras 2) model."""
  if not isinstance(model, keras.Model):
    as_functional(model)


def as_functional(model):
  """The functional graph of a functional or Sequential Keras 3 model."""
  if not isinstance(model, keras.Model):
    if type(model).__module__.startswith('tf_keras'):
      raise NotImplementedError(
          'slimming supports Keras 3 models; %r is a tf_keras (Keras 2) %s, '
          'which can be analyzed but not slimmed. Convert it: save it from '
          "tf_keras with model.save('model.h5'), load it with Keras 3's "
          "keras.models.load_model('model.h5', compile=False) (built-in "
          'layers convert with their weights; custom layers need Keras 3 '
          'versions) and slim that model.'
          % (getattr(model, 'name', '?'), type(model).__name__))
    raise NotImplementedError(
        'slimming supports Keras 3 models (keras.Model); got %s from %s.'
        % (type(model).__name__, type(model).__module__))
  if isinstance(model, keras.Sequential):
    functional = getattr(model, '_functional', None)
    if functional is None:
      raise ValueError('Build the Sequential model %r first (start it with '
                       'keras.Input) so that it has a graph.' % model.name)
    return functional
  if not hasattr(model, '_nodes_by_depth'):
    raise NotImplementedError(
        'slim_model supports functional and Sequential Keras models; %r is '
        'a subclassed model (%s), whose graph cannot be rebuilt. Write the '
        'model functionally or build it from the counts yourself.'
        % (model.name, type(model).__name__))
  return model


def graph_nodes(functional):
  """The call nodes of a functional model, producers first."""
  nodes = []
  by_depth = functional._nodes_by_depth  # pylint: disable=protected-access
  for depth in sorted(by_depth, reverse=True):
    for node in by_depth[depth]:
      if node.operation is not None and not node.is_input:
        nodes.append(node)
  return nodes


def full(plan, tensor):
  chans = plan.info[id(tensor)]
  return chans.kept is None and chans.width == width(tensor)


def union_origins(origins):
  """The layer names of several Channels' origins, in order, once each."""
  return tuple(dict.fromkeys(n for origin in origins for n in origin))


def origin_names(chans):
  """The layers Channels come from, for a message."""
  names = sorted({n for c in chans for n in c.origin})
  return ', '.join(repr(n) for n in names) or '(unpruned layers)'
