"""A read-only view over the ops a regularizer analyzes.

The view answers questions about a graph and never changes it: which ops lie
between the boundaries, an op's inputs and consumers, static shapes and channel
counts, and which variable feeds a weight input. It works the same over a
`tf.compat.v1` graph (given output ops) and over the graph of a traced Keras
model or `tf.function` concrete function. In the traced case parameters are
resolved to the live `tf.Variable`s, so costs are recomputed from current
values on every call.
"""

import collections

import tensorflow as tf

from morph_net.framework import data_flow
from morph_net.framework import errors
from morph_net.framework import keras_trace
from morph_net.framework import shapes
from morph_net.framework import static_values
from morph_net.framework.keras_trace import layer_keys  # pylint: disable=unused-import (re-exported)
from morph_net.framework.keras_trace import tf_variable

# Ops that forward a parameter's values (maybe reshaped); followed when
# resolving which variable feeds a weight input (Conv1D expands its kernel).
_FORWARDING_OPS = frozenset(['Identity', 'Cast', 'ReadVariableOp', 'Enter',
                             'StopGradient', 'Snapshot', 'ExpandDims',
                             'Reshape', 'Squeeze'])


class GraphView:
  """Read-only questions about the ops between an output and input boundary.

  Build one with `GraphView.from_ops` (graph mode) or `GraphView.from_model`
  (Keras model / concrete function). `eager` tells which: in eager views,
  `param` returns variables, otherwise graph tensors.
  """

  def __init__(self, graph, output_ops, input_ops=(), captures=None,
               variable_owner=None, layers=None, eager=False):
    self.graph = graph
    self.output_ops = list(output_ops)
    self.input_ops = frozenset(op.name for op in input_ops)
    # Internal placeholder op name -> tf.Variable (traced graphs only).
    self._captures = dict(captures or {})
    # id(tf.Variable) -> key of the Keras layer that owns it (see
    # `layer_keys`), and key -> layer.
    self._variable_owner = dict(variable_owner or {})
    self._layers = dict(layers or {})
    self.eager = eager
    # Function calls inlined by `resolve`: call op name -> InlinedOp, and
    # (id(body graph), placeholder name) -> the call's input tensor.
    self._inlined = {}
    self._body_args = {}
    self._bodies = set()  # ids of the body graphs in _body_args
    self.at_batch_one = None  # see from_model
    # The batch-1 retrace holds one example: axis 0 is then no batch axis,
    # and per-example positions include it (windows or heads that a reshape
    # moved into the batch axis).
    self.one_example = False
    self._data_flow = data_flow.DataFlow(self)

  # ---------------------------------------------------------------- builders
  @classmethod
  def from_ops(cls, output_boundary, input_boundary=None):
    """A view over a `tf.compat.v1` graph, from its output ops."""
    ops = [_as_op(o) for o in output_boundary]
    if not ops:
      raise ValueError('output_boundary is empty: pass the ops (or tensors) '
                       'that produce the network outputs.')
    graph = ops[0].graph
    for op in ops:
      if op.graph is not graph:
        raise ValueError(
            'All output_boundary ops must belong to one graph; %r does not.'
            % op.name)
    inputs = [_as_op(o) for o in (input_boundary or [])]
    return cls(graph, ops, inputs, eager=False)

  @classmethod
  def from_model(cls, model, input_signature=None, fixed_batch=False):
    """A view over the inference-mode trace of a Keras model or function.

    Args:
      model: a Keras 3 model (functional, sequential or subclassed), a
        `tf.function` concrete function, or a `tf.function` together with
        `input_signature`.
      input_signature: optional `tf.TensorSpec`s in the model's input
        structure, needed when the model's input shape cannot be inferred
        (e.g. an unbuilt subclassed model or a polymorphic `tf.function`).
      fixed_batch: the signature already has a fixed batch (no retrace).

    `at_batch_one` is then a function returning the same view traced at a
    batch of 1 (when only the batch dim is unknown), else None.
    """
    concrete, variables, (owner, layers), batch_one = keras_trace.trace(
        model, input_signature, fixed_batch=fixed_batch)
    by_handle = {}
    for v in variables:
      var = tf_variable(v)
      for handle in _handles(var):
        by_handle[id(handle)] = var
    captures = {}
    for external, internal in concrete.graph.captures:
      var = by_handle.get(id(external))
      if var is not None:
        captures[internal.op.name] = var
    outputs = [t.op for t in concrete.outputs]
    inputs = [t.op for t in concrete.inputs
              if t.dtype != tf.resource]
    view = cls(concrete.graph, outputs, inputs, captures=captures,
               variable_owner=owner, layers=layers, eager=True)
    if batch_one is not None:
      view.at_batch_one = lambda: cls._one_example(model, batch_one)
    return view

  @classmethod
  def _one_example(cls, model, signature):
    view = cls.from_model(model, signature, fixed_batch=True)
    view.one_example = True
    return view

  # ----------------------------------------------------------- graph facts
  def is_input_boundary(self, op):
    return op.name in self.input_ops

  def consumers(self, op):
    return [c for t in op.outputs for c in t.consumers()]

  def walk(self, follow, parents=None):
    """Ops reachable backwards from the outputs, through `follow`ed inputs.

    Args:
      follow: callable (op) -> iterable of input indices to traverse.
      parents: optional dict to fill (lets `follow` print paths mid-walk).

    Returns:
      (ops, parents): ops in topological order (producers first) and a dict
      op name -> name of the consumer through which it was first reached,
      used to print the path from an output to an op.
    """
    parents = {} if parents is None else parents
    order = []
    seen = set()
    stack = []
    for op in map(self.resolve, self.output_ops):
      if op.name not in seen:
        seen.add(op.name)
        parents[op.name] = None
        stack.append(op)
    reached = []
    while stack:
      op = stack.pop()
      reached.append(op)
      if self.is_input_boundary(op):
        continue
      for i in follow(op):
        producer = self.resolve(op.inputs[i].op)
        if producer.name not in seen:
          seen.add(producer.name)
          parents[producer.name] = op.name
          stack.append(producer)
    # Topological order restricted to the reached ops (Kahn's algorithm).
    names = {op.name for op in reached}
    indegree = collections.Counter()
    users = collections.defaultdict(list)
    for op in reached:
      if self.is_input_boundary(op):
        continue
      for i in set(follow(op)):
        producer = self.resolve(op.inputs[i].op)
        if producer.name in names:
          indegree[op.name] += 1
          users[producer.name].append(op)
    ready = [op for op in reached if indegree[op.name] == 0]
    while ready:
      op = ready.pop()
      order.append(op)
      for user in users[op.name]:
        indegree[user.name] -= 1
        if indegree[user.name] == 0:
          ready.append(user)
    if len(order) != len(reached):
      raise errors.AnalysisError(
          'The graph between the boundaries has a cycle (a while loop?). '
          'Pass input_boundary/output_boundary around the loop-free part.')
    return order, parents

  @staticmethod
  def shape(tensor):
    """The static shape as a list (None for unknown dims), or None."""
    if tensor.shape.rank is None:
      return None
    return tensor.shape.as_list()

  @staticmethod
  def channels(tensor):
    """Static size of the last (channel) axis, or None if unknown."""
    if tensor.shape.rank is None or tensor.shape.rank == 0:
      return None
    return tensor.shape.as_list()[-1]  # an int (V1 shapes give Dimension)

  @staticmethod
  def static_value(tensor):
    """The constant value of a tensor (e.g. an axis or perm), or None."""
    return static_values.static_value(tensor)

  def positions(self, tensor, channel_axes=shapes.DEFAULT_AXES):
    """Per-example positions of `tensor` whose channels are on
    `channel_axes` (from axis 0 in a one-example trace)."""
    return shapes.positions(self.shape(tensor), channel_axes,
                            first=0 if self.one_example else 1)

  # ------------------------------------------------------------ parameters
  def source_of(self, tensor):
    """Follows forwarding ops up from a tensor to where its value is made.

    Inside an inlined function body, an argument continues at the tensor the
    call passed in.
    """
    return self._outer(tensor).op

  def _outer(self, tensor, layout=False):
    return self.forward_path(tensor, layout)[-1]

  def forward_path(self, tensor, layout=False):
    """[tensor, ..., source]: up through forwarding ops and call arguments
    (with `layout`, also transposes: a kernel re-laid out for a matmul)."""
    path = [tensor]
    while True:
      op = path[-1].op
      if (op.type in _FORWARDING_OPS or layout and op.type == 'Transpose'
         ) and op.inputs:
        path.append(op.inputs[0])
      elif (id(op.graph), op.name) in self._body_args:
        path.append(self._body_args[(id(op.graph), op.name)])
      else:
        return path

  def fed_by_data(self):
    """True if the outputs depend on data inputs (not all constants)."""
    return any(self.depends_on_input(t)
               for op in self.output_ops for t in op.outputs)

  def depends_on_input(self, tensor, shapes=False):
    """True if `tensor`'s value varies with the data fed to the network.

    A parameter ([1, 1, 1, C] LayerScale, a reshaped BatchNorm statistic)
    and an activation at batch 1 and 1x1 resolution can have the same
    static shape; this tells them apart by where the value comes from (see
    `data_flow`): a data placeholder, an input-boundary op, an iterator or
    queue, or the activation-shaped constants of a constant-fed graph;
    through anything but shape-only ops (Shape, Size, Rank). With `shapes`,
    also through those: a learned query tiled to the batch size (SigLIP's
    pooling probe) then counts as an activation.
    """
    return self._data_flow.depends(tensor, shapes)

  def is_network_input(self, op):
    """True if `op` brings the data in (see `data_flow`): the walk stops
    there and its channels, the data's width, are never regularized."""
    return self._data_flow.is_network_input(op)

  @property
  def captures(self):
    """Internal placeholder op name -> captured `tf.Variable`."""
    return self._captures

  @property
  def body_args(self):
    """(id(body graph), placeholder name) -> the call's input tensor."""
    return self._body_args

  # -------------------------------------------------------- function calls
  def resolve(self, op):
    """The op itself, or for a call of a single-op function, that op inlined.

    Keras 3 runs some ops in a nested (XLA-compiled) function on CPU, e.g.
    grouped convolutions: the trace shows a `StatefulPartitionedCall` whose
    body is one Conv2D between the call's arguments and its result. Such a
    call is presented as an `InlinedOp` of the body op's type, reading the
    call's inputs and producing the call's outputs, so the handler table
    applies to it unchanged. Any other call is returned as it is.
    """
    if op.type not in CALL_OPS:
      return op
    if op.name not in self._inlined:
      self._inlined[op.name] = self._inline(op)
    return self._inlined[op.name] or op

  def function_body_types(self, op):
    """Op types in a call's function body (for error messages), or []."""
    body = _function_graph(op)
    if body is None:
      return []
    return sorted({o.type for o in body.get_operations()
                   if o.type not in _BODY_PLUMBING})

  def _inline(self, op):
    body = _function_graph(op)
    if body is None or len(body.inputs) != len(op.inputs):
      return None
    if id(body) in self._bodies:
      # Another call of the same function: its arguments need their own
      # copy of the body graph.
      body = _function_graph(op, fresh=True)
    core = [o for o in body.get_operations() if o.type not in _BODY_PLUMBING]
    if len(core) != 1 or len(body.outputs) != len(op.outputs):
      return None
    core = core[0]
    # Each call output must be a core output forwarded by Identity ops.
    outputs = []
    for result in body.outputs:
      while result.op.type == 'Identity':
        result = result.op.inputs[0]
      if result.op is not core:
        return None
      outputs.append(result)
    args = {t.op.name: i for i, t in enumerate(body.inputs)}
    self._bodies.add(id(body))
    for name, i in args.items():
      self._body_args[(id(body), name)] = op.inputs[i]
    inputs = []
    for t in core.inputs:
      if t.op.type == 'Placeholder' and t.op.name in args:
        inputs.append(op.inputs[args[t.op.name]])
      else:
        inputs.append(t)  # e.g. a kernel read inside the body
    out_map = [None] * len(core.outputs)
    for i, result in enumerate(outputs):
      out_map[result.value_index] = op.outputs[i]
    if None in out_map:  # a core output the call does not return
      return None
    return InlinedOp(op, core, inputs, out_map)

  def variable(self, tensor):
    """The `tf.Variable` whose value this tensor is (possibly reshaped or
    transposed: Keras lowers some EinsumDense equations to a matmul with a
    transposed kernel), or None."""
    return self._captures.get(self._outer(tensor, layout=True).op.name)

  def param(self, tensor):
    """What to read a parameter from: a variable (eager) or the tensor.

    Raises:
      errors.AnalysisError: in an eager view, when the tensor is not the
        value of a model variable (e.g. it was folded into a constant).
    """
    if not self.eager:
      if tensor.graph is self.graph:
        return tensor
      # A weight read inside an inlined function body: read it out here.
      outer = self._outer(tensor)
      if outer.dtype != tf.resource:
        return outer
      with self.graph.as_default():
        return tf.raw_ops.ReadVariableOp(resource=outer, dtype=tensor.dtype)
    var = self.variable(tensor)
    if var is None:
      raise errors.AnalysisError(
          'Parameter %r (read by op %r) is not a variable of the model, so '
          'it cannot be regularized. Make it a trainable weight.'
          % (tensor.name, tensor.consumers()[0].name if tensor.consumers()
             else '?'))
    return var

  def owner_of_variable(self, var):
    """Key of the Keras layer owning a variable (see `layer_keys`), or None."""
    return self._variable_owner.get(id(var))

  def layer_items(self):
    """(key, Keras layer) of every layer of the model (none in graph
    mode)."""
    return list(self._layers.items())

  def layer(self, key):
    """The Keras layer with this key, or None (graph mode, unknown key)."""
    return self._layers.get(key)

  def owner_layer(self, op, weight_index):
    """Key of the Keras layer whose variable feeds `op.inputs[i]`, or None
    (also for `weight_index=None`: a weight-free op)."""
    if weight_index is None:
      return None
    var = self.variable(op.inputs[weight_index])
    if var is None:
      return None
    return self._variable_owner.get(id(var))


