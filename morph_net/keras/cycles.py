"""MorphNet's shrink / expand / retrain loop as one call.

`run_cycles` runs the paper's loop on a Keras model (functional,
Sequential or subclassed, custom layers included) for `num_cycles` cycles (the published "x1", "x2" results):

1. Shrink: train the current network with `add_regularizer(..., target_cost
   =shrink_to x its cost)` (the strength is adapted, see `budget`), and
   export its structures with `StructureExporterCallback`, keeping only
   those at or under the target.
2. Export: the last structure written at or under the target (or, if none
   was, the structure at the end of the shrink, flagged in the record).
3. Expand: `expand_structure` scales it uniformly up to `budget` (by
   default the seed network's cost).
4. Retrain: `slim_model` builds that network, freshly initialized (its
   layers are new), and `fit` trains it from scratch.

The retrained network is the next cycle's seed. Each cycle's record (the
exported and expanded structures, their costs, the metric) is returned and
written to `log_dir/cycles.json` after every cycle (atomically: a temporary
file renamed into place).

One run, one `log_dir`: a directory that holds an earlier run's files
(`cycles.json`, a `cycle_<i>` directory, or the run's claim file
`cycles_run.json`) is refused, since its structures would be taken for this
run's; a record's `structure_file` is always a file this run wrote.

Example:

```python
def fit(model, phase, callbacks):  # phase: 'shrink' or 'retrain'
  model.compile(keras.optimizers.Adam(1e-2 if phase == 'shrink' else 3e-3),
                loss, metrics=['accuracy'])
  model.fit(x, y, epochs=5 if phase == 'shrink' else 20,
            callbacks=callbacks, verbose=0)

records = morph_net.keras.cycles.run_cycles(
    seed, fit, evaluate=lambda m: m.evaluate(x_val, y_val)[1],
    num_cycles=2, shrink_to=0.5, log_dir='/tmp/cycles')
records[-1]['expanded']  # {layer name: width} of the x2 network
```
"""

import json
import os
import socket
import tempfile
import time


from morph_net.keras import budget as budget_lib
from morph_net.keras import callbacks as callbacks_lib
from morph_net.keras import expand as expand_lib
from morph_net.keras import slim as slim_lib
from morph_net.keras import training
from morph_net.network_regularizers import activation_regularizer
from morph_net.network_regularizers import cost_model
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.framework import atomic_files as _atomic
from morph_net.tools import structure_exporter

__all__ = ['claim_log_dir', 'last_structure', 'run_cycles',
           'save_json_atomically']


# Resource -> the default regularizer's class.
_DEFAULTS = {
    'flops': flop_regularizer.GammaFlopsRegularizer,
    'model_size': model_size_regularizer.GammaModelSizeRegularizer,
    'activations': activation_regularizer.GammaActivationRegularizer,
}


def _default_regularizer(cost):
  """make_regularizer's default: Gamma for `cost`, threshold 1e-2."""
  kind = cost_model.resource_name_or_none(cost)
  if kind is None:
    raise ValueError(
        'run_cycles: cost=%r has no default regularizer; pass '
        'make_regularizer (a callable model -> regularizer of that cost).'
        % (cost,))
  return lambda model: _DEFAULTS[kind](model, gamma_threshold=1e-2)


def _check_resource(reg, cost):
  """The shrink's target and the exported costs share one unit."""
  expected = cost_model.resource_name_or_none(cost)
  name = getattr(reg, 'cost_name', None)
  if expected and cost_model.resource_name_or_none(name) != expected:
    raise ValueError(
        'run_cycles: the regularizer reports %r but cost=%r: the shrink '
        'target (a fraction of the regularizer\'s cost) and the exported '
        'and expanded costs would be in different units. Give a %s '
        'regularizer (make_regularizer) or cost to match it.'
        % (name, cost, expected))


CLAIM_FILE = 'cycles_run.json'


