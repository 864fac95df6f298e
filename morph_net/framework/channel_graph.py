"""Channel-level grouping: the builder handlers talk to, and its solution.

Every output channel of every analyzed tensor is a node. Handlers add edges
("channel i of a is channel j of b"); connected components of that graph are
the channel classes that live or die together. Building is one pass over the
ops and solving is one call to a linear-time connected-components routine, so
analysis time grows linearly with the graph: no fixed-point iteration and no
membership tests on queues.

A tensor's channels are its last axis, unless a handler declared several
channel axes (`set_channel_axes`): attention's [B, T, H, d] query has the
H*d channels (h, j), flattened row-major, so that a head can be tied as a
whole; the scores [B, H, T, S] have the H channels of axis -3. Passthrough
ops hand such axes on (`tie`), and ops that relate different axes (an
einsum, a transpose, a reduction, a broadcast) call `tie_axes`, which ties
the channels that agree on the axes both sides share.
"""

import dataclasses
import re

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from morph_net.framework import errors
from morph_net.framework import shapes

DEFAULT_AXES = shapes.DEFAULT_AXES


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
  # reads it), counted from the end; None for no prunable weight. A tuple
  # of axes flattened row-major, or an index array (see
  # group_lasso_regularizer.GroupLassoRegularizer).
  out_axis: object = None
  # Positions per example of the input and output activations (memory
  # traffic); None: unknown. A dilated conv's differ from its tensors'
  # static shapes, which count space-to-batch sub-images.
  in_positions: object = None
  out_positions: object = None
  # A later use of a weight that an earlier compute reads too (a shared
  # layer called twice, ALBERT's repeated block): it costs FLOPs at each
  # use, but its weights are counted once, at the first.
  shared: bool = False


