"""Saves that never destroy: RegularizedModel.save is atomic,
`morphnet slim` never writes onto its input nor over a file without
--overwrite, and the CLI names a custom class it cannot load."""

import importlib.util
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import keras
import pytest

import morph_net.keras as mk
from morph_net import cli
from morph_net.network_regularizers import flop_regularizer

L = keras.layers

# Saves `RegularizedModel.save` over one path in a loop, the version
# number in a bias; SIGINT (KeyboardInterrupt) stops the loop, the child
# reports the last version saved, the one it was saving and whether the
# interrupt landed inside `save`, then waits for 'go' (or 'stop'), ignoring
# a late SIGINT while it waits.
_CHILD = r'''
import faulthandler, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # background jobs ignore it
faulthandler.register(signal.SIGUSR1)  # the test dumps the stacks of a stuck child
import numpy as np
import keras
import morph_net.keras as mk
from morph_net.network_regularizers import flop_regularizer

def tell(line):
  # One write per line: print() writes the text and the newline apart, and
  # a Ctrl-C between them glued 'saved 50' and 'interrupted ...' together.
  sys.stdout.write(line + '\n')
  sys.stdout.flush()

def caused_by_interrupt(e):
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, KeyboardInterrupt):
      return True
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return False

def command():
  while True:
    try:
      return sys.stdin.readline().strip()
    except KeyboardInterrupt:
      pass

def main(path):
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(16, 3, use_bias=False, name='conv1')(inputs)
  x = keras.layers.ReLU()(keras.layers.BatchNormalization(name='bn1')(x))
  x = keras.layers.Dense(512, name='wide')(keras.layers.Flatten()(x))
  model = keras.Model(inputs, keras.layers.Dense(2, name='marker')(x))
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  trainer = mk.add_regularizer(model, reg, strength=1e-6, monitor=False)
  bias = model.get_layer('marker').bias
  saved = version = 0
  while True:
    in_save = False
    try:
      while True:
        version = saved + 1
        bias.assign(np.array([version, 0], np.float32))
        in_save = True
        trainer.save(path)
        in_save = False
        saved = version
        tell('saved %d' % saved)
    except KeyboardInterrupt:
      pass
    except SystemError as e:  # Ctrl-C inside C code outside the save
      # (NumPy's __array__ in bias.assign): "returned a result with an
      # exception set", the KeyboardInterrupt as its cause; TensorFlow's
      # traceback filter re-raises it 'from None', which can drop the
      # cause, so the message is what tells.
      if not (caused_by_interrupt(e)
              or 'returned a result with an exception set' in str(e)):
        raise
    tell('interrupted %d %d %d' % (saved, version, in_save))
    if command() != 'go':
      return

main(sys.argv[1])
'''


