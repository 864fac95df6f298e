"""Per-op cost coefficients.

Every compute op's cost and term are bilinear-plus-linear in the alive
counts (a) and regularization sums (r) of its input and output groups:
    cost = B (k_bi a_in a_out + k_in a_in + k_out a_out)
    term = B (k_bi (a_in r_out + a_out r_in) + t_in r_in + t_out r_out)
A resource is a function Compute -> `Coefficients`. A compute entry (see
`framework.channel_graph.Compute`) knows its kernel elements and the spatial
positions it is applied at.
"""

import collections

from morph_net.framework import errors

Coefficients = collections.namedtuple(
    'Coefficients', ['bilinear', 'cost_in', 'cost_out', 'term_in',
                     'term_out'])


def _bilinear_or_depthwise(compute, k):
  if compute.linear:
    # Depthwise: cost follows the output channels; the term counts both
    # sides (usually one group), as in MorphNet.
    return Coefficients(0.0, 0.0, k, k, k)
  return Coefficients(k, 0.0, 0.0, 0.0, 0.0)


def flop_coeff(compute):
  """FLOPs = 2 x positions x kernel elements (one multiply, one add)."""
  return 2.0 * positions(compute) * compute.kernel_size


def flop_function(compute):
  return _bilinear_or_depthwise(compute, flop_coeff(compute))


def num_weights_coeff(compute):
  """Weights = kernel elements (1 for a MatMul) per input-output pair."""
  return float(compute.kernel_size)


_NOTHING = Coefficients(0.0, 0.0, 0.0, 0.0, 0.0)


def model_size_function(compute):
  if compute.weight_index is None or compute.shared:
    return _NOTHING  # activations' product; a weight counted at first use
  return _bilinear_or_depthwise(compute, num_weights_coeff(compute))


def activation_count_function(compute):
  """Activations: the output channel count of every conv and matmul
  (products of two activations, e.g. attention scores, are not counted)."""
  if compute.weight_index is None:
    return _NOTHING
  return Coefficients(0.0, 0.0, 1.0, 0.0, 1.0)


def positions(compute):
  """Spatial positions of a compute op, or an error saying what to do."""
  if compute.positions is None:
    raise errors.UnknownShapeError(
        'FLOPs of op %r (type %s) are undefined: the spatial size of its '
        'input/output %s is not known statically. Build the model with a '
        'fixed input size (e.g. keras.Input((224, 224, 3))) or pass '
        'input_signature with the spatial dims set.'
        % (compute.op.name, compute.op.type, compute.output.shape))
  return compute.positions
