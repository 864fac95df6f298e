"""No plausible-looking garbage: bad values fail loudly, files are kept.

Covers NaN/inf sources and thresholds, structure files that are
never overwritten, stale temp files, the optimizer in save/load_weights,
combining regularizers (and refusing to nest wrappers), CLI bad input.
The resume-after-SIGKILL fault test is in test_reliability_resume.py.
"""

import json
import os
import subprocess
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import conv_bn_model
from conftest import graph_conv_bn
import morph_net.keras as mk
from morph_net import cli
from morph_net.network_regularizers import combined
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.op_regularizers import _checks
from morph_net.op_regularizers import logistic_sigmoid_regularizer
from morph_net.framework import atomic_files as _atomic
from morph_net.tools import plot
from morph_net.tools import structure_exporter

L = keras.layers


def _model(seed=0):
  return conv_bn_model((6, 6, 3), (4,), 2, padding='valid', use_bias=True,
                       seed=seed)


@pytest.fixture(scope='module')
def data():
  rng = np.random.RandomState(0)
  return (rng.rand(16, 6, 6, 3).astype('float32'),
          rng.randint(0, 2, 16).astype('int32'))


# --------------------------------------------------------- NaN/inf sources
def test_nan_gamma_reads_raise_naming_variable_and_values():
  model = _model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  exporter = structure_exporter.StructureExporter(reg.op_regularizer_manager)
  model.get_layer('bn1').gamma.assign([np.nan, 1.0, np.inf, 0.5])
  for read in (reg.get_cost, reg.get_regularization_term,
               exporter.get_alive_counts):
    with pytest.raises(_checks.NonFiniteSourceError) as info:
      read()
    message = str(info.value)
    assert "'bn1/gamma'" in message
    assert 'channel 0: nan' in message and 'channel 2: inf' in message
    assert '2 of 4 channels' in message


def test_inf_kernel_group_lasso_raises_naming_kernel():
  model = _model()
  reg = flop_regularizer.GroupLassoFlopsRegularizer(model, threshold=1e-3)
  kernel = model.get_layer('conv1').kernel
  kernel.assign(tf.tensor_scatter_nd_update(kernel, [[0, 0, 0, 3]],
                                            [np.inf]))
  with pytest.raises(_checks.NonFiniteSourceError,
                     match=r"conv1/kernel.*channel 3: inf"):
    reg.get_cost()


def test_nan_gamma_in_a_tf1_graph_fails_the_session_run():
  # Graph mode skipped the check: get_cost counted the NaN channel as dead
  # and the exporter wrote a structure from it.
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, 6, 6, 3])
    y, gamma = graph_conv_bn(x, 4)
    head = tf.compat.v1.get_variable('head', [4, 2])
    y = tf.matmul(tf.reduce_mean(y, [1, 2]), head)
    reg = flop_regularizer.GammaFlopsRegularizer([y.op], 0.1)
    exporter = structure_exporter.StructureExporter(
        reg.op_regularizer_manager)
    cost = reg.get_cost()
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      assert sess.run(cost) == 2 * 36 * 27 * 4 + 2 * 4 * 2
      sess.run(gamma.assign([np.nan, 1.0, 1.0, 1.0]))
      for fetch in (cost, reg.get_regularization_term(), exporter.tensors):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match="Non-finite gamma.*'gamma'"):
          sess.run(fetch)


def test_a_graph_batch_norm_on_batch_moments_is_named_in_the_error():
  # The error said to add a BatchNormalization, though the graph had one.
  from morph_net.framework import errors  # pylint: disable=g-import-not-at-top
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, 6, 6, 3])
    h = tf.nn.conv2d(x, tf.compat.v1.get_variable('k', [3, 3, 3, 4]), 1,
                     'SAME')
    mean, var = tf.nn.moments(h, [0, 1, 2])
    h = tf.nn.batch_normalization(h, mean, var, tf.zeros([4]),
                                  tf.compat.v1.get_variable('g', [4]), 1e-3)
    logits = tf.matmul(tf.reduce_mean(h, [1, 2]),
                       tf.compat.v1.get_variable('fc', [4, 2]))
    with pytest.raises(errors.NoRegularizerSourceError,
                       match='scaled by batch moments'):
      flop_regularizer.GammaFlopsRegularizer([logits.op], 0.1)


