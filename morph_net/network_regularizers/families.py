"""The three regularizer families, and the base classes of the named ones.

A family (`framework.Family`) says which channels carry a regularizer and
how tied channels combine; it never changes the op-handler table:

- `gamma`: every op the pattern pass marks as a BatchNorm scale
  (`patterns.BatchNormScale`: FusedBatchNorm, or the unfused scale Keras 3
  traces) carries an L1 regularizer on |gamma|.
- `group_lasso`: every conv / matmul / einsum with a prunable weight (a
  compute entry with an `out_axis`) carries a group lasso on its kernel.
- `logistic_sigmoid`: every gate (`patterns.Gate`) carries a
  LogisticSigmoid regularizer on its logits; tied gates combine as
  1 - prod(1 - p).

A named regularizer is a (family, resource) pair: the family base classes
below hold the constructors; e.g. `GammaFlopsRegularizer` only states its
resource (RESOURCE, a `resource_function` coefficient function), NAME and
COST_NAME. The latency regularizers pair the same families with the
roofline calculator.

Shared keyword arguments (see `NetworkRegularizer`): input_boundary,
force_group, regularizer_blacklist, regularizer_decorator,
decorator_parameters, input_signature.
"""

import functools

from morph_net.framework import family as family_lib
from morph_net.framework import grouping_regularizers
from morph_net.framework import patterns
from morph_net.network_regularizers import generic_network_regularizer as gnr
from morph_net import op_regularizers
from morph_net.op_regularizers import gamma_l1_regularizer
from morph_net.op_regularizers import group_lasso_regularizer
from morph_net.op_regularizers import logistic_sigmoid_regularizer


def _gamma_sources(threshold, ctx, ops):
  for op in ops:
    fact = ctx.facts.first(op, patterns.BatchNormScale)
    if fact is not None:
      ctx.add_source(op, op.outputs[0], gamma_l1_regularizer.GammaL1Regularizer,
                     ctx.view.param(fact.gamma), threshold)


def _group_lasso_sources(threshold, l1_fraction, ctx, ops):
  del ops
  for c in ctx.computes:
    if c.linear or c.out_axis is None:
      continue  # depthwise: follows its input; no prunable weight
    # The axis counts from the end: a Conv1D kernel variable is rank 3
    # while the traced Conv2D sees it expanded to rank 4.
    ctx.add_source(c.op, c.output, group_lasso_regularizer.GroupLassoRegularizer,
                   ctx.view.param(c.op.inputs[c.weight_index]),
                   (threshold, l1_fraction, c.out_axis))


def _gate_sources(setting, ctx, ops):
  for op in ops:
    fact = ctx.facts.first(op, patterns.Gate)
    if fact is not None:
      ctx.add_source(
          op, op.outputs[0],
          logistic_sigmoid_regularizer.LogisticSigmoidRegularizer,
          ctx.view.param(fact.logits), setting)


def check_normalize(normalize):
  """'auto', True or False (see `framework.Family.normalize`)."""
  if normalize not in ('auto', True, False):
    raise ValueError("normalize must be 'auto', True or False, got %r."
                     % (normalize,))
  return normalize


def gamma(gamma_threshold, grouping=None, normalize=False):
  """BatchNorm gammas are the sources; L1 on |gamma| (relative to the
  BatchNorm's own scale where the loss does not see that scale)."""
  return family_lib.Family(
      'Gamma', functools.partial(_gamma_sources, op_regularizers.check_threshold(
          'gamma_threshold', gamma_threshold)),
      grouping or grouping_regularizers.MaxGroupingRegularizer,
      sources_description='BatchNorm scales (FusedBatchNorm, or the unfused '
      'scale Keras 3 traces; BatchNormalization needs scale=True)',
      remedy='Add BatchNormalization (with scale=True) after your '
      'convolutions, or use a GroupLasso regularizer. (A graph batch norm '
      'scaled by batch moments, tf.nn.moments + tf.nn.batch_normalization '
      'in training mode, is not recognized: its scale depends on the data. '
      'Use tf.compat.v1.nn.fused_batch_norm, or moving statistics.)',
      normalize=check_normalize(normalize),
      normalizable=lambda source: 'gamma')


def group_lasso(threshold, l1_fraction=0.0, grouping=None, normalize=False):
  """Conv/matmul kernels are the sources; group lasso per output channel
  (relative to the layer's own scale where its output is batch-normalized
  and the loss does not see that scale)."""
  group_lasso_regularizer.check_l1_fraction(l1_fraction)
  return family_lib.Family(
      'GroupLasso', functools.partial(
          _group_lasso_sources,
          op_regularizers.check_threshold('threshold', threshold),
          float(l1_fraction)),
      grouping or grouping_regularizers.MaxGroupingRegularizer,
      sources_description='the kernels of convolutions, Dense/MatMul and '
      'EinsumDense layers',
      remedy='Only depthwise or weight-free ops were found; stop the '
      'analysis at the layers you want pruned.',
      normalize=check_normalize(normalize),
      normalizable=lambda source: 'group_lasso')


