"""The README's runnable examples run, and its tables say what the code does.

The tables are parsed, not searched: a row naming the wrong handler or a
class that does not exist fails even where the names occur elsewhere.
"""

import pathlib
import re

import pytest

from morph_net import network_regularizers
from morph_net.framework import op_handlers

_README = (pathlib.Path(__file__).parent.parent / 'README.md').read_text()
_BLOCKS = re.findall(r'```python\n(.*?)```', _README, re.S)
_RUNNABLE = [b for b in _BLOCKS if 'get_alive_counts()' in b]


def _cells(line):
  """A table line's cells; `|` inside backticks or escaped is content."""
  cells, cell, code, escaped = [], '', False, False
  for char in line.strip()[1:]:
    if char == '|' and not code and not escaped:
      cells.append(cell.strip())
      cell = ''
    else:
      cell += char
      code ^= char == '`' and not escaped
    escaped = char == '\\' and not escaped
  return cells


def _table(first_header_cell):
  """The rows (lists of cells) of the table whose first header cell is
  given; the header and the separator line are left out."""
  lines = _README.splitlines()
  starts = [i for i, line in enumerate(lines) if line.startswith('|')
            and _cells(line)[0] == first_header_cell]
  assert len(starts) == 1, 'README tables headed %r: %d' % (
      first_header_cell, len(starts))
  rows = []
  for line in lines[starts[0] + 2:]:
    if not line.startswith('|'):
      break
    rows.append(_cells(line))
  return rows


def _op_types(text):
  """Op type names in an 'op types' cell: parenthesized lists of names are
  read ("activations (Relu, Relu6)"), other asides skipped ("MatMul (Dense,
  also on N-D inputs)")."""
  def aside(match):
    items = [s.strip() for s in match.group(1).split(',')]
    names = all(re.fullmatch(r'[A-Z]\w*\*?', s) for s in items)
    return ', %s,' % match.group(1) if names else ''
  text = re.sub(r'\(([^()]*)\)', aside, text)
  names = [re.match(r'[A-Z]\w*\*?', piece.strip())
           for piece in text.split(',')]
  return [m.group(0) for m in names if m]


def _readme_handlers():
  """{op type (or 'Prefix*'): handler class name, None where the README
  says no handler takes it}, from the 'Supported ops' table."""
  listed = {}
  for handler_cell, types_cell, _ in _table('handler'):
    handlers = re.findall(r'`(\w+Handler)`', handler_cell) or [None]
    groups = types_cell.split(';') if len(handlers) > 1 else [types_cell]
    assert len(groups) == len(handlers), handler_cell
    for handler, group in zip(handlers, groups):
      for op_type in _op_types(group):
        assert op_type not in listed, 'listed twice: %s' % op_type
        listed[op_type] = handler
  return listed


def _readme_handler_of(op_type, listed):
  matches = [handler for name, handler in listed.items()
             if name == op_type or (name.endswith('*') and
                                    op_type.startswith(name[:-1]))]
  assert len(matches) == 1, '%s: %d rows of the README table' % (
      op_type, len(matches))
  return matches[0]


_TABLE = op_handlers.default_op_handler_dict()
# Op types the README is known to describe wrongly (op type -> why); each
# is a strict xfail, which fails once the README is fixed.
_STALE = {}


@pytest.mark.parametrize('op_type', [
    pytest.param(t, marks=pytest.mark.xfail(strict=True, reason=_STALE[t]))
    if t in _STALE else t for t in sorted(_TABLE)])
def test_readme_op_table_names_the_handler_of_each_op_type(op_type):
  assert _readme_handler_of(op_type, _readme_handlers()) == type(
      _TABLE[op_type]).__name__


def test_readme_op_table_lists_no_op_type_the_table_lacks():
  for name, handler in _readme_handlers().items():
    known = [t for t in _TABLE if t == name or (
        name.endswith('*') and t.startswith(name[:-1]))]
    if handler is None:  # inlined by the graph view: no entry of its own
      assert not known, name
    else:
      assert known, '%s (README: %s) is not in the table' % (name, handler)


def test_readme_family_table_names_every_regularizer_class():
  """Each cell of the family x cost table names the class of that family
  and cost, and a '–' cell one that does not exist."""
  costs = ['Flops', 'ModelSize', 'Latency', 'Activation']
  exported = {n for n in network_regularizers.__all__
              if n.endswith('Regularizer') and n != 'NetworkRegularizer'}
  named = set()
  for row in _table('family (what decides alive)'):
    family = re.match(r'\w+', row[0]).group(0)
    assert len(row) == 1 + len(costs), row
    for cost, cell in zip(costs, row[1:]):
      name = '%s%sRegularizer' % (family, cost)
      if cell == '–':
        assert name not in exported, name
      else:
        assert cell == '`%s`' % name
        named.add(name)
  assert named == exported


def test_readme_has_runnable_examples_for_both_paths():
  assert any('keras.Model(' in b for b in _RUNNABLE)
  assert any('tf1.Session()' in b for b in _RUNNABLE)


@pytest.mark.parametrize('index', range(len(_RUNNABLE)))
def test_readme_example_runs(index, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  code = _RUNNABLE[index].replace("'/tmp/run'", repr(str(tmp_path)))
  exec(compile(code, 'README.md[%d]' % index, 'exec'), {})  # pylint: disable=exec-used
  assert "{'conv': 16}" in capsys.readouterr().out


def test_every_handler_the_readme_names_is_public():
  """A user extending the table starts from the handlers the README lists:
  each is in morph_net.framework.__all__."""
  from morph_net import framework  # pylint: disable=g-import-not-at-top
  named = {h for h in _readme_handlers().values() if h is not None}
  assert named
  missing = sorted(named - set(framework.__all__))
  assert not missing, missing
  for name in named:
    assert getattr(framework, name) is type(next(
        v for v in _TABLE.values() if type(v).__name__ == name)), name
