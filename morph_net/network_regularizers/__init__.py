"""Network regularizers: a resource cost and its sparsity term."""

from morph_net.network_regularizers.activation_regularizer import GammaActivationRegularizer
from morph_net.network_regularizers.activation_regularizer import GroupLassoActivationRegularizer
from morph_net.network_regularizers.flop_regularizer import GammaFlopsRegularizer
from morph_net.network_regularizers.flop_regularizer import GroupLassoFlopsRegularizer
from morph_net.network_regularizers.flop_regularizer import LogisticSigmoidFlopsRegularizer
from morph_net.network_regularizers.generic_network_regularizer import NetworkRegularizer
from morph_net.network_regularizers.hardware import HardwareSpec
from morph_net.network_regularizers.latency_regularizer import GammaLatencyRegularizer
from morph_net.network_regularizers.latency_regularizer import GroupLassoLatencyRegularizer
from morph_net.network_regularizers.latency_regularizer import LogisticSigmoidLatencyRegularizer
from morph_net.network_regularizers.model_size_regularizer import GammaModelSizeRegularizer
from morph_net.network_regularizers.model_size_regularizer import GroupLassoModelSizeRegularizer
from morph_net.network_regularizers.model_size_regularizer import LogisticSigmoidModelSizeRegularizer

__all__ = ['GammaActivationRegularizer', 'GammaFlopsRegularizer',
           'GammaLatencyRegularizer', 'GammaModelSizeRegularizer',
           'GroupLassoActivationRegularizer', 'GroupLassoFlopsRegularizer',
           'GroupLassoLatencyRegularizer', 'GroupLassoModelSizeRegularizer',
           'HardwareSpec', 'LogisticSigmoidFlopsRegularizer',
           'LogisticSigmoidLatencyRegularizer',
           'LogisticSigmoidModelSizeRegularizer', 'NetworkRegularizer']
