"""Constant values of small index computations that TensorFlow's own
`tf.get_static_value` leaves unknown.

Keras builds some index vectors from constants with a few elementwise ops:
`keras.ops.take(x, [5, 0, 2], axis=-1)` gathers at
`where(i < 0, i + dim, i)` (Less, AddV2, SelectV2 over a constant and the
input's shape, whose batch size is unknown). Folding those with NumPy, and
a select whose condition is the same everywhere from its one live side,
tells a channel gather from a data-dependent one.
"""

import numpy as np
import tensorflow as tf

# op type -> NumPy function of the inputs' values.
_FOLDABLE = {
    'Less': np.less, 'LessEqual': np.less_equal, 'Greater': np.greater,
    'GreaterEqual': np.greater_equal, 'Equal': np.equal,
    'NotEqual': np.not_equal, 'AddV2': np.add, 'Add': np.add,
    'Sub': np.subtract, 'Mul': np.multiply, 'FloorMod': np.mod,
    'Neg': np.negative, 'Maximum': np.maximum, 'Minimum': np.minimum,
    'SelectV2': np.where, 'Select': np.where,
}
_MAX_DEPTH = 8  # index arithmetic is shallow; deeper is not worth walking


def static_value(tensor, depth=0):
  """The constant value of `tensor`, or None where it depends on data (or
  on ops this does not fold)."""
  try:
    value = tf.get_static_value(tensor)
  except (TypeError, ValueError, NotImplementedError):
    value = None
  if value is not None or depth >= _MAX_DEPTH:
    return value
  op = tensor.op
  if op.type == 'Cast' and op.inputs:
    value = static_value(op.inputs[0], depth + 1)
    return None if value is None else value.astype(
        tensor.dtype.as_numpy_dtype)
  fold = _FOLDABLE.get(op.type)
  if fold is None or not op.inputs:
    return None
  if fold is np.where:  # one side suffices where the condition is uniform
    cond = static_value(op.inputs[0], depth + 1)
    if cond is None:
      return None
    if np.all(cond) or not np.any(cond):
      side = op.inputs[1 if np.all(cond) else 2]
      side_value = static_value(side, depth + 1)
      return None if side_value is None else np.asarray(np.broadcast_to(
          side_value, np.broadcast(cond, side_value).shape)).astype(
              tensor.dtype.as_numpy_dtype)
  values = [static_value(t, depth + 1) for t in op.inputs]
  if any(v is None for v in values):
    return None
  return np.asarray(fold(*values)).astype(tensor.dtype.as_numpy_dtype)
