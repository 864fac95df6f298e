"""The three regularizer families: which ops are sources, how groups combine.

Each function returns (op-handler table, extra NetworkRegularizer kwargs);
`overrides` (a user's `op_handler_dict`) is merged into a copy of the table.
"""

from morph_net.framework import gating_source_op_handler as gating
from morph_net.framework import group_lasso_source_op_handler as gl
from morph_net.framework import op_handlers
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
