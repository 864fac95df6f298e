"""Model-size regularizers: penalize the number of conv and dense weights."""

from morph_net.framework import gating_source_op_handler as gating
from morph_net.framework import group_lasso_source_op_handler as gl
from morph_net.framework import op_handlers
from morph_net.network_regularizers import generic_network_regularizer
from morph_net.network_regularizers import resource_function
from morph_net.probabilistic_gating import probabilistic_grouping_regularizer as pgr


class GammaModelSizeRegularizer(
    generic_network_regularizer.NetworkRegularizer):
  """Model-size regularizer whose sources are BatchNorm gammas.

  Arguments are those of `GammaFlopsRegularizer`. Cost is the weight count
  of convolutions and matmuls (kernel elements x alive_in x alive_out;
  depthwise: kernel elements x alive_out). Biases are not counted.
  """

  def __init__(self, output_boundary, gamma_threshold, input_boundary=None,
               force_group=None, regularizer_blacklist=None,
               regularizer_decorator=None, decorator_parameters=None,
               input_signature=None, op_handler_dict=None):
    table = op_handlers.gamma_op_handler_dict(gamma_threshold)
    table.update(op_handler_dict or {})
    super().__init__(
        output_boundary, table, resource_function.model_size_function,
        name='GammaModelSize', cost_name='ModelSize',
        input_boundary=input_boundary, force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        regularizer_decorator=regularizer_decorator,
        decorator_parameters=decorator_parameters,
        input_signature=input_signature)


class GroupLassoModelSizeRegularizer(generic_network_regularizer.NetworkRegularizer):
  """Model-size regularizer whose sources are conv/matmul kernels (group lasso).

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
        output_boundary, table, resource_function.model_size_function,
        name='GroupLassoModelSize', cost_name='ModelSize',
        input_boundary=input_boundary, force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        regularizer_decorator=regularizer_decorator,
        decorator_parameters=decorator_parameters,
        input_signature=input_signature)


class LogisticSigmoidModelSizeRegularizer(generic_network_regularizer.NetworkRegularizer):
  """Model-size regularizer whose sources are LogisticSigmoidGating gates (FiGS).

  Args:
    output_boundary: ops of a `tf.compat.v1` graph (list), or a Keras model
      or concrete function.
    regularize_on_mask: the term uses the mask sampled in the same training
      step (True) or the gate probabilities sigmoid(logits) (False).
    alive_threshold: a gate is alive when its probability reaches it.
    mask_as_alive_vector: alive from the (deterministic) mask instead.
    Other arguments: as in the Gamma regularizers. Tied gates combine with
    `ProbabilisticGroupingRegularizer` (1 - prod(1 - p)).
  """

  def __init__(self, output_boundary, regularize_on_mask=True,
               alive_threshold=0.1, mask_as_alive_vector=True,
               regularizer_decorator=None, decorator_parameters=None,
               input_boundary=None, force_group=None,
               regularizer_blacklist=None, input_signature=None,
               op_handler_dict=None):
    table = gating.logistic_sigmoid_op_handler_dict(
        alive_threshold, regularize_on_mask, mask_as_alive_vector)
    table.update(op_handler_dict or {})
    super().__init__(
        output_boundary, table, resource_function.model_size_function,
        name='LogisticSigmoidModelSize', cost_name='ModelSize',
        input_boundary=input_boundary, force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        regularizer_decorator=regularizer_decorator,
        decorator_parameters=decorator_parameters,
        input_signature=input_signature,
        create_grouping_regularizer=pgr.ProbabilisticGroupingRegularizer)
