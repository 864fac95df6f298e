"""The README's runnable examples run, and its op table covers the table."""

import pathlib
import re

import pytest

from morph_net.framework import op_handlers

_README = (pathlib.Path(__file__).parent.parent / 'README.md').read_text()
_BLOCKS = re.findall(r'```python\n(.*?)```', _README, re.S)
_RUNNABLE = [b for b in _BLOCKS if 'get_alive_counts()' in b]


def test_readme_has_runnable_examples_for_both_paths():
  assert any('keras.Model(' in b for b in _RUNNABLE)
  assert any('tf1.Session()' in b for b in _RUNNABLE)


@pytest.mark.parametrize('index', range(len(_RUNNABLE)))
def test_readme_example_runs(index, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  code = _RUNNABLE[index].replace("'/tmp/run'", repr(str(tmp_path)))
  exec(compile(code, 'README.md[%d]' % index, 'exec'), {})  # pylint: disable=exec-used
  assert "{'conv': 16}" in capsys.readouterr().out


def test_readme_lists_every_supported_op_type():
  missing = [t for t in op_handlers.default_op_handler_dict()
             if t not in _README and not t.startswith(('Resize',
                                                       'BatchMatMul'))]
  assert not missing, 'README op table lacks: %s' % missing
