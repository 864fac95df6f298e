"""benchmarks/pareto.py: verdict arithmetic, tasks, resumability, smoke run.

The arithmetic and the tasks are fast tests; whatever builds or analyzes
the benchmark's networks is slow-marked (.ci/run runs all but the smoke
run).
"""

import json
import math
import os

import numpy as np
import pytest

from conftest import benchmark

pareto = benchmark('pareto')

E = math.e


def _line_curve():
  """Width curve with accuracy = 0.5 + 0.1 ln(cost) at costs 1 .. e^3."""
  return [1.0, E, E ** 2, E ** 3], [0.5, 0.6, 0.7, 0.8]


# ------------------------------------------------------------ arithmetic
def test_mean_ci_is_a_t_interval():
  mean, half = pareto.mean_ci([0.8, 0.9, 1.0])
  assert mean == pytest.approx(0.9)
  assert half == pytest.approx(4.3027 * 0.1 / math.sqrt(3), rel=1e-4)
  assert math.isnan(pareto.mean_ci([0.7])[1])


def test_frontier_sorts_by_cost_and_keeps_the_running_best():
  costs, accs = pareto.frontier([4.0, 1.0, 2.0, 8.0], [0.7, 0.5, 0.72, 0.9])
  assert costs.tolist() == [1.0, 2.0, 4.0, 8.0]
  assert accs.tolist() == [0.5, 0.72, 0.72, 0.9]


def test_equivalent_cost_interpolates_linearly_in_log_cost():
  front = pareto.frontier(*_line_curve())
  cost, censored = pareto.equivalent_cost(front, 0.65)
  assert cost == pytest.approx(E ** 1.5) and censored is None
  cost, censored = pareto.equivalent_cost(front, 0.78)
  assert cost == pytest.approx(E ** 2.8) and censored is None
  assert pareto.equivalent_cost(front, 0.6)[0] == pytest.approx(E)


def test_equivalent_cost_is_censored_outside_the_width_curve():
  front = pareto.frontier(*_line_curve())
  assert pareto.equivalent_cost(front, 0.9) == (pytest.approx(E ** 3),
                                                'above')
  assert pareto.equivalent_cost(front, 0.4) == (1.0, 'below')
  assert pareto.equivalent_cost(front, 0.5) == (1.0, None)


def test_equivalent_cost_takes_the_cheapest_width_point_on_a_dip():
  # w at cost e^2 is worse than at e: the frontier is flat from e to e^2.
  front = pareto.frontier([1.0, E, E ** 2, E ** 3], [0.5, 0.7, 0.65, 0.8])
  assert pareto.equivalent_cost(front, 0.7)[0] == pytest.approx(E)
  assert pareto.equivalent_cost(front, 0.75)[0] == pytest.approx(E ** 2.5)


def test_saving_from_means_has_the_known_answer():
  costs, means = _line_curve()
  # At cost e the width curve has 0.6; 0.65 needs e^1.5, 0.7 needs e^2.
  saving, per_point, censored = pareto.saving_from_means(
      costs, means, [E, E], [0.65, 0.7])
  assert per_point == pytest.approx([1 - E ** -0.5, 1 - E ** -1])
  assert saving == pytest.approx(1 - E ** -0.75)  # geometric mean of ratios
  assert censored == [None, None]
  # A point worse than the width curve saves a negative amount.
  saving, _, _ = pareto.saving_from_means(costs, means, [E ** 2], [0.6])
  assert saving == pytest.approx(1 - E)


def test_verdict_without_seed_noise_has_a_point_interval():
  costs, means = _line_curve()
  width = [(c, [a] * 3) for c, a in zip(costs, means)]
  result = pareto.verdict(width, [(E, [0.65] * 3)], draws=200)
  assert result['saving'] == pytest.approx(1 - E ** -0.5)
  assert result['ci95'] == pytest.approx([1 - E ** -0.5] * 2)
  assert result['accuracy_gain_at_equal_cost'] == pytest.approx([0.05])


