"""Recurrent loops: refused, with the reason and the fix.

Keras 3's `LSTM`, `GRU` and `SimpleRNN` (and any `tf.while_loop`) trace to a
`While` op whose body holds every step's matmuls, fed and read through
TensorList ops; with cuDNN on a GPU they trace to one fused `CudnnRNN*` op
instead. The analysis does not read loop bodies, so it cannot count the
steps' matmuls nor tie the hidden state's channels to the layer's output.
Taking the loop's output for a leaf or for the network's input (its inputs
are handles, not float activations) would silently drop the layer's cost
and cut every layer before it off the regularizer: a Conv1D -> LSTM ->
Conv1D once counted 2,196 of its 7,908 FLOPs that way.

So every op of such a loop that the walk reaches is an error naming the
recurrent layer (from the variables the loop reads) and the fix:
`unroll=True`, after which the steps are plain ops that the analysis counts
exactly (T steps of the input and recurrent matmuls; checked against hand
counts for LSTM, GRU, SimpleRNN and Bidirectional in
tests/test_recurrent.py). The only difference from the loop's arithmetic:
the first step's recurrent matmul reads the zero initial state, a constant,
and is not counted, like every op computed from constants. That advice is
given only for cells whose steps multiply by whole kernels (Keras 3's
default implementation=2; a GRU with reset_after=True): a matmul by a
slice of a kernel (implementation=1, which recurrent_dropout forces; GRU
reset_after=False) is not counted by the analysis, unrolled or not.
"""

import tensorflow as tf

from morph_net.framework import errors
from morph_net.framework import op_handler

LOOP_OPS = frozenset(['While', 'StatelessWhile'])
FUSED_RNN_OPS = frozenset(['CudnnRNN', 'CudnnRNNV2', 'CudnnRNNV3'])
# The ops a walk from the outputs meets around a loop: the loop itself, and
# the TensorList ops that carry its per-step inputs and outputs.
LOOP_OP_TYPES = tuple(sorted(LOOP_OPS | FUSED_RNN_OPS | {
    'TensorListStack', 'TensorListFromTensor', 'TensorListGetItem',
    'TensorListGather', 'TensorListConcatV2', 'TensorListPopBack'}))

# Cells whose unrolled steps are checked against hand counts.
_EXACT_CELLS = ('LSTMCell', 'GRUCell', 'SimpleRNNCell')
_CUDNN_PARAMS = 3  # CudnnRNN*'s input of packed weights
_SEARCH_LIMIT = 64  # ops looked at when following handles or weights


def loop_of(op):
  """The loop op (`While`, fused RNN) that `op` is or reads through variant
  inputs (TensorList handles), or None."""
  stack, seen = [op], set()
  while stack and len(seen) < _SEARCH_LIMIT:
    o = stack.pop()
    if o.type in LOOP_OPS or o.type in FUSED_RNN_OPS:
      return o
    if o.name in seen:
      continue
    seen.add(o.name)
    stack.extend(t.op for t in o.inputs if t.dtype == tf.variant)
  return None


def _loop_weights(loop):
  """The resource handles of the variables a loop reads: the `While`'s own
  inputs, or the handles read into a fused kernel's packed weights."""
  if loop.type in LOOP_OPS:
    return [t for t in loop.inputs if t.dtype == tf.resource]
  handles, seen = [], set()
  stack = ([loop.inputs[_CUDNN_PARAMS].op]
           if len(loop.inputs) > _CUDNN_PARAMS else [])
  while stack and len(seen) < _SEARCH_LIMIT:
    o = stack.pop()
    if o.name in seen:
      continue
    seen.add(o.name)
    for t in o.inputs:
      if t.dtype == tf.resource:
        handles.append(t)
      else:
        stack.append(t.op)
  return handles


def loop_layers(loop, view):
  """[(key, class name)] of the Keras layers whose variables `loop` reads
  (for an RNN layer: its cell, e.g. ('lstm/lstm_cell', 'LSTMCell'))."""
  found = []
  for handle in _loop_weights(loop):
    var = view.variable(handle) if view.eager else None
    key = view.owner_of_variable(var) if var is not None else None
    if not key:
      continue
    layer = view.layer(key)
    entry = (key, type(layer).__name__ if layer is not None else None)
    if entry not in found:
      found.append(entry)
  return found


def _whole_kernels(cell):
  """Whether an unrolled step of `cell` multiplies by whole kernel
  variables (Keras 3's fused implementation=2; a GRU with reset_after):
  the only form whose unrolled cost is checked exact."""
  if cell is None or type(cell).__name__ not in _EXACT_CELLS:
    return False
  return (getattr(cell, 'implementation', 2) == 2 and
          getattr(cell, 'reset_after', True))


def explain(op, view):
  """Why `op` (of a loop) cannot be analyzed, and what to do."""
  loop = loop_of(op)
  layers = loop_layers(loop, view) if loop is not None else []
  cells = [(k, c) for k, c in layers if c and c.endswith('Cell')]
  if loop is None:
    what = 'the plumbing of a loop (a TensorList: a loop\'s steps)'
  elif loop.type in FUSED_RNN_OPS:
    what = 'a fused cuDNN RNN kernel (%s)' % loop.type
  else:
    what = 'a while loop (%r)' % loop.name
  if cells:
    owner = ' of the recurrent layer whose cell is %s' % ', '.join(
        '%r (%s)' % c for c in cells)
    sliced = [k for k, _ in cells if not _whole_kernels(view.layer(k))]
    if sliced:
      fix = ('Unrolling alone would not make it exact: cell %s multiplies by '
             'slices of its kernels (implementation=1, which recurrent_dropout'
             ' forces, or GRU reset_after=False), and those products are not '
             'counted. Build it with implementation=2, recurrent_dropout=0 '
             '(and reset_after=True for a GRU) and unroll=True.'
             % ', '.join(repr(k) for k in sliced))
    else:
      fix = ('Build the layer with unroll=True (its sequence length must be '
             'fixed): its steps are then plain matmuls, which the analysis '
             'counts exactly.')
  else:
    owner = (' reading the variables of %s' % ', '.join(
        '%r' % k for k, _ in layers)) if layers else ''
    fix = ('Write the loop as a Python loop over a fixed number of steps '
           '(for RNN layers: unroll=True), so that its steps are plain ops.')
  return (
      'Op %r (%s) is part of %s%s. morph_net does not analyze loops: the '
      'per-step matmuls and the ties between the loop\'s state and its output '
      'channels lie inside it, so its cost cannot be counted, and taking its '
      'output for a leaf or for the network\'s input would drop that cost and '
      'cut the layers before it off the regularizer. %s Or analyze only the '
      'part of the model before it (a keras.Model ending there).'
      % (op.name, op.type, what, owner, fix))


class RecurrentLoopOpHandler(op_handler.OpHandler):
  """Refuses the ops of a loop (see the module docstring)."""

  def data_inputs(self, op, view):
    del op, view
    return []  # the walk stops; `analyze` raises

  def analyze(self, op, ctx):
    raise errors.UnsupportedOpError(explain(op, ctx.view))
