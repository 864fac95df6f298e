"""Exports the learned structure: alive channel counts per prunable layer.

Keys are op names for `tf.compat.v1` graphs and Keras layer names for Keras
models, so a file written by one process can be read by another. Files are
JSON, written atomically (temp file + rename): a crash never leaves half a
structure behind.
"""

import json
import os
import tempfile

import numpy as np
import tensorflow as tf

_DIRECTORY = 'learned_structure'
_FILE_PREFIX = 'alive'


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
    view = op_regularizer_manager.view
    self._keys = {}  # key -> list of output tensors
    for c in op_regularizer_manager.compute_ops:
      if c.linear or op_regularizer_manager.get_regularizer(c.op) is None:
        continue
      key = None
      if view.eager:
        key = view.owner_layer(c.op, c.weight_index)
      key = key or c.op.name
      self._keys.setdefault(key, []).append(c.output)
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
    """Writes base_dir/learned_structure/alive_<step>; returns its path."""
    directory = os.path.join(base_dir, _DIRECTORY)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, '%s_%d' % (_FILE_PREFIX, int(global_step)))
    write_atomically(path, json.dumps(self.get_alive_counts(), indent=2,
                                      sort_keys=True))
    return path


def write_atomically(path, text):
  """Writes text to path via a temp file in the same directory + rename."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix='.tmp_', dir=directory)
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _strip_common_prefix(keys):
  parts = [k.split('/') for k in keys]
  common = os.path.commonprefix(parts) if len(parts) > 1 else parts[0][:-1]
  if len(common) >= min(len(p) for p in parts):
    common = common[:-1]
  cut = len(common)
  return {'/'.join(k.split('/')[cut:]): v for k, v in keys.items()}