def test_verdict_interval_finds_a_real_saving_and_none_where_there_is_none():
  rng = np.random.RandomState(0)
  costs, means = _line_curve()

  def curve(scale, sd):
    return [(scale * c, list(a + sd * rng.randn(3)))
            for c, a in zip(costs, means)]

  width = curve(1.0, 0.01)
  # Same accuracies at half the cost: saving 0.5 for the middle points.
  half = pareto.verdict(width, curve(0.5, 0.01)[1:3], draws=2000)
  assert half['ci95'][0] > 0.0
  assert half['ci95'][0] <= 0.5 <= half['ci95'][1]
  # The width curve judged against itself (fresh seeds): saving 0.
  same = pareto.verdict(width, curve(1.0, 0.01)[1:3], draws=2000)
  assert same['ci95'][0] < 0.0 < same['ci95'][1]
  # Noisier seeds give a wider interval.
  noisy = pareto.verdict(curve(1.0, 0.04), curve(1.0, 0.04)[1:3],
                         draws=2000)
  assert noisy['ci95'][1] - noisy['ci95'][0] > (
      same['ci95'][1] - same['ci95'][0])


def test_redrawn_means_follow_the_points_t_interval():
  accs = [0.6, 0.7, 0.75]
  mean, half = pareto.mean_ci(accs)
  draws = pareto._draw_means(accs, 400000, np.random.RandomState(1))  # pylint: disable=protected-access
  assert np.percentile(draws, 97.5) == pytest.approx(mean + half, abs=0.01)
  assert np.percentile(draws, 2.5) == pytest.approx(mean - half, abs=0.01)


# ------------------------------------------------------- tasks, networks
def test_canvases_use_only_the_images_of_their_own_split():
  images = np.stack([np.full((8, 8), (i + 1) / 100.0, np.float32)
                     for i in range(40)])
  labels = np.arange(40) % 10
  spec = dict(canvas=16, digit=8, fragments=2, fragment=4, noise=0.0,
              variants=2)
  indices = np.array([3, 7, 11, 20])
  x, y = pareto._canvases(images, labels, indices, spec,  # pylint: disable=protected-access
                          np.random.RandomState(0))
  assert x.shape == (8, 16, 16, 1)
  assert y.tolist() == labels[indices].tolist() * 2
  values = set(np.round(np.unique(x[x > 0]) * 100).astype(int).tolist())
  assert values <= {i + 1 for i in indices}


def test_make_task_is_deterministic_and_splits_70_30():
  a = pareto.make_task('digits16', limit=100)
  b = pareto.make_task('digits16', limit=100)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  variants = pareto.TASKS['digits16']['variants']
  assert len(a[0]) == 70 * variants and len(a[2]) == 30 * variants
  assert a[0].shape[1:] == (16, 16, 1)


@pytest.mark.slow  # ~8 s: builds, analyzes and slims both networks twice
@pytest.mark.parametrize('net', pareto.NETS + pareto.EXTRA_NETS)
def test_width_multiplier_and_gated_seed_slim_to_the_same_network(net):
  import morph_net.keras as mk  # pylint: disable=g-import-not-at-top
  plain = pareto.build_net(net, (16, 16, 1))
  gated = pareto.build_net(net, (16, 16, 1), gated=True)
  widths = pareto.prunable_widths(plain)
  structure = pareto.scaled_structure(widths, 0.35)
  assert all(structure[k] == max(1, round(0.35 * c))
             for k, c in widths.items())
  a = mk.slim_model(plain, structure)
  b = mk.slim_model(gated, structure)  # gates folded away
  assert [type(l).__name__ for l in a.layers] == [
      type(l).__name__ for l in b.layers]
  assert pareto.costs(a, {}) == pareto.costs(b, {})
  full = pareto.costs(plain, {})
  assert pareto.costs(a, {})['flops'] < 0.2 * full['flops']


def test_select_settings():
  assert pareto.select_settings('dev') == [pareto.DEVELOPMENT_SETTING]
  held_out = pareto.select_settings('heldout')
  assert pareto.DEVELOPMENT_SETTING not in held_out
  assert len(held_out) == len(pareto.SETTINGS) - 1
  assert pareto.select_settings('*/vgg/size') == [
      '%s/vgg/size' % t for t in pareto.TASKS]
  with pytest.raises(ValueError, match='no setting matches'):
    pareto.select_settings('digits16/alexnet/flops')


def test_wider_vgg_seeds_are_named_settings_outside_the_default_run():
  assert pareto.select_settings('digits16/vgg_x4/*') == [
      'digits16/vgg_x4/flops', 'digits16/vgg_x4/size']
  assert not any('vgg_x' in s for s in pareto.select_settings(None))
  assert not any('vgg_x' in s for s in pareto.select_settings('*/*/*'))
  for bad in ('digits16/vgg_x0/flops', 'digits16/vgg_x/flops',
              'digits16/vgg_xx/size'):
    with pytest.raises(ValueError, match='no setting matches'):
      pareto.select_settings(bad)
  wide = pareto.build_net('vgg_x2', (16, 16, 1))
  assert pareto.prunable_widths(wide) == {
      'conv%d' % i: 2 * w for i, w in enumerate(pareto.VGG_WIDTHS)}
  # Their verdicts come with the default ones once their points exist.
  results = {'points': {'width|digits16|vgg_x2|w=1|seed=100': {},
                        'width|digits16|vgg|w=1|seed=100': {}}}
  assert pareto.all_settings(results) == tuple(pareto.SETTINGS) + (
      'digits16/vgg_x2/flops', 'digits16/vgg_x2/size')


