"""ConcatV2: a channel concat slices its output into its inputs' channels."""

from morph_net.framework import op_handler


class ConcatOpHandler(op_handler.OpHandler):
  """Along the channel axis, output channels are the inputs' in order.

  Along any other axis every input has the output's channels, so all are
  tied position by position.
  """

  def data_inputs(self, op, view):
    del view
    return [i for i, t in enumerate(op.inputs[:-1]) if op_handler.is_float(t)]

  def analyze(self, op, ctx):
    out = op.outputs[0]
    inputs = list(op.inputs[:-1])
    axis = ctx.view.static_value(op.inputs[-1])
    rank = op_handler.rank(out)
    if axis is None or rank is None:
      return  # unknown axis: treat as a leaf
    if int(axis) % rank == rank - 1:
      ctx.tie_concat(out, inputs)
    else:
      for t in inputs:
        ctx.tie(out, t)