class ChannelGraphBuilder:
  """What handlers call (`ctx`): ties channels, records sources and costs."""

  def __init__(self, view, facts=None, data_inputs=None):
    self.view = view
    self.facts = facts  # patterns.Facts: the side table of recognized ops
    self._data_inputs = data_inputs or {}  # op name -> walked input indices
    self._blocks = {}  # tensor name -> first node id; size in _sizes
    self._sizes = {}
    self._override = {}  # tensor name -> channel count known by a handler
    self._axes = {}  # tensor name -> channel axes (negative), if not (-1,)
    self._factors = {}  # tensor name -> {channel axis: factors}, see below
    self._num_nodes = 0
    self._edges = []  # pairs of equal-length node-id arrays
    self.sources = []
    self.computes = []

  # ------------------------------------------------------------- channels
  def channels(self, tensor):
    if tensor.name in self._override:
      return self._override[tensor.name]
    axes = self.channel_axes(tensor)
    if axes == DEFAULT_AXES:
      return self.view.channels(tensor)
    dims = [self.view.shape(tensor)[a] for a in axes]
    return None if None in dims else int(np.prod(dims, dtype=np.int64))

  def set_channels(self, tensor, count):
    if tensor.name in self._blocks and self._sizes[tensor.name] != count:
      raise errors.ChannelMismatchError(
          '%r already has %d channels, cannot set %d.'
          % (tensor.name, self._sizes[tensor.name], count))
    self._override[tensor.name] = int(count)

  def channel_axes(self, tensor):
    """The axes (negative, ascending) holding `tensor`'s channels."""
    return self._axes.get(tensor.name, DEFAULT_AXES)

  def set_channel_axes(self, tensor, axes):
    """Declares that `tensor`'s channels are `axes` flattened row-major."""
    rank = tensor.shape.rank
    axes = tuple(sorted({int(a) - rank if int(a) >= 0 else int(a)
                         for a in axes}))
    if not axes or rank is None or axes[0] < -rank + (
        0 if self.view.one_example else 1):
      raise errors.ChannelMismatchError(
          'Channel axes %s do not fit %r (shape %s): the batch axis cannot '
          'hold channels.' % (axes, tensor.name, tensor.shape))
    if axes == self.channel_axes(tensor):
      return
    if tensor.name in self._blocks:
      raise errors.ChannelMismatchError(
          '%r already has channels on axes %s, cannot use axes %s.'
          % (tensor.name, self.channel_axes(tensor), axes))
    if axes == DEFAULT_AXES:
      self._axes.pop(tensor.name, None)
    else:
      self._axes[tensor.name] = axes

  def axis_factors(self, tensor):
    """{channel axis: factors} for the channel axes of `tensor` that merge
    channels with positions (a reshape merged query groups with tokens).

    Factors are (size, holds_channels) pairs in row-major order; the axis
    keeps one node per coordinate, and coordinates that differ only in
    factors without channels are always one channel class (they copy one
    channel), so a reshape that splits the axis again can make those
    factors positions. Handlers need not care: `tie` and `tie_axes` hand
    the factors on, and ties only merge classes, which keeps them true.
    """
    return dict(self._factors.get(tensor.name, {}))

  def set_axis_factors(self, tensor, axis, factors):
    self._factors.setdefault(tensor.name, {})[int(axis)] = tuple(
        (int(size), bool(holds)) for size, holds in factors)

  def _share_factors(self, a, a_axes, b, b_axes):
    """Axis a_axes[i] of a is tied coordinate by coordinate to axis
    b_axes[i] of b (equal sizes): each has the other's factors."""
    fa, fb = self._factors.get(a.name, {}), self._factors.get(b.name, {})
    if not fa and not fb:
      return
    for x, y in zip(a_axes, b_axes):
      if x in fa and y not in fb:
        self.set_axis_factors(b, y, fa[x])
      elif y in fb and x not in fa:
        self.set_axis_factors(a, x, fb[y])

  def has_channel_axes(self, tensor):
    """True if `tensor`'s channels are not (only) its last axis."""
    return self.channel_axes(tensor) != DEFAULT_AXES

  def positions(self, tensor):
    """Per-example positions of `tensor` over its channel axes."""
    return self.view.positions(tensor, self.channel_axes(tensor))

  def check_channel_axes(self, op, handler):
    """Refuses a tensor whose channels span several axes (attention heads,
    a transposed or split channel axis) to a handler that reads them from
    the last axis only."""
    _check_channels_last(op)
    if getattr(handler, 'handles_channel_axes', False):
      return
    for i in self.data_inputs(op, handler):
      t = op.inputs[i]
      if self.has_channel_axes(t):
        raise errors.UnsupportedOpError(
            'Op %r (type %s) reads input %r, whose channels are on axes %s '
            '(e.g. attention heads or a transposed channel axis, from op '
            '%r), but its handler %r reads channels from the last axis '
            'only. Transpose/reshape the channels back to the last axis '
            'before it, stop the analysis before it with input_boundary, or '
            'register a handler with handles_channel_axes = True in '
            'op_handler_dict.' % (op.name, op.type, t.name,
                                  self.channel_axes(t), t.op.name, handler))

  def _inherit_axes(self, new, old):
    """A passthrough's output keeps its input's channel axes, if its dims
    there are the same."""
    axes = self.channel_axes(old)
    if (axes == DEFAULT_AXES or new.name in self._blocks
        or new.name in self._axes or new.shape.rank is None
        or new.shape.rank < -axes[0] + (0 if self.view.one_example else 1)):
      return
    old_shape, new_shape = self.view.shape(old), self.view.shape(new)
    if all(old_shape[a] == new_shape[a] for a in axes):
      self._axes[new.name] = axes

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
    """Channel i of a is channel i of b (a passthrough: a inherits b's
    channel axes, or b a's, when a is new)."""
    self._inherit_axes(a, b)
    self._inherit_axes(b, a)
    na, nb = self.nodes(a), self.nodes(b)
    if len(na) != len(nb):
      raise errors.ChannelMismatchError(
          'Channels of %r (%d) and %r (%d) must be tied but differ in count.'
          % (a.name, len(na), b.name, len(nb)))
    self._edges.append((na, nb))
    if a.name in self._factors or b.name in self._factors:
      axes_a, axes_b = self.channel_axes(a), self.channel_axes(b)
      shape_a, shape_b = self.view.shape(a), self.view.shape(b)
      if (len(axes_a) == len(axes_b) and shape_a and shape_b
          and [shape_a[x] for x in axes_a] == [shape_b[x] for x in axes_b]):
        self._share_factors(a, axes_a, b, axes_b)

  def tie_axes(self, a, a_names, b, b_names):
    """Ties the channels of a and b that agree on their shared axes.

    `a_names` names each channel axis of a (in axis order), `b_names` each
    of b's; equal names are the same axis (an einsum letter, an aligned
    broadcast axis). Channel x of a and channel y of b are tied when their
    coordinates on every shared name are equal; with no shared name, all
    are tied. Equal name sets in another order are a permutation (a
    transpose); a subset is a projection (head (h, j) -> head h).
    """
    dims_a = self._axis_dims(a, a_names)
    dims_b = self._axis_dims(b, b_names)
    for name in set(a_names) & set(b_names):
      if dims_a[a_names.index(name)] != dims_b[b_names.index(name)]:
        raise errors.ChannelMismatchError(
            'Channel axis %r of %r (%d) and of %r (%d) must be tied but '
            'differ in size.' % (name, a.name, dims_a[a_names.index(name)],
                                 b.name, dims_b[b_names.index(name)]))
    shared = [n for n in a_names if n in b_names]
    self._share_factors(
        a, [self.channel_axes(a)[a_names.index(n)] for n in shared],
        b, [self.channel_axes(b)[b_names.index(n)] for n in shared])
    na, nb = self.nodes(a), self.nodes(b)
    for (n_from, names_from, dims_from), (n_to, names_to, dims_to) in (
        ((na, a_names, dims_a), (nb, b_names, dims_b)),
        ((nb, b_names, dims_b), (na, a_names, dims_a))):
      coords = np.indices(dims_from).reshape(len(dims_from), -1)
      target = [coords[names_from.index(n)] if n in names_from
                else np.zeros(coords.shape[1], np.int64) for n in names_to]
      self._edges.append((n_from, n_to[np.ravel_multi_index(target,
                                                            dims_to)]))

  def _axis_dims(self, tensor, names):
    axes = self.channel_axes(tensor)
    if len(names) != len(axes) or len(set(names)) != len(names):
      raise errors.ChannelMismatchError(
          '%r has channel axes %s; got axis names %s.'
          % (tensor.name, axes, list(names)))
    if tensor.name in self._override and len(axes) == 1:
      return [self._override[tensor.name]]
    shape = self.view.shape(tensor)
    dims = [shape[ax] for ax in axes]
    if None in dims:
      raise errors.UnknownShapeError(
          'Channel axes %s of %r (shape %s) are not all known statically.'
          % (axes, tensor.name, tensor.shape))
    return dims

  def tie_map(self, out, inp, mapping):
    n_out, n_in = self.nodes(out), self.nodes(inp)
    mapping = np.asarray(mapping, dtype=np.int64)
    if len(mapping) != len(n_out) or mapping.max(initial=0) >= len(n_in):
      raise errors.ChannelMismatchError(
          'Channel map from %r (%d) to %r (%d) does not fit.'
          % (inp.name, len(n_in), out.name, len(n_out)))
    self._edges.append((n_out, n_in[mapping]))

  def tie_index(self, a, index_a, b, index_b):
    """Channel index_a[i] of a is channel index_b[i] of b."""
    na, nb = self.nodes(a), self.nodes(b)
    index_a = np.asarray(index_a, dtype=np.int64)
    index_b = np.asarray(index_b, dtype=np.int64)
    if (index_a.shape != index_b.shape or index_a.max(initial=0) >= len(na)
        or index_b.max(initial=0) >= len(nb)):
      raise errors.ChannelMismatchError(
          'Channel pairs of %r (%d) and %r (%d) do not fit.'
          % (a.name, len(na), b.name, len(nb)))
    self._edges.append((na[index_a], nb[index_b]))

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

  def tie_blocks(self, whole, whole_names, parts, part_names, axis, offsets):
    """`whole` is `parts` laid end to end along its channel axis `axis`.

    Names label channel axes as in `tie_axes`; `axis` is one of
    `whole_names`. Part k starts at `offsets[k]` on that axis; a part that
    lacks the axis (a stacked slice: `axis` not in `part_names`) is the
    single coordinate `offsets[k]`. The other axes are matched by name.
    A concat/split along a channel axis, a stack/unstack along one.
    """
    dims_w = self._axis_dims(whole, whole_names)
    n_whole = self.nodes(whole)
    for part, offset in zip(parts, offsets):
      dims_p = self._axis_dims(part, part_names)
      coords = np.indices(dims_p).reshape(len(dims_p), -1)
      target = [(coords[part_names.index(n)] if n in part_names
                 else np.zeros(coords.shape[1], np.int64))
                + (offset if n == axis else 0) for n in whole_names]
      try:
        index = np.ravel_multi_index(target, dims_w)
      except ValueError:
        raise errors.ChannelMismatchError(
            'Channels of %r (axes %s, %s) do not fit into %r (axes %s, %s) '
            'at offset %d.' % (part.name, part_names, dims_p, whole.name,
                               whole_names, dims_w, offset)) from None
      self._edges.append((self.nodes(part), n_whole[index]))

  def tie_shared_weights(self):
    """Compute ops that read one weight (a shared layer called twice)
    have the same input and output channels: pruning a filter removes it
    from every use. Every use after the first is marked `shared`, so the
    weights are counted once."""
    first = {}
    for i, c in enumerate(self.computes):
      if c.weight_index is None:
        continue
      weight = c.op.inputs[c.weight_index]
      var = self.view.variable(weight)
      key = id(var) if var is not None else self.view.source_of(weight).name
      if key not in first:
        first[key] = c
        continue
      f = first[key]
      if (_weight_use(f, self.view) != _weight_use(c, self.view)
          or self.channels(f.input) != self.channels(c.input)
          or self.channels(f.output) != self.channels(c.output)):
        raise errors.UnsupportedOpError(
            'Ops %r and %r read the same weight in different ways (e.g. a '
            'kernel and its transpose), so their channels cannot be pruned '
            'together. Give the second use its own weight.'
            % (f.op.name, c.op.name))
      self.tie(f.input, c.input)
      self.tie(f.output, c.output)
      self.computes[i] = dataclasses.replace(c, shared=True)

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
      in_positions = self.positions(inp)
    if out_positions is None:
      out_positions = self.positions(out)
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

  def axes_of_tensors(self):
    """{tensor name: channel axes} for tensors not on the last axis only."""
    return dict(self._axes)

  def tensor_nodes(self):
    """(tensor name, node ids) for every allocated tensor."""
    return {name: np.arange(s, s + self._sizes[name], dtype=np.int64)
            for name, s in self._blocks.items()}


