"""The morphnet command line: end to end (subprocess) and in-process."""

import json
import os
import subprocess
import sys

import keras
import pytest

from morph_net import cli

L = keras.layers
# FLOPs of the model below: stem 2*64*9*3*4, a 2*64*4*6, b 2*64*9*4*6,
# logits 2*6*2; weights 9*3*4 + 4*6 + 9*4*6 + 6*2.
FLOPS = 13824 + 3072 + 27648 + 24
WEIGHTS = 108 + 24 + 216 + 12


def _model(input_shape=(8, 8, 3)):
  inputs = keras.Input(input_shape)
  x = L.Conv2D(4, 3, padding='same', activation='relu', name='stem')(inputs)
  a = L.Conv2D(6, 1, name='a')(x)
  b = L.Conv2D(6, 3, padding='same', name='b')(x)
  y = L.GlobalAveragePooling2D()(L.ReLU()(L.Add()([a, b])))
  return keras.Model(inputs, L.Dense(2, name='logits')(y))


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp('cli')
  model = str(d / 'model.keras')
  _model().save(model)
  paths = {'dir': d, 'model': model}
  for name, text in (('good', '{"stem": 2, "a": 3, "b": 3}'),
                     ('unknown', '{"stem": 2, "ghost_layer": 3}'),
                     ('malformed', '{"stem": 2,\n'),
                     ('untied', '{"a": 3, "b": 4}'),
                     ('float', '{"stem": 2.5}')):
    path = d / (name + '.json')
    path.write_text(text)
    paths[name] = str(path)
  notkeras = d / 'notkeras.keras'
  notkeras.write_text('hello')
  paths['notkeras'] = str(notkeras)
  return paths


def _run(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-m', 'morph_net.cli'] + list(args),
                        capture_output=True, text=True, env=env, timeout=300)


def _main(capsys, *args):
  code = cli.main(list(args))
  out, err = capsys.readouterr()
  return code, out, err


# ------------------------------------------------ end to end (subprocess)
def test_analyze_json_end_to_end(files):
  result = _run('analyze', files['model'], '--json')
  assert result.returncode == 0, result.stderr
  data = json.loads(result.stdout)
  assert set(data) == {'flops', 'weights', 'layers'}
  assert (data['flops'], data['weights']) == (FLOPS, WEIGHTS)
  assert [l['name'] for l in data['layers']] == ['stem', 'a', 'b', 'logits']
  groups = {l['name']: l['group'] for l in data['layers']}
  assert groups['a'] == groups['b'] != groups['stem']
  assert 'Traceback' not in result.stderr


def test_slim_end_to_end_writes_a_loadable_model_with_the_widths(files):
  out = str(files['dir'] / 'slim.keras')
  result = _run('slim', files['model'], files['good'], '-o', out)
  assert result.returncode == 0, result.stderr
  assert 'wrote' in result.stdout
  slim = keras.saving.load_model(out, compile=False)
  widths = {n: slim.get_layer(n).filters for n in ('stem', 'a', 'b')}
  assert widths == {'stem': 2, 'a': 3, 'b': 3}
  assert slim.get_layer('logits').units == 2
  assert not [f for f in os.listdir(files['dir']) if f.startswith('.tmp')]


def test_malformed_json_exits_2_with_one_line(files):
  result = _run('slim', files['model'], files['malformed'], '-o',
                str(files['dir'] / 'never.keras'))
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('morphnet: error: structure')
  assert 'malformed JSON (line 2' in lines[0]
  assert not os.path.exists(files['dir'] / 'never.keras')


# ------------------------------------------------------------ in-process
def test_analyze_prints_a_table_with_totals(files, capsys):
  code, out, _ = _main(capsys, 'analyze', files['model'])
  assert code == 0
  lines = out.splitlines()
  assert lines[0].split()[:3] == ['layer', 'op', 'type']
  assert [l.split()[0] for l in lines[2:6]] == ['stem', 'a', 'b', 'logits']
  assert '(%d)' % FLOPS in lines[-1] and '(%d)' % WEIGHTS in lines[-1]


def test_structure_naming_an_unknown_layer_exits_2_naming_it(files, capsys):
  out = str(files['dir'] / 'unknown.keras')
  code, _, err = _main(capsys, 'slim', files['model'], files['unknown'],
                       '-o', out)
  assert code == 2
  assert 'ghost_layer' in err and 'stem,' not in err
  assert len(err.strip().splitlines()) == 1
  assert not os.path.exists(out)
  code, _, err = _main(capsys, 'plot', files['unknown'], '--model',
                       files['model'], '-o', str(files['dir'] / 'u.png'))
  assert code == 2 and 'ghost_layer' in err


