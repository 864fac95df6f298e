"""Public surface: each package's `__all__` is exactly what it exports, and
what it exports is the library's own (docstring examples run as doctests
through --doctest-modules, see pytest.ini)."""

import importlib
import inspect
import types

import pytest

_PACKAGES = ['morph_net.framework', 'morph_net.op_regularizers',
             'morph_net.network_regularizers', 'morph_net.tools',
             'morph_net.probabilistic_gating', 'morph_net.keras']


def _public_names(module):
  """The names a reader sees in the package: no private names, no
  submodules (importing a submodule binds its name in the package)."""
  return {name for name, value in vars(module).items()
          if not name.startswith('_')
          and not isinstance(value, types.ModuleType)}


@pytest.mark.parametrize('name', _PACKAGES)
def test_all_lists_every_public_name_once(name):
  module = importlib.import_module(name)
  assert len(set(module.__all__)) == len(module.__all__), sorted(
      n for n in module.__all__ if module.__all__.count(n) > 1)
  public = _public_names(module)
  assert sorted(public - set(module.__all__)) == [], 'not in __all__'
  assert sorted(set(module.__all__) - public) == [], 'not defined'


@pytest.mark.parametrize('name', _PACKAGES)
def test_star_import_gives_the_librarys_own_classes_and_functions(name):
  namespace = {}
  exec('from %s import *' % name, namespace)  # pylint: disable=exec-used
  del namespace['__builtins__']
  assert sorted(namespace) == sorted(importlib.import_module(name).__all__)
  foreign = {attr: value.__module__ for attr, value in namespace.items()
             if (inspect.isclass(value) or inspect.isfunction(value))
             and not value.__module__.startswith('morph_net.')}
  assert foreign == {}, 'exported, but defined outside morph_net'