def test_mobilenet_seed_is_a_named_setting_with_hand_derived_costs():
  assert pareto.select_settings('*/mobilenet/flops') == [
      '%s/mobilenet/flops' % t for t in pareto.TASKS]
  assert not any('mobilenet' in s for s in pareto.select_settings('*/*/*'))
  model = pareto.build_net('mobilenet', (16, 16, 1))
  widths = pareto.prunable_widths(model)
  assert widths == {'stem': 16, 'b1_pw': 32, 'b2_pw': 64, 'b3_pw': 128,
                    'b4_pw': 128}  # the depthwise convs are not listed
  # FLOPs (2 x multiply-adds) and weights by hand: the convs, depthwise
  # included, and the Dense layer (the analysis does not count BatchNorm
  # or bias terms), at the seed and with every prunable width halved.
  def hand(w):
    c_in, side = w['stem'], 16
    flops, size = 2 * side * side * 9 * c_in, 9 * c_in
    for i, (stride, _) in enumerate(pareto.MOBILENET_BLOCKS, 1):
      side //= stride
      pw = w['b%d_pw' % i]
      flops += 2 * side * side * (9 * c_in + c_in * pw)
      size += 9 * c_in + c_in * pw
      c_in = pw
    return dict(flops=flops + 2 * c_in * 10, size=size + c_in * 10)
  half = pareto.scaled_structure(widths, 0.5)
  assert pareto.costs(model, {}) == hand(widths)
  assert pareto.costs(model, half) == hand(half)
  # The results of runs made before the seed existed still load.
  results = {'points': {'width|mnist20|mobilenet|w=1|seed=100': {}}}
  assert pareto.all_settings(results)[-2:] == (
      'mnist20/mobilenet/flops', 'mnist20/mobilenet/size')


def test_configs_written_before_the_mobilenet_seed_still_load(tmp_path):
  cfg = pareto.config(False)
  old = json.loads(json.dumps(cfg))
  del old['mobilenet']
  path = str(tmp_path / 'pareto_results.json')
  with open(path, 'w') as f:
    json.dump(dict(config=old, points={}, shrinks={}, seeds={}), f)
  assert pareto.load_results(path, cfg)['config'] == cfg
  assert pareto.copy_width_points(
      dict(points={}), path, cfg) == 0  # same recipe: accepted
  old['mobilenet'] = dict(stem=8, blocks=[[2, 16]])  # another seed: refused
  with open(path, 'w') as f:
    json.dump(dict(config=old, points={}, shrinks={}, seeds={}), f)
  with pytest.raises(ValueError, match='another recipe'):
    pareto.load_results(path, cfg)


# ------------------------------------------------------------ resuming
# Each run below analyzes the benchmark's networks for their costs (the
# fits are stand-ins): ~15 s together, so they are slow-marked; .ci/run
# runs them.
@pytest.fixture
def fake_training(monkeypatch):
  """Replaces every fit with a cheap stand-in; counts the calls."""
  calls = {'retrain': 0, 'shrink': 0, 'train': 0, 'fail_after': None,
           'targets': [], 'shrunk': []}
  known = {}  # costs by structure: each analysis traces the model

  def retrain_point(seed_model, structure, data, epochs, seed):
    del data, epochs
    if calls['fail_after'] is not None and (
        calls['retrain'] >= calls['fail_after']):
      raise RuntimeError('cut')
    calls['retrain'] += 1
    key = tuple(sorted(structure.items()))
    if key not in known:
      known[key] = pareto.costs(seed_model, structure)
    cost = known[key]
    return 0.1 * math.log(cost['flops']) + 0.001 * seed, dict(cost)

  def shrink(seed_model, family, resource, data, epochs, log_dir,
             target=None):
    del family, data, epochs, log_dir
    calls['shrink'] += 1
    calls['targets'].append(target)
    calls['shrunk'].append(pareto.prunable_widths(seed_model))
    full = pareto.costs(seed_model, {})[resource]
    # A stand-in structure: half of every width, or a quarter under a
    # target below 0.3 x the seed's cost.
    div = 4 if target is not None and target < 0.3 * full else 2
    learned = {k: max(1, v // div) for k, v in pareto.prunable_widths(
        seed_model).items()}
    return dict(learned=learned, met=True,
                target=0.5 * full if target is None else target,
                start_cost=full, end_cost=0.4 * full, learned_cost=0.3 * full)

  def train(model, data, epochs, seed):
    del model, data, epochs, seed
    calls['train'] += 1

  monkeypatch.setattr(pareto, 'retrain_point', retrain_point)
  monkeypatch.setattr(pareto, 'shrink', shrink)
  monkeypatch.setattr(pareto, 'train', train)
  return calls