@pytest.mark.parametrize('args, message', [
    (('analyze', 'missing.keras'), 'model missing.keras: no such file'),
    (('slim', 'missing.keras', 'GOOD', '-o', 'x.keras'),
     'model missing.keras: no such file'),
    (('slim', 'MODEL', 'missing.json', '-o', 'x.keras'),
     'structure missing.json: no such file'),
    (('analyze', 'NOTKERAS'), 'not a Keras model file'),
    (('plot', 'FLOAT', '-o', 'x.png'), "non-negative integers; bad entries: "
     "stem=2.5"),
    (('slim', 'MODEL', 'UNTIED', '-o', 'OUT'), 'cannot slim'),
])
def test_bad_inputs_exit_2_with_one_line(files, capsys, args, message):
  subst = {'MODEL': files['model'], 'GOOD': files['good'], 'NOTKERAS': files['notkeras'],
           'FLOAT': files['float'], 'UNTIED': files['untied'],
           'OUT': str(files['dir'] / 'untied.keras')}
  code, _, err = _main(capsys, *[subst.get(a, a) for a in args])
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('morphnet: error: ')
  assert message in lines[0]


def test_slim_expand_to_cost_with_rounding(files, capsys):
  out = str(files['dir'] / 'expanded.keras')
  code, stdout, _ = _main(capsys, 'slim', files['model'], files['good'],
                          '-o', out, '--expand-to-cost', '30K',
                          '--round-to', '2')
  assert code == 0
  slim = keras.saving.load_model(out, compile=False)
  widths = [slim.get_layer(n).filters for n in ('stem', 'a', 'b')]
  assert all(w % 2 == 0 for w in widths)
  assert widths[1] == widths[2] and sum(widths) > 2 + 3 + 3
  flops_after = int(stdout.splitlines()[-1].split()[3].rstrip(','))
  assert flops_after <= 30000


def test_plot_writes_png_with_and_without_model(files, capsys):
  for extra in ([], ['--model', files['model']]):
    png = files['dir'] / ('widths%d.png' % len(extra))
    code, out, _ = _main(capsys, 'plot', files['good'], '-o', str(png),
                         *extra)
    assert code == 0, out
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'wrote' in out and '3 layers' in out


def test_unknown_input_size_asks_for_input_shape(tmp_path, capsys):
  path = str(tmp_path / 'dynamic.keras')
  _model(input_shape=(None, None, 3)).save(path)
  code, _, err = _main(capsys, 'analyze', path)
  assert code == 2 and '--input-shape' in err
  code, out, _ = _main(capsys, 'analyze', path, '--json',
                       '--input-shape', '8,8,3')
  assert code == 0
  assert json.loads(out)['flops'] == FLOPS
  # slim asks for it too, and takes it (it was refused as unknown there).
  structure = tmp_path / 's.json'
  structure.write_text('{"stem": 2, "a": 3, "b": 3}')
  out_path = str(tmp_path / 'slim.keras')
  code, _, err = _main(capsys, 'slim', path, str(structure), '-o', out_path)
  assert code == 2 and '--input-shape' in err
  code, out, _ = _main(capsys, 'slim', path, str(structure), '-o', out_path,
                       '--input-shape', '8,8,3')
  assert code == 0 and 'FLOPs %d ->' % FLOPS in out
  assert keras.models.load_model(out_path).get_layer('stem').filters == 2


def test_bad_option_values_are_usage_errors(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(['slim', 'm.keras', 's.json', '-o', 'o.keras',
              '--round-to', '0'])
  assert e.value.code == 2
  assert 'positive integer' in capsys.readouterr().err


def test_slim_accepts_the_path_keys_the_exporter_writes(tmp_path, capsys):
  """Two nested models each holding a layer named 'fc': the exporter keys
  them 'b1/fc' and 'b2/fc', and the CLI slims to those keys (it used to
  refuse any key that is not a bare layer name)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
  from morph_net.tools import structure_exporter  # pylint: disable=g-import-not-at-top

  def block(name):
    inputs = keras.Input((6,))
    hidden = L.Dense(8, name='fc')(inputs)
    return keras.Model(inputs, L.Dense(6, name='out')(hidden), name=name)

  inputs = keras.Input((6,))
  x = block('b1')(inputs)
  x = block('b2')(x)
  model = keras.Model(inputs, L.Dense(2, name='logits')(x))
  counts = structure_exporter.StructureExporter(
      flop_regularizer.GroupLassoFlopsRegularizer(
          model, 0.0).op_regularizer_manager).get_alive_counts()
  assert {'b1/fc', 'b2/fc'} <= set(counts), counts
  structure = {'b1/fc': 3, 'b2/fc': 5}
  seed_path = str(tmp_path / 'seed.keras')
  model.save(seed_path)
  structure_path = tmp_path / 'alive.json'
  structure_path.write_text(json.dumps(structure))
  out = str(tmp_path / 'slim.keras')
  code, stdout, err = _main(capsys, 'slim', seed_path, str(structure_path),
                            '-o', out)
  assert code == 0, err
  slim = keras.saving.load_model(out, compile=False)
  assert slim.get_layer('b1').get_layer('fc').units == 3
  assert slim.get_layer('b2').get_layer('fc').units == 5
  data = np.ones((1, 6), np.float32)
  assert slim(data).shape == (1, 2)
  assert 'wrote' in stdout
