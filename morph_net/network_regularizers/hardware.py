"""Hardware specs for latency: peak compute (GFLOP/s) and bandwidth (GB/s).

The first six rows are MorphNet's table. Current accelerators use their
data sheets' dense (non-sparse) 16-bit tensor peak and memory bandwidth:
A100 SXM4 80GB (312 TFLOPS BF16, 2039 GB/s HBM2e), H100 SXM5 (989 TFLOPS
BF16, 3350 GB/s HBM3), L4 (121 TFLOPS FP16, 300 GB/s GDDR6), TPU v4
(275 TFLOPS BF16, 1200 GB/s HBM2), TPU v5e (197 TFLOPS BF16, 819 GB/s).
FLOP_LATENCY and MEMORY_LATENCY are idealized devices with infinite
bandwidth or infinite compute: latency then equals FLOPs or bytes moved.

A spec measured on your own machine (`morph_net.keras.profile`, or
`morphnet profile`) is a JSON file {"name", "peak_compute",
"memory_bandwidth", "op_overhead"}; `get_hardware` loads it from its path,
or by name from the directories in $MORPHNET_HARDWARE_PATH (os.pathsep
separated; `<name>.json`). `op_overhead` is the fitted fixed time per op (ns,
0 for data-sheet rows): what one op costs on top of its roofline time.
`depthwise_compute` (GFLOP/s, optional; None: `peak_compute`) is the rate of
depthwise convs, which do few FLOPs per byte and run far below a CPU's
dense peak.
"""

import collections
import json
import math
import os

from morph_net.framework import atomic_files

HardwareSpec = collections.namedtuple(
    'HardwareSpec', ['name', 'peak_compute', 'memory_bandwidth',
                     'op_overhead', 'depthwise_compute'],
    defaults=[0.0, None])
HARDWARE_PATH_ENV = 'MORPHNET_HARDWARE_PATH'

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
  """A HardwareSpec from a known name, a JSON path, a HardwareSpec or a dict.

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
          'A custom hardware dict needs the keys name, peak_compute '
          '(GFLOP/s) and memory_bandwidth (GB/s), optionally op_overhead '
          '(ns) and depthwise_compute (GFLOP/s); got %s.'
          % sorted(hardware)) from None
  elif isinstance(hardware, str) and hardware in HARDWARE:
    if _find_file(hardware):
      raise ValueError(
          'Hardware %r is both a built-in spec and the file %s: rename the '
          'file (a profiled spec needs its own name), or pass its path.'
          % (hardware, _find_file(hardware)))
    return HARDWARE[hardware]
  elif isinstance(hardware, (str, os.PathLike)) and _find_file(hardware):
    spec = load_hardware(_find_file(hardware))
  else:
    raise ValueError(
        'Unknown hardware %r. Known: %s. Or pass HardwareSpec(name, '
        'peak_compute_gflops, memory_bandwidth_gbs), the path of a JSON spec '
        '(morphnet profile writes one), or the name of one in $%s.'
        % (hardware, ', '.join(sorted(HARDWARE)), HARDWARE_PATH_ENV))
  if not (spec.peak_compute > 0 and spec.memory_bandwidth > 0 and
          spec.op_overhead >= 0 and math.isfinite(spec.op_overhead) and
          (spec.depthwise_compute is None or spec.depthwise_compute > 0)):
    raise ValueError('Hardware %r needs positive peak_compute and '
                     'memory_bandwidth, a finite op_overhead >= 0 and a '
                     'depthwise_compute that is None or > 0.'
                     % (spec.name,))
  return spec


def _find_file(hardware):
  path = os.fspath(hardware)
  if os.path.isfile(path):
    return path
  for directory in os.environ.get(HARDWARE_PATH_ENV, '').split(os.pathsep):
    candidate = os.path.join(directory, path + '.json')
    if directory and os.path.isfile(candidate):
      return candidate
  return None


def save_hardware(spec, path, fit=None):
  """Writes a HardwareSpec as JSON (what `get_hardware(path)` reads).

  `fit`: an optional report stored alongside (ignored when loading).
  """
  data = get_hardware(spec)._asdict()
  if fit is not None:
    data['fit'] = fit
  atomic_files.write_text(path, json.dumps(data, indent=2) + '\n')


def load_hardware(path):
  """The HardwareSpec stored at `path` by `save_hardware`."""
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError('Cannot read hardware spec %s: %s' % (path, e)) from None
  if not isinstance(data, dict):
    raise ValueError('Hardware spec %s: expected a JSON object.' % path)
  # Other keys (e.g. the 'fit' report morphnet profile writes) are notes.
  data = {k: v for k, v in data.items() if k in HardwareSpec._fields}
  try:
    return get_hardware(data)
  except ValueError as e:
    raise ValueError('Hardware spec %s: %s' % (path, e)) from None
