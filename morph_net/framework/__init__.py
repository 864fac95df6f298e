"""The op-handler framework: graph view, handlers, and the manager."""

from morph_net.framework.axis_op_handlers import ConcatOpHandler
from morph_net.framework.axis_op_handlers import PackOpHandler
from morph_net.framework.axis_op_handlers import RollOpHandler
from morph_net.framework.axis_op_handlers import SliceOpHandler
from morph_net.framework.axis_op_handlers import SplitOpHandler
from morph_net.framework.axis_op_handlers import UnpackOpHandler
from morph_net.framework.conv_op_handlers import DepthwiseConvOpHandler
from morph_net.framework.conv_op_handlers import MatMulOpHandler
from morph_net.framework.conv_op_handlers import OutputNonPassthroughOpHandler
from morph_net.framework.einsum_op_handler import EinsumOpHandler
from morph_net.framework.errors import AnalysisError
from morph_net.framework.errors import ChannelMismatchError
from morph_net.framework.errors import NoRegularizerSourceError
from morph_net.framework.errors import UnknownShapeError
from morph_net.framework.errors import UnsupportedOpError
from morph_net.framework.family import Family
from morph_net.framework.gather_op_handler import GatherOpHandler
from morph_net.framework.graph_view import GraphView
from morph_net.framework.grouping_op_handlers import BiasAddOpHandler
from morph_net.framework.grouping_op_handlers import ElementwiseOpHandler
from morph_net.framework.grouping_op_handlers import GroupingOpHandler
from morph_net.framework.grouping_op_handlers import IdentityNOpHandler
from morph_net.framework.grouping_op_handlers import PadOpHandler
from morph_net.framework.grouping_op_handlers import ReductionOpHandler
from morph_net.framework.grouping_op_handlers import SameChannelsOpHandler
from morph_net.framework.grouping_op_handlers import SpaceToDepthOpHandler
from morph_net.framework.grouping_op_handlers import TransposeOpHandler
from morph_net.framework.grouping_regularizers import L2GroupingRegularizer
from morph_net.framework.grouping_regularizers import MaxGroupingRegularizer
from morph_net.framework.grouping_regularizers import ProbabilisticGroupingRegularizer
from morph_net.framework.op_handler import LeafOpHandler
from morph_net.framework.op_handler import OpHandler
from morph_net.framework.op_handler import TerminalOpHandler
from morph_net.framework.op_handler import ValueOpHandler
from morph_net.framework.op_handlers import default_op_handler_dict
from morph_net.framework.op_regularizer_manager import OpRegularizerManager
from morph_net.framework.op_slice import OpGroup
from morph_net.framework.op_slice import OpSlice
from morph_net.framework.op_slice import Slice
from morph_net.framework.patterns import Facts
from morph_net.framework.recurrent import RecurrentLoopOpHandler
from morph_net.framework.reshape_op_handler import ReshapeOpHandler

__all__ = [
    'AnalysisError', 'BiasAddOpHandler', 'ChannelMismatchError',
    'ConcatOpHandler', 'DepthwiseConvOpHandler', 'EinsumOpHandler',
    'ElementwiseOpHandler', 'Facts', 'Family', 'GatherOpHandler', 'GraphView',
    'GroupingOpHandler', 'IdentityNOpHandler', 'L2GroupingRegularizer',
    'LeafOpHandler', 'MatMulOpHandler', 'MaxGroupingRegularizer',
    'NoRegularizerSourceError', 'OpGroup', 'OpHandler',
    'OpRegularizerManager', 'OpSlice', 'OutputNonPassthroughOpHandler',
    'PackOpHandler', 'PadOpHandler', 'ProbabilisticGroupingRegularizer',
    'RecurrentLoopOpHandler', 'ReductionOpHandler', 'ReshapeOpHandler',
    'RollOpHandler', 'SameChannelsOpHandler', 'Slice', 'SliceOpHandler',
    'SpaceToDepthOpHandler',
    'SplitOpHandler', 'TerminalOpHandler', 'TransposeOpHandler',
    'UnknownShapeError', 'UnpackOpHandler', 'UnsupportedOpError',
    'ValueOpHandler', 'default_op_handler_dict',
]
