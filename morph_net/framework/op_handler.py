"""The handler interface, and the small helpers handlers share.

A handler is a stateless object registered for one or more TF op types in an
op-handler table (see `op_handlers.py`). The manager visits every op on the
data path once and calls two methods:

* `data_inputs(op, view)`: the input indices that carry activations; the
  manager walks the graph backwards through these (weights, shapes and axes
  are not followed).
* `analyze(op, ctx)`: declares how the op's output channels relate to its
  inputs' channels, through the manager's `ctx`:

  - `ctx.tie(a, b)`: channel i of tensor a is channel i of tensor b;
  - `ctx.tie_map(out, inp, mapping)`: channel j of out is channel
    mapping[j] of inp (depthwise multipliers, Flatten);
  - `ctx.tie_concat(out, inputs)`: out is the channel concatenation;
  - `ctx.add_source(op, tensor, regularizer_cls, param, setting)`: the
    tensor's channels carry a regularizer (e.g. BatchNorm gamma);
  - `ctx.add_compute(op, inp, out, positions, kernel_size, linear)`: the op
    costs resources bilinearly (conv, matmul) or linearly (depthwise) in
    its input and output channel counts.

Settings (a threshold) may live on a handler instance; mutable state may not.

Channels live on a tensor's last axis unless a handler declares several
channel axes (attention heads, see `channel_graph`). A handler that reads
channels only as the last axis leaves `handles_channel_axes` False; the
manager then refuses to give it such a tensor, with an error naming the op,
rather than let it pair up the wrong channels.
"""

import tensorflow as tf

from morph_net.framework import errors


def is_float(tensor):
  return tensor.dtype.is_floating or tensor.dtype == tf.bfloat16


def rank(tensor):
  return tensor.shape.rank


def moves_examples(op, ctx, how):
  """Called when `op` moves data off the batch axis (windows or heads
  merged into it, a transpose of it). A traced model is then analyzed at a
  batch of 1 (one example: every axis counts positions), which the manager
  does on this error; a graph is left as it is."""
  if ctx.view.eager and not ctx.view.one_example:
    raise errors.UnknownShapeError(
        'Op %r (%s) %s, so per-example positions are not axis 0 onwards. '
        'Trace the model at a batch of 1: pass input_signature with batch '
        'size 1.' % (op.name, op.type, how))


class OpHandler:
  """Base handler: follows float inputs, declares nothing (a leaf)."""

  handles_channel_axes = False  # True: understands ctx.channel_axes

  def data_inputs(self, op, view):
    del view
    return [i for i, t in enumerate(op.inputs) if is_float(t)]

  def analyze(self, op, ctx):
    del op, ctx

  def __repr__(self):
    return type(self).__name__ + '()'


class TerminalOpHandler(OpHandler):
  """Graph inputs, constants and variable reads: the walk stops here."""

  def data_inputs(self, op, view):
    del op, view
    return []


class ValueOpHandler(OpHandler):
  """Base for ops whose input 0 is the only activation (the value); the
  other inputs are axes, shapes, shifts or bounds."""

  def data_inputs(self, op, view):
    del op, view
    return [0]


class LeafOpHandler(OpHandler):
  """An op whose output channels are unrelated to its input channels.

  Examples: a Reshape that mixes channels, Mean over the channel axis.
  Input and output are analyzed but never tied.
  """

  handles_channel_axes = True  # nothing is tied, whatever the axes

  def data_inputs(self, op, view):
    del view
    return [0] if op.inputs and is_float(op.inputs[0]) else []
