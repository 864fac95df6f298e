"""benchmarks/shrink_landing.py: BatchNorm recalibration, and a smoke run."""

import json
import os
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir, 'benchmarks'))
import shrink_landing  # pylint: disable=g-import-not-at-top,wrong-import-position

L = keras.layers


def test_recalibrated_batchnorm_holds_the_exact_statistics_of_its_inputs():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((5, 5, 2))
  conv = L.Conv2D(3, 3, padding='same', name='conv')(inputs)
  model = keras.Model(inputs, L.BatchNormalization(name='bn')(conv))
  bn = model.get_layer('bn')
  bn.moving_mean.assign([9.0, -9.0, 9.0])  # stale statistics
  bn.moving_variance.assign([1e-4, 50.0, 3.0])
  x = np.random.RandomState(1).normal(2.0, 3.0, (1100, 5, 5, 2)).astype(
      np.float32)  # more than one batch of 512
  copy = shrink_landing.recalibrated(model, x)
  features = keras.Model(inputs, conv)(x).numpy().reshape(-1, 3)
  got = copy.get_layer('bn')
  np.testing.assert_allclose(got.moving_mean.numpy(), features.mean(0),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got.moving_variance.numpy(), features.var(0),
                             rtol=1e-3)
  # The model itself keeps its statistics; inference of the copy normalizes.
  np.testing.assert_allclose(bn.moving_mean.numpy(), [9.0, -9.0, 9.0])
  out = copy(x, training=False).numpy().reshape(-1, 3)
  np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-2)
  np.testing.assert_allclose(out.std(0), 1.0, atol=1e-2)


def test_recalibration_reads_gates_as_at_inference():
  """A FiGS gate masks by 1[logit > 0] in the recalibration pass (not a
  sample), so the next BatchNorm gets the statistics inference feeds it;
  the gated seed's file is named after its gate arguments."""
  import morph_net.keras as mk  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  inputs = keras.Input((4,))
  x = L.BatchNormalization(name='bn')(L.Dense(6, name='h')(inputs))
  x = L.BatchNormalization(name='bn2')(L.Dense(5, name='h2')(x))
  gated = mk.add_gates(keras.Model(inputs, L.Dense(2, name='o')(x)))
  gated.get_layer('h_gate').mask_logits.assign(  # near 0: samples vary
      [2.5, -0.2, 0.2, -0.2, 0.2, 2.5])
  data = np.random.RandomState(0).normal(1.0, 3.0, (1100, 4)).astype(
      np.float32)
  copy = shrink_landing.recalibrated(gated, data)
  fed = keras.Model(copy.inputs, copy.get_layer('bn2').input)(
      data, training=False).numpy()
  got = copy.get_layer('bn2')
  # (bn normalizes each batch of 512 by its own statistics in the pass:
  # close to, not exactly, the whole set's)
  np.testing.assert_allclose(got.moving_mean.numpy(), fed.mean(0),
                             rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(got.moving_variance.numpy(), fed.var(0),
                             rtol=1e-2)
  assert shrink_landing.gated_name({}) == 'gated'
  named = shrink_landing.gated_name({'temperature': 0.5})
  assert named.startswith('gated_') and named != shrink_landing.gated_name(
      {'temperature': 0.001})


def test_quick_run_records_landing_and_the_control_and_resumes(tmp_path):
  path = str(tmp_path / 'landing.json')
  args = ['--quick', '--families', 'gamma', '--optimizers', 'adam',
          '--control', '--json', path, '--work-dir', str(tmp_path / 'work')]
  shrink_landing.main(args)
  with open(path) as f:
    runs = json.load(f)['runs']
  assert [(r['family'], r['optimizer']) for r in runs] == [
      ('none', 'adam'), ('gamma', 'adam')]
  control, run = runs
  assert run['setting'] == 'digits16/vgg/flops'
  assert 0.0 <= run['end'] <= 2.0 and run['lowest'] <= run['end'] + 1e-9
  assert run['in_band'] == (0.85 <= run['end'] <= 1.05)
  assert len(run['epoch_ends']) == 2  # --quick: 2 shrink epochs
  for r in runs:
    assert 0.0 <= r['accuracy'] <= 1.0 and 0.0 <= r['seed_accuracy'] <= 1.0
  assert 'vs no regularizer' in shrink_landing.table(runs)
  shrink_landing.main(args)  # nothing left to run
  with open(path) as f:
    assert json.load(f)['runs'] == runs
