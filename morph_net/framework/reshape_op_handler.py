"""Reshape: passthrough, splitting/merging the channel axis, or a leaf.

* Same channel count, only axes before the channel axis merged or split
  ([N, 1, 1, C] -> [N, C]): passthrough.
* Trailing axes merged into the channel axis, or the channel axis split
  into trailing axes, with the axes before them unchanged: Flatten
  ([N, H, W, C] -> [N, H*W*C]) and attention's head split
  ([N, T, H*d] <-> [N, T, H, d]). In row-major order merged feature j is
  channel j % C of the split side, so every copy of a channel shares its
  group and a Dense after Flatten costs H*W*alive_C inputs.
* Anything else mixes channels: a leaf.
"""

import numpy as np

from morph_net.framework import op_handler


class ReshapeOpHandler(op_handler.OpHandler):

  def data_inputs(self, op, view):
    del view
    return [0]

  def analyze(self, op, ctx):
    inp, out = op.inputs[0], op.outputs[0]
    c_in, c_out = ctx.view.channels(inp), ctx.view.channels(out)
    if c_in is None or c_out is None:
      return
    in_shape, out_shape = ctx.view.shape(inp), ctx.view.shape(out)
    if c_in == c_out and _same_trailing(in_shape, out_shape):
      ctx.tie(out, inp)
      return
    merged = _merged_side(in_shape, out_shape)
    if merged == 'out':
      ctx.tie_map(out, inp, np.arange(c_out) % c_in)
    elif merged == 'in':
      ctx.tie_map(inp, out, np.arange(c_in) % c_out)


def _same_trailing(in_shape, out_shape):
  """True if the reshape only merges/splits axes before the channel axis."""
  if in_shape is None or out_shape is None:
    return False
  return in_shape[-1] == out_shape[-1]


def _merged_side(in_shape, out_shape):
  """'out' if the output's channel axis is the input's trailing axes
  merged, 'in' for the converse, else None.

  The axes before them must match one to one (the batch axis may be
  unknown on both sides); the split side's dims must all be known.
  """
  if not in_shape or not out_shape:
    return None
  prefix = 0
  while (prefix < min(len(in_shape), len(out_shape)) - 1
         and in_shape[prefix] == out_shape[prefix]):
    prefix += 1
  if prefix < 1:
    return None  # the batch axis takes part: channels mix across examples
  for merged, split, side in ((out_shape, in_shape, 'out'),
                              (in_shape, out_shape, 'in')):
    tail = split[prefix:]
    if (len(merged) == prefix + 1 and len(tail) > 1 and None not in tail
        and merged[-1] == int(np.prod(tail))):
      return side
  return None
