"""Which channel counts a prunable layer can have: its count quantum.

A structure gives each prunable layer a count n of its C output channels;
with counts only (no alive vectors) every channel of the layer is then
n / C alive, and every tensor its channels reach has width
sum(n_k m_k / C_k) over the layers k feeding it (m_k: how many of the
tensor's channels carry layer k's labels). A slim model exists only where
every such width is a whole number (and, for a grouped conv's input and
output, a multiple of its group count). So n must be a multiple of

    q_k = lcm over tensors t of  g_t C_k / gcd(g_t C_k, m_k(t)),

where g_t is the divisor t's width needs (1, or a grouped conv's groups).
Examples: a channel split into two equal halves (CSP blocks): q = 2; an
attention head of d channels (one label, d channels): q = d; a grouped
conv of g groups: q = g. Producers of counts (`expand_structure`,
`round_to`, the structure exporter) round to multiples of q, so that
`slim_model` accepts what they produce.

>>> import keras
>>> from morph_net.framework import op_regularizer_manager as orm
>>> inputs = keras.Input((8, 8, 3))
>>> h = keras.layers.Conv2D(8, 1, name='c')(inputs)
>>> a, b = keras.ops.split(h, 2, axis=-1)
>>> y = keras.layers.Concatenate()([keras.layers.Conv2D(4, 1)(a), b])
>>> model = keras.Model(inputs, y)
>>> count_quanta(orm.OpRegularizerManager(model))['c']
2
"""

import math

import numpy as np


def count_quanta(manager, divisors=()):
  """{layer key: q} for the layers whose compute ops set a width (see the
  module docstring); 1 where any count works. `divisors`: more (tensor,
  divisor of its width) pairs, e.g. from a layer's own config checks."""
  entries = manager.layers()
  if not entries:
    return {}
  num_labels = max(manager.num_labels, 1)
  keys = list(entries)
  key_labels = [np.unique(np.concatenate(
      [manager.channel_labels(t) for t in entries[k].outputs]))
                for k in keys]
  widths = np.array([len(manager.channel_labels(entries[k].outputs[0]))
                     for k in keys], np.int64)
  # Which key sets each label (tied keys share labels: the first wins;
  # their widths agree).
  owner = np.full(num_labels, -1, np.int64)
  for i, labels in enumerate(key_labels):
    free = labels[owner[labels] < 0]
    owner[free] = i
  divisors = _tensor_divisors(manager, divisors)
  cols, vals, divs = [], [], []
  for tensor, divisor in divisors:
    labels = manager.channel_labels(tensor)
    owners = owner[labels]
    owners = owners[owners >= 0]
    if not len(owners):
      continue
    found, counts = np.unique(owners, return_counts=True)
    cols.append(found)
    vals.append(counts)
    divs.append(np.full(len(found), divisor))
  quanta = np.ones(len(keys), np.int64)
  if cols:
    m = np.concatenate(vals).astype(np.int64)
    k = np.concatenate(cols)
    g = np.concatenate(divs).astype(np.int64)
    c = widths[k] * g
    q = c // np.gcd(c, m)
    for key_index, value in zip(k.tolist(), q.tolist()):
      if value > 1:
        quanta[key_index] = math.lcm(int(quanta[key_index]), value)
  # Tied keys (sharing labels) take each other's constraints.
  by_owner = {}
  for i, labels in enumerate(key_labels):
    first = int(owner[labels[0]]) if len(labels) else i
    by_owner.setdefault(first, []).append(i)
  for members in by_owner.values():
    q = 1
    for i in members:
      q = math.lcm(q, int(quanta[i]))
    for i in members:
      quanta[i] = q
  return dict(zip(keys, (int(q) for q in quanta.tolist())))


def _tensor_divisors(manager, extra=()):
  """(tensor, divisor of its width) for every analyzed tensor: a grouped
  conv's input and output must divide into its groups; `extra` adds more."""
  groups = {}
  for t, divisor in extra:
    groups[t.name] = math.lcm(groups.get(t.name, 1), int(divisor))
  for c in manager.compute_ops:
    if c.groups > 1 and not c.linear:
      for t in (c.input, c.output):
        groups[t.name] = math.lcm(groups.get(t.name, 1), int(c.groups))
  seen = set()
  out = []
  for op in manager.ops:
    for t in op.outputs:
      if t.name in seen or not manager.has_channels(t):
        continue
      seen.add(t.name)
      out.append((t, groups.get(t.name, 1)))
  return out
