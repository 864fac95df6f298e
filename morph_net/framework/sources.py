"""Which of the family's sources a manager keeps: `regularizer_blacklist`."""

from morph_net.framework import channel_graph


def filter_blacklist(sources, blacklist, view):
  """The sources whose op (or the layer owning their variable) no
  blacklist pattern names.

  Raises:
    ValueError: a pattern matches no source.
  """
  patterns = channel_graph.compile_patterns(blacklist,
                                            'regularizer_blacklist')
  if not patterns:
    return list(sources)
  kept, used = [], set()
  for s in sources:
    names = [s.op.name]
    layer = view.owner_of_variable(s.param)
    if layer:
      names.append(layer)
    hits = [p.pattern for p in patterns if any(p.search(n) for n in names)]
    used.update(hits)
    if not hits:
      kept.append(s)
  unused = [p.pattern for p in patterns if p.pattern not in used]
  if unused:
    raise ValueError(
        'regularizer_blacklist patterns %s match no regularizer source. '
        'Sources are: %s' % (unused, sorted(s.op.name for s in sources)))
  return kept
