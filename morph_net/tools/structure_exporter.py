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
import warnings

import numpy as np
import tensorflow as tf

from morph_net.framework import constraints
from morph_net.framework import conv_op_handlers
from morph_net.framework import op_handlers
from morph_net.framework import atomic_files as _atomic

_DIRECTORY = 'learned_structure'
_FILE_PREFIX = 'alive'
_FILE_RE = re.compile(r'^%s_(\d+)(?:\.rerun(\d+))?$' % _FILE_PREFIX)


class StructureExporter:
  """Reads the alive vector of every prunable op from a manager.

  Prunable ops are the convolutions (1D/2D/3D, transposed, the pointwise
  half of a separable conv) and matmuls (Dense) whose output channels carry
  a regularizer. Depthwise convs follow their input and are not listed.

  The manager is ours (`framework.OpRegularizerManager`: keys are Keras
  layer names or op names, a layer called twice ORs its calls) or any
  object with the original MorphNet's interface: `ops`, a list of
  `tf.Operation`s, and `get_regularizer(op)`, which returns an object with
  an `alive_vector` (or None: the op is skipped). Keys are then op names.

  Args:
    op_regularizer_manager: the manager of a network regularizer.
    remove_common_prefix: when every key starts with the same scope (up to
      and including its first '/'), drop it (see
      `get_remove_common_prefix_fn`).
  """

  def __init__(self, op_regularizer_manager, remove_common_prefix=False):
    self._manager = op_regularizer_manager
    self._ours = _has_analysis(op_regularizer_manager)
    if self._ours:
      self._keys = _layer_outputs(op_regularizer_manager)
    else:
      self._keys = _prunable_ops(op_regularizer_manager)
    self._original = {k: k for k in self._keys}  # exported key -> layer key
    if remove_common_prefix:
      rename = get_remove_common_prefix_fn(list(self._keys))
      self._original = {rename(k): k for k in self._keys}
      self._keys = {rename(k): v for k, v in self._keys.items()}
    self._values = None

  @property
  def tensors(self):
    """{key: boolean alive vector tensor}."""
    if not self._ours:
      return {key: _bool_tensor(self._manager.get_regularizer(op).alive_vector,
                                op.graph)
              for key, op in self._keys.items()}
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
      tensors = self.tensors
      if not all(hasattr(t, 'numpy') for t in tensors.values()):
        raise ValueError(
            'In graph mode, evaluate the tensors first: '
            'exporter.populate_tensor_values(sess.run(exporter.tensors)).')
      values = {k: np.asarray(v) for k, v in tensors.items()}
    return self._slimmable(compute_alive_counts(values))

  def _slimmable(self, counts):
    """Counts rounded up to their layer's quantum (a layer feeding a split
    into equal shares, whole attention heads, a grouped convolution's
    groups: `framework.constraints`), so that `slim_model` accepts the
    file; every other count is the exact alive count."""
    if not self._ours:
      return counts  # a manager with only the original's interface
    quanta = constraints.count_quanta(self._manager)
    rounded = {}
    for k, c in counts.items():
      q = quanta.get(self._original.get(k, k), 1)
      rounded[k] = -(-c // q) * q if c and q > 1 else c
    return rounded

  def save_alive_counts(self, f):
    """Writes the alive counts as JSON to an open text file."""
    f.write(json.dumps(self.get_alive_counts(), indent=2, sort_keys=True))

  def create_file_and_save_alive_counts(self, base_dir, global_step):
    """Writes base_dir/learned_structure/alive_<step>; returns its path.

    If that file exists with the same counts, nothing is written. If it
    holds different counts (an earlier run's), it is kept and the counts go
    to the first free `alive_<step>.rerun<N>`, whose path is returned.

    The first file an exporter writes into a directory that holds files at
    later steps (an earlier run's, which `structure_files(base_dir)[-1]`
    and `last_structure` would read as the latest) comes with a warning
    naming them.

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
    self._warn_of_later_files(base_dir, step)
    os.makedirs(directory, exist_ok=True)
    return write_beside_existing(
        os.path.join(directory, '%s_%d' % (_FILE_PREFIX, step)), text)

  def _warn_of_later_files(self, base_dir, step):
    """Once per directory: says which files of another run lie ahead."""
    checked = self.__dict__.setdefault('_checked_dirs', set())
    if os.path.abspath(base_dir) in checked:
      return
    checked.add(os.path.abspath(base_dir))
    later = [os.path.basename(p) for s, _, p in structure_files(base_dir)
             if s > step]
    if later:
      warnings.warn(
          '%s already holds structure files at steps after %d, where this '
          'run starts writing (%s): an earlier run wrote them, and '
          'last_structure(%r) or structure_files(...)[-1] reads the latest '
          'step, which stays that run\'s until this one passes it. Give '
          'each run its own directory (or move those files away). If this '
          'run resumes the one that wrote them, its files at those steps '
          'replace nothing: they go beside them where the counts differ.'
          % (os.path.join(base_dir, _DIRECTORY), step,
             ', '.join(later[:3] + (['...'] if len(later) > 3 else [])),
             base_dir), RuntimeWarning, stacklevel=3)


def compute_alive_counts(alive_vectors):
  """{key: number of true entries} of {key: alive vector}, sorted by key.

  >>> compute_alive_counts({'b': [True, False, True], 'a': [0, 0]})
  {'a': 0, 'b': 2}
  """
  return {k: int(np.sum(np.asarray(v, bool)))
          for k, v in sorted(alive_vectors.items())}


_compute_alive_counts = compute_alive_counts  # the original's private name


def get_remove_common_prefix_fn(names):
  """A function dropping the scope that every name in `names` starts with.

  The scope is the first name's text up to and including its first '/'.
  If some name does not start with it (or the first name has no '/'), the
  function returns names unchanged.

  >>> rename = get_remove_common_prefix_fn(['net/conv1', 'net/block/conv2'])
  >>> rename('net/block/conv2')
  'block/conv2'
  >>> get_remove_common_prefix_fn(['a/x', 'b/x'])('a/x')
  'a/x'
  """
  names = list(names)
  if not names or '/' not in names[0]:
    return lambda name: name
  prefix = names[0][:names[0].index('/') + 1]
  if not all(name.startswith(prefix) for name in names):
    return lambda name: name
  return lambda name: name[len(prefix):]


def _has_analysis(manager):
  """Whether `manager` holds our analysis (layers and class vectors), not
  only the original's interface (`ops`, `get_regularizer`)."""
  try:
    manager.view  # pylint: disable=pointless-statement
  except AttributeError:  # a subclass that skipped our constructor
    return False
  return all(callable(getattr(manager, name, None))
             for name in ('layers', 'class_vectors', 'class_indices'))


def _layer_outputs(manager):
  """{layer key: output tensors of its regularized, width-setting ops}."""
  keys = {}
  for key, entry in manager.layers().items():
    outputs = [c.output for c in entry.computes if not c.linear
               and manager.get_regularizer(c.op) is not None]
    if outputs:
      keys[key] = outputs
  return keys


# Op types whose output width is the layer's own (convs, matmuls), from the
# op-handler table; depthwise convs follow their input.
_WIDTH_HANDLERS = (conv_op_handlers.OutputNonPassthroughOpHandler,
                   conv_op_handlers.MatMulOpHandler)
_PRUNABLE_TYPES = frozenset(
    op_type for op_type, handler
    in op_handlers.default_op_handler_dict().items()
    if isinstance(handler, _WIDTH_HANDLERS))


def _prunable_ops(manager):
  """{op name: op} of a manager with the original's interface."""
  for name in ('ops', 'get_regularizer'):
    if not hasattr(manager, name):
      raise TypeError(
          'StructureExporter needs an OpRegularizerManager, or an object '
          "with the original MorphNet's interface (ops, get_regularizer); "
          '%r has no %r.' % (type(manager).__name__, name))
  ops = manager.ops() if callable(manager.ops) else manager.ops
  keys = {}
  for op in ops:
    if op.type in _PRUNABLE_TYPES and manager.get_regularizer(op):
      keys[op.name] = op
  return keys


def _bool_tensor(alive, graph):
  """`alive` (a tensor, array or list) as a boolean tensor; in graph mode
  in `graph`, the graph of the op it belongs to."""
  if tf.is_tensor(alive):
    if alive.dtype == tf.bool:
      return alive
    if tf.executing_eagerly() or not hasattr(alive, 'graph'):
      return tf.cast(alive, tf.bool)
    with alive.graph.as_default():
      return tf.cast(alive, tf.bool)
  value = np.asarray(alive).astype(bool)
  if tf.executing_eagerly():
    return tf.constant(value)
  with graph.as_default():
    return tf.constant(value)


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
