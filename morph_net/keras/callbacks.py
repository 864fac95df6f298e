"""Callbacks for training with a MorphNet regularizer under `fit`.

`StructureExporterCallback` writes the learned structure (alive channel
counts, JSON) and TensorBoard scalars while training.
"""

import numbers
import os
import time
import warnings

import keras
import tensorflow as tf

from morph_net.framework import keras_trace
from morph_net.keras import expand as expand_lib
from morph_net.network_regularizers import cost_model
from morph_net.op_regularizers import _checks
from morph_net.tools import structure_exporter as structure_exporter_lib
from morph_net.tools import summaries


class StructureExporterCallback(keras.callbacks.Callback):
  """Writes the learned structure and TensorBoard scalars during `fit`.

  Every `save_every_n_steps` optimizer steps (global steps, read from
  `model.optimizer.iterations`, so they continue across `fit` calls), it
  writes `log_dir/learned_structure/alive_<step>` (JSON {layer name: alive
  channel count}, written atomically) and, under `log_dir/<summary_subdir>`,
  the TensorBoard scalars `<cost_name>` (e.g. 'FLOPs'),
  'regularization_term' and 'alive/<layer name>'. It also writes them at
  step 0 when training starts from step 0, and at the last step when
  training ends if `save_on_train_end` (and that step was not written).

  With `steps_per_execution` > 1 the step is checked once per execution: a
  file is written, with the current step, whenever a multiple of
  `save_every_n_steps` was crossed.

  Resuming: the step is read at the first batch, after every callback's
  `on_train_begin` (so after `BackupAndRestore` restored the optimizer, in
  whatever order the callbacks are listed); a run restored to step k goes
  on from k. A file an earlier run wrote is never replaced: if this run
  reaches the same step with different counts (e.g. it replays the steps
  after the last checkpoint of a killed run), its file is written beside,
  as `alive_<step>.rerun<N>` (see `structure_exporter.structure_files`).
  `saved_paths` lists the files this callback wrote. The first such file
  comes with a warning: if the plain file appeared after this callback was
  created, another run is writing into the same `log_dir` now (which run
  gets the plain names is then a race); otherwise an earlier run wrote it
  (expected when resuming, a mix of two runs' files if not).

  A diverged run: if a source (gamma, kernel, gate) holds NaN or inf at a
  step to export, a warning naming the variables is issued and nothing is
  written for that step (no structure file, no scalars); `skipped_steps`
  lists those steps.

  Args:
    regularizer: the morph_net network regularizer being trained.
    log_dir: the base directory.
    save_every_n_steps: int > 0, the period in optimizer steps.
    save_on_train_end: also write at the last step of each `fit`.
    summary_subdir: subdirectory of `log_dir` for the TensorBoard event
      file; None writes no summaries.
    remove_common_prefix: passed to `StructureExporter`.

  Raises:
    ValueError: `save_every_n_steps` is not a positive integer or `log_dir`
      is empty.
    TypeError: `regularizer` has no `op_regularizer_manager`.
  """

  def __init__(self, regularizer, log_dir, save_every_n_steps,
               save_on_train_end=True, summary_subdir='morph_net',
               remove_common_prefix=False):
    super().__init__()
    if (isinstance(save_every_n_steps, bool) or
        not isinstance(save_every_n_steps, numbers.Integral) or
        save_every_n_steps <= 0):
      raise ValueError(
          'save_every_n_steps must be a positive integer, got %r.'
          % (save_every_n_steps,))
    if log_dir is None or not os.fspath(log_dir):
      raise ValueError('log_dir must be a non-empty path, got %r.'
                       % (log_dir,))
    if hasattr(regularizer, 'regularizers'):  # a CombinedRegularizer
      raise TypeError(
          'A CombinedRegularizer has one structure per part: export each '
          'part with its own callback, e.g. StructureExporterCallback('
          'combined.regularizers[0], log_dir, ...), with a different '
          'log_dir per part.')
    if not hasattr(regularizer, 'op_regularizer_manager'):
      raise TypeError(
          'regularizer must be a morph_net network regularizer with an '
          'op_regularizer_manager; got %s.' % type(regularizer).__name__)
    self._regularizer = regularizer
    self._log_dir = os.fspath(log_dir)
    self._every = int(save_every_n_steps)
    self._save_on_train_end = save_on_train_end
    self._summary_subdir = summary_subdir
    self._exporter = structure_exporter_lib.StructureExporter(
        regularizer.op_regularizer_manager,
        remove_common_prefix=remove_common_prefix)
    self._writer = None
    self._local_step = 0
    self._last_saved = None
    self._step_at_check = None  # None: the first batch of a fit is next.
    self.saved_steps = []  # Every step written, in order.
    self.saved_paths = []  # The structure file of each saved step.
    self.skipped_steps = []  # Steps not written: non-finite sources.
    # Set by budget.only_at_or_under: skip structures costing more.
    self.max_cost = None
    self._created = time.time()
    self._rerun_warned = set()  # 'concurrent', 'earlier'

  @property
  def log_dir(self):
    return self._log_dir

  def _global_step(self):
    optimizer = getattr(self.model, 'optimizer', None)
    iterations = getattr(optimizer, 'iterations', None)
    if iterations is None:
      return self._local_step
    value = keras_trace.tf_variable(iterations)
    return int(tf.convert_to_tensor(value).numpy())

  def _save(self, step):
    """Writes the structure file and the scalars for `step`."""
    try:
      if self.max_cost is not None and self._over_max_cost():
        self._last_saved = step
        return
      path = self._exporter.create_file_and_save_alive_counts(
          self._log_dir, step)
    except _checks.NonFiniteSourceError as e:
      self._last_saved = step  # Do not retry this step at train end.
      self.skipped_steps.append(step)
      warnings.warn('StructureExporterCallback: no structure written for '
                    'step %d: %s' % (step, e), RuntimeWarning, stacklevel=2)
      return
    self._last_saved = step
    self.saved_steps.append(step)
    self.saved_paths.append(path)
    if structure_exporter_lib.is_rerun(path):
      self._warn_rerun(path)
    if self._summary_subdir is None:
      return
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(
          os.path.join(self._log_dir, self._summary_subdir))
    with self._writer.as_default():
      summaries.write_summaries(self._regularizer, step, self._exporter,
                                prefix='')
    self._writer.flush()

  def _over_max_cost(self):
    """Whether the structure now costs more than `max_cost`: by the
    regularizer's cost and, where a layer is at 0 channels, by the cost of
    the model `slim_model` builds (it keeps a channel of a layer whose
    removal would disconnect the output, which the regularizer prices at 0
    with everything it feeds)."""
    if not float(self._regularizer.get_cost()) <= self.max_cost:
      return True
    counts = self._exporter.get_alive_counts()
    if 0 not in counts.values():
      return False
    # 'FLOPs' -> 'flops'; a latency or combined cost has no structure cost.
    kind = cost_model.resource_name_or_none(
        getattr(self._regularizer, 'cost_name', None))
    if kind is None:
      return False
    model = getattr(self.model, 'inner_model', self.model)
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # slim_model's own warnings
      cost = expand_lib.structure_cost(model, counts, cost=kind)
    return not float(cost) <= self.max_cost

  def _warn_rerun(self, path):
    """Says why this run's file went beside another's, once per cause."""
    plain = structure_exporter_lib.plain_path(path)
    try:
      concurrent = os.stat(plain).st_mtime >= self._created
    except OSError:
      concurrent = False
    kind = 'concurrent' if concurrent else 'earlier'
    if kind in self._rerun_warned:
      return
    self._rerun_warned.add(kind)
    name, here = os.path.basename(plain), os.path.basename(path)
    if concurrent:
      message = (
          'Another run is writing structures into %s now: %s appeared there '
          'after this callback was created, with other counts, so this '
          'run\'s structure is in %s, beside it. Which run keeps the plain alive_<step> names '
          'depends on which reaches a step first, and the two runs\' files '
          'mix in one directory. Give each run its own log_dir.'
          % (self._log_dir, name, here))
    else:
      message = (
          '%s in %s was written by an earlier run, with other counts, so this '
          'run\'s structure is in %s, beside it. If this run resumes that one (e.g. '
          'BackupAndRestore replays the steps after its last checkpoint), '
          'this is expected; otherwise two runs share this log_dir and their '
          'files mix: give each run its own log_dir. saved_paths lists the '
          'files this run wrote.' % (name, self._log_dir, here))
    warnings.warn(message, RuntimeWarning, stacklevel=3)

  def on_train_begin(self, logs=None):
    self._local_step = 0
    self._step_at_check = None

  def _begin(self):
    # Not in on_train_begin: a BackupAndRestore listed after this callback
    # restores the optimizer's step only in its own on_train_begin.
    step = self._global_step()
    self._step_at_check = step
    if step == 0 and self._last_saved != 0:
      self._save(0)

  def on_train_batch_begin(self, batch, logs=None):
    if self._step_at_check is None:
      self._begin()

  def on_train_batch_end(self, batch, logs=None):
    if self._step_at_check is None:
      self._begin()
    self._local_step += 1
    step = self._global_step()
    previous = self._step_at_check
    self._step_at_check = step
    if step // self._every > previous // self._every and (
        step != self._last_saved):
      self._save(step)

  def on_train_end(self, logs=None):
    if self._step_at_check is None:
      self._begin()  # A fit with no batch.
    step = self._global_step()
    if self._save_on_train_end and step != self._last_saved:
      self._save(step)
    if self._writer is not None:
      self._writer.flush()

  def __del__(self):
    writer = getattr(self, '_writer', None)
    if writer is not None:
      try:
        writer.close()
      except Exception:  # pylint: disable=broad-except
        pass