CALL_OPS = frozenset(['PartitionedCall', 'StatefulPartitionedCall'])
# Ops a function body needs around its real work.
_BODY_PLUMBING = frozenset(['Placeholder', 'ReadVariableOp', 'Identity',
                            'NoOp', 'Const'])


class InlinedOp:
  """A function-body op seen from the caller's graph.

  It has the body op's `type` and attributes, the call op's `name` and
  `graph`, the call's input tensors where the body op reads an argument
  (body tensors elsewhere, e.g. a kernel read inside the body) and the call's
  outputs. Handlers treat it as the op it wraps.
  """

  def __init__(self, call, core, inputs, outputs):
    self.call = call
    self.core = core
    self.type = core.type
    self.name = call.name
    self.graph = call.graph
    self.inputs = list(inputs)
    self.outputs = list(outputs)

  def get_attr(self, name):
    return self.core.get_attr(name)

  def __repr__(self):
    return '<InlinedOp %r: %s in %s>' % (self.name, self.type,
                                         self.call.type)


def _function_graph(call, fresh=False):
  """The FuncGraph of a call op's function, or None if it cannot be read.

  With `fresh`, a new graph is built from the FunctionDef.
  """
  try:
    name = call.get_attr('f').name
    function = call.graph._get_function(name)  # pylint: disable=protected-access
  except (ValueError, AttributeError):
    return None
  if function is None:
    return None
  graph = None if fresh else getattr(function, 'graph', None)
  if graph is None:
    try:
      from tensorflow.python.framework import function_def_to_graph  # pylint: disable=g-import-not-at-top
      graph = function_def_to_graph.function_def_to_graph(function.definition)
    except Exception:  # pylint: disable=broad-except
      return None
  return graph


