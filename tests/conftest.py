"""Test configuration: quiet TensorFlow before it is imported; slow tests.

Tests marked `@pytest.mark.slow` (every Keras Applications model) run only
with `--run-slow` or MORPHNET_RUN_SLOW=1. The fast tests cover a
representative subset; .ci/run runs the slow ones as a second step.
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