def save_json_atomically(obj, path, overwrite=True):
  """Writes `obj` as JSON to `path` through a temporary file + rename."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  _atomic.write_text(path, json.dumps(obj, indent=1, sort_keys=True),
                     overwrite=overwrite)


def _earlier_run(log_dir):
  """What in `log_dir` an earlier (or concurrent) run wrote: names, or []."""
  try:
    names = sorted(os.listdir(log_dir))
  except FileNotFoundError:
    return []
  return [n for n in names if n in ('cycles.json', CLAIM_FILE) or (
      n.startswith('cycle_') and n[len('cycle_'):].isdigit())]


def claim_log_dir(log_dir):
  """Makes `log_dir` this run's, or raises ValueError if a run used it.

  The claim is `log_dir/cycles_run.json`, created atomically (it fails if
  it exists), so two runs started at once on one directory cannot both
  get it.
  """
  used = _earlier_run(log_dir)
  if not used:
    os.makedirs(log_dir, exist_ok=True)
    try:
      save_json_atomically({'pid': os.getpid(), 'host': socket.gethostname(),
                            'started': time.time()},
                           os.path.join(log_dir, CLAIM_FILE),
                           overwrite=False)
      return
    except FileExistsError:
      used = _earlier_run(log_dir)
  raise ValueError(
      'log_dir %s holds another run of run_cycles (%s): its structure files '
      'would be mistaken for this run\'s. Pass a new log_dir (or None for a '
      'fresh temporary one), or remove the old run\'s directory first. '
      'run_cycles does not resume: each cycle retrains from the one before, '
      'in memory.' % (log_dir, ', '.join(used)))


def last_structure(log_dir, model=None, max_cost=None, cost='flops',
                   paths=None):
  """The last structure exported under `log_dir` (and its path).

  Files are taken in (step, rerun) order, last first (see
  `structure_exporter.structure_files`); with `paths` (e.g. a
  `StructureExporterCallback`'s `saved_paths`) only those files, last
  first. With `model` (or its analysis) and `max_cost`, the last one whose
  `structure_cost` on `model` is at most `max_cost` (so the choice does not
  depend on how the exporter was configured). (None, None) if there is
  none.
  """
  if paths is None:
    candidates = [p for _, _, p in reversed(
        structure_exporter.structure_files(log_dir))]
  else:
    candidates = list(reversed(paths))
  for path in candidates:
    with open(path) as f:
      structure = json.load(f)
    if max_cost is None or model is None or expand_lib.structure_cost(
        model, structure, cost=cost) <= max_cost:
      return structure, path
  return None, None


def run_cycles(model, fit, evaluate=None, num_cycles=1, shrink_to=0.5,
               target_cost=None, budget=None, make_regularizer=None,
               cost='flops', round_to=1, log_dir=None, save_every_n_steps=10,
               verbose=False, return_models=False, input_signature=None,
               save_every=None):
  """Runs `num_cycles` MorphNet cycles from `model`; returns their records.

  Args:
    model: the seed network (any model `slim_model` takes; trained or
      not).
    fit: callable (model, phase, callbacks) that compiles and fits `model`
      with the given callbacks; phase is 'shrink' (the model is the
      `RegularizedModel`) or 'retrain' (a freshly initialized slim model).
    evaluate: callable (model) -> float (e.g. held-out accuracy) applied
      to each retrained network; None records no metric.
    num_cycles: int >= 1.
    shrink_to: the shrink target as a fraction of the current network's
      cost (ignored if `target_cost` is given).
    target_cost: an absolute shrink target, the same every cycle.
    budget: the cost to expand to; the seed's cost if None.
    make_regularizer: callable (model) -> network regularizer; if None,
      the Gamma regularizer of `cost` at threshold 1e-2 (e.g.
      `GammaModelSizeRegularizer` for 'model_size'). Its resource must
      match `cost` (checked: a mismatch raises ValueError).
    cost: 'flops', 'model_size' or 'activations', for
      `expand_structure`/`structure_cost`.
    round_to: channel rounding for expansion and slimming.
    log_dir: where each cycle's structures (`cycle_<i>/learned_structure`)
      and `cycles.json` go; a new temporary directory if None. It must not
      hold another run's files (see the module docstring).
    save_every_n_steps: export period during the shrink, in optimizer
      steps (as `StructureExporterCallback`'s).
    verbose: print one line per cycle.
    return_models: also return the retrained models, one per cycle.
    input_signature: how to trace the model for costs and slimming, as
      for the regularizers (a text backbone's sequence length is None);
      `make_regularizer` must use the same.
    save_every: the former name of `save_every_n_steps` (still accepted).

  Returns:
    A list with one dict per cycle: 'cycle', 'shrink_target', 'exported'
    (structure), 'exported_cost', 'exported_at_or_under_target' (False when
    no structure met the target and the final one was used), 'expanded',
    'expanded_cost', 'budget', 'metric', 'structure_file'. With
    `return_models`, a pair (records, retrained models).

  Raises:
    ValueError: num_cycles < 1, shrink_to not in (0, 1), or `log_dir`
      holds another run.
  """
  if not isinstance(num_cycles, int) or num_cycles < 1:
    raise ValueError('num_cycles must be an integer >= 1, got %r.'
                     % (num_cycles,))
  if target_cost is None and not 0.0 < float(shrink_to) < 1.0:
    raise ValueError('shrink_to must be in (0, 1), got %r.' % (shrink_to,))
  if save_every is not None:
    save_every_n_steps = save_every
  make_regularizer = make_regularizer or _default_regularizer(cost)
  log_dir = log_dir or tempfile.mkdtemp(prefix='morph_net_cycles_')
  claim_log_dir(log_dir)
  current = model
  sig = input_signature
  if budget is None:
    budget = expand_lib.structure_cost(model, {}, cost=cost,
                                       input_signature=sig)
  records, models = [], []
  for cycle in range(1, num_cycles + 1):
    reg = make_regularizer(current)
    _check_resource(reg, cost)
    start = float(reg.get_cost())
    target = float(target_cost) if target_cost is not None else (
        float(shrink_to) * start)
    trainer = training.add_regularizer(current, reg, target_cost=target)
    cycle_dir = os.path.join(log_dir, 'cycle_%d' % cycle)
    exporter = budget_lib.only_at_or_under(
        callbacks_lib.StructureExporterCallback(
            reg, cycle_dir, save_every_n_steps, summary_subdir=None), target)
    fit(trainer, 'shrink', [exporter])
    # One trace of the current network serves the choice of structure, its
    # cost, the expansion and the slim model.
    analysis = slim_lib.analysis_of(current, sig)
    # Only files this shrink wrote: never another run's.
    structure, path = last_structure(cycle_dir, analysis, target, cost,
                                     paths=exporter.saved_paths)
    met = structure is not None
    if structure is None:  # nothing at or under the target: take the end
      structure = analysis.resolve(reg)[0]
    exported_cost = expand_lib.structure_cost(analysis, structure, cost=cost)
    expanded = expand_lib.expand_structure(analysis, structure, budget,
                                           cost=cost, round_to=round_to)
    # New layers, freshly initialized: retrained from scratch.
    slim = slim_lib.slim_model(analysis, expanded, round_to=round_to)
    fit(slim, 'retrain', [])
    metric = float(evaluate(slim)) if evaluate is not None else None
    record = {
        'cycle': cycle,
        'start_cost': start,
        'shrink_target': target,
        'exported': {k: int(v) for k, v in structure.items()},
        'exported_cost': float(exported_cost),
        'exported_at_or_under_target': met,
        'structure_file': path,
        'expanded': {k: int(v) for k, v in expanded.items()},
        'expanded_cost': float(expand_lib.structure_cost(
            slim, {}, cost=cost, input_signature=sig)),
        'budget': float(budget),
        'metric': metric,
    }
    records.append(record)
    models.append(slim)
    save_json_atomically(records, os.path.join(log_dir, 'cycles.json'))
    if verbose:
      print('cycle %d: exported %.4g (target %.4g), expanded %.4g, metric %s'
            % (cycle, exported_cost, target, record['expanded_cost'],
               metric), flush=True)
    current = slim
  return (records, models) if return_models else records
