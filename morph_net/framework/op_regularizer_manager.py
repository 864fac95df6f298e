"""OpRegularizerManager: finds which channels are pruned together.

The manager walks the ops between the boundaries, dispatches each to its
handler from the op-handler table (a visitor keyed by op type), solves the
channel grouping once, and then answers, for any op, the regularization and
alive vectors of its output channels. Per-call evaluation is vectorized: all
sources' vectors are computed with a few ops and reduced onto channel classes
with one segment reduction.
"""

import collections
import contextlib
import functools

import numpy as np
import tensorflow as tf

from morph_net.framework import channel_graph
from morph_net.framework import errors
from morph_net.framework import graph_view as graph_view_lib
from morph_net.framework import grouping_regularizers
from morph_net.framework import invariance
from morph_net.framework.layer_entry import LayerEntry
from morph_net.framework import keras_trace
from morph_net.framework import op_handler
from morph_net.framework import op_handlers
from morph_net.framework import op_slice
from morph_net.framework import op_types
from morph_net.framework import patterns
from morph_net.framework import sources as sources_lib
from morph_net.framework import suggest


_CONSTANT = op_handler.TerminalOpHandler()  # see _handler_inputs


make_view = graph_view_lib.make_view


class _OpRegularizer:
  """Regularization and alive vectors of one op's output channels."""

  def __init__(self, manager, classes):
    self._manager = manager
    self._classes = np.asarray(classes, np.int32)

  @property
  def regularization_vector(self):
    return tf.gather(self._manager.class_vectors()[0], self._classes)

  @property
  def alive_vector(self):
    return tf.gather(self._manager.class_vectors()[1], self._classes) > 0.5