def _quick(tmp_path, *extra):
  return pareto.main(['--quick', '--out-dir', str(tmp_path / 'out'),
                      '--work-dir', str(tmp_path / 'work')] + list(extra))


def _saved(tmp_path):
  with open(str(tmp_path / 'out' / 'pareto_results.json')) as f:
    return json.load(f)


@pytest.mark.slow
def test_rerun_skips_finished_points_and_adds_new_seeds(tmp_path,
                                                         fake_training):
  _quick(tmp_path, '--families', 'gamma,figs')
  per_seed = len(pareto.QUICK['widths']) + 2 * len(
      pareto.QUICK['budget_widths'])
  assert fake_training['retrain'] == per_seed * pareto.QUICK['seeds']
  assert fake_training['shrink'] == 2
  assert fake_training['train'] == 2  # the plain and the gated seed
  first = _saved(tmp_path)
  _quick(tmp_path, '--families', 'gamma,figs')
  assert fake_training['retrain'] == per_seed * pareto.QUICK['seeds']
  assert fake_training['shrink'] == 2
  assert _saved(tmp_path)['points'] == first['points']
  _quick(tmp_path, '--families', 'gamma,figs', '--seeds', '3')
  assert fake_training['retrain'] == per_seed * 3
  verdicts = _saved(tmp_path)['verdicts']
  assert {v['family'] for v in verdicts} == {'gamma', 'figs'}
  assert all(v['seeds'] == 3 for v in verdicts)


@pytest.mark.slow
def test_a_cut_run_keeps_its_points_and_the_rerun_does_the_rest(
    tmp_path, fake_training):
  fake_training['fail_after'] = 4
  with pytest.raises(RuntimeError, match='cut'):
    _quick(tmp_path, '--families', 'gamma')
  assert len(_saved(tmp_path)['points']) == 4
  fake_training['fail_after'] = None
  _quick(tmp_path, '--families', 'gamma')
  total = (len(pareto.QUICK['widths']) + len(pareto.QUICK['budget_widths'])
           ) * pareto.QUICK['seeds']
  assert fake_training['retrain'] == total
  assert len(_saved(tmp_path)['points']) == total


@pytest.mark.slow
def test_results_of_another_recipe_are_refused(tmp_path, fake_training):
  del fake_training
  _quick(tmp_path, '--families', 'gamma')
  saved = _saved(tmp_path)
  saved['config']['method']['gamma_threshold'] = 0.5
  with open(str(tmp_path / 'out' / 'pareto_results.json'), 'w') as f:
    json.dump(saved, f)
  with pytest.raises(ValueError, match='another recipe'):
    _quick(tmp_path, '--families', 'gamma')


@pytest.mark.slow
def test_verdicts_only_trains_nothing_and_writes_verdicts_and_plot(
    tmp_path, fake_training):
  _quick(tmp_path, '--families', 'grouplasso')
  calls = dict(fake_training)
  saved = _saved(tmp_path)
  saved['verdicts'] = []
  with open(str(tmp_path / 'out' / 'pareto_results.json'), 'w') as f:
    json.dump(saved, f)
  os.remove(str(tmp_path / 'out' / 'pareto_digits16_vgg_flops.png'))
  _quick(tmp_path, '--verdicts-only')
  assert fake_training == calls
  verdicts = _saved(tmp_path)['verdicts']
  assert [(v['setting'], v['family']) for v in verdicts] == [
      (pareto.DEVELOPMENT_SETTING, 'grouplasso')]
  assert verdicts[0]['development'] is True
  assert os.path.getsize(str(tmp_path / 'out' /
                             'pareto_digits16_vgg_flops.png')) > 0


