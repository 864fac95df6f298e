"""Reshape: passthrough, Flatten-style tiling, or a leaf.

* Same channel count on both sides ([N, 1, 1, C] -> [N, C]): passthrough.
* Flatten ([N, H, W, C] -> [N, H*W*C]): in row-major order feature j is
  channel j % C, so every position's copy of a channel shares its group and a
  Dense after Flatten costs H*W*alive_C inputs.
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
    in_shape = ctx.view.shape(inp)
    if c_in == c_out and _same_trailing(in_shape, ctx.view.shape(out)):
      ctx.tie(out, inp)
      return
    inner = in_shape[1:] if in_shape else None
    if inner and None not in inner and int(np.prod(inner)) == c_out:
      ctx.tie_map(out, inp, np.arange(c_out) % c_in)


def _same_trailing(in_shape, out_shape):
  """True if the reshape only merges/splits axes before the channel axis."""
  if in_shape is None or out_shape is None:
    return False
  return in_shape[-1] == out_shape[-1]
