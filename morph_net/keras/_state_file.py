"""The training state a `RegularizedModel` keeps outside the model's
weights (the strength, `target_cost`'s controller and forecast, the
proximal step's caches, the gates' task-gradient slots), saved beside a
`save_weights` file so that `BackupAndRestore` and
`ModelCheckpoint(save_weights_only=True)` resume it with the weights.

Private to `morph_net.keras`.
"""

import json
import warnings

import numpy as np

from morph_net.framework import atomic_files

SUFFIX = '.morph_net_state.json'
_VERSION = 1


def path_of(weights_path):
  """The state file beside a weights file."""
  return str(weights_path) + SUFFIX


def save(weights_path, variables, iterations):
  """Writes the values of `variables` (atomically) beside `weights_path`;
  `iterations` (the optimizer's step count) ties them to that save."""
  record = dict(version=_VERSION, iterations=int(iterations), variables=[
      dict(name=v.name, shape=list(v.shape),
           value=np.asarray(v.numpy(), np.float64).ravel().tolist())
      for v in variables])
  atomic_files.write_text(path_of(weights_path), json.dumps(record))


def load(weights_path, variables, iterations, needed):
  """Restores `variables` from the state file beside `weights_path`.

  Args:
    weights_path: the weights file just loaded.
    variables: the wrapper's state variables, in `save`'s order.
    iterations: the optimizer's step count after loading the weights.
    needed: whether the run adapts its state (a `target_cost` run): then a
      missing or unusable file is warned about.

  Returns:
    True if the state was restored.
  """
  path = path_of(weights_path)
  try:
    with open(path) as f:
      record = json.load(f)
  except FileNotFoundError:
    if needed:
      warnings.warn(
          'load_weights(%r): no %s beside it (written by '
          'RegularizedModel.save_weights): the strength and the target_cost '
          'controller restart from their initial values, and a run resumed '
          'mid-shrink may overshoot its target. Save with '
          'RegularizedModel.save_weights (BackupAndRestore does).'
          % (str(weights_path), SUFFIX))
    return False
  saved = record.get('variables', [])
  problem = None
  if record.get('version') != _VERSION:
    problem = 'it was written by another version (%r)' % (
        record.get('version'),)
  elif len(saved) != len(variables) or any(
      list(s['shape']) != list(v.shape) for s, v in zip(saved, variables)):
    problem = ('it holds the state of another regularizer or model (%d '
               'variables, this run has %d)' % (len(saved), len(variables)))
  elif int(record.get('iterations', -1)) != int(iterations):
    problem = ('it was saved at optimizer step %s, the weights at step %d '
               '(written by another save)' % (record.get('iterations'),
                                                int(iterations)))
  if problem:
    warnings.warn('load_weights: %s is not restored: %s. The strength and '
                  'the target_cost controller restart from their initial '
                  'values.' % (path, problem))
    return False
  for s, v in zip(saved, variables):
    dtype = np.dtype(getattr(v.dtype, 'as_numpy_dtype', v.dtype))
    v.assign(np.asarray(s['value']).reshape(v.shape).astype(dtype))
  return True
