"""Hardware specs for latency: peak compute (GFLOP/s) and bandwidth (GB/s).

The first six rows are MorphNet's table. Current accelerators use their
data sheets' dense (non-sparse) 16-bit tensor peak and memory bandwidth:
A100 SXM4 80GB (312 TFLOPS BF16, 2039 GB/s HBM2e), H100 SXM5 (989 TFLOPS
BF16, 3350 GB/s HBM3), L4 (121 TFLOPS FP16, 300 GB/s GDDR6), TPU v4
(275 TFLOPS BF16, 1200 GB/s HBM2), TPU v5e (197 TFLOPS BF16, 819 GB/s).
FLOP_LATENCY and MEMORY_LATENCY are idealized devices with infinite
bandwidth or infinite compute: latency then equals FLOPs or bytes moved.
"""

import collections

HardwareSpec = collections.namedtuple(
    'HardwareSpec', ['name', 'peak_compute', 'memory_bandwidth'])

_TABLE = (
    HardwareSpec('K80', 8740, 480),
    HardwareSpec('P4', 5500, 192),
    HardwareSpec('T4', 8100, 300),
    HardwareSpec('P100', 9300, 732),
    HardwareSpec('V100', 125000, 900),
    HardwareSpec('TPUv2', 22500, 300),
    HardwareSpec('A100', 312000, 2039),
    HardwareSpec('H100', 989000, 3350),
    HardwareSpec('L4', 121000, 300),
    HardwareSpec('TPUv4', 275000, 1200),
    HardwareSpec('TPUv5e', 197000, 819),
    HardwareSpec('FLOP_LATENCY', 1, 1e20),
    HardwareSpec('MEMORY_LATENCY', 1e20, 1),
)
HARDWARE = {spec.name: spec for spec in _TABLE}
PEAK_COMPUTE = {spec.name: spec.peak_compute for spec in _TABLE}
MEMORY_BANDWIDTH = {spec.name: spec.memory_bandwidth for spec in _TABLE}


def get_hardware(hardware):
  """A HardwareSpec from a known name, a HardwareSpec, or a dict.

  >>> get_hardware('V100').peak_compute
  125000
  >>> get_hardware({'name': 'mine', 'peak_compute': 10.0,
  ...               'memory_bandwidth': 2.0}).name
  'mine'
  """
  if isinstance(hardware, HardwareSpec):
    spec = hardware
  elif isinstance(hardware, dict):
    try:
      spec = HardwareSpec(**hardware)
    except TypeError:
      raise ValueError(
          'A custom hardware dict needs exactly the keys name, peak_compute '
          '(GFLOP/s) and memory_bandwidth (GB/s); got %s.'
          % sorted(hardware)) from None
  elif isinstance(hardware, str) and hardware in HARDWARE:
    return HARDWARE[hardware]
  else:
    raise ValueError(
        'Unknown hardware %r. Known: %s. Or pass HardwareSpec(name, '
        'peak_compute_gflops, memory_bandwidth_gbs).'
        % (hardware, ', '.join(sorted(HARDWARE))))
  if not (spec.peak_compute > 0 and spec.memory_bandwidth > 0):
    raise ValueError('Hardware %r needs positive peak_compute and '
                     'memory_bandwidth.' % (spec.name,))
  return spec
