"""Per-op regularizers: how a source's channels are scored."""

from morph_net.op_regularizers._checks import check_threshold
from morph_net.op_regularizers._checks import NonFiniteSourceError
from morph_net.op_regularizers.gamma_l1_regularizer import GammaL1Regularizer
from morph_net.op_regularizers.group_lasso_regularizer import GroupLassoRegularizer
from morph_net.op_regularizers.logistic_sigmoid_regularizer import LogisticSigmoidRegularizer

__all__ = ['GammaL1Regularizer', 'GroupLassoRegularizer',
           'LogisticSigmoidRegularizer', 'NonFiniteSourceError',
           'check_threshold']
