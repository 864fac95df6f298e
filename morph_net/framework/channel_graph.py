"""Channel-level grouping: the builder handlers talk to, and its solution.

Every output channel of every analyzed tensor is a node. Handlers add edges
("channel i of a is channel j of b"); connected components of that graph are
the channel classes that live or die together. Building is one pass over the
ops and solving is one call to a linear-time connected-components routine, so
analysis time grows linearly with the graph: no fixed-point iteration and no
membership tests on queues.
"""

import dataclasses
import re

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from morph_net.framework import errors


@dataclasses.dataclass(frozen=True)
class Source:
  """Channels that carry a regularizer (e.g. a BatchNorm's gamma)."""
  op: object  # tf.Operation that owns the regularized channels
  tensor: object  # tf.Tensor whose channels are regularized
  regularizer_cls: type  # has batch_vectors(params, settings), num_channels
  param: object  # tf.Variable (eager views) or tf.Tensor (graph mode)
  setting: object  # e.g. the threshold


@dataclasses.dataclass(frozen=True)
class Compute:
  """An op whose resource cost is bilinear (or linear) in its channels."""
  op: object
  input: object  # activation tensor
  output: object
  positions: object  # int or None (unknown spatial size)
  kernel_size: int
  linear: bool = False  # depthwise: cost ~ alive_out only
  weight_index: object = 1  # None: weight-free (e.g. attention products)
  # Grouped conv: input and output channels split into `groups` equal
  # contiguous blocks; block g of the output reads only block g of the input,
  # so the bilinear cost is a sum over blocks.
  groups: int = 1
  # Axis of the weight that holds the output channels (a GroupLasso source
  # reads it), counted from the end; None for no prunable weight.
  out_axis: object = None
  # Positions per example of the input and output activations (memory
  # traffic); None: unknown. A dilated conv's differ from its tensors'
  # static shapes, which count space-to-batch sub-images.
  in_positions: object = None
  out_positions: object = None


class ChannelGraphBuilder:
  """What handlers call (`ctx`): ties channels, records sources and costs."""

  def __init__(self, view, facts=None, data_inputs=None):
    self.view = view
    self.facts = facts  # patterns.Facts: the side table of recognized ops
    self._data_inputs = data_inputs or {}  # op name -> walked input indices
    self._blocks = {}  # tensor name -> first node id; size in _sizes
    self._sizes = {}
    self._override = {}  # tensor name -> channel count known by a handler
    self._num_nodes = 0
    self._edges = []  # pairs of equal-length node-id arrays
    self.sources = []
    self.computes = []

  # ------------------------------------------------------------- channels
  def channels(self, tensor):
    if tensor.name in self._override:
      return self._override[tensor.name]
    return self.view.channels(tensor)

  def set_channels(self, tensor, count):
    if tensor.name in self._blocks and self._sizes[tensor.name] != count:
      raise errors.ChannelMismatchError(
          '%r already has %d channels, cannot set %d.'
          % (tensor.name, self._sizes[tensor.name], count))
    self._override[tensor.name] = int(count)

  def data_inputs(self, op, handler):
    """The input indices of `op` that carry activations: those the walk
    followed (the handler's, less parameters found by the pattern pass)."""
    indices = self._data_inputs.get(op.name)
    if indices is None:  # an input-boundary op: the walk stopped there
      params = self.facts.param_inputs(op) if self.facts else ()
      indices = [i for i in handler.data_inputs(op, self.view)
                 if i not in params]
    return list(indices)

  def nodes(self, tensor):
    """Node ids of a tensor's channels, allocated on first use."""
    start = self._blocks.get(tensor.name)
    if start is None:
      count = self.channels(tensor)
      if count is None:
        raise errors.UnknownShapeError(
            'The channel count of %r (shape %s) is not known statically. '
            'Trace the model with a fully defined channel axis, e.g. pass '
            'input_signature=[tf.TensorSpec([None, H, W, C])].'
            % (tensor.name, tensor.shape))
      start = self._num_nodes
      self._blocks[tensor.name] = start
      self._sizes[tensor.name] = count
      self._num_nodes += count
    return np.arange(start, start + self._sizes[tensor.name], dtype=np.int64)

  # ----------------------------------------------------------------- ties
  def tie(self, a, b):
    na, nb = self.nodes(a), self.nodes(b)
    if len(na) != len(nb):
      raise errors.ChannelMismatchError(
          'Channels of %r (%d) and %r (%d) must be tied but differ in count.'
          % (a.name, len(na), b.name, len(nb)))
    self._edges.append((na, nb))

  def tie_map(self, out, inp, mapping):
    n_out, n_in = self.nodes(out), self.nodes(inp)
    mapping = np.asarray(mapping, dtype=np.int64)
    if len(mapping) != len(n_out) or mapping.max(initial=0) >= len(n_in):
      raise errors.ChannelMismatchError(
          'Channel map from %r (%d) to %r (%d) does not fit.'
          % (inp.name, len(n_in), out.name, len(n_out)))
    self._edges.append((n_out, n_in[mapping]))

  def tie_concat(self, out, inputs):
    n_out = self.nodes(out)
    parts = np.concatenate([self.nodes(t) for t in inputs])
    if len(parts) != len(n_out):
      raise errors.ChannelMismatchError(
          'Concat %r has %d channels but its inputs add up to %d.'
          % (out.name, len(n_out), len(parts)))
    self._edges.append((n_out, parts))

  def tie_all(self, tensors):
    for t in tensors[1:]:
      self.tie(tensors[0], t)

  # ------------------------------------------------------ sources, costs
  def add_source(self, op, tensor, regularizer_cls, param, setting):
    count = len(self.nodes(tensor))
    size = regularizer_cls.num_channels(param, setting)
    if size != count:
      raise errors.ChannelMismatchError(
          'Regularizer parameter of %r has %d channels but %r has %d.'
          % (op.name, size, tensor.name, count))
    self.sources.append(Source(op, tensor, regularizer_cls, param, setting))

  def add_compute(self, op, inp, out, positions, kernel_size, linear=False,
                  weight_index=1, groups=1, out_axis=None, in_positions=None,
                  out_positions=None):
    """Records a compute op; in/out positions default to the tensors'."""
    n_in, n_out = len(self.nodes(inp)), len(self.nodes(out))
    if n_in % groups or n_out % groups:
      raise errors.ChannelMismatchError(
          '%r with %d groups needs input (%d) and output (%d) channel counts '
          'divisible by the group count.' % (op.name, groups, n_in, n_out))
    if in_positions is None:
      in_positions = self.view.positions(inp)
    if out_positions is None:
      out_positions = self.view.positions(out)
    self.computes.append(Compute(op, inp, out, positions, int(kernel_size),
                                 linear, weight_index, int(groups), out_axis,
                                 in_positions, out_positions))

  # --------------------------------------------------------------- solve
  def solve(self):
    """Channel class label of every node (connected components)."""
    n = self._num_nodes
    if not self._edges:
      return np.arange(n, dtype=np.int64)
    a = np.concatenate([e[0] for e in self._edges])
    b = np.concatenate([e[1] for e in self._edges])
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)

  def tensor_nodes(self):
    """(tensor name, node ids) for every allocated tensor."""
    return {name: np.arange(s, s + self._sizes[name], dtype=np.int64)
            for name, s in self._blocks.items()}


def compile_patterns(patterns, what):
  """Compiles a list of regexes, with an error naming the bad one."""
  compiled = []
  for p in patterns or []:
    try:
      compiled.append(re.compile(p))
    except re.error as e:
      raise ValueError('Invalid %s regex %r: %s' % (what, p, e)) from None
  return compiled
