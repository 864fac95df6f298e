"""Test configuration, and what several test files share.

Slow tests: those marked `@pytest.mark.slow` run only with `--run-slow` or
MORPHNET_RUN_SLOW=1. The fast tests cover a representative subset; .ci/run
runs the slow ones as a second step.

Shared helpers, imported by test files with `from conftest import ...`
(pytest puts this directory on sys.path):
- `benchmark(name)`: the module benchmarks/<name>.py, imported once.
- `conv_bn(x, filters, name)`: a Conv2D -> BatchNormalization block.
- `conv_bn_model(...)`: the small Conv-BN-ReLU network most tests use.
Shared fixture: `digits`, sklearn's 8x8 digits scaled to [0, 1].
"""

import importlib.util
import os
import sys

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'benchmarks')


def pytest_addoption(parser):
  parser.addoption('--run-slow', action='store_true',
                   help='also run tests marked slow (the Keras zoo)')


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: long test, needs --run-slow')


def pytest_collection_modifyitems(config, items):
  if config.getoption('--run-slow') or os.environ.get('MORPHNET_RUN_SLOW'):
    return
  skip = pytest.mark.skip(reason='slow: run with --run-slow')
  for item in items:
    if 'slow' in item.keywords:
      item.add_marker(skip)


def benchmark(name):
  """benchmarks/<name>.py as a module, imported once per process.

  It is registered in sys.modules under `name`, so every test file gets the
  same module object (Keras classes a benchmark registers are registered
  once).
  """
  path = os.path.join(BENCHMARKS, name + '.py')
  module = sys.modules.get(name)
  if module is not None:
    if os.path.abspath(getattr(module, '__file__', '')) != path:
      raise ImportError('a module %r not from %s is already imported'
                        % (name, path))
    return module
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  return module


def conv_bn(x, filters, name, kernel=1, strides=1):
  """Conv2D `name` ('same', no bias) -> BatchNormalization `name`_bn."""
  import keras  # pylint: disable=g-import-not-at-top
  x = keras.layers.Conv2D(filters, kernel, strides=strides, padding='same',
                          use_bias=False, name=name)(x)
  return keras.layers.BatchNormalization(name=name + '_bn')(x)


def graph_conv_bn(x, filters):
  """In a tf.compat.v1 graph: 3x3 conv (variable 'k') -> fused batch
  norm (gamma variable 'gamma', ones). Returns (output, gamma)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  kernel = tf.compat.v1.get_variable(
      'k', [3, 3, x.shape.as_list()[-1], filters])
  gamma = tf.compat.v1.get_variable('gamma', initializer=tf.ones([filters]))
  y = tf.compat.v1.nn.fused_batch_norm(
      tf.nn.conv2d(x, kernel, 1, 'SAME'), gamma, tf.zeros([filters]))[0]
  return y, gamma


def conv_bn_model(input_shape=(8, 8, 3), widths=(4, 6), classes=5,
                  strides=1, padding='same', use_bias=False, seed=None):
  """conv1 -> bn1 -> ReLU -> conv2 -> ... -> global mean -> Dense `logits`.

  One 3x3 Conv2D `conv<i>` + BatchNormalization `bn<i>` + ReLU per entry
  of `widths`. `strides` is one stride for every conv or one per conv. With
  a `seed`, Keras' random seed is set first (reproducible weights).
  """
  import keras  # pylint: disable=g-import-not-at-top
  if seed is not None:
    keras.utils.set_random_seed(seed)
  if isinstance(strides, int):
    strides = (strides,) * len(widths)
  inputs = keras.Input(input_shape)
  x = inputs
  for i, (width, stride) in enumerate(zip(widths, strides), 1):
    x = keras.layers.Conv2D(width, 3, strides=stride, padding=padding,
                            use_bias=use_bias, name='conv%d' % i)(x)
    x = keras.layers.BatchNormalization(name='bn%d' % i)(x)
    x = keras.layers.ReLU()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(classes, name='logits')(x))


@pytest.fixture(scope='session')
def digits():
  """sklearn's digits: images [1797, 8, 8, 1] float32 in [0, 1], int32
  labels. Read-only: every test that asks for them shares one copy."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  data = load_digits()
  x = (data.images / 16.0).astype('float32')[..., None]
  y = data.target.astype('int32')
  x.flags.writeable = False
  y.flags.writeable = False
  return x, y
