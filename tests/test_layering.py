"""The package's import graph runs one way, and modules stay small.

framework <- regularizers (op_regularizers, probabilistic_gating,
network_regularizers) <- tools (reports, the exporter, configurable ops)
<- keras (the Keras workflow) <- cli: no module imports from a higher layer, and no morph_net import hides inside a function (the way to
dodge an import cycle).
"""

import ast
import pathlib

import pytest

_ROOT = pathlib.Path(__file__).resolve().parent.parent / 'morph_net'
_RANK = {'framework': 0, 'op_regularizers': 1, 'probabilistic_gating': 1,
         'network_regularizers': 1, 'tools': 2, 'keras': 3, 'cli': 4}
_MAX_LINES = 500


def _modules():
  return sorted(p for p in _ROOT.rglob('*.py'))


def _package(module_path):
  parts = module_path.relative_to(_ROOT).with_suffix('').parts
  return parts[0] if parts[0] in _RANK else None


def _imported_packages(node):
  if isinstance(node, ast.ImportFrom) and node.module:
    names = [node.module] + ['%s.%s' % (node.module, a.name)
                             for a in node.names]
  elif isinstance(node, ast.Import):
    names = [a.name for a in node.names]
  else:
    return []
  found = []
  for name in names:
    parts = name.split('.')
    if parts[0] == 'morph_net' and len(parts) > 1 and parts[1] in _RANK:
      found.append(parts[1])
  return found


@pytest.mark.parametrize('path', _modules(), ids=lambda p: str(
    p.relative_to(_ROOT)))
def test_imports_point_down_and_sit_at_module_level(path):
  package = _package(path)
  tree = ast.parse(path.read_text())
  top_level = set(id(n) for n in tree.body)
  for node in ast.walk(tree):
    imported = _imported_packages(node)
    if not imported:
      continue
    # cli.py is the top layer (nothing imports it, so it can close no
    # cycle); it defers its imports so `morphnet --help` skips TensorFlow.
    assert id(node) in top_level or path.name == 'cli.py', (
        '%s:%d imports morph_net inside a function' % (path, node.lineno))
    if package is None:
      continue
    for other in imported:
      assert _RANK[other] <= _RANK[package], (
          '%s:%d: %s (layer %d) imports %s (layer %d)' % (
              path, node.lineno, package, _RANK[package], other,
              _RANK[other]))


@pytest.mark.parametrize('path', _modules(), ids=lambda p: str(
    p.relative_to(_ROOT)))
def test_modules_stay_under_the_size_limit(path):
  lines = len(path.read_text().splitlines())
  assert lines <= _MAX_LINES, '%s has %d lines (limit %d): split it' % (
      path, lines, _MAX_LINES)

