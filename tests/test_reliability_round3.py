"""No silent wrong result, round 3: unreachable budgets,
reruns in a used directory, write errors that name no file."""

import errno
import json
import os
import subprocess
import sys
import time
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import morph_net.keras as mk
from morph_net.keras import _floor
from morph_net.keras import budget
from morph_net.keras import cycles
from morph_net.network_regularizers import combined
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.probabilistic_gating import activation_gating
from morph_net.framework import atomic_files as _atomic

L = keras.layers
# conv1 has no BatchNorm, so no Gamma source can remove its FLOPs:
# 2 x 64 positions x 9 x 1 input x 8 output channels.
FLOOR = 2 * 64 * 9 * 1 * 8


def _unprunable_stem(gated=False):
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 1))
  x = L.ReLU()(L.Conv2D(8, 3, padding='same', name='conv1')(inputs))
  x = L.Conv2D(16, 3, padding='same', use_bias=False, name='conv2')(x)
  if gated:
    x = activation_gating.LogisticSigmoidGating(name='gate2')(x)
  else:
    x = L.BatchNormalization(name='bn2')(x)
  x = L.GlobalAveragePooling2D()(L.ReLU()(x))
  return keras.Model(inputs, L.Dense(10, name='logits')(x))


# ------------------------------------------------------------ cost floor
def test_target_under_the_floor_is_refused_naming_floor_and_holder():
  model = _unprunable_stem()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  with pytest.raises(ValueError) as info:
    mk.add_regularizer(model, reg, target_cost=FLOOR / 2)
  message = str(info.value)
  # The facts: the target, the floor, the layer that holds it, the bound.
  assert '4,608' in message and 'conv1' in message
  assert 'target_cost >= 9,216' in message
  assert mk.add_regularizer(model, reg, target_cost=FLOOR).target_cost == (
      FLOOR)


@pytest.mark.parametrize('family', ['gamma', 'group_lasso', 'gate'])
def test_floor_is_the_cost_with_every_source_dead(family):
  """Checked by killing every source by hand (its own alive rule)."""
  model = _unprunable_stem(gated=family == 'gate')
  if family == 'gamma':
    reg = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  elif family == 'group_lasso':
    reg = flop_regularizer.GroupLassoFlopsRegularizer(model, 0.01)
  else:
    reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(model)
  floor = _floor.cost_floor(reg)
  full = float(reg.get_cost())
  for s in reg.op_regularizer_manager.sources:
    dead = -50.0 if family == 'gate' else 0.0
    s.param.assign(np.full(s.param.shape, dead, np.float32))
  assert float(reg.get_cost()) == pytest.approx(floor.cost)
  assert floor.cost < full
  if family == 'gamma':
    assert floor.cost == FLOOR
    assert [h[0] for h in floor.holders] == ['conv1']
  if family == 'gate':  # the gate keeps its first channel
    assert floor.cost == FLOOR + 2 * 64 * 9 * 8 * 1 + 2 * 1 * 10


def test_combined_floor_is_the_weighted_sum_of_the_parts():
  model = _unprunable_stem()
  flops = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  size = model_size_regularizer.GammaModelSizeRegularizer(model, 0.01)
  both = combined.CombinedRegularizer([(flops, 1.0), (size, 10.0)])
  floor = _floor.cost_floor(both)
  # Model size at the floor: conv1's 9 x 1 x 8 weights.
  assert floor.cost == pytest.approx(FLOOR + 10.0 * 72)


class _Pinned:
  """A regularizer_decorator's result: channels alive while `pin` holds."""

  def __init__(self, inner, pin):
    self.regularization_vector = inner.regularization_vector
    self.alive_vector = tf.logical_or(inner.alive_vector, pin)


