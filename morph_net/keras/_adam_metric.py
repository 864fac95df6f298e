"""The proximal step under Adam, in Adam's own metric.

`ProximalStep` shrinks channel c by lr x strength x w_c per step. Under an
Adam-family optimizer that step is divided by sqrt(v_hat_c), the root of
Adam's bias-corrected second moment of the channel's task gradient,
relative to that root's RMS over all channels (`adam_preconditioners`), so
that a channel is removed when its averaged task gradient is under
strength x w_c, as under SGD.
"""

import tensorflow as tf

from morph_net.op_regularizers import group_lasso_regularizer

# The largest factor by which the proximal step of a channel with a quiet
# gradient exceeds the decoupled step (`adam_preconditioners`).
ADAM_METRIC_CAP = 10.0


def optimizer_of(optimizer, class_names):
  """The Keras optimizer behind `optimizer` (unwrapping loss scaling) if
  its class or a base class is named in `class_names`, else None."""
  inner = getattr(optimizer, 'inner_optimizer', optimizer)
  if inner is None or not any(k.__name__ in class_names
                              for k in type(inner).__mro__):
    return None
  return inner


def _adam_state(optimizer):
  """The Adam-family Keras optimizer (Adam, AdamW, Nadam) behind
  `optimizer`, or None."""
  inner = optimizer_of(optimizer, ('Adam', 'Nadam'))
  if inner is None or not (hasattr(inner, '_velocities') and
                           hasattr(inner, '_get_variable_index')):
    return None
  return inner


def adam_channel_roots(optimizer, entries):
  """Per entry (variable, kind, channel axis) or None: the channels'
  sqrt(v_hat), v_hat Adam's bias-corrected second moment of the task
  gradient (a group lasso channel: the root of its entries' mean), or None
  for every entry if `optimizer` is not an Adam-family optimizer that holds
  the variable."""
  inner = _adam_state(optimizer)
  if inner is None:
    return [None] * len(entries)
  t = tf.maximum(tf.cast(inner.iterations, tf.float32), 1.0)
  correction = 1.0 - tf.pow(tf.cast(inner.beta_2, tf.float32), t)
  hats = getattr(inner, '_velocity_hats', None)
  roots = []
  for entry in entries:
    if entry is None:
      roots.append(None)
      continue
    variable, kind, axis = entry
    try:
      index = inner._get_variable_index(variable)  # pylint: disable=protected-access
    except (KeyError, ValueError, AttributeError):
      return [None] * len(entries)  # a source the optimizer does not train
    moments = (hats[index] if getattr(inner, 'amsgrad', False) and hats
               else inner._velocities[index])  # pylint: disable=protected-access
    v = tf.cast(tf.convert_to_tensor(moments), tf.float32) / correction
    if kind == 'gamma':
      roots.append(tf.sqrt(tf.reshape(v, [-1])))
    else:
      keep = group_lasso_regularizer.out_axes(v.shape.rank, axis)
      roots.append(tf.sqrt(tf.reshape(tf.reduce_mean(
          v, axis=[a for a in range(v.shape.rank) if a not in keep]), [-1])))
  return roots


def adam_preconditioners(roots, cap=ADAM_METRIC_CAP):
  """Step factors R / max(sqrt(v_hat_c), R / cap) per channel, R the RMS of
  sqrt(v_hat) over every channel of every source (None entries stay None;
  R = 0, no gradient seen yet: factor 1, the decoupled step).

  Adam moves a variable by lr x m_hat / (sqrt(v_hat) + eps): every channel
  at about lr per step, whatever its gradient's size. A decoupled shrink
  of lr x strength x w_c (AdamW's) therefore balances strength x w_c
  against m_hat / sqrt(v_hat), a number in [-1, 1] that does not say
  what the channel is worth, and channels die together once the strength
  passes it. Taking the proximal step in Adam's metric, lr x strength x
  w_c / sqrt(v_hat_c), balances m_hat_c against strength x w_c (x R): the
  optimality condition of task + strength x term, as under SGD. R puts
  the factors around 1, so the strength keeps roughly its scale; `cap`
  bounds the factor of a channel whose gradient is
  (so far) near zero, so that one quiet batch does not remove it at once.
  """
  present = [r for r in roots if r is not None]
  if not present:
    return roots
  scale = tf.sqrt(tf.reduce_mean(tf.concat([tf.square(r) for r in present],
                                           0)))
  ok = scale > 0.0
  return [None if r is None else tf.where(
      ok, tf.math.divide_no_nan(scale, tf.maximum(r, scale / cap)),
      tf.ones_like(r)) for r in roots]
