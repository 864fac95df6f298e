"""Which built-in handler, if any, is provably right for an unknown op.

The manager's error for an op with no handler quotes `suggest_handler`.
A suggestion is made only when the op's inputs prove it correct:

* `GroupingOpHandler` ties output channel i to input 0's channel i: only for
  an op whose one channel-carrying activation is input 0 and has the
  output's channel count, with no kernel-like weight.
* `LeafOpHandler` follows input 0 and declares nothing: only for an op with
  no channel-carrying activation besides input 0 and no kernel-like weight,
  whose output channel count differs from its input's (so its channels
  cannot be a passthrough). Anything else would silently drop a branch's
  channels or a weight's cost.

Never for an op that reads a variant or resource input (a TensorList, a
loop's state): its channels come from data the analysis cannot see, so no
handler following input 0 is provably right. An op of a recurrent layer's
loop (a `While` and the TensorList ops around it, or a fused cuDNN RNN) gets
its own explanation: the analysis does not read loop bodies, and a leaf
there would drop the layer's cost and cut the layers before it off the
regularizer (a Conv1D -> LSTM -> Conv1D counted 2,196 of 7,908 FLOPs that
way). The explanation (`recurrent.explain`) offers `unroll=True`.

Otherwise no built-in handler is known to be correct, and the message says
how to write one.
"""

import tensorflow as tf

from morph_net.framework import op_handler
from morph_net.framework import op_types
from morph_net.framework import recurrent

_HANDLE_DTYPES = (tf.variant, tf.resource)

_HOW_TO_WRITE = (
    'No built-in handler is known to be correct for it: write one (subclass '
    'morph_net.framework.OpHandler; `data_inputs(op, view)` lists the '
    'activation inputs, `analyze(op, ctx)` ties channels with ctx.tie / '
    'ctx.tie_map / ctx.tie_concat and records costs with ctx.add_compute) '
    'and register it: op_handler_dict[%r] = MyHandler().')


def _inputs(op, view):
  """(channel-carrying activation indices, kernel-like weight indices)."""
  acts, kernels = [], []
  for i, t in enumerate(op.inputs):
    if not op_handler.is_float(t) or not op_handler.rank(t):
      continue  # ints (shapes, axes) and scalars carry no channels
    if op_types.is_weight(t, view):
      if op_handler.rank(t) >= 2:
        kernels.append(i)
    else:
      acts.append(i)
  return acts, kernels


def _handle_input(op):
  """(index, tensor) of the first variant/resource input, or None."""
  for i, t in enumerate(op.inputs):
    if t.dtype in _HANDLE_DTYPES:
      return i, t
  return None


# Op types of losses (SoftmaxCrossEntropyWithLogits, L2Loss, ...): a user
# passed the loss as the output boundary.
_LOSS_WORDS = ('CrossEntropy', 'Loss')
# TF1 control flow v1: a tf.cond's branches meet in a Merge.
_COND_OPS = ('Merge', 'Switch', 'RefMerge', 'RefSwitch')


def suggest_handler(op, view):
  """A sentence for the error about `op` (which has no handler).

  Args:
    op: the `tf.Operation` (or inlined op) without a handler.
    view: the manager's `GraphView`.

  Returns:
    A suggestion naming `GroupingOpHandler` or `LeafOpHandler` when that
    handler is provably correct for the op's inputs, else an explanation
    of why none is and how to write a handler.
  """
  if recurrent.loop_of(op) is not None:
    return recurrent.explain(op, view)
  if any(w in op.type for w in _LOSS_WORDS):
    return ('%s looks like a loss: the output boundary is the network\'s '
            'output (the op computing the logits, e.g. the last MatMul or '
            'BiasAdd), not the loss computed from it. Pass that op instead.'
            % op.type)
  if op.type in _COND_OPS:
    return ('%s is part of a tf.cond (a TF1 control-flow branch), whose '
            'channels the analysis does not follow. A common source: '
            'batch_norm(is_training=<a tensor>) builds one per layer; pass '
            'a Python bool instead (build the training and the eval graph '
            'separately).' % op.type)
  handle = _handle_input(op)
  if handle is not None:
    i, t = handle
    return ('It reads a %s handle at input %d (from op %r of type %s): data '
            'whose channels the analysis cannot see (a TensorList, a loop\'s '
            'state, a lookup table), so neither a passthrough nor a leaf is '
            'provably right. ' % (t.dtype.name, i, t.op.name, t.op.type)
            + _HOW_TO_WRITE % op.type)
  acts, kernels = _inputs(op, view)
  out = op.outputs[0] if op.outputs else None
  c_out = view.channels(out) if out is not None else None
  c_in = view.channels(op.inputs[0]) if op.inputs else None
  if kernels:
    return ('It reads a weight of shape %s (input %d), so it likely costs '
            'resources that a passthrough or leaf would drop. '
            % (op.inputs[kernels[0]].shape, kernels[0])
            + _HOW_TO_WRITE % op.type)
  if acts == [0] and c_out is not None and c_out == c_in:
    return ('If its output channel i is channel i of its input (it passes '
            'channels through unchanged), register it:\n  op_handler_dict[%r]'
            ' = morph_net.framework.GroupingOpHandler()' % op.type)
  if acts in ([0], []) and (c_out is None or c_out != c_in):
    return ('Its output has %s channels and its input %s, and it reads no '
            'other activation or weight, so if its output channels are '
            'unrelated to its input channels, register it:\n  '
            'op_handler_dict[%r] = morph_net.framework.LeafOpHandler()'
            % (c_out, c_in, op.type))
  if acts and acts != [0]:
    why = ('It reads channel-carrying activations at inputs %s; the built-in '
           'passthrough and leaf handlers follow input 0 only, so they would '
           'drop the others\' channels. ' % acts)
  else:
    why = ('Its output has the channel count (%s) of its input 0, which is '
           'not a float activation, so neither a passthrough nor a leaf is '
           'provably right. ' % c_in)
  return why + _HOW_TO_WRITE % op.type
