"""Where a tensor's channels and positions lie in its static shape.

A tensor's channels are its last axis unless a handler put them on several
(attention heads: (-2, -1) on [B, T, H, d]). Its positions are the rest of
it, per example: every graph view, handler, cost function and the Keras
slim plan count them with `positions`.
"""

import numpy as np

__all__ = ['DEFAULT_AXES', 'positions']

DEFAULT_AXES = (-1,)  # channels on the last axis


def positions(shape, channel_axes=DEFAULT_AXES, first=1):
  """The positions of a tensor of `shape`: the product of its dims that
  are neither the batch axis nor channel axes, or None if one is unknown.

  Args:
    shape: a list of dims (None where unknown), or None (unknown rank).
    channel_axes: the axes holding the channels, counted from the end.
    first: the first axis counted: 1 skips the batch axis; 0 counts it
      (a one-example trace, where axis 0 may hold windows or heads).

  >>> positions([8, 7, 5, 16])
  35
  >>> positions([1, 4, 6, 2, 3], channel_axes=(-2, -1), first=0)
  24
  """
  if shape is None:
    return None
  rank = len(shape)
  dims = [d for i, d in enumerate(shape[first:], first)
          if i - rank not in channel_axes]
  if None in dims:
    return None
  return int(np.prod(dims, dtype=np.int64))