class OpRegularizerManager:
  """Groups the channels of a network and assigns them regularizers.

  Args:
    output_boundary: list of `tf.Operation`s (or tensors) of a
      `tf.compat.v1` graph, or a Keras model, or a `tf.function` concrete
      function (traced in inference mode).
    op_handler_dict: op type -> handler table (copied). Defaults to
      `default_op_handler_dict()`; the same table serves every family.
    family: a `framework.Family` that declares the regularized channels
      (see `morph_net.network_regularizers.families`); None analyzes only
      (no sources, e.g. for cost reports and slimming).
    create_grouping_regularizer: how tied channels' regularizers combine;
      the family's (`MaxGroupingRegularizer` by default) if None, or e.g.
      `L2GroupingRegularizer`.
    force_group: regexes; the ops matching one regex (by op name or, for
      Keras models, by the name of the layer whose weights they read) have
      their output channels tied together (equal channel counts required).
    regularizer_blacklist: regexes; matching source ops (or, for Keras
      models, layers) carry no regularizer. A pattern matching nothing is an
      error.
    input_boundary: ops at which the walk stops (graph mode).
    Channels tied to the output boundary or to the inputs are never
    regularized: the network's output width (e.g. its logits) is fixed by
    the task, its input width by the data.
    input_signature: `tf.TensorSpec`s to trace a model whose input shape is
      not known.
    regularizer_decorator: optional callable (op_regularizer, **params) ->
      op regularizer (each with `regularization_vector`, `alive_vector`),
      applied to every source before grouping.
    decorator_parameters: keyword arguments for regularizer_decorator.
  """

  def __init__(self, output_boundary, op_handler_dict=None,
               create_grouping_regularizer=None, force_group=None,
               regularizer_blacklist=None, input_boundary=None,
               input_signature=None, regularizer_decorator=None,
               decorator_parameters=None, family=None):
    if decorator_parameters and regularizer_decorator is None:
      raise ValueError('decorator_parameters were given without a '
                       'regularizer_decorator.')
    self._decorator = regularizer_decorator
    self._decorator_params = dict(decorator_parameters or {})
    self._view = make_view(output_boundary, input_boundary, input_signature)
    keras_trace.check_channels_last(self._view.layer_items())
    self._handlers = dict(op_handler_dict if op_handler_dict is not None
                          else op_handlers.default_op_handler_dict())
    # A defaultdict's default handler serves every op type not listed.
    self._default = getattr(op_handler_dict, 'default_factory', None)
    self._family = family
    self._grouping = (create_grouping_regularizer
                      or (family.grouping if family is not None else None)
                      or grouping_regularizers.MaxGroupingRegularizer)
    try:
      builder = self._analyze()
      if self._view.at_batch_one is not None and any(
          None in (c.positions, c.in_positions, c.out_positions)
          for c in builder.computes):
        raise errors.UnknownShapeError('positions unknown')
    except errors.UnknownShapeError:
      # A model that computes shapes from its dynamic batch size (e.g. a
      # Reshape by ops.shape(x)[0]) has static shapes only at a fixed
      # batch; costs are per example, so trace it at a batch of 1.
      if self._view.at_batch_one is None:
        raise
      self._view = self._view.at_batch_one()
      builder = self._analyze()
    self._apply_force_group(builder, force_group)
    self._sources = sources_lib.filter_blacklist(
        builder.sources, regularizer_blacklist, self._view)
    self._normalized = invariance.normalized_sources(
        self._family, self._sources, self._view, self._facts)
    self._computes = builder.computes
    self._solve(builder)
    self._cached = None
    self._substitutes = None  # see substituted_sources

  def _analyze(self):
    """Walks the view, runs the pattern pass and the handlers, declares the
    family's sources; returns the channel-graph builder."""
    self._parents = {}
    self._facts = patterns.Facts(self._view)
    self._data_inputs = {}
    self._ops, _ = self._view.walk(self._follow, self._parents)
    builder = channel_graph.ChannelGraphBuilder(self._view, self._facts,
                                                self._data_inputs)
    for op in self._ops:
      handler = self._handler(op.type) or _CONSTANT
      try:
        builder.check_channel_axes(op, handler)
        handler.analyze(op, builder)
      except errors.AnalysisError as e:
        raise type(e)('%s\nWhile analyzing op %r (type %s); path from the '
                      'output: %s' % (e, op.name, op.type,
                                      self.path_to(op))) from None
    builder.tie_shared_weights()
    if self._family is not None:
      self._family.find_sources(builder, self._ops)
    return builder

  # ---------------------------------------------------------------- walk
  def _follow(self, op):
    """The inputs to walk into: the handler's, less the parameters that the
    pattern pass found (a gate's mask, a BatchNorm's scale)."""
    indices = self._data_inputs.get(op.name)
    if indices is None:
      params = self._facts.param_inputs(op)
      indices = [i for i in self._handler_inputs(op) if i not in params]
      self._data_inputs[op.name] = indices
    return indices

  def _handler_inputs(self, op):
    if self._view.is_network_input(op):
      return []  # the data (a placeholder, an iterator, a queue's output)
    handler = self._handler(op.type)
    if handler is None and op.type in graph_view_lib.CALL_OPS:
      raise errors.UnsupportedOpError(
          'Op %r calls a function (%s) that is not a single op, so it '
          'cannot be inlined; its body holds ops of types %s.\nPath from the '
          'output: %s\nStop the analysis before it with input_boundary, or '
          'register a handler for %r in op_handler_dict.'
          % (op.name, op.type, self._view.function_body_types(op),
             self.path_to(op), op.type))
    if handler is None and op.outputs and self._view.fed_by_data() and (
        not self._view.depends_on_input(op.outputs[0])):
      return []  # computed from constants only (positions): a parameter
    if handler is None:
      raise errors.UnsupportedOpError(
          'Op %r of type %r has no handler, so its channels cannot be '
          'grouped.\nPath from the output: %s\n%s\nOr stop the analysis '
          'before it with input_boundary.'
          % (op.name, op.type, self.path_to(op),
             suggest.suggest_handler(op, self._view)))
    return handler.data_inputs(op, self._view)

  @property
  def normalized_sources(self):
    """Source ops measured relative to their own scale (`invariance`)."""
    return self._normalized

  def _handler(self, op_type):
    found = self._handlers.get(op_type)
    return found if found is not None or not self._default else (
        self._default())

  @property
  def facts(self):
    """The pattern pass's side table (`patterns.Facts`)."""
    return self._facts

  @property
  def family(self):
    return self._family

  def path_to(self, op):
    name = op if isinstance(op, str) else op.name
    return errors.format_path(name, self._parents)

  # --------------------------------------------------------- grouping
  def _apply_force_group(self, builder, force_group):
    for pattern in channel_graph.compile_patterns(force_group, 'force_group'):
      members = [op.outputs[0] for op in self._ops
                 if op.outputs and builder.channels(op.outputs[0]) is not None
                 and any(pattern.search(n) for n in self._names(op))]
      if not members:
        raise ValueError('force_group regex %r matches no op with channels.'
                         % pattern.pattern)
      try:
        builder.tie_all(members)
      except errors.ChannelMismatchError as e:
        raise errors.ChannelMismatchError(
            'force_group %r ties ops with different channel counts: %s'
            % (pattern.pattern, e)) from None

  def _names(self, op):
    """An op's name, plus the Keras layers owning variables it reads."""
    names = [op.name]
    for t in op.inputs:
      var = self._view.variable(t) if self._view.eager else None
      layer = var is not None and self._view.owner_of_variable(var)
      if layer:
        names.append(layer)
    return names

  def _solve(self, builder):
    labels = builder.solve()
    self._tensor_nodes = builder.tensor_nodes()
    self._channel_axes = builder.axes_of_tensors()
    self._labels = labels
    src_nodes = [self._tensor_nodes[s.tensor.name] for s in self._sources]
    # Order sources by regularizer kind, so each kind is one batch.
    by_kind = collections.OrderedDict()
    for s, nodes in zip(self._sources, src_nodes):
      by_kind.setdefault(s.regularizer_cls, []).append((s, nodes))
    self._source_batches = [(cls, [s for s, _ in items])
                            for cls, items in by_kind.items()]
    self._relative = sources_lib.relative_plans(self._source_batches,
                                                self._normalized)
    ordered_nodes = [n for items in by_kind.values() for _, n in items]
    src_labels = (labels[np.concatenate(ordered_nodes)] if ordered_nodes
                  else np.zeros([0], np.int64))
    # The outputs' and inputs' channels are the network's contract (its
    # logits, the data's width): never prune them, even if a source (a last
    # Dense kernel, a residual added to the input) reaches them.
    regularized = np.setdiff1d(np.unique(src_labels), np.union1d(
        self.output_labels(), self.input_labels()))
    self._num_classes = len(regularized)
    label_to_class = np.full(max(len(labels), 1), self._num_classes,
                             dtype=np.int64)
    label_to_class[regularized] = np.arange(self._num_classes)
    self._label_to_class = label_to_class
    # Sources on output channels map to a dropped extra class.
    self._source_classes = label_to_class[src_labels].astype(np.int32)
    self._num_segments = self._num_classes + 1

  # ------------------------------------------------------------ queries
  @property
  def ops(self):
    """Ops analyzed, producers first."""
    return list(self._ops)

  @property
  def view(self):
    return self._view

  @property
  def sources(self):
    return list(self._sources)

  @property
  def compute_ops(self):
    return list(self._computes)

  @property
  def num_regularized_classes(self):
    return self._num_classes

  @property
  def num_labels(self):
    """Channel classes of the whole network (regularized or not)."""
    return int(self._labels.max()) + 1 if len(self._labels) else 0

  def layers(self, include_depthwise=False):
    """{key: LayerEntry} of the layers whose compute ops set a width.

    Keys are what structures use: Keras layer keys for models (a plain name,
    or a path such as 'b1/fc' where names collide), op names in graph mode.
    Entries whose compute ops set no width are listed only with
    `include_depthwise`: layers with only depthwise ops (their width follows
    their input) and weight-free compute ops such as attention products
    (keyed by op name; no layer), so that every compute op is in one entry.
    """
    if getattr(self, '_layer_cache', None) is None:
      entries = collections.OrderedDict()
      for c in self._computes:
        key = (self._view.owner_layer(c.op, c.weight_index)
               if self._view.eager else None) or c.op.name
        entry = entries.get(key)
        if entry is None:
          entry = entries[key] = LayerEntry(key, self._view.layer(key), [])
        entry.computes.append(c)
      self._layer_cache = entries
    return collections.OrderedDict(
        (k, e) for k, e in self._layer_cache.items()
        if include_depthwise or e.outputs)

  def channel_axes(self, tensor):
    """The axes holding `tensor`'s channels: (-1,) unless a handler put
    them on several axes (attention heads: (-2, -1) on [B, T, H, d])."""
    return self._channel_axes.get(tensor.name, channel_graph.DEFAULT_AXES)

  def positions(self, tensor):
    """Per-example positions of `tensor`: its size over the batch and its
    channels (which may span several axes)."""
    return self._view.positions(tensor, self.channel_axes(tensor))

  def has_channels(self, tensor):
    return tensor.name in self._tensor_nodes

  def output_labels(self):
    """Channel labels of the network's outputs: their width is the task's
    (e.g. the number of classes), so no structure sets it."""
    return self._labels_of_ops(self._view.output_ops)

  def input_labels(self):
    """Channel labels of the data fed to the network (placeholders, input
    boundary ops, iterators): their width is the data's. An embedding
    lookup's channels count too: their width is the table's, and no slim
    model narrows a table, so a residual stream they start (a
    transformer's) keeps its width."""
    view = self._view
    return self._labels_of_ops(
        op for op in self._ops if op_types.is_input(op)
        or view.is_input_boundary(op) or view.is_network_input(op)
        or op_types.is_embedding_lookup(op, view))

  def _labels_of_ops(self, ops):
    found = [self._labels[self._tensor_nodes[t.name]] for op in ops
             for t in op.outputs if t.name in self._tensor_nodes]
    return (np.unique(np.concatenate(found)) if found
            else np.zeros([0], np.int64))

  def class_indices(self, tensor):
    """Regularized class index per channel; num_regularized_classes for an
    unregularized channel (its reg is 0 and it is always alive)."""
    if isinstance(tensor, tf.Operation):
      tensor = tensor.outputs[0]
    nodes = self._tensor_nodes.get(tensor.name)
    if nodes is None:
      raise KeyError('%r was not analyzed by this manager.' % tensor.name)
    return self._label_to_class[self._labels[nodes]]

  def channel_labels(self, tensor):
    """Channel class labels (equal labels = tied channels)."""
    return self._labels[self._tensor_nodes[tensor.name]]

  def class_vectors(self):
    """(regularization, alive) per regularized class, plus a last entry
    (0, 1) standing for every unregularized channel. Float32 tensors."""
    if self._substitutes is not None:
      return self._compute_class_vectors()
    if not self._view.eager and self._cached is not None:
      return self._cached
    if self._view.eager:
      result = self._compute_class_vectors()
    else:
      with self._view.graph.as_default():
        result = self._compute_class_vectors()
      self._cached = result
    return result

  @contextlib.contextmanager
  def substituted_sources(self, values):
    """Within the block, every cost and term reads `values` for sources.

    Args:
      values: (variable, tensor of its shape) pairs; a variable is a
        source's (a Keras variable or the `tf.Variable` it holds). Sources
        not given read their variable. What-if costs (e.g. the budget
        controller's forecast: the cost if the sources shrank by a given
        amount) are then evaluated by the very calculator that computes the
        real one.
    """
    if self._substitutes is not None:
      raise RuntimeError('substituted_sources blocks do not nest.')
    if not self._view.eager:
      raise NotImplementedError(
          'substituted_sources needs a regularizer built from a Keras model '
          'or a tf.function (its costs read live variables); this one was '
          'built from tf.compat.v1 graph ops, whose costs are graph tensors.')
    self._substitutes = {sources_lib.variable_id(v): t for v, t in values}
    try:
      yield
    finally:
      self._substitutes = None

  def _param(self, source):
    if self._substitutes is None:
      return source.param
    return self._substitutes.get(sources_lib.variable_id(source.param),
                                source.param)

  def _compute_class_vectors(self):
    if not self._sources:
      return tf.zeros([1]), tf.ones([1])
    decorate = None
    if self._decorator is not None:
      decorate = functools.partial(self._decorator, **self._decorator_params)
    reg, alive = sources_lib.source_vectors(
        self._source_batches, self._param, decorate,
        lambda s: len(self._tensor_nodes[s.tensor.name]), self._relative)
    classes = tf.constant(self._source_classes)
    n = self._num_classes
    class_reg = self._grouping.segment_reduce(reg, classes,
                                              self._num_segments)[:n]
    class_alive = tf.math.unsorted_segment_max(alive, classes,
                                               self._num_segments)[:n]
    return (tf.concat([class_reg, [0.0]], 0),
            tf.concat([tf.stop_gradient(class_alive), [1.0]], 0))

  def is_source_op(self, op):
    """True if `op` carries a regularization source (a BatchNorm, a kernel,
    a gate), whether or not its channels end up regularized."""
    return op.name in {s.op.name for s in self._sources}

  def get_regularizer(self, op):
    """The regularizer of `op`'s output channels, or None if it has none."""
    out = op.outputs[0] if op.outputs else None
    if out is None or out.name not in self._tensor_nodes:
      return None
    classes = self.class_indices(out)
    if np.all(classes == self._num_classes):
      return None
    return _OpRegularizer(self, classes)

  # ----------------------------------------------------- slices, groups
  def _slices(self):
    if not hasattr(self, '_slice_cache'):
      self._slice_cache = op_slice.slices_and_groups(
          [op for op in self._ops if op.outputs
           and op.outputs[0].name in self._tensor_nodes],
          lambda t: self._labels[self._tensor_nodes[t.name]],
          {s.op.name for s in self._sources})
    return self._slice_cache

  def get_op_slices(self, op):
    return list(self._slices()[0].get(op.name, []))

  def get_op_group(self, op_slice_):
    return self._slices()[1].get(op_slice_)

  # ---------------------------------------------------------- validate
  def validate(self, require_sources=True):
    """Checks the analysis before regularizers are built.

    Raises:
      NoRegularizerSourceError: no op can carry a regularizer.
      ChannelMismatchError: tied tensors disagree on channel counts.
    """
    if require_sources and self._sources and not self._num_classes:
      raise errors.NoRegularizerSourceError(
          'Every regularizable channel (sources: %s) is tied to the output '
          'boundary, whose width is fixed, so nothing can be pruned. Put the '
          'prunable layers before a fixed-width head (e.g. a final Dense).'
          % sorted(s.op.name for s in self._sources)[:10])
    if require_sources and not self._sources:
      family = self._family
      raise errors.NoRegularizerSourceError(
          'No regularizable op was found between the boundaries, so the '
          'regularizer would stay at zero. The %s family regularizes %s; the '
          '%d ops analyzed include none (types seen: %s). %s'
          % (family.name if family else 'chosen',
             family.sources_description if family else 'nothing (no family)',
             len(self._ops), sorted({op.type for op in self._ops})[:30],
             family.remedy if family else 'Pass family=...'))
    for s in self._sources:
      size = s.regularizer_cls.num_channels(s.param, s.setting)
      if size != len(self._tensor_nodes[s.tensor.name]):
        raise errors.ChannelMismatchError(
            'Source %r: parameter size differs from channel count.'
            % s.op.name)
    return True
