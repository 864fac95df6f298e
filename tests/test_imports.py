"""Public surface: every name in __all__ imports, and doctests pass."""

import doctest
import importlib

import pytest

_PACKAGES = ['morph_net.framework', 'morph_net.op_regularizers',
             'morph_net.network_regularizers', 'morph_net.tools',
             'morph_net.probabilistic_gating', 'morph_net.keras']


@pytest.mark.parametrize('name', _PACKAGES)
def test_all_names_resolve(name):
  module = importlib.import_module(name)
  assert module.__all__, name
  for attr in module.__all__:
    assert getattr(module, attr) is not None, (name, attr)


@pytest.mark.parametrize('name', [
    'morph_net.op_regularizers.gamma_l1_regularizer',
    'morph_net.op_regularizers.group_lasso_regularizer',
    'morph_net.network_regularizers.hardware',
    'morph_net.probabilistic_gating.probabilistic_grouping_regularizer',
])
def test_docstring_examples_run(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module)
  assert result.attempted > 0
  assert result.failed == 0