def _as_op(x):
  if isinstance(x, tf.Operation):
    return x
  if hasattr(x, 'op'):
    return x.op
  raise TypeError('Expected a tf.Operation or tf.Tensor in a boundary, got %r'
                  % (x,))


def _handles(var):
  """Resource handles a trace may capture for a variable.

  A `tf.distribute` variable has no single handle outside a replica
  context; a trace captures one of its components' handles.
  """
  components = getattr(var, 'values', None)
  if components is not None and not isinstance(var, tf.Tensor):
    try:
      return [c.handle for c in components]
    except (AttributeError, TypeError):
      pass
  return [var.handle]


def make_view(output_boundary, input_boundary=None, input_signature=None):
  """A GraphView for a list of ops/tensors, a Keras model or a function."""
  if isinstance(output_boundary, GraphView):
    return output_boundary
  if isinstance(output_boundary, (list, tuple)):
    return GraphView.from_ops(output_boundary, input_boundary)
  if isinstance(output_boundary, (tf.Operation, tf.Tensor)):
    return GraphView.from_ops([output_boundary], input_boundary)
  if input_boundary:
    raise ValueError('input_boundary is only supported with a list of graph '
                     'ops; a traced model stops at its own inputs.')
  return GraphView.from_model(output_boundary, input_signature)