@pytest.mark.slow
def test_one_structure_per_budget(tmp_path, fake_training, monkeypatch):
  """shrink_to='budget': one shrink per budget, toward that budget's cost;
  the default: one shrink toward 0.5 x, scaled to every budget."""
  monkeypatch.setitem(pareto.METHOD, 'shrink_to', pareto.METHOD['shrink_to'])
  budgets = (0.35, 0.7)
  monkeypatch.setitem(pareto.QUICK, 'budget_widths', budgets)
  _quick(tmp_path, '--families', 'gamma')
  assert fake_training['targets'] == [None]
  default = _saved(tmp_path)
  assert default['verdicts'][0]['recipe'] == (
      'shrink to 0.5 x, expand_structure to each budget')
  fake_training['targets'] = []
  out = tmp_path / 'per_budget'
  pareto.main(['--quick', '--out-dir', str(out), '--work-dir',
               str(tmp_path / 'work'), '--families', 'gamma', '--method',
               'shrink_to="budget"'])
  seed = pareto.build_net('vgg', (16, 16, 1))
  widths = pareto.prunable_widths(seed)
  expected = [pareto.costs(seed, pareto.scaled_structure(widths, b))['flops']
              for b in budgets]
  assert fake_training['targets'] == expected
  with open(str(out / 'pareto_results.json')) as f:
    saved = json.load(f)
  assert sorted(saved['shrinks']) == [
      'shrink|digits16/vgg/flops|gamma|b=%g' % b for b in budgets]
  assert saved['verdicts'][0]['recipe'].startswith('shrink to each budget')
  # Each budget's points are its own shrink's structure fit to the budget:
  # the small budget's (a quarter of every width, scaled up) differs from
  # the default run's (half of every width, scaled down).
  small = [p['structure'] for k, p in saved['points'].items()
           if k.startswith('morph|') and '|b=0.35|' in k]
  assert small and all(s != default['points'][k]['structure']
                       for k, s in saved['points'].items()
                       if k.startswith('morph|') and '|b=0.35|' in k)
  for p in saved['points'].values():
    if 'budget' in p:
      assert p['cost']['flops'] <= p['budget'] * (1 + 1e-9)


