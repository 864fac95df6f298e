"""run_cycles: shrink / export / expand / retrain on tiny data."""

import json
import os

import keras
import pytest

from conftest import benchmark
from conftest import conv_bn_model
import morph_net.keras as mk
from morph_net.keras import cycles
from morph_net.network_regularizers import flop_regularizer


def build_model():
  return conv_bn_model((8, 8, 1), (8, 16), 10, seed=0)


@pytest.fixture(scope='module')
def data(digits):
  return digits[0][:384], digits[1][:384]


def test_two_cycles_return_and_save_records(data, tmp_path):
  x, y = data
  phases = []

  def fit(model, phase, callbacks):
    phases.append(phase)
    model.compile(keras.optimizers.SGD(0.05),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True), metrics=['accuracy'])
    model.fit(x, y, batch_size=64, epochs=4 if phase == 'shrink' else 1,
              verbose=0, callbacks=callbacks)

  seed = build_model()
  seed_flops = mk.structure_cost(seed, {})
  records, models = cycles.run_cycles(
      seed, fit, evaluate=lambda m: m.evaluate(x, y, verbose=0)[1],
      num_cycles=2, shrink_to=0.5, log_dir=str(tmp_path),
      return_models=True)
  assert phases == ['shrink', 'retrain', 'shrink', 'retrain']
  assert [r['cycle'] for r in records] == [1, 2]
  for record, model in zip(records, models):
    assert set(record['exported']) == {'conv1', 'conv2'}
    assert record['shrink_target'] == pytest.approx(
        0.5 * record['start_cost'])
    if record['exported_at_or_under_target']:
      assert record['exported_cost'] <= record['shrink_target']
    # Expanded to the seed's FLOPs from below, and built that way.
    assert record['expanded_cost'] <= seed_flops
    assert record['expanded_cost'] == mk.structure_cost(model, {})
    assert 0.0 <= record['metric'] <= 1.0
    assert model.get_layer('conv2').filters == record['expanded']['conv2']
  with open(os.path.join(str(tmp_path), 'cycles.json')) as f:
    assert json.load(f) == records
  assert not [n for n in os.listdir(str(tmp_path)) if n.startswith('.tmp_')]


def test_last_structure_skips_files_over_the_cost(tmp_path):
  model = build_model()
  directory = os.path.join(str(tmp_path), 'learned_structure')
  os.makedirs(directory)
  for step, widths in ((10, (4, 8)), (20, (8, 16))):
    with open(os.path.join(directory, 'alive_%d' % step), 'w') as f:
      json.dump({'conv1': widths[0], 'conv2': widths[1]}, f)
  full = mk.structure_cost(model, {})
  assert cycles.last_structure(str(tmp_path))[0] == {'conv1': 8, 'conv2': 16}
  structure, path = cycles.last_structure(str(tmp_path), model, 0.5 * full)
  assert structure == {'conv1': 4, 'conv2': 8} and path.endswith('alive_10')
  assert cycles.last_structure(str(tmp_path), model, 1.0) == (None, None)


@pytest.mark.parametrize('kwargs', [{'num_cycles': 0}, {'shrink_to': 1.5}])
def test_bad_arguments_raise(kwargs):
  with pytest.raises(ValueError):
    cycles.run_cycles(build_model(), lambda *a: None, **kwargs)


def test_the_default_regularizer_follows_the_cost_and_a_mismatch_raises(
    data, tmp_path):
  """cost='model_size' shrinks with a model-size regularizer: its target
  and every recorded cost are weights (they were FLOPs and weights mixed)."""
  x, y = data
  used = []

  def fit(model, phase, callbacks):
    if phase == 'shrink':
      used.append(model.regularizer.cost_name)
    model.compile(keras.optimizers.SGD(0.05),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    model.fit(x[:128], y[:128], batch_size=64, epochs=1, verbose=0,
              callbacks=callbacks)

  seed = build_model()
  records = cycles.run_cycles(seed, fit, cost='model_size',
                              log_dir=str(tmp_path / 'size'))
  assert used == ['ModelSize']
  size = mk.structure_cost(seed, {}, cost='model_size')
  assert records[0]['start_cost'] == pytest.approx(size)
  with pytest.raises(ValueError, match="reports 'FLOPs' but cost='model_size'"):
    cycles.run_cycles(
        seed, fit, cost='model_size', log_dir=str(tmp_path / 'mixed'),
        make_regularizer=lambda m: flop_regularizer.GammaFlopsRegularizer(
            m, 1e-2))
  with pytest.raises(ValueError, match='has no default regularizer'):
    cycles.run_cycles(seed, fit, cost=lambda m: 1.0,
                      log_dir=str(tmp_path / 'callable'))


def test_save_json_atomically_replaces(tmp_path):
  path = os.path.join(str(tmp_path), 'a.json')
  cycles.save_json_atomically({'a': 1}, path)
  cycles.save_json_atomically({'a': 2}, path)
  with open(path) as f:
    assert json.load(f) == {'a': 2}
  assert os.listdir(str(tmp_path)) == ['a.json']


@pytest.mark.slow
def test_mnist_example_runs_cycles(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [sys.executable, os.path.join(root, 'examples', 'mnist_morphnet.py'),
       '--quick', '--cycles', '1', '--log-dir', str(tmp_path)],
      capture_output=True, text=True, check=True, timeout=600).stdout
  result = json.loads(out.strip().splitlines()[-1])
  assert len(result['cycles']) == 1
  assert result['flops_after'] <= result['flops_before']
  assert os.path.exists(result['cycles_file'])


def test_two_cycles_on_a_small_bert(tmp_path):
  """A transformer (keras-hub BERT, dict inputs) runs two cycles: the slim
  model of cycle 1 (attention rebuilt by heads, the MLP narrowed) is
  analyzed, regularized and slimmed again in cycle 2."""
  pytest.importorskip('keras_hub')
  import numpy as np  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
  from morph_net.tools import analyze  # pylint: disable=g-import-not-at-top
  keras_hub_zoo = benchmark('keras_hub_zoo')
  keras.utils.set_random_seed(0)
  bert, data, _ = keras_hub_zoo.bert(seq=8, hidden=16, intermediate=32)
  pooled = bert(bert.input)['pooled_output']
  model = keras.Model(bert.input, keras.layers.Dense(
      2, name='classifier')(pooled))
  rs = np.random.RandomState(0)
  x = {k: np.repeat(v, 32, axis=0) for k, v in data.items()}
  x['token_ids'] = rs.randint(0, 50, x['token_ids'].shape).astype('int32')
  y = (x['token_ids'][:, 0] > 25).astype('int32')

  def fit(net, phase, callbacks):
    net.compile(keras.optimizers.Adam(1e-2 if phase == 'shrink' else 1e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x, y, batch_size=8, epochs=2, callbacks=callbacks, verbose=0)

  records, models = cycles.run_cycles(
      model, fit, num_cycles=2, shrink_to=0.7,
      make_regularizer=lambda m: flop_regularizer.GroupLassoFlopsRegularizer(
          m, 1e-3), log_dir=str(tmp_path / 'cycles'), return_models=True)
  assert [r['cycle'] for r in records] == [1, 2]
  for record, slim in zip(records, models):
    assert record['expanded_cost'] <= record['budget'] * (1 + 1e-9)
    assert analyze.analyze(slim).flops == pytest.approx(
        record['expanded_cost'], rel=1e-9)
    assert np.all(np.isfinite(slim.predict(x, verbose=0)))
  # Cycle 2 started from cycle 1's retrained network.
  assert records[1]['start_cost'] == pytest.approx(
      records[0]['expanded_cost'], rel=1e-9)