def test_nan_gate_logits_raise():
  logits = tf.constant([1.0, np.nan])
  reg = logistic_sigmoid_regularizer.LogisticSigmoidRegularizer(logits)
  with pytest.raises(_checks.NonFiniteSourceError,
                     match=r'gate logits.*channel 1: nan'):
    _ = reg.alive_vector


def test_callback_warns_and_writes_no_file_for_nan_step(data, tmp_path):
  x, y = data
  model = _model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  trainer = mk.add_regularizer(model, reg, strength=1e-4, monitor=False)
  trainer.compile(optimizer='sgd', loss='sparse_categorical_crossentropy')
  model.get_layer('bn1').gamma.assign([np.nan, 1.0, 1.0, 1.0])
  callback = mk.StructureExporterCallback(reg, str(tmp_path), 1,
                                          summary_subdir=None)
  with pytest.warns(RuntimeWarning, match=r"no structure written for step "
                    r"0: Non-finite gamma.*bn1/gamma"):
    trainer.fit(x, y, batch_size=8, epochs=1, verbose=0,
                callbacks=[callback])
  assert callback.saved_steps == []
  assert callback.skipped_steps == [0, 1, 2]
  directory = tmp_path / 'learned_structure'
  assert not directory.exists() or os.listdir(directory) == []


# -------------------------------------------------------------- thresholds
@pytest.mark.parametrize('value', [float('nan'), float('inf'), -0.1])
def test_bad_gamma_threshold_raises_naming_argument(value):
  with pytest.raises(ValueError, match=r'gamma_threshold must be a finite '
                     r'number >= 0, got %s' % value):
    flop_regularizer.GammaFlopsRegularizer(_model(), value)


@pytest.mark.parametrize('value', [float('nan'), -1.0])
def test_bad_group_lasso_threshold_raises(value):
  with pytest.raises(ValueError, match=r'^threshold must be a finite'):
    model_size_regularizer.GroupLassoModelSizeRegularizer(_model(), value)


@pytest.mark.parametrize('value,match', [
    (float('nan'), 'a finite number >= 0, got nan'),
    (1.5, 'at most 1.0, got 1.5'),
    ('0.1', "a finite number >= 0, got '0.1' \\(type str\\)")])
def test_bad_alive_threshold_raises(value, match):
  with pytest.raises(ValueError, match='alive_threshold must be ' + match):
    logistic_sigmoid_regularizer.LogisticSigmoidRegularizer(
        tf.constant([1.0]), alive_threshold=value)


def test_negative_threshold_message_says_why():
  with pytest.raises(ValueError, match='keeps every channel alive'):
    _checks.check_threshold('gamma_threshold', -1e-9)


# ------------------------------------------------- structure files are kept
def test_existing_structure_file_is_never_overwritten(tmp_path):
  model = _model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  exporter = structure_exporter.StructureExporter(reg.op_regularizer_manager)
  bn = model.get_layer('bn1')
  bn.gamma.assign([1.0, 1.0, 0.0, 0.0])
  first = exporter.create_file_and_save_alive_counts(str(tmp_path), 5)
  # The same counts again: no second file.
  assert exporter.create_file_and_save_alive_counts(str(tmp_path), 5) == first
  bn.gamma.assign([1.0, 1.0, 1.0, 0.0])
  second = exporter.create_file_and_save_alive_counts(str(tmp_path), 5)
  bn.gamma.assign([1.0, 0.0, 0.0, 0.0])
  third = exporter.create_file_and_save_alive_counts(str(tmp_path), 5)
  assert os.path.basename(second) == 'alive_5.rerun1'
  assert os.path.basename(third) == 'alive_5.rerun2'
  with open(first) as f:
    assert json.load(f) == {'conv1': 2}
  with open(second) as f:
    assert json.load(f) == {'conv1': 3}
  exporter.create_file_and_save_alive_counts(str(tmp_path), 12)
  assert [(s, r) for s, r, _ in structure_exporter.structure_files(
      str(tmp_path))] == [(5, 0), (5, 1), (5, 2), (12, 0)]