class _Child:
  """The saving child, its output lines read by a thread (no hang)."""

  def __init__(self, path, log):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    # stderr to a file: an unread pipe fills up and blocks the child.
    self._log = log
    with open(log, 'w') as err:
      self.proc = subprocess.Popen(
          [sys.executable, '-c', _CHILD, path], stdin=subprocess.PIPE,
          stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    self.lines = queue.Queue()
    self.events = []  # what the test saw and did, for a failure message
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.put(line.split())
    self.lines.put(None)

  def next(self, words, timeout):
    """The next line whose first word is in `words`, or None after
    `timeout` seconds in all (fails if the child dies)."""
    deadline = time.time() + timeout
    while True:
      try:
        line = self.lines.get(timeout=max(0.0, deadline - time.time()))
      except queue.Empty:
        return None
      if line is None:
        with open(self._log) as f:
          pytest.fail('the saving child died: %s' % f.read()[-3000:])
      self.events.append(' '.join(line))
      if line and line[0] in words:
        return line

  def until(self, word, timeout=120):
    line = self.next((word,), timeout)
    if line is None:
      self.proc.kill()
      pytest.fail('the saving child said no %r for %ds' % (word, timeout))
    return line

  def interrupt(self):
    """SIGINT until the child reports it; its 'interrupted' line.

    A KeyboardInterrupt raised where C code clears Python errors (e.g. an
    attribute probe inside TensorFlow or NumPy) is lost, like a Ctrl-C that
    a program swallowed: press again.
    """
    for _ in range(24):
      self.events.append('SIGINT')
      self.proc.send_signal(signal.SIGINT)
      line = self.next(('interrupted',), timeout=5)
      if line is not None:
        return line
    self.proc.send_signal(signal.SIGUSR1)  # faulthandler: where it is stuck
    time.sleep(2)
    self.proc.kill()
    with open(self._log) as f:
      pytest.fail('the saving child ignored SIGINT for 2 minutes; the '
                  'test saw and did: %s; its stacks:\n%s'
                  % (', '.join(self.events[-30:]), f.read()[-6000:]))

  def say(self, text):
    self.events.append(text)
    self.proc.stdin.write(text + '\n')
    self.proc.stdin.flush()


def _marker(path):
  """The version a saved model holds (it must load)."""
  model = keras.saving.load_model(path, compile=False)
  return int(model.get_layer('marker').bias.numpy()[0])


def test_28_interrupted_saves_leave_the_old_or_the_new_model(tmp_path):
  path = str(tmp_path / 'model.keras')
  child = _Child(path, str(tmp_path.parent / ('%s.log' % tmp_path.name)))
  rng = random.Random(26)
  outcomes, inside = [], 0
  try:
    child.until('saved')  # an old model exists from here on
    line = None
    while len(outcomes) < 28:
      if line is None:  # a resent SIGINT may land after 'go': line is set
        time.sleep(rng.uniform(0.0, 0.3))
        line = child.interrupt()
      _, saved, version, in_save = line
      inside += int(in_save)
      held = _marker(path)  # raises if the file is broken
      assert held in (int(saved), int(version)), (held, saved, version)
      outcomes.append('new' if held == int(version) != int(saved) else 'old')
      child.say('go')
      line = child.next(('saved', 'interrupted'), timeout=120)
      assert line is not None, 'the child did not resume'
      line = line if line[0] == 'interrupted' else None
    if line is None:
      child.interrupt()
    child.say('stop')
    assert child.proc.wait(60) == 0
  finally:
    if child.proc.poll() is None:
      child.proc.kill()
  # Most interrupts landed inside save (where a plain Keras save leaves a
  # broken file: 24 of 28 in a run of this loop with model.save).
  assert inside >= 20, inside
  assert os.listdir(str(tmp_path)) == ['model.keras']  # no temp file left


@pytest.mark.slow
def test_killed_saves_leave_the_old_or_the_new_model(tmp_path):
  """SIGKILL runs no cleanup: the path still holds a whole model."""
  path = str(tmp_path / 'model.keras')
  rng = random.Random(7)
  for _ in range(6):
    child = _Child(path, str(tmp_path.parent / ('%s.log' % tmp_path.name)))
    saved = int(child.until('saved')[1])
    time.sleep(rng.uniform(0.0, 0.5))
    child.proc.kill()
    child.proc.wait(60)
    while True:  # the versions saved before the kill
      line = child.lines.get(timeout=60)
      if line is None:
        break
      saved = int(line[1])
    assert _marker(path) in (saved, saved + 1)


def _trainer():
  inputs = keras.Input((6, 6, 3))
  x = L.ReLU()(L.BatchNormalization(name='bn1')(L.Conv2D(4, 3,
                                                         name='conv1')(inputs)))
  model = keras.Model(inputs, L.Dense(2, name='logits')(
      L.GlobalAveragePooling2D()(x)))
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  return mk.add_regularizer(model, reg, strength=1e-6, monitor=False)


def test_save_without_overwrite_keeps_the_existing_file(tmp_path):
  path = str(tmp_path / 'model.keras')
  with open(path, 'w') as f:
    f.write('precious')
  with pytest.raises(FileExistsError, match='model.keras'):
    _trainer().save(path, overwrite=False)
  assert open(path).read() == 'precious'
  _trainer().save(path)
  assert keras.saving.load_model(path, compile=False).get_layer('conv1')


def test_save_weights_goes_through_the_atomic_writer(tmp_path, monkeypatch):
  path = str(tmp_path / 'run.weights.h5')
  trainer = _trainer()
  trainer.save_weights(path)
  before = open(path, 'rb').read()
  with pytest.raises(FileExistsError, match='run.weights.h5'):
    trainer.save_weights(path, overwrite=False)
  written = []
  real = trainer.inner_model.save_weights

  def recording(filepath, **kwargs):
    written.append(os.path.basename(filepath))
    return real(filepath, **kwargs)

  monkeypatch.setattr(trainer.inner_model, 'save_weights', recording)
  trainer.save_weights(path)
  assert written[0].startswith('.tmp_morphnet_')  # beside, then renamed
  assert written[0].endswith('.weights.h5')
  # The weights and, beside them, the wrapper's state (strength, ...).
  assert sorted(os.listdir(str(tmp_path))) == [
      'run.weights.h5', 'run.weights.h5.morph_net_state.json']
  assert len(open(path, 'rb').read()) == len(before)
  trainer.load_weights(path)


# -------------------------------------------------------------- the CLI
@pytest.fixture(scope='module')
def seed_files(tmp_path_factory):
  d = tmp_path_factory.mktemp('slim_outputs')
  seed = str(d / 'seed.keras')
  _trainer().inner_model.save(seed)
  structure = d / 'alive_10'
  structure.write_text('{"conv1": 2}')
  return d, seed, str(structure)


def _main(capsys, *args):
  code = cli.main(list(args))
  return code, capsys.readouterr().err


def test_slim_refuses_to_write_onto_its_input(seed_files, capsys):
  _, seed, structure = seed_files
  before = open(seed, 'rb').read()
  for extra in ([], ['--overwrite']):
    code, err = _main(capsys, 'slim', seed, structure, '-o', seed, *extra)
    assert code == cli.EXIT_BAD_INPUT
    assert 'is the input' in err and 'destroy it' in err
  assert open(seed, 'rb').read() == before


def test_slim_replaces_an_existing_output_only_with_overwrite(seed_files,
                                                              capsys):
  d, seed, structure = seed_files
  out = str(d / 'slim.keras')
  with open(out, 'w') as f:
    f.write('an earlier slim model')
  code, err = _main(capsys, 'slim', seed, structure, '-o', out)
  assert code == cli.EXIT_BAD_INPUT
  assert 'exists; pass --overwrite to replace it' in err
  assert open(out).read() == 'an earlier slim model'
  code, err = _main(capsys, 'slim', seed, structure, '-o', out,
                    '--overwrite')
  assert code == cli.EXIT_OK, err
  slim = keras.saving.load_model(out, compile=False)
  assert slim.get_layer('conv1').filters == 2


_CUSTOM = '''
import keras

@keras.saving.register_keras_serializable(package='round3test')
class Doubler(keras.layers.Layer):
  def call(self, x):
    return 2.0 * x
'''


def test_cli_names_an_unimported_custom_class_and_imports_it(tmp_path,
                                                             capsys):
  module_file = tmp_path / 'round3_layers.py'
  module_file.write_text(_CUSTOM)
  spec = importlib.util.spec_from_file_location('round3_layers',
                                                str(module_file))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  inputs = keras.Input((6, 6, 3))
  x = module.Doubler(name='double')(L.Conv2D(4, 3, name='conv1')(inputs))
  model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
  path = str(tmp_path / 'custom.keras')
  model.save(path)
  # A new process would not know the class: forget it.
  del keras.saving.get_custom_objects()['round3test>Doubler']
  try:
    code, err = _main(capsys, 'analyze', path)
    assert code == cli.EXIT_BAD_INPUT
    assert "custom class 'Doubler' (registered as 'round3test>Doubler', " \
        "defined in module 'round3_layers' when saved)" in err
    assert '--custom-module round3_layers' in err
    code, err = _main(capsys, 'analyze', path, '--custom-module',
                      str(module_file))
    assert code == cli.EXIT_OK, err
    code, err = _main(capsys, 'analyze', path, '--custom-module',
                      'no_such_module_round3')
    assert code == cli.EXIT_BAD_INPUT
    assert 'cannot import it: ModuleNotFoundError' in err
  finally:
    keras.saving.get_custom_objects().pop('round3test>Doubler', None)
    sys.modules.pop('round3_layers', None)


def test_an_interrupt_inside_the_zip_writer_is_reported_as_an_interrupt(
    tmp_path):
  """Ctrl-C while Keras writes the zip surfaces from zipfile as "Can't close
  the ZIP file while there is an open writing handle" (a ValueError raised
  while handling the KeyboardInterrupt). The save reports the interrupt,
  the old file stays whole, and no temporary file is left."""
  from morph_net.keras import _saving  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'model.keras'
  path.write_bytes(b'the old model')

  def write(tmp, overwrite=True):
    del overwrite
    with open(tmp, 'wb') as f:
      f.write(b'half of a new')
    try:
      raise KeyboardInterrupt
    except KeyboardInterrupt:
      raise ValueError("Can't close the ZIP file while there is an open "
                       'writing handle on it.')  # pylint: disable=raise-missing-from

  with pytest.raises(KeyboardInterrupt):
    _saving.save(write, str(path), True, ('.keras',))
  assert path.read_bytes() == b'the old model'
  assert sorted(os.listdir(tmp_path)) == ['model.keras']

  def fails(tmp, overwrite=True):
    del tmp, overwrite
    raise ValueError('not an interrupt')

  with pytest.raises(ValueError, match='not an interrupt'):
    _saving.save(fails, str(path), True, ('.keras',))
  assert path.read_bytes() == b'the old model'


def _swallowed_sigint():
  """A SIGINT delivered here and swallowed, as C code that clears Python
  errors does (NumPy's __array__ probe turned one into a TypeError)."""
  try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1.0)  # the handler runs on the next bytecode
  except KeyboardInterrupt:
    pass


