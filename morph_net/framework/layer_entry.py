"""A prunable layer as the manager lists it (`OpRegularizerManager.layers`)."""


class LayerEntry:
  """A prunable layer: its structure key, Keras layer and compute ops.

  Attributes:
    key: the structure key (Keras layer key, see `graph_view.layer_keys`;
      the op name in graph mode).
    layer: the Keras layer, or None in graph mode.
    computes: its `channel_graph.Compute` entries, in network order.
  """

  __slots__ = ('key', 'layer', 'computes')

  def __init__(self, key, layer, computes):
    self.key = key
    self.layer = layer
    self.computes = computes

  @property
  def outputs(self):
    """The output tensors whose channels the layer's width sets."""
    return [c.output for c in self.computes if not c.linear]

  def __repr__(self):
    return 'LayerEntry(%r, %d ops)' % (self.key, len(self.computes))