def _dead_pid():
  proc = subprocess.Popen(['true'])
  proc.wait()
  return proc.pid


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path):
  old = time.time() - 2 * 3600
  dead = tmp_path / ('.tmp_morphnet_%d_abc123' % _dead_pid())
  live = tmp_path / ('.tmp_morphnet_%d_def456' % os.getpid())
  legacy = tmp_path / '.tmp_k2j4h5g6'
  fresh_legacy = tmp_path / '.tmp_a1b2c3d4.keras'
  other = tmp_path / '.tmp_not_ours_at_all.txt'
  for path in (dead, live, legacy, fresh_legacy, other):
    path.write_text('partial')
  for path in (dead, live, legacy, other):
    os.utime(path, (old, old))
  structure_exporter.write_atomically(str(tmp_path / 'alive_1'), '{}')
  assert sorted(os.listdir(tmp_path)) == sorted(
      ['alive_1', live.name, fresh_legacy.name, other.name])


def test_plot_and_cli_writers_use_the_cleaning_helper(tmp_path):
  old = time.time() - 600
  stale = tmp_path / ('.tmp_morphnet_%d_x.png' % _dead_pid())
  stale.write_text('partial')
  os.utime(stale, (old, old))
  plot.plot_widths({'a': 2}, str(tmp_path / 'w.png'))
  assert os.listdir(tmp_path) == ['w.png']
  stale.write_text('partial')
  os.utime(stale, (old, old))
  cli._save_model_atomically(_model(), str(tmp_path / 'm.keras'))
  assert sorted(os.listdir(tmp_path)) == ['m.keras', 'w.png']


def test_no_overwrite_write_refuses_existing_file(tmp_path):
  path = str(tmp_path / 'alive_3')
  _atomic.write_text(path, 'first')
  with pytest.raises(FileExistsError):
    _atomic.write_text(path, 'second', overwrite=False)
  with open(path) as f:
    assert f.read() == 'first'
  assert os.listdir(tmp_path) == ['alive_3']


# ------------------------------------------------- save/load the optimizer
def test_save_weights_keeps_optimizer_state(data, tmp_path):
  x, y = data
  model = _model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  trainer = mk.add_regularizer(model, reg, strength=1e-4, monitor=False)
  trainer.compile(optimizer='adam', loss='sparse_categorical_crossentropy')
  trainer.fit(x, y, batch_size=4, epochs=1, verbose=0)
  path = str(tmp_path / 'w.weights.h5')
  trainer.save_weights(path)

  other = _model(seed=1)
  other_trainer = mk.add_regularizer(
      other, flop_regularizer.GammaFlopsRegularizer(other, 0.01),
      strength=1e-4, monitor=False)
  other_trainer.compile(optimizer='adam',
                        loss='sparse_categorical_crossentropy')
  other_trainer.load_weights(path)
  assert int(other_trainer.optimizer.iterations) == 4
  for a, b in zip(trainer.optimizer.variables,
                  other_trainer.optimizer.variables):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b))
  # Still the plain model's file: a plain model loads it.
  plain = _model(seed=2)
  plain.load_weights(path)
  np.testing.assert_allclose(plain.predict(x, verbose=0),
                             model.predict(x, verbose=0), rtol=1e-5)
  assert not hasattr(model, 'optimizer') or model.optimizer is None


# ------------------------------------------------- combining regularizers
def test_combined_regularizer_logs_every_part(data):
  x, y = data
  model = _model()
  flops = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  size = model_size_regularizer.GammaModelSizeRegularizer(model, 0.01)
  w_flops, w_size = 1.0 / float(flops.get_cost()), 1.0 / float(
      size.get_cost())
  trainer = mk.add_regularizer(model, [(flops, w_flops), (size, w_size)],
                               strength=1e-3, monitor=False)
  reg = trainer.regularizer
  assert isinstance(reg, combined.CombinedRegularizer)
  expected = (w_flops * float(flops.get_regularization_term()) +
              w_size * float(size.get_regularization_term()))
  assert float(reg.get_regularization_term()) == pytest.approx(expected,
                                                               rel=1e-5)
  trainer.compile(optimizer='sgd', loss='sparse_categorical_crossentropy')
  history = trainer.fit(x, y, batch_size=8, epochs=1, verbose=0).history
  for key in ('FLOPs', 'FLOPs_term', 'ModelSize', 'ModelSize_term',
              'combined_cost', 'regularization_term'):
    assert key in history, sorted(history)
  assert history['FLOPs'][-1] == pytest.approx(float(flops.get_cost()))


