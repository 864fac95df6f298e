"""Exceptions raised while analyzing a graph; each says what to do."""


class AnalysisError(ValueError):
  """The graph cannot be analyzed as given. The message says why and how."""


class UnsupportedOpError(AnalysisError):
  """An op on the data path has no handler in the op-handler table."""


class ChannelMismatchError(AnalysisError):
  """Channels that must be tied together have different counts."""


class NoRegularizerSourceError(AnalysisError):
  """The network has no op that can be regularized by the chosen family."""


class UnknownShapeError(AnalysisError):
  """A shape needed for a cost is not known statically."""


def format_path(op_name, parents, limit=12):
  """'out <- a <- b <- op' from an output down to `op_name`, for messages."""
  chain = []
  name = op_name
  while name is not None and len(chain) < 10000:
    chain.append(name)
    name = parents.get(name)
  chain.reverse()  # output first
  if len(chain) > limit:
    chain = chain[:limit // 2] + ['...'] + chain[-limit // 2:]
  return ' -> '.join(chain)
