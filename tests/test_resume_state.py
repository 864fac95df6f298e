"""A `target_cost` run resumed by `BackupAndRestore` goes on with the
strength and controller state it had (found by probing: they were not
saved, the strength restarted at 1 / cost and a resumed shrink collapsed
to a network with every channel dead)."""

import json
import os

import keras
import numpy as np
import pytest

from conftest import conv_bn_model
import morph_net.keras as mk
from morph_net.keras import _state_file
from morph_net.network_regularizers import flop_regularizer


def _trainer(seed=0):
  model = conv_bn_model((8, 8, 2), (4, 6), 3, seed=seed)
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.05)
  trainer = mk.add_regularizer(model, reg,
                               target_cost=0.3 * float(reg.get_cost()),
                               monitor=False)
  trainer.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return trainer


def _data():
  rng = np.random.RandomState(0)
  return rng.rand(32, 8, 8, 2).astype('float32'), rng.randint(0, 3, 32)


class _Strengths(keras.callbacks.Callback):

  def __init__(self):
    super().__init__()
    self.by_step = {}

  def on_train_batch_end(self, batch, logs=None):
    self.by_step[int(self.model.optimizer.iterations.numpy())] = float(
        logs['strength'])


class _StopAfterEpoch(keras.callbacks.Callback):

  def on_epoch_end(self, epoch, logs=None):
    if epoch == 2:
      raise KeyboardInterrupt


def test_backup_and_restore_resumes_the_strength(tmp_path):
  x, y = _data()
  whole = _Strengths()
  _trainer().fit(x, y, epochs=5, batch_size=8, shuffle=False, verbose=0,
                 callbacks=[whole])
  backup = str(tmp_path / 'backup')
  with pytest.raises(KeyboardInterrupt):
    _trainer().fit(x, y, epochs=5, batch_size=8, shuffle=False, verbose=0,
                   callbacks=[keras.callbacks.BackupAndRestore(backup),
                              _StopAfterEpoch()])
  resumed = _Strengths()
  trainer = _trainer()
  fresh = trainer.strength
  trainer.fit(x, y, epochs=5, batch_size=8, shuffle=False, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(backup), resumed])
  assert min(resumed.by_step) == 13  # steps 1-12 were restored
  assert fresh != pytest.approx(whole.by_step[13], rel=0.1)
  for step, strength in resumed.by_step.items():
    assert strength == pytest.approx(whole.by_step[step], rel=1e-5), step


def test_the_state_file_is_checked(tmp_path):
  x, y = _data()
  trainer = _trainer()
  trainer.fit(x, y, epochs=1, batch_size=8, verbose=0)
  path = str(tmp_path / 'w.weights.h5')
  trainer.save_weights(path)
  with open(path + _state_file.SUFFIX) as f:
    saved = json.load(f)
  assert saved['iterations'] == 4
  assert saved['variables'][0]['name'] == 'morph_net_strength'
  assert saved['variables'][0]['value'] == [pytest.approx(trainer.strength)]
  # Restored into a new run of the same kind.
  other = _trainer(seed=1)
  other.load_weights(path)
  assert other.strength == pytest.approx(trainer.strength)
  # Written by another save (another step): not restored, warned.
  trainer.fit(x, y, epochs=1, batch_size=8, verbose=0)
  trainer.save_weights(str(tmp_path / 'later.weights.h5'))
  os.replace(str(tmp_path / 'later.weights.h5') + _state_file.SUFFIX,
             path + _state_file.SUFFIX)
  third = _trainer(seed=2)
  before = third.strength
  with pytest.warns(UserWarning, match='saved at optimizer step 8'):
    third.load_weights(path)
  assert third.strength == before
  # No state file beside the weights: warned under target_cost.
  os.remove(path + _state_file.SUFFIX)
  with pytest.warns(UserWarning, match='restart from their initial'):
    _trainer().load_weights(path)