def test_combined_same_cost_name_needs_names():
  model = _model()
  a = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  b = flop_regularizer.GroupLassoFlopsRegularizer(model, 1e-3)
  with pytest.raises(ValueError, match='share the log key FLOPs.*names='):
    combined.CombinedRegularizer([a, b])
  both = combined.CombinedRegularizer([a, b], names=['FLOPs_g', 'FLOPs_gl'])
  assert set(both.logged_values()) == {'FLOPs_g', 'FLOPs_g_term',
                                       'FLOPs_gl', 'FLOPs_gl_term'}


def test_nested_add_regularizer_is_refused():
  model = _model()
  a = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  b = model_size_regularizer.GammaModelSizeRegularizer(model, 0.01)
  inner = mk.add_regularizer(model, a, strength=1.0, monitor=False)
  with pytest.raises(TypeError, match=r"already a RegularizedModel.*drop "
                     r"the inner one's term.*CombinedRegularizer"):
    mk.add_regularizer(inner, b, strength=1.0)


def test_exporter_callback_refuses_combined():
  model = _model()
  both = combined.CombinedRegularizer([
      flop_regularizer.GammaFlopsRegularizer(model, 0.01),
      model_size_regularizer.GammaModelSizeRegularizer(model, 0.01)])
  with pytest.raises(TypeError, match=r'combined\.regularizers\[0\]'):
    mk.StructureExporterCallback(both, '/tmp/unused', 1)


# --------------------------------------------------------------------- CLI
@pytest.fixture(scope='module')
def cli_files(tmp_path_factory):
  d = tmp_path_factory.mktemp('rel_cli')
  model = str(d / 'model.keras')
  _model().save(model)
  paths = {'dir': d, 'model': model}
  for name, text in (('empty', '{}'), ('good', '{"conv1": 2}'),
                     ('huge', '{"conv1": 10000000000}')):
    (d / (name + '.json')).write_text(text)
    paths[name] = str(d / (name + '.json'))
  return paths


def _main(capsys, *args):
  code = cli.main(list(args))
  out, err = capsys.readouterr()
  return code, out, err


@pytest.mark.parametrize('name,args,message', [
    ('plot_txt', ('plot', '{good}', '-o', '{dir}/x.txt'),
     "cannot write a plot as '.txt': use one of"),
    ('zero_shape', ('analyze', '{model}', '--input-shape=0,0,3'),
     "--input-shape '0,0,3': every dimension must be an integer in [1,"),
    ('empty_slim', ('slim', '{model}', '{empty}', '-o', '{dir}/out.keras'),
     'is empty ({}), so the slim model would be the input model unchanged'),
    ('huge_width', ('slim', '{model}', '{huge}', '-o', '{dir}/out.keras'),
     'bad entries: conv1=10000000000 (a width is at most 1048576)'),
])
def test_cli_bad_input_is_one_line_exit_2(cli_files, capsys, name, args,
                                          message):
  del name
  args = [a.format(**cli_files) for a in args]
  code, _, err = _main(capsys, *args)
  assert code == cli.EXIT_BAD_INPUT, err
  assert 'internal error' not in err
  assert message in err
  assert len(err.strip().splitlines()) == 1
  assert not os.path.exists(str(cli_files['dir'] / 'out.keras'))
  assert not os.path.exists(str(cli_files['dir'] / 'x.txt'))


@pytest.mark.parametrize('cost', ['inf', 'nan', '-5', '0'])
def test_cli_expand_to_cost_must_be_finite_positive(cli_files, capsys, cost):
  with pytest.raises(SystemExit) as info:
    cli.main(['slim', cli_files['model'], cli_files['good'], '-o',
              str(cli_files['dir'] / 'out.keras'), '--expand-to-cost', cost])
  assert info.value.code == 2
  assert 'expected a finite cost > 0' in capsys.readouterr().err