def test_fit_warns_when_the_floor_rises_over_the_target():
  """A decorator that pins bn2's channels alive raises the floor during
  training; the monitor that fit adds says so."""
  model = _unprunable_stem()
  pin = tf.Variable(False)
  reg = flop_regularizer.GammaFlopsRegularizer(
      model, 0.01, regularizer_decorator=_Pinned,
      decorator_parameters={'pin': pin})
  pinned_floor = FLOOR + 2 * 64 * 9 * 8 * 16 + 2 * 16 * 10
  target = (FLOOR + pinned_floor) / 2
  trainer = mk.add_regularizer(model, reg, target_cost=target)
  trainer.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))

  class Pin(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
      pin.assign(True)

  x = np.random.RandomState(0).rand(8, 8, 8, 1).astype('float32')
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    trainer.fit(x, np.zeros(8, 'int32'), batch_size=8, epochs=2, verbose=0,
                callbacks=[Pin()])
  floor_warnings = [str(w.message) for w in caught
                    if '{:,}'.format(pinned_floor) in str(w.message)]
  assert len(floor_warnings) == 1, floor_warnings
  # The facts: the old floor, and the target that is now under the new one.
  assert '9,216' in floor_warnings[0]
  assert '{:,}'.format(int(target)) in floor_warnings[0]


def test_monitor_warns_once_when_the_target_moves_under_the_floor():
  model = _unprunable_stem()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  controller = budget.StrengthController(2 * FLOOR)
  monitor = _floor.FloorMonitor(reg, controller)
  monitor.on_train_begin()
  assert not monitor.warnings
  controller.target_cost = FLOOR / 2
  with pytest.warns(RuntimeWarning, match='target_cost=4,608 is below'):
    monitor.on_epoch_end(0)
  monitor.on_epoch_end(1)
  assert len(monitor.warnings) == 1


@pytest.mark.parametrize('target', [tf.constant(100000.0),
                                    np.float32(100000.0),
                                    np.array(100000.0),
                                    keras.Variable(100000.0)])
def test_scalar_tensors_are_accepted_as_target_and_strength(target):
  model = _unprunable_stem()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  assert mk.add_regularizer(model, reg, target_cost=target).target_cost == (
      100000.0)
  assert mk.add_regularizer(model, reg, strength=target).strength == 100000.0


def test_a_vector_target_is_refused():
  model = _unprunable_stem()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  with pytest.raises(ValueError, match='target_cost must be a finite'):
    mk.add_regularizer(model, reg, target_cost=tf.constant([1.0, 2.0]))


# ------------------------------------------------------------- run_cycles
def _cycle_model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 1))
  x = L.Conv2D(8, 3, padding='same', use_bias=False, name='conv1')(inputs)
  x = L.ReLU()(L.BatchNormalization(name='bn1')(x))
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(3, name='logits')(x))


def test_run_cycles_refuses_a_directory_an_interrupted_run_used(tmp_path):
  x = np.random.RandomState(0).rand(16, 8, 8, 1).astype('float32')
  y = np.zeros(16, 'int32')
  calls = []

  def interrupted_fit(model, phase, callbacks):
    calls.append(phase)
    if phase == 'retrain':
      raise KeyboardInterrupt  # run 1 stops after its first shrink
    model.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks)

  log_dir = str(tmp_path / 'run')
  with pytest.raises(KeyboardInterrupt):
    cycles.run_cycles(_cycle_model(), interrupted_fit, log_dir=log_dir,
                      save_every_n_steps=1, target_cost=1e9)  # every step exported
  written = sorted(os.listdir(os.path.join(log_dir, 'cycle_1',
                                           'learned_structure')))
  assert written
  calls.clear()
  with pytest.raises(ValueError) as info:
    cycles.run_cycles(_cycle_model(), interrupted_fit, log_dir=log_dir)
  assert 'cycle_1' in str(info.value) and 'cycles_run.json' in str(
      info.value)
  assert not calls  # refused before training
  assert sorted(os.listdir(os.path.join(
      log_dir, 'cycle_1', 'learned_structure'))) == written


def test_claim_is_exclusive_and_an_empty_directory_is_fine(tmp_path):
  cycles.claim_log_dir(str(tmp_path))  # exists, empty: claimed
  with pytest.raises(ValueError, match='cycles_run.json'):
    cycles.claim_log_dir(str(tmp_path))
  old = tmp_path / 'old'
  (old / 'cycle_2').mkdir(parents=True)  # a run of an earlier version
  with pytest.raises(ValueError, match=r'\(cycle_2\)'):
    cycles.claim_log_dir(str(old))


def test_last_structure_reads_only_the_paths_given(tmp_path):
  directory = tmp_path / 'learned_structure'
  directory.mkdir()
  (directory / 'alive_48').write_text('{"conv1": 2}')  # another run's
  (directory / 'alive_10').write_text('{"conv1": 7}')  # this run's
  assert cycles.last_structure(str(tmp_path))[0] == {'conv1': 2}
  structure, path = cycles.last_structure(
      str(tmp_path), paths=[str(directory / 'alive_10')])
  assert structure == {'conv1': 7} and path.endswith('alive_10')


