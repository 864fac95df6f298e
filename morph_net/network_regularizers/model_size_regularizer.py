"""Model-size regularizers: penalize the number of conv and dense weights.

Cost = kernel elements x alive_in x alive_out per conv/matmul (depthwise:
kernel elements x alive_out); biases are not counted.

Constructor arguments: see the family classes in `families` (GammaFamily,
GroupLassoFamily, LogisticSigmoidFamily) and the shared keyword arguments of
`NetworkRegularizer`.
"""

from morph_net.network_regularizers import families
from morph_net.network_regularizers import resource_function


class GammaModelSizeRegularizer(families.GammaFamily):
  """Model size; sources are BatchNorm gammas
  (alive when |gamma| > threshold)."""

  RESOURCE = staticmethod(resource_function.model_size_function)
  NAME, COST_NAME = 'GammaModelSize', 'ModelSize'


class GroupLassoModelSizeRegularizer(families.GroupLassoFamily):
  """Model size; sources are conv/matmul kernels
  (group lasso per channel)."""

  RESOURCE = staticmethod(resource_function.model_size_function)
  NAME, COST_NAME = 'GroupLassoModelSize', 'ModelSize'


class LogisticSigmoidModelSizeRegularizer(families.LogisticSigmoidFamily):
  """Model size; sources are LogisticSigmoidGating gates (FiGS)."""

  RESOURCE = staticmethod(resource_function.model_size_function)
  NAME, COST_NAME = 'LogisticSigmoidModelSize', 'ModelSize'