# Attributes that decide which weight axis meets which input/output channel.
_LAYOUT_ATTRS = ('transpose_a', 'transpose_b', 'adj_x', 'adj_y', 'equation')


def _weight_use(compute, view):
  """How a compute reads its weight: two uses with the same answer map
  the weight's axes to the same input and output channels."""
  attrs = []
  for name in _LAYOUT_ATTRS:
    try:
      attrs.append((name, compute.op.get_attr(name)))
    except (ValueError, TypeError):
      pass
  weight = compute.op.inputs[compute.weight_index]
  return (compute.op.type, compute.weight_index, compute.groups,
          view.shape(weight), tuple(attrs))


def compile_patterns(patterns, what):
  """Compiles a list of regexes, with an error naming the bad one."""
  compiled = []
  for p in patterns or []:
    try:
      compiled.append(re.compile(p))
    except re.error as e:
      raise ValueError('Invalid %s regex %r: %s' % (what, p, e)) from None
  return compiled


def _check_channels_last(op):
  """Refuses an op computing on channels-first data (NCHW, NCDHW): every
  handler reads channels from the last axis."""
  try:
    data_format = op.get_attr('data_format')
  except (ValueError, TypeError):
    return
  if isinstance(data_format, bytes):
    data_format = data_format.decode()
  if isinstance(data_format, str) and data_format.startswith('NC'):
    raise errors.UnsupportedOpError(
        'Op %r (type %s) uses data_format %r: morph_net analyzes '
        'channels-last graphs only (NHWC, NDHWC), with channels on the last '
        'axis. Build the graph channels-last (transpose the input once).'
        % (op.name, op.type, data_format))