# ------------------------------------------------- two runs, one log_dir
def _exporting_run(threshold):
  model = _cycle_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, threshold)
  trainer = mk.add_regularizer(model, reg, strength=0.0, monitor=False)
  trainer.compile(keras.optimizers.SGD(0.0),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
  return reg, trainer


def _fit(trainer, callback):
  x = np.zeros((8, 8, 8, 1), 'float32')
  trainer.fit(x, np.zeros(8, 'int32'), batch_size=8, epochs=1, verbose=0,
              callbacks=[callback])


def test_rerun_files_come_with_a_warning_saying_which_case(tmp_path):
  log_dir = str(tmp_path)
  reg_a, run_a = _exporting_run(0.5)  # gammas are 1: every channel alive
  reg_b, run_b = _exporting_run(5.0)  # every channel dead
  reg_c, run_c = _exporting_run(5.0)
  export_a = mk.StructureExporterCallback(reg_a, log_dir, 1,
                                          summary_subdir=None)
  export_b = mk.StructureExporterCallback(reg_b, log_dir, 1,
                                          summary_subdir=None)
  _fit(run_a, export_a)
  with pytest.warns(RuntimeWarning, match='Another run is writing'):
    _fit(run_b, export_b)  # created before run A wrote: concurrent
  assert [os.path.basename(p) for p in export_b.saved_paths] == [
      'alive_0.rerun1', 'alive_1.rerun1']
  time.sleep(0.05)
  export_c = mk.StructureExporterCallback(reg_c, log_dir, 1,
                                          summary_subdir=None)
  with pytest.warns(RuntimeWarning, match='written by an earlier run'):
    _fit(run_c, export_c)
  # Same counts as run B's files: run C's are B's (nothing new written).
  assert export_c.saved_paths == export_b.saved_paths


# --------------------------------------------------- errors name the file
def test_a_full_disk_error_names_the_destination_and_keeps_the_old_file(
    tmp_path):
  path = str(tmp_path / 'model.keras')
  with open(path, 'w') as f:
    f.write('old')
  with pytest.raises(OSError) as info:
    with _atomic.atomic_path(path, suffix='.keras') as tmp:
      with open(tmp, 'w') as f:
        f.write('half')
      raise OSError(errno.ENOSPC, 'No space left on device')
  assert info.value.errno == errno.ENOSPC
  assert path in str(info.value)
  assert open(path).read() == 'old'
  assert os.listdir(str(tmp_path)) == ['model.keras']


def test_regularized_model_save_error_names_the_file(tmp_path, monkeypatch):
  model = _cycle_model()
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  trainer = mk.add_regularizer(model, reg, strength=1e-6)
  path = str(tmp_path / 'model.keras')

  def full_disk(filepath, **kwargs):
    del filepath, kwargs
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(model, 'save', full_disk)
  with pytest.raises(OSError, match='model.keras'):
    trainer.save(path)
  assert not os.listdir(str(tmp_path))


_FSIZE_SCRIPT = r'''
import importlib.util, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
spec = importlib.util.spec_from_file_location('_atomic', sys.argv[1])
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
  atomic.write_text(sys.argv[2], 'x' * 100000)
except OSError as e:
  print(repr(str(e)))
'''


def test_a_file_size_limit_error_names_the_destination(tmp_path):
  """A real write failure from the kernel (EFBIG under RLIMIT_FSIZE)."""
  path = str(tmp_path / 'alive_7')
  out = subprocess.run(
      [sys.executable, '-c', _FSIZE_SCRIPT, _atomic.__file__, path],
      capture_output=True, text=True, timeout=60, check=True).stdout
  assert path in out and 'too large' in out.lower()
  assert not os.listdir(str(tmp_path))


def test_cycles_json_is_written_by_the_one_atomic_writer(tmp_path):
  path = str(tmp_path / 'deep' / 'cycles.json')
  cycles.save_json_atomically([{'cycle': 1}], path)
  with open(path) as f:
    assert json.load(f) == [{'cycle': 1}]
  with pytest.raises(FileExistsError):
    cycles.save_json_atomically([], path, overwrite=False)
