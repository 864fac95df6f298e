"""Which values carry the data: what a tensor is computed from.

An elementwise operand is an activation when its value flows from the
network's input, and a parameter when it is computed from variables and
constants alone. The batch size never decides it: at a batch of 1 and 1x1
resolution an activation and a [1, 1, 1, C] parameter have the same shape.

The network's input (a data source) is
- a placeholder that is not a captured variable, or an input-boundary op;
- any other op without inputs that is neither a constant nor a variable: a
  `tf.data` iterator, a queue, a reader (values that arrive at run time);
- in a graph with none of those (one fed by `tf.zeros` or `tf.constant`, as
  TF1 tests and examples build them), every constant of activation shape:
  a dim other than the last exceeds 1 ([1, 17, 19, 3], [2, 6]), where a
  parameter is [C] or [1, ..., 1, C].
"""

from morph_net.framework import op_types

# A TF1 scratch buffer is neither data nor a weight the analysis reads.
_VARIABLES = op_types.VARIABLE_OPS + ('TemporaryVariable',)
_CONSTANTS = op_types.CONSTANT_OPS + ('HostConst',)
# Ops that make a constant from a shape (tf.zeros/ones of a large shape,
# a random input image): candidates for the input of a constant-fed graph.
_CONSTANT_MAKERS = _CONSTANTS + ('Fill', 'RandomUniform',
                                 'RandomStandardNormal', 'TruncatedNormal')
# Their value does not depend on their input's values, only its shape.
SHAPE_ONLY_OPS = ('Shape', 'ShapeN', 'Size', 'Rank', 'ZerosLike', 'OnesLike')


def _key(op):
  return (id(op.graph), op.name)


def activation_shaped(tensor):
  """Rank >= 2 with a dim other than the last that is not 1 (or unknown)."""
  shape = tensor.shape
  if shape.rank is None or shape.rank < 2:
    return False
  return any(d != 1 for d in shape.as_list()[:-1])


class DataFlow:
  """Answers "does this tensor depend on the network's input?" for a view.

  Args:
    view: the `GraphView` (its boundaries, captured variables and inlined
      function arguments are read, never changed).
  """

  def __init__(self, view):
    self._view = view
    self._memo = {}  # (constant_inputs, shapes) -> {op key: depends}
    self._constant_fed = None

  def _is_leaf_source(self, op, boundaries=True):
    """A data source by the first two rules (independent of the graph);
    input-boundary ops count only with `boundaries`."""
    view = self._view
    if op.name in view.input_ops:
      return boundaries
    if op_types.is_input(op):
      return op.name not in view.captures
    return (not op.inputs and bool(op.outputs)
            and op.type not in _CONSTANTS + _VARIABLES)

  def constant_fed(self):
    """True when no output depends on a placeholder, iterator or queue: the
    graph's input is then its activation-shaped constants. Input-boundary
    ops do not count here: a boundary inside a constant-fed graph (where
    the walk stops) is not where its data comes from."""
    if self._constant_fed is None:
      self._constant_fed = not any(
          self._depends(t, False, False, boundaries=False)
          for op in self._view.output_ops for t in op.outputs)
    return self._constant_fed

  def is_source(self, op):
    """True if `op` itself brings data into the network."""
    if self._is_leaf_source(op):
      return True
    return (op.type in _CONSTANT_MAKERS and bool(op.outputs)
            and (op.outputs[0].dtype.is_floating)
            and activation_shaped(op.outputs[0]) and self.constant_fed())

  def is_network_input(self, op):
    """A source, or an op that reads a source's handle (IteratorGetNext,
    QueueDequeueV2, given only constants besides): the walk stops there.
    A handle made inside the network (a TensorList of an RNN loop) is
    not the input."""
    if self.is_source(op):
      return True
    producers = [t.op for t in op.inputs]
    return (bool(op.outputs) and any(map(self._is_leaf_source, producers))
            and not any(t.dtype.is_floating for t in op.inputs)
            and all(self._is_leaf_source(p) or p.type in _CONSTANTS
                    for p in producers))

  def depends(self, tensor, shapes=False):
    """True if `tensor`'s value varies with the network's input.

    With `shapes`, also through shape-only ops (Shape, Size, Rank): a
    learned query tiled to the batch size then counts as an activation.
    """
    return self._depends(tensor, shapes, self.constant_fed())

  def _depends(self, tensor, shapes, constants, boundaries=True):
    memo = self._memo.setdefault((constants, bool(shapes), boundaries), {})
    body_args = self._view.body_args
    visiting = set()
    stack = [tensor.op]
    while stack:
      op = stack[-1]
      k = _key(op)
      if k in memo:
        stack.pop()
        continue
      if k in body_args:
        parents = [body_args[k].op]
      elif self._is_leaf_source(op, boundaries) or (
          constants and op.type in _CONSTANT_MAKERS and self.is_source(op)):
        memo[k] = True
        stack.pop()
        continue
      elif op.type in SHAPE_ONLY_OPS and not shapes:
        parents = []
      else:
        parents = [t.op for t in op.inputs]
      pending = [p for p in parents
                 if _key(p) not in memo and _key(p) not in visiting]
      if pending:
        visiting.add(k)
        stack.extend(pending)
        continue
      memo[k] = any(memo.get(_key(p), False) for p in parents)
      visiting.discard(k)
      stack.pop()
    return memo[_key(tensor.op)]
