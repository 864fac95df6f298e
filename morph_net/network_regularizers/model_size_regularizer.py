"""Model-size regularizers: penalize the number of conv and dense weights.

Cost = kernel elements x alive_in x alive_out per conv/matmul (depthwise:
kernel elements x alive_out); biases are not counted.

Shared keyword arguments (see `NetworkRegularizer`): input_boundary,
force_group, regularizer_blacklist, regularizer_decorator,
decorator_parameters, input_signature; and op_handler_dict, extra op
handlers merged into the family's table.
"""

from morph_net.network_regularizers import families
from morph_net.network_regularizers import generic_network_regularizer as gnr
from morph_net.network_regularizers import resource_function


class GammaModelSizeRegularizer(gnr.NetworkRegularizer):
  """Model size; sources are BatchNorm gammas, alive when |gamma| > threshold.

  Args:
    output_boundary: a Keras model, a concrete function, or the output ops
      of a `tf.compat.v1` graph.
    gamma_threshold: channels with |gamma| above it are alive.
    op_handler_dict: extra op handlers for this regularizer.
    **kwargs: the shared keyword arguments (module docstring).
  """

  def __init__(self, output_boundary, gamma_threshold, op_handler_dict=None,
               **kwargs):
    table, extra = families.gamma(gamma_threshold, op_handler_dict)
    super().__init__(output_boundary, table,
                     resource_function.model_size_function,
                     'GammaModelSize', 'ModelSize', **extra, **kwargs)


class GroupLassoModelSizeRegularizer(gnr.NetworkRegularizer):
  """Model size; sources are conv/matmul kernels (group lasso per channel).

  Args:
    output_boundary: as in `GammaFlopsRegularizer`.
    threshold: channels whose kernel norm exceeds it are alive.
    l1_fraction: norm = (1 - f) RMS(w) + f mean|w| per output channel.
    op_handler_dict: extra op handlers for this regularizer.
    **kwargs: the shared keyword arguments (module docstring).
  """

  def __init__(self, output_boundary, threshold, l1_fraction=0.0,
               op_handler_dict=None, **kwargs):
    table, extra = families.group_lasso(threshold, l1_fraction,
                                        op_handler_dict)
    super().__init__(output_boundary, table,
                     resource_function.model_size_function,
                     'GroupLassoModelSize', 'ModelSize', **extra, **kwargs)


class LogisticSigmoidModelSizeRegularizer(gnr.NetworkRegularizer):
  """Model size; sources are LogisticSigmoidGating gates (FiGS).

  Args:
    output_boundary: as in `GammaFlopsRegularizer`.
    regularize_on_mask: the term uses the mask sampled in the same training
      step (True) or the gate probabilities sigmoid(logits) (False).
    alive_threshold: a gate is alive when its probability reaches it.
    mask_as_alive_vector: alive from the (deterministic) mask instead.
    op_handler_dict: extra op handlers for this regularizer.
    **kwargs: the shared keyword arguments (module docstring).
  """

  def __init__(self, output_boundary, regularize_on_mask=True,
               alive_threshold=0.1, mask_as_alive_vector=True,
               op_handler_dict=None, **kwargs):
    table, extra = families.logistic_sigmoid(
        alive_threshold, regularize_on_mask, mask_as_alive_vector,
        op_handler_dict)
    super().__init__(output_boundary, table,
                     resource_function.model_size_function,
                     'LogisticSigmoidModelSize', 'ModelSize', **extra, **kwargs)
