"""Per-op cost coefficients k, in cost = B * k * alive_in * alive_out.

A compute entry (see `framework.channel_graph.Compute`) knows its kernel
spatial size and the number of spatial positions it is applied at; the
resources differ only in how they combine those.
"""

from morph_net.framework import errors


def flop_coeff(compute):
  """FLOPs = 2 x positions x kernel elements (one multiply, one add)."""
  if compute.positions is None:
    raise errors.UnknownShapeError(
        'FLOPs of op %r (type %s) are undefined: the spatial size of its '
        'input/output %s is not known statically. Build the model with a '
        'fixed input size (e.g. keras.Input((224, 224, 3))) or pass '
        'input_signature with the spatial dims set.'
        % (compute.op.name, compute.op.type, compute.output.shape))
  return 2.0 * compute.positions * compute.kernel_size


def num_weights_coeff(compute):
  """Weights = kernel elements (1 for a MatMul) per input-output pair."""
  return float(compute.kernel_size)
