"""Exports the learned structure: alive channel counts per prunable layer.

Keys are op names for `tf.compat.v1` graphs and Keras layer names for Keras
models, so a file written by one process can be read by another. Files are
JSON, written atomically (temp file + rename): a crash never leaves half a
structure behind.

An existing structure file is never replaced by different counts: when a
resumed (or restarted) run reaches a step that an earlier run already
exported, its counts go beside the earlier file, as
`alive_<step>.rerun<N>` (N = 1, 2, ...). `structure_files` lists them all
in (step, rerun) order.
"""

import json
import os
import re

import numpy as np
import tensorflow as tf

from morph_net.tools import _atomic

_DIRECTORY = 'learned_structure'
_FILE_PREFIX = 'alive'
_FILE_RE = re.compile(r'^%s_(\d+)(?:\.rerun(\d+))?$' % _FILE_PREFIX)


class StructureExporter:
  """Reads alive vectors of every prunable op from an OpRegularizerManager.

  Prunable ops are the convolutions (1D/2D/3D, transposed, the pointwise
  half of a separable conv) and matmuls (Dense) whose output channels carry
  a regularizer. Depthwise convs follow their input and are not listed.

  Args:
    op_regularizer_manager: the manager of a network regularizer.
    remove_common_prefix: drop the name scope all keys share.
  """

  def __init__(self, op_regularizer_manager, remove_common_prefix=False):
    self._manager = op_regularizer_manager
    self._keys = {}  # key -> list of output tensors
    # The manager's layer keys: Keras layer names (paths where names
    # collide) or op names in graph mode; a layer called twice ORs its calls.
    for key, entry in op_regularizer_manager.layers().items():
      outputs = [c.output for c in entry.computes if not c.linear
                 and op_regularizer_manager.get_regularizer(c.op) is not None]
      if outputs:
        self._keys[key] = outputs
    if remove_common_prefix:
      self._keys = _strip_common_prefix(self._keys)
    self._values = None

  @property
  def tensors(self):
    """{key: boolean alive vector tensor}."""
    _, alive = self._manager.class_vectors()

    def build():
      out = {}
      for key, outputs in self._keys.items():
        vectors = [tf.gather(alive, self._manager.class_indices(t)) > 0.5
                   for t in outputs]
        out[key] = tf.reduce_any(tf.stack(vectors), 0) if len(
            vectors) > 1 else vectors[0]
      return out

    if self._manager.view.eager:
      return build()
    with self._manager.view.graph.as_default():
      return build()

  def populate_tensor_values(self, values):
    """Stores evaluated `tensors` (graph mode: the result of sess.run)."""
    missing = set(self._keys) - set(values)
    if missing:
      raise ValueError('populate_tensor_values is missing keys: %s'
                       % sorted(missing))
    self._values = {k: np.asarray(values[k]) for k in self._keys}

  def get_alive_counts(self):
    """{key: number of alive channels}."""
    values = self._values
    if values is None:
      if not self._manager.view.eager:
        raise ValueError(
            'In graph mode, evaluate the tensors first: '
            'exporter.populate_tensor_values(sess.run(exporter.tensors)).')
      values = {k: np.asarray(v) for k, v in self.tensors.items()}
    return {k: int(np.sum(v)) for k, v in sorted(values.items())}

  def save_alive_counts(self, f):
    """Writes the alive counts as JSON to an open text file."""
    f.write(json.dumps(self.get_alive_counts(), indent=2, sort_keys=True))

  def create_file_and_save_alive_counts(self, base_dir, global_step):
    """Writes base_dir/learned_structure/alive_<step>; returns its path.

    If that file exists with the same counts, nothing is written. If it
    holds different counts (an earlier run's), it is kept and the counts go
    to the first free `alive_<step>.rerun<N>`, whose path is returned.

    Raises:
      NonFiniteSourceError: (eager) a source holds NaN or inf; no file is
        written.
    """
    step = int(global_step)
    if step < 0:
      raise ValueError('global_step must be >= 0, got %r.' % (global_step,))
    # Counts first: a failure to compute them writes nothing.
    text = json.dumps(self.get_alive_counts(), indent=2, sort_keys=True)
    directory = os.path.join(base_dir, _DIRECTORY)
    os.makedirs(directory, exist_ok=True)
    return write_beside_existing(
        os.path.join(directory, '%s_%d' % (_FILE_PREFIX, step)), text)


def write_beside_existing(path, text):
  """Writes `text` to `path`, or beside it if it holds something else.

  Returns the path holding `text`: `path` if it was free or already held
  exactly `text`, else the first free `<path>.rerun<N>` (N >= 1).
  """
  candidate, n = path, 0
  while True:
    try:
      write_atomically(candidate, text, overwrite=False)
      return candidate
    except FileExistsError:
      if _same_text(candidate, text):
        return candidate
    n += 1
    candidate = '%s.rerun%d' % (path, n)


def _same_text(path, text):
  try:
    with open(path, encoding='utf-8') as f:
      return f.read() == text
  except (OSError, UnicodeDecodeError):
    return False


def structure_files(base_dir):
  """[(step, rerun, path)] of the structure files under base_dir.

  `rerun` is 0 for `alive_<step>` and N for `alive_<step>.rerun<N>`; the
  list is sorted by (step, rerun). Temp files and other names are skipped.
  """
  directory = os.path.join(base_dir, _DIRECTORY)
  if not os.path.isdir(directory):
    return []
  found = []
  for name in os.listdir(directory):
    match = _FILE_RE.match(name)
    if match:
      found.append((int(match.group(1)), int(match.group(2) or 0),
                    os.path.join(directory, name)))
  return sorted(found)


def is_rerun(path):
  """Whether `path` is an `alive_<step>.rerun<N>` file."""
  match = _FILE_RE.match(os.path.basename(path))
  return bool(match and match.group(2))


def plain_path(path):
  """`alive_<step>` for `alive_<step>.rerun<N>` (else `path` itself)."""
  return path.rsplit('.rerun', 1)[0] if is_rerun(path) else path


def write_atomically(path, text, overwrite=True):
  """Writes text to path via a temp file in the same directory + rename.

  With `overwrite=False` an existing file is kept and FileExistsError is
  raised. Temp files of killed writers in the directory are removed.
  """
  _atomic.write_text(path, text, overwrite=overwrite)


def _strip_common_prefix(keys):
  parts = [k.split('/') for k in keys]
  common = os.path.commonprefix(parts) if len(parts) > 1 else parts[0][:-1]
  if len(common) >= min(len(p) for p in parts):
    common = common[:-1]
  cut = len(common)
  return {'/'.join(k.split('/')[cut:]): v for k, v in keys.items()}