@pytest.mark.slow
def test_two_cycles(tmp_path, fake_training, monkeypatch):
  """cycles=2 (MorphNet x2): the first structure is expanded to the seed's
  cost, trained, and shrunk again; the second structure is the one scaled
  to the budgets."""
  monkeypatch.setitem(pareto.METHOD, 'cycles', pareto.METHOD['cycles'])
  halves = pareto.shrink

  def uneven(*args, **kwargs):  # half of every width, a quarter of conv3's
    info = halves(*args, **kwargs)
    info['learned']['conv3'] = max(1, info['learned']['conv3'] // 2)
    return info
  monkeypatch.setattr(pareto, 'shrink', uneven)
  _quick(tmp_path, '--families', 'gamma,grouplasso', '--method', 'cycles=2')
  seed = pareto.build_net('vgg', (16, 16, 1))
  widths = pareto.prunable_widths(seed)
  # Per family: the seed's shrink, then the grown network's.
  assert fake_training['shrink'] == 4
  assert fake_training['train'] == 3  # the seed, one grown net a family
  assert fake_training['shrunk'][0] == widths
  grown = fake_training['shrunk'][1]
  assert grown != widths and grown.keys() == widths.keys()
  saved = _saved(tmp_path)
  second = saved['shrinks']['shrink|digits16/vgg/flops|gamma|cycle=2']
  def stand_in(w):
    return {k: max(1, v // (4 if k == 'conv3' else 2)) for k, v in w.items()}
  assert second['first'] == stand_in(widths)
  # Grown back to the seed's cost: wider than the seed but for conv3.
  assert second['grown'] == grown
  assert all(grown[k] > widths[k] for k in ('conv0', 'conv1', 'conv2'))
  assert grown['conv3'] < widths['conv3']
  assert abs(pareto.costs(seed, grown)['flops'] / pareto.costs(
      seed, {})['flops'] - 1) < 0.05
  assert second['learned'] == stand_in(grown)
  assert saved['verdicts'][0]['recipe'].startswith('two cycles')
  budget = pareto.costs(seed, pareto.scaled_structure(
      widths, pareto.QUICK['budget_widths'][0]))['flops']
  import morph_net.keras as mk  # pylint: disable=g-import-not-at-top
  expected = {k: int(v) for k, v in mk.expand_structure(
      seed, second['learned'], target_cost=budget).items()}
  morph = [p['structure'] for k, p in saved['points'].items()
           if k.startswith('morph|digits16/vgg/flops|gamma|')]
  assert morph and all(m == expected for m in morph)


def test_two_cycles_are_checked(monkeypatch):
  monkeypatch.setitem(pareto.METHOD, 'cycles', pareto.METHOD['cycles'])
  monkeypatch.setitem(pareto.METHOD, 'shrink_to', pareto.METHOD['shrink_to'])
  with pytest.raises(ValueError, match='cycles is 1'):
    pareto.apply_method(['cycles=3'])
  with pytest.raises(ValueError, match='needs a fixed shrink_to'):
    pareto.apply_method(['cycles=2', 'shrink_to="budget"'])
  monkeypatch.setitem(pareto.METHOD, 'shrink_to', 0.5)
  with pytest.raises(ValueError, match='gamma and grouplasso only'):
    pareto.main(['--quick', '--families', 'gamma,figs', '--method',
                 'cycles=2', '--out-dir', '/nonexistent/never'])


def test_records_older_than_a_knob_keep_their_recipe(tmp_path, monkeypatch):
  """A results file written before 'cycles' existed ran with cycles=1: it
  still loads; a cycles=2 run is refused on it."""
  cfg = pareto.config(False)
  old = json.loads(json.dumps(cfg))
  del old['method']['cycles']
  path = str(tmp_path / 'pareto_results.json')
  with open(path, 'w') as f:
    json.dump(dict(config=old, points={}, shrinks={}, seeds={}), f)
  assert pareto.load_results(path, cfg)['config'] == cfg
  monkeypatch.setitem(pareto.METHOD, 'cycles', 2)
  with pytest.raises(ValueError, match='another recipe'):
    pareto.load_results(path, pareto.config(False))


def test_shrink_fit_shrinks_toward_the_target_it_is_given():
  # A given target was reset to None before use (the per-budget run died).
  import keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  seed = pareto.build_net('vgg', (16, 16, 1))
  rng = np.random.RandomState(0)
  data = (rng.rand(64, 16, 16, 1).astype('float32'),
          rng.randint(0, 10, 64), None, None)
  full = pareto.costs(seed, {})['flops']
  _, _, start, target = pareto.shrink_fit(seed, 'gamma', 'flops', data, 1,
                                          target=0.3 * full)
  assert start == full and target == 0.3 * full
  _, _, _, default = pareto.shrink_fit(seed, 'gamma', 'flops', data, 1)
  assert default == pareto.METHOD['shrink_to'] * full


@pytest.mark.parametrize('bad', ['1.5', '0', '"auto"', 'true'])
def test_shrink_to_is_checked(bad, monkeypatch):
  monkeypatch.setitem(pareto.METHOD, 'shrink_to', pareto.METHOD['shrink_to'])
  with pytest.raises(ValueError, match='shrink_to is a fraction'):
    pareto.apply_method(['shrink_to=%s' % bad])
  assert pareto.METHOD['shrink_to'] == 0.5


# ------------------------------------------------------------ smoke run
@pytest.mark.slow  # not run by .ci/run
def test_quick_run_end_to_end(tmp_path):
  """--quick for real: every family shrinks, expands, retrains (~2 min)."""
  result = _quick(tmp_path)
  assert len(result['shrinks']) == len(pareto.FAMILIES)
  for info in result['shrinks'].values():
    assert info['learned'] and info['start_cost'] > 0
  morph = [p for k, p in result['points'].items() if k.startswith('morph')]
  assert len(morph) == len(pareto.FAMILIES) * pareto.QUICK['seeds']
  for point in morph:  # expand_structure fits each budget from below
    assert point['cost']['flops'] <= point['budget'] * (1 + 1e-9)
    assert point['cost']['flops'] >= 0.5 * point['budget']
  assert {v['family'] for v in result['verdicts']} == set(pareto.FAMILIES)
  for v in result['verdicts']:
    assert v['ci95'][0] <= v['flops_saving_at_equal_accuracy'] <= (
        v['ci95'][1])
  assert os.path.getsize(str(tmp_path / 'out' /
                             'pareto_digits16_vgg_flops.png')) > 0


def test_plot_label_says_which_gates_ran():
  assert pareto._gates_label({}) == 'at the layer\'s defaults'  # pylint: disable=protected-access
  assert pareto._gates_label({'temperature': 0.5, 'straight_through': True}) == (  # pylint: disable=protected-access
      'straight-through, T=0.5')
