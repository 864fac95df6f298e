"""FLOP regularizers: penalize the FLOPs per inference of the network.

Constructor arguments: see the family classes in `families` (GammaFamily,
GroupLassoFamily, LogisticSigmoidFamily) and the shared keyword arguments of
`NetworkRegularizer`.
"""

from morph_net.network_regularizers import families
from morph_net.network_regularizers import resource_function


class GammaFlopsRegularizer(families.GammaFamily):
  """FLOPs; sources are BatchNorm gammas
  (alive when |gamma| > threshold)."""

  RESOURCE = staticmethod(resource_function.flop_function)
  NAME, COST_NAME = 'GammaFlops', 'FLOPs'


class GroupLassoFlopsRegularizer(families.GroupLassoFamily):
  """FLOPs; sources are conv/matmul kernels
  (group lasso per channel)."""

  RESOURCE = staticmethod(resource_function.flop_function)
  NAME, COST_NAME = 'GroupLassoFlops', 'FLOPs'


class LogisticSigmoidFlopsRegularizer(families.LogisticSigmoidFamily):
  """FLOPs; sources are LogisticSigmoidGating gates (FiGS)."""

  RESOURCE = staticmethod(resource_function.flop_function)
  NAME, COST_NAME = 'LogisticSigmoidFlops', 'FLOPs'
