"""Latency regularizers: penalize roofline inference time on given hardware.

`hardware` is a name from `hardware.HARDWARE` (e.g. 'V100', 'H100'), a
`hardware.HardwareSpec`, or a dict with name, peak_compute (GFLOP/s) and
memory_bandwidth (GB/s).
"""

from morph_net.framework import gating_source_op_handler as gating
from morph_net.framework import group_lasso_source_op_handler as gl
from morph_net.framework import op_handlers
from morph_net.network_regularizers import generic_network_regularizer
from morph_net.network_regularizers import hardware as hardware_lib
from morph_net.network_regularizers import latency_calculator
from morph_net.probabilistic_gating import probabilistic_grouping_regularizer as pgr


class _LatencyRegularizer(generic_network_regularizer.NetworkRegularizer):
  """A network regularizer whose cost is the roofline latency."""

  def __init__(self, output_boundary, table, hardware, batch_size, name,
               **kwargs):
    spec = hardware_lib.get_hardware(hardware)
    if int(batch_size) < 1:
      raise ValueError('batch_size must be >= 1, got %r.' % (batch_size,))

    def factory(manager):
      return latency_calculator.LatencyCalculator(
          manager, spec.peak_compute, spec.memory_bandwidth, int(batch_size))

    super().__init__(output_boundary, table, None, name=name,
                     cost_name='%s Latency' % spec.name,
                     calculator_factory=factory, **kwargs)
    self._hardware = spec

  @property
  def hardware(self):
    return self._hardware


class GammaLatencyRegularizer(_LatencyRegularizer):
  """Latency regularizer whose sources are BatchNorm gammas.

  Args:
    output_boundary: ops of a `tf.compat.v1` graph, a Keras model or a
      concrete function.
    gamma_threshold: channels with |gamma| above it are alive.
    hardware: target hardware (see module docstring).
    batch_size: examples per inference.
    Other arguments: as in `GammaFlopsRegularizer`.
  """

  def __init__(self, output_boundary, gamma_threshold, hardware,
               batch_size=1, regularizer_decorator=None,
               decorator_parameters=None, input_boundary=None,
               force_group=None, regularizer_blacklist=None,
               input_signature=None, op_handler_dict=None):
    table = op_handlers.gamma_op_handler_dict(gamma_threshold)
    table.update(op_handler_dict or {})
    super().__init__(
        output_boundary, table, hardware, batch_size, 'GammaLatency',
        input_boundary=input_boundary, force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        regularizer_decorator=regularizer_decorator,
        decorator_parameters=decorator_parameters,
        input_signature=input_signature)


class GroupLassoLatencyRegularizer(_LatencyRegularizer):
  """Latency regularizer whose sources are conv/matmul kernels.

  Args:
    output_boundary: as in `GammaLatencyRegularizer`.
    threshold: channels whose kernel norm exceeds it are alive.
    hardware: target hardware (see module docstring).
    batch_size: examples per inference.
    l1_fraction: norm = (1 - f) RMS(w) + f mean|w| per output channel.
    Other arguments: as in `GroupLassoFlopsRegularizer`.
  """

  def __init__(self, output_boundary, threshold, hardware, batch_size=1,
               l1_fraction=0.0, regularizer_decorator=None,
               decorator_parameters=None, input_boundary=None,
               force_group=None, regularizer_blacklist=None,
               input_signature=None, op_handler_dict=None):
    table = gl.group_lasso_op_handler_dict(threshold, l1_fraction)
    table.update(op_handler_dict or {})
    super().__init__(
        output_boundary, table, hardware, batch_size, 'GroupLassoLatency',
        input_boundary=input_boundary, force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        regularizer_decorator=regularizer_decorator,
        decorator_parameters=decorator_parameters,
        input_signature=input_signature)


class LogisticSigmoidLatencyRegularizer(_LatencyRegularizer):
  """Latency regularizer whose sources are LogisticSigmoidGating gates.

  Args:
    output_boundary: as in `GammaLatencyRegularizer`.
    hardware: target hardware (see module docstring).
    batch_size: examples per inference.
    regularize_on_mask, alive_threshold, mask_as_alive_vector: as in
      `LogisticSigmoidFlopsRegularizer`.
  """

  def __init__(self, output_boundary, hardware, batch_size=1,
               regularize_on_mask=True, alive_threshold=0.1,
               mask_as_alive_vector=True, regularizer_decorator=None,
               decorator_parameters=None, input_boundary=None,
               force_group=None, regularizer_blacklist=None,
               input_signature=None, op_handler_dict=None):
    table = gating.logistic_sigmoid_op_handler_dict(
        alive_threshold, regularize_on_mask, mask_as_alive_vector)
    table.update(op_handler_dict or {})
    super().__init__(
        output_boundary, table, hardware, batch_size,
        'LogisticSigmoidLatency',
        input_boundary=input_boundary, force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        regularizer_decorator=regularizer_decorator,
        decorator_parameters=decorator_parameters,
        input_signature=input_signature,
        create_grouping_regularizer=pgr.ProbabilisticGroupingRegularizer)
