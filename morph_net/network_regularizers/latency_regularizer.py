"""Latency regularizers: penalize roofline inference time on given hardware.

`hardware` is a name from `hardware.HARDWARE` (e.g. 'V100', 'H100'), a
`hardware.HardwareSpec`, or a dict with name, peak_compute (GFLOP/s) and
memory_bandwidth (GB/s). `batch_size` is the number of examples per
inference. Other keyword arguments: as in `flop_regularizer`.
"""

from morph_net.network_regularizers import families
from morph_net.network_regularizers import generic_network_regularizer as gnr
from morph_net.network_regularizers import hardware as hardware_lib
from morph_net.network_regularizers import latency_calculator


class _LatencyRegularizer(gnr.NetworkRegularizer):
  """A network regularizer whose cost is the roofline latency."""

  def __init__(self, output_boundary, family, hardware, batch_size, name,
               **kwargs):
    if hardware is None:
      raise TypeError('Missing hardware: give hardware= one of %s, or a '
                      'HardwareSpec.' % ', '.join(sorted(hardware_lib.HARDWARE)))
    spec = hardware_lib.get_hardware(hardware)
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or (
        batch_size < 1):
      raise ValueError('batch_size must be an integer >= 1, got %r.'
                       % (batch_size,))

    def factory(manager):
      return latency_calculator.LatencyCalculator.from_spec(
          manager, spec, int(batch_size))

    super().__init__(output_boundary, family, None, name,
                     '%s Latency' % spec.name, calculator_factory=factory,
                     **kwargs)
    self._hardware = spec

  @property
  def hardware(self):
    """The `HardwareSpec` latency is computed for."""
    return self._hardware


class GammaLatencyRegularizer(_LatencyRegularizer):
  """Latency; sources are BatchNorm gammas, alive when |gamma| > threshold."""

  def __init__(self, output_boundary, gamma_threshold=None, hardware=None,
               batch_size=1, op_handler_dict=None, normalize=False,
               threshold=None, **kwargs):
    super().__init__(output_boundary, families.gamma(
        families.one_threshold('gamma_threshold', gamma_threshold, threshold),
        normalize=normalize),
                     hardware, batch_size, 'GammaLatency',
                     op_handler_dict=op_handler_dict, **kwargs)


class GroupLassoLatencyRegularizer(_LatencyRegularizer):
  """Latency; sources are conv/matmul kernels (group lasso per channel)."""

  def __init__(self, output_boundary, threshold, hardware, batch_size=1,
               l1_fraction=0.0, op_handler_dict=None, normalize=False,
               **kwargs):
    super().__init__(output_boundary,
                     families.group_lasso(threshold, l1_fraction,
                                          normalize=normalize),
                     hardware, batch_size, 'GroupLassoLatency',
                     op_handler_dict=op_handler_dict, **kwargs)


class LogisticSigmoidLatencyRegularizer(_LatencyRegularizer):
  """Latency; sources are LogisticSigmoidGating gates (FiGS)."""

  def __init__(self, output_boundary, hardware, batch_size=1,
               regularize_on_mask=True, alive_threshold=None,
               mask_as_alive_vector=True, op_handler_dict=None,
               threshold=None, **kwargs):
    super().__init__(output_boundary,
                     families.logistic_sigmoid(
                         families.one_threshold('alive_threshold',
                                                alive_threshold, threshold,
                                                0.1),
                         regularize_on_mask, mask_as_alive_vector),
                     hardware, batch_size, 'LogisticSigmoidLatency',
                     op_handler_dict=op_handler_dict, **kwargs)
