"""Activation-count regularizers: penalize the number of conv/matmul outputs.

Cost is the sum of alive output channels of every convolution and matmul
(per position-free count, as in MorphNet); the term is the sum of their
regularization vectors.
"""

from morph_net.framework import op_handlers
from morph_net.network_regularizers import generic_network_regularizer
from morph_net.network_regularizers import resource_function


class GammaActivationRegularizer(
    generic_network_regularizer.NetworkRegularizer):
  """Activation-count regularizer whose sources are BatchNorm gammas.

  Arguments are those of `GammaFlopsRegularizer`.
  """

  def __init__(self, output_boundary, gamma_threshold, input_boundary=None,
               force_group=None, regularizer_blacklist=None,
               regularizer_decorator=None, decorator_parameters=None,
               input_signature=None, op_handler_dict=None):
    table = op_handlers.gamma_op_handler_dict(gamma_threshold)
    table.update(op_handler_dict or {})
    super().__init__(
        output_boundary, table, resource_function.activation_count_function,
        name='GammaActivationCount', cost_name='Activations',
        input_boundary=input_boundary, force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        regularizer_decorator=regularizer_decorator,
        decorator_parameters=decorator_parameters,
        input_signature=input_signature)
