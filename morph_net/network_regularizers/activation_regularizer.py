"""Activation-count regularizers: the alive outputs of every conv and matmul.

Constructor arguments: see the family classes in `families` (GammaFamily,
GroupLassoFamily, LogisticSigmoidFamily) and the shared keyword arguments of
`NetworkRegularizer`.
"""

from morph_net.network_regularizers import families
from morph_net.network_regularizers import resource_function


class GammaActivationRegularizer(families.GammaFamily):
  """Activation count; sources are BatchNorm gammas
  (alive when |gamma| > threshold)."""

  RESOURCE = staticmethod(resource_function.activation_count_function)
  NAME, COST_NAME = 'GammaActivationCount', 'Activations'


class GroupLassoActivationRegularizer(families.GroupLassoFamily):
  """Activation count; sources are conv/matmul kernels
  (group lasso per channel)."""

  RESOURCE = staticmethod(resource_function.activation_count_function)
  NAME, COST_NAME = 'GroupLassoActivationCount', 'Activations'