@pytest.fixture
def default_sigint():
  """Python's default SIGINT handler for the test's duration: a process
  started in the background (`pytest &`) inherits SIGINT ignored."""
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, previous)


def test_a_swallowed_interrupt_still_stops_the_save(tmp_path, default_sigint):
  del default_sigint
  from morph_net.keras import _saving  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'model.keras'
  path.write_bytes(b'the old model')

  def turned_into_type_error(tmp, overwrite=True):
    del overwrite
    with open(tmp, 'wb') as f:
      f.write(b'half of a new')
    _swallowed_sigint()
    raise TypeError("__array__() got an unexpected keyword argument 'copy'")

  with pytest.raises(KeyboardInterrupt, match='keeps what it held'):
    _saving.save(turned_into_type_error, str(path), True, ('.keras',))
  assert path.read_bytes() == b'the old model'
  assert sorted(os.listdir(tmp_path)) == ['model.keras']

  def finished_anyway(tmp, overwrite=True):
    del overwrite
    _swallowed_sigint()
    with open(tmp, 'wb') as f:
      f.write(b'the new model')

  with pytest.raises(KeyboardInterrupt, match='was completed'):
    _saving.save(finished_anyway, str(path), True, ('.keras',))
  assert path.read_bytes() == b'the new model'
  assert sorted(os.listdir(tmp_path)) == ['model.keras']
  # The handler in place before the save is back, and a save with no
  # interrupt raises nothing.
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  _saving.save(lambda tmp, overwrite=True: open(tmp, 'wb').close(),
               str(path), True, ('.keras',))
  assert path.read_bytes() == b''


def test_a_programs_own_sigint_handler_is_left_alone(tmp_path):
  """A handler that only asks the program to stop (no exception) runs,
  and the save completes without raising."""
  from morph_net.keras import _saving  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'model.keras'
  asked = []
  previous = signal.signal(signal.SIGINT,
                           lambda signum, frame: asked.append(signum))
  try:
    def write(tmp, overwrite=True):
      del overwrite
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.5)
      with open(tmp, 'wb') as f:
        f.write(b'the new model')

    _saving.save(write, str(path), True, ('.keras',))
  finally:
    signal.signal(signal.SIGINT, previous)
  assert asked == [signal.SIGINT]
  assert path.read_bytes() == b'the new model'
  assert sorted(os.listdir(tmp_path)) == ['model.keras']
