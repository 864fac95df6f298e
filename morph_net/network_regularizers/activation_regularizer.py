"""Activation-count regularizers: penalize the number of conv/matmul outputs.

Cost is the sum of alive output channels of every convolution and matmul
(per position-free count, as in MorphNet); the term is the sum of their
regularization vectors.
"""

from morph_net.framework import group_lasso_source_op_handler as gl
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


class GroupLassoActivationRegularizer(generic_network_regularizer.NetworkRegularizer):
  """Activation-count regularizer whose sources are conv/matmul kernels (group lasso).

  Args:
    output_boundary: ops of a `tf.compat.v1` graph (list), or a Keras model
      or concrete function.
    threshold: channels whose kernel norm exceeds it are alive.
    l1_fraction: norm = (1 - f) RMS(w) + f mean|w| per output channel.
    Other arguments: as in the Gamma regularizers.
  """

  def __init__(self, output_boundary, threshold, l1_fraction=0.0,
               regularizer_decorator=None, decorator_parameters=None,
               input_boundary=None, force_group=None,
               regularizer_blacklist=None, input_signature=None,
               op_handler_dict=None):
    table = gl.group_lasso_op_handler_dict(threshold, l1_fraction)
    table.update(op_handler_dict or {})
    super().__init__(
        output_boundary, table, resource_function.activation_count_function,
        name='GroupLassoActivationCount', cost_name='Activations',
        input_boundary=input_boundary, force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        regularizer_decorator=regularizer_decorator,
        decorator_parameters=decorator_parameters,
        input_signature=input_signature)
