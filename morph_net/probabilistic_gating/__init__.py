"""Probabilistic channel gating (FiGS): gating layers and their grouping."""

from morph_net.probabilistic_gating.activation_gating import gated_activation
from morph_net.probabilistic_gating.activation_gating import gated_batch_norm
from morph_net.probabilistic_gating.activation_gating import gated_relu6_activation
from morph_net.probabilistic_gating.activation_gating import gated_relu_activation
from morph_net.probabilistic_gating.activation_gating import logistic_sigmoid_gating
from morph_net.probabilistic_gating.activation_gating import LogisticSigmoidGating
from morph_net.framework.grouping_regularizers import ProbabilisticGroupingRegularizer

__all__ = [
    'LogisticSigmoidGating', 'ProbabilisticGroupingRegularizer',
    'gated_activation', 'gated_batch_norm', 'gated_relu6_activation', 'gated_relu_activation',
    'logistic_sigmoid_gating',
]
