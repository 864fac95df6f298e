"""The three regularizer families: which ops are sources, how groups combine.

Each function returns (op-handler table, extra NetworkRegularizer kwargs);
`overrides` (a user's `op_handler_dict`) is merged into a copy of the table.

The family base classes hold each family's constructor; a named regularizer
(e.g. `GammaFlopsRegularizer`) only says which resource it counts, through
the class attributes RESOURCE (a `resource_function` coefficient function),
NAME and COST_NAME.

Shared keyword arguments (see `NetworkRegularizer`): input_boundary,
force_group, regularizer_blacklist, regularizer_decorator,
decorator_parameters, input_signature.
"""

from morph_net.framework import gating_source_op_handler as gating
from morph_net.framework import group_lasso_source_op_handler as gl
from morph_net.framework import op_handlers
from morph_net.network_regularizers import generic_network_regularizer as gnr
from morph_net.probabilistic_gating import probabilistic_grouping_regularizer as pgr


def _merge(table, overrides):
  table.update(overrides or {})
  return table


def gamma(gamma_threshold, overrides=None):
  """BatchNorm gammas are the sources; L1 on |gamma|."""
  return _merge(op_handlers.gamma_op_handler_dict(gamma_threshold),
                overrides), {}


def group_lasso(threshold, l1_fraction, overrides=None):
  """Conv/matmul kernels are the sources; group lasso per output channel."""
  return _merge(gl.group_lasso_op_handler_dict(threshold, l1_fraction),
                overrides), {}


def logistic_sigmoid(alive_threshold, regularize_on_mask,
                     mask_as_alive_vector, overrides=None):
  """LogisticSigmoidGating masks are the sources; tied gates 1 - prod(1-p)."""
  table = gating.logistic_sigmoid_op_handler_dict(
      alive_threshold, regularize_on_mask, mask_as_alive_vector)
  return _merge(table, overrides), {
      'create_grouping_regularizer': pgr.ProbabilisticGroupingRegularizer}


class _Named(gnr.NetworkRegularizer):
  """Builds the regularizer from a family and the subclass's resource."""

  RESOURCE = None  # staticmethod: Compute -> Coefficients
  NAME = None
  COST_NAME = None

  def _build(self, output_boundary, family, kwargs):
    table, extra = family
    gnr.NetworkRegularizer.__init__(self, output_boundary, table,
                                    self.RESOURCE, self.NAME,
                                    self.COST_NAME, **extra, **kwargs)


class GammaFamily(_Named):
  """Sources are BatchNorm gammas, alive when |gamma| > gamma_threshold.

  Args:
    output_boundary: a Keras model, a concrete function, or the output ops
      of a `tf.compat.v1` graph.
    gamma_threshold: channels with |gamma| above it are alive.
    op_handler_dict: extra op handlers merged into the family's table.
    **kwargs: the shared keyword arguments (module docstring).
  """

  def __init__(self, output_boundary, gamma_threshold, op_handler_dict=None,
               **kwargs):
    self._build(output_boundary, gamma(gamma_threshold, op_handler_dict),
                kwargs)


class GroupLassoFamily(_Named):
  """Sources are conv/matmul kernels (group lasso per output channel).

  Args:
    output_boundary: as in `GammaFamily`.
    threshold: channels whose kernel norm exceeds it are alive.
    l1_fraction: norm = (1 - f) RMS(w) + f mean|w| per output channel.
    op_handler_dict: extra op handlers merged into the family's table.
    **kwargs: the shared keyword arguments (module docstring).
  """

  def __init__(self, output_boundary, threshold, l1_fraction=0.0,
               op_handler_dict=None, **kwargs):
    self._build(output_boundary,
                group_lasso(threshold, l1_fraction, op_handler_dict), kwargs)


class LogisticSigmoidFamily(_Named):
  """Sources are LogisticSigmoidGating gates (FiGS).

  Args:
    output_boundary: as in `GammaFamily`.
    regularize_on_mask: the term uses the mask sampled in the same training
      step (True) or the gate probabilities sigmoid(logits) (False).
    alive_threshold: a gate is alive when its probability reaches it.
    mask_as_alive_vector: alive from the (deterministic) mask instead.
    op_handler_dict: extra op handlers merged into the family's table.
    **kwargs: the shared keyword arguments (module docstring).
  """

  def __init__(self, output_boundary, regularize_on_mask=True,
               alive_threshold=0.1, mask_as_alive_vector=True,
               op_handler_dict=None, **kwargs):
    self._build(output_boundary, logistic_sigmoid(
        alive_threshold, regularize_on_mask, mask_as_alive_vector,
        op_handler_dict), kwargs)
