"""Fault test: a run killed (SIGKILL) mid-fit and resumed from its backup.

Segment 1 (a subprocess) trains with `BackupAndRestore` (a backup every
epoch of 4 steps) and a `StructureExporterCallback` (a file every 2 steps)
and kills itself at step 10, after the backup at step 8. Segment 2 (the
same code, in this process: one TensorFlow start-up less) restores step 8
and trains to the end. Afterwards every file of segment 1 is unchanged,
segment 2's steps continue from 8 (no second step 0), and where segment 2
replayed steps 9-10 with different counts its files lie beside segment 1's.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys

from morph_net.tools import structure_exporter

_SCRIPT = r'''
import json, os, signal, sys
import numpy as np
import keras
import morph_net.keras as mk
from morph_net.network_regularizers import flop_regularizer

def main(log_dir, kill_at, seed):
  keras.utils.set_random_seed(seed)
  L = keras.layers
  inputs = keras.Input((6, 6, 3))
  x = L.Conv2D(8, 3, name='conv1')(inputs)
  x = L.ReLU()(L.BatchNormalization(name='bn1')(x))
  outputs = L.Dense(2, name='logits')(L.GlobalAveragePooling2D()(x))
  model = keras.Model(inputs, outputs)
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.3)
  trainer = mk.add_regularizer(model, reg, strength=3.0 / float(reg.get_cost()),
                               monitor=False)
  trainer.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss='sparse_categorical_crossentropy')
  rng = np.random.RandomState(0)
  data = rng.rand(32, 6, 6, 3).astype('float32')
  labels = rng.randint(0, 2, 32)

  class Kill(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
      if int(self.model.optimizer.iterations) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

  exporter = mk.StructureExporterCallback(reg, log_dir, 2, summary_subdir=None)
  callbacks = [exporter,  # before the backup: must still see the restored step
               keras.callbacks.BackupAndRestore(os.path.join(log_dir, 'backup'),
                                                save_freq='epoch')]
  if kill_at:
    callbacks.append(Kill())
  trainer.fit(data, labels, batch_size=8, epochs=4, shuffle=True, verbose=0,
              callbacks=callbacks)
  with open(os.path.join(log_dir, 'segment2.json'), 'w') as f:
    json.dump({'steps': exporter.saved_steps,
               'paths': [os.path.basename(p) for p in exporter.saved_paths],
               'iterations': int(trainer.optimizer.iterations)}, f)


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
'''


def _run(script, log_dir, kill_at, seed):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, script, log_dir, str(kill_at),
                         str(seed)], capture_output=True, text=True, env=env,
                        timeout=240)


def _digests(log_dir):
  return {os.path.basename(p): hashlib.sha256(open(p, 'rb').read()).hexdigest()
          for _, _, p in structure_exporter.structure_files(log_dir)}


def test_resume_after_sigkill_keeps_both_segments(tmp_path):
  script = str(tmp_path / 'train.py')
  with open(script, 'w') as f:
    f.write(_SCRIPT)
  log_dir = str(tmp_path / 'run')

  first = _run(script, log_dir, kill_at=10, seed=0)
  assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
  before = _digests(log_dir)
  # Step 0 (start) and every 2 steps up to the kill at 10.
  assert sorted(before) == sorted('alive_%d' % s for s in (0, 2, 4, 6, 8, 10))
  assert not any(n.startswith('.tmp') for n in os.listdir(
      os.path.join(log_dir, 'learned_structure')))

  # Another seed: the resumed segment's replayed steps differ from the
  # killed one's wherever the restored weights do not fix them.
  namespace = {'__name__': 'segment2'}
  exec(compile(_SCRIPT, script, 'exec'), namespace)  # pylint: disable=exec-used
  namespace['main'](log_dir, 0, 1)
  with open(os.path.join(log_dir, 'segment2.json')) as f:
    segment2 = json.load(f)
  # Restored at step 8 (the last backup): steps continue, no step 0 again.
  assert segment2['iterations'] == 16
  assert segment2['steps'] == [10, 12, 14, 16]
  after = _digests(log_dir)
  for name, digest in before.items():
    assert after[name] == digest, name  # none overwritten
  for path in segment2['paths']:
    assert path in after
  assert {'alive_12', 'alive_14', 'alive_16'} <= set(after)
  # Step 10 exists twice only if segment 2 counted differently there.
  with open(os.path.join(log_dir, 'learned_structure', 'alive_10')) as f:
    first_10 = json.load(f)
  with open(os.path.join(log_dir, 'learned_structure',
                         segment2['paths'][0])) as f:
    second_10 = json.load(f)
  if segment2['paths'][0] == 'alive_10':
    assert first_10 == second_10
  else:
    assert segment2['paths'][0] == 'alive_10.rerun1'
