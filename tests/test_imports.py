"""Public surface: every name in __all__ imports (docstring examples run as
doctests through --doctest-modules, see pytest.ini)."""

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
