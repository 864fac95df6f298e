"""Test configuration: quiet TensorFlow before it is imported; slow tests.

Tests marked `@pytest.mark.slow` (the whole Keras Applications zoo) run only
with `--run-slow` or MORPHNET_RUN_SLOW=1; CI runs a representative subset
of them through the fast tests.
"""

import os

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


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