def logistic_sigmoid(alive_threshold=0.1, regularize_on_mask=True,
                     mask_as_alive_vector=True, grouping=None):
  """LogisticSigmoidGating masks are the sources; tied gates 1 - prod(1-p)."""
  setting = (logistic_sigmoid_regularizer.check_alive_threshold(
      alive_threshold), bool(regularize_on_mask),
             bool(mask_as_alive_vector))
  return family_lib.Family(
      'LogisticSigmoid', functools.partial(_gate_sources, setting),
      grouping or grouping_regularizers.ProbabilisticGroupingRegularizer,
      sources_description='LogisticSigmoidGating gates',
      remedy='Put morph_net.probabilistic_gating.LogisticSigmoidGating() '
      'after each prunable layer (or use gated_relu_activation()).')


def one_threshold(name, value, threshold, default=None):
  """The alive threshold given either by the family's own argument name
  (`name`: the original MorphNet's, e.g. gamma_threshold) or by the name
  every family shares, `threshold`.

  Raises:
    TypeError: both are given, or neither and there is no default.
  """
  if value is not None and threshold is not None:
    raise TypeError('Give the alive threshold once: %s=%r or threshold=%r '
                    '(the same argument).' % (name, value, threshold))
  chosen = threshold if value is None else value
  if chosen is None:
    if default is None:
      raise TypeError('Missing the alive threshold: give threshold= (or %s=, '
                      'its original name).' % name)
    return default
  return chosen


class _Named(gnr.NetworkRegularizer):
  """Builds the regularizer from a family and the subclass's resource."""

  RESOURCE = None  # staticmethod: Compute -> Coefficients
  NAME = None
  COST_NAME = None

  def _build(self, output_boundary, family, op_handler_dict, kwargs):
    gnr.NetworkRegularizer.__init__(self, output_boundary, family,
                                    self.RESOURCE, self.NAME,
                                    self.COST_NAME,
                                    op_handler_dict=op_handler_dict, **kwargs)


class GammaFamily(_Named):
  """Sources are BatchNorm gammas, alive when |gamma| > gamma_threshold.

  Args:
    output_boundary: a Keras model, a concrete function, or the output ops
      of a `tf.compat.v1` graph.
    gamma_threshold: channels with |gamma| above it are alive (with
      `normalize`, |gamma| / the RMS of the BatchNorm's |gamma|). Every
      family also takes it as `threshold=`.
    op_handler_dict: extra op handlers merged into the default table.
    normalize: False (default): the original MorphNet's absolute |gamma|.
      'auto': a BatchNorm whose scale the loss does not see (it feeds other
      BatchNorms through ReLU, pooling, convolutions:
      `framework.invariance`) is measured relative to its own scale (in
      Keras models and tf.functions; tf.compat.v1 graphs stay absolute).
      True: every BatchNorm, in every graph.
    **kwargs: the shared keyword arguments (module docstring).
  """

  def __init__(self, output_boundary, gamma_threshold=None,
               op_handler_dict=None, normalize=False, threshold=None,
               **kwargs):
    self._build(output_boundary, gamma(
        one_threshold('gamma_threshold', gamma_threshold, threshold),
        normalize=normalize), op_handler_dict, kwargs)


class GroupLassoFamily(_Named):
  """Sources are conv/matmul kernels (group lasso per output channel).

  Args:
    output_boundary: as in `GammaFamily`.
    threshold: channels whose kernel norm exceeds it are alive.
    l1_fraction: norm = (1 - f) RMS(w) + f mean|w| per output channel.
    op_handler_dict: extra op handlers merged into the default table.
    normalize: as in `GammaFamily`, for kernels whose output is
      batch-normalized (the kernel's scale is invisible to the loss).
    **kwargs: the shared keyword arguments (module docstring).
  """

  def __init__(self, output_boundary, threshold, l1_fraction=0.0,
               op_handler_dict=None, normalize=False, **kwargs):
    self._build(output_boundary, group_lasso(threshold, l1_fraction,
                                             normalize=normalize),
                op_handler_dict, kwargs)


class LogisticSigmoidFamily(_Named):
  """Sources are LogisticSigmoidGating gates (FiGS).

  Args:
    output_boundary: as in `GammaFamily`.
    regularize_on_mask: the term uses the mask sampled in the same training
      step (True) or the gate probabilities sigmoid(logits) (False).
    alive_threshold: a gate is alive when its probability reaches it
      (default 0.1; also `threshold=`).
    mask_as_alive_vector: alive from the (deterministic) mask instead.
    op_handler_dict: extra op handlers merged into the default table.
    **kwargs: the shared keyword arguments (module docstring).
  """

  def __init__(self, output_boundary, regularize_on_mask=True,
               alive_threshold=None, mask_as_alive_vector=True,
               op_handler_dict=None, threshold=None, **kwargs):
    self._build(output_boundary, logistic_sigmoid(
        one_threshold('alive_threshold', alive_threshold, threshold, 0.1),
        regularize_on_mask, mask_as_alive_vector),
                op_handler_dict, kwargs)
