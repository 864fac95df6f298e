"""Atomic saves of Keras files: written beside the path, then renamed.

`RegularizedModel.save` and `save_weights` go through `save`: an
interrupted save (Ctrl-C, a killed job, a full disk) leaves the file that
was there, never half a model (`morph_net.framework.atomic_files`, the
one atomic writer).
"""

import errno
import os

from morph_net.framework import atomic_files as _atomic

MODEL_SUFFIXES = ('.keras', '.h5', '.hdf5')
WEIGHTS_SUFFIXES = ('.weights.h5',)


def _suffix(filepath, zipped, suffixes):
  """The temp file's suffix (one of `suffixes`: Keras reads the format from
  it), or None where Keras must write `filepath` itself (a directory, a
  remote path, another format)."""
  try:
    path = os.fspath(filepath)
  except TypeError:
    return None
  if not isinstance(path, str) or '://' in path or zipped is False:
    return None
  for suffix in suffixes:
    if path.endswith(suffix):
      return suffix
  return None


def save(write, filepath, overwrite, suffixes, **kwargs):
  """`write(path, overwrite=..., **kwargs)` (a Keras save), atomically.

  Args:
    write: `model.save` or `model.save_weights`.
    filepath: the destination.
    overwrite: if False and `filepath` exists, nothing is written.
    suffixes: the file suffixes saved atomically; other destinations go
      to `write` as they are.
    **kwargs: passed to `write` (`zipped=False`, a directory, goes to
      `write` as it is).

  Raises:
    FileExistsError: `overwrite` is False and `filepath` exists (Keras
      would prompt on stdin).
    OSError: the write failed; the message names `filepath`, which keeps
      what it held.
    KeyboardInterrupt: a Ctrl-C arrived during the save, also where the
      code it landed in swallowed it or turned it into another error (the
      message says whether `filepath` holds the new file or the old one).
  """
  suffix = _suffix(filepath, kwargs.get('zipped'), suffixes)
  if suffix is None:
    return write(filepath, overwrite=overwrite, **kwargs)
  if not overwrite and os.path.exists(filepath):
    raise FileExistsError(
        errno.EEXIST, 'exists and overwrite=False; nothing was written',
        os.fspath(filepath))
  with _atomic.interrupts_noted() as noted:
    with _atomic.atomic_path(filepath, suffix=suffix,
                             overwrite=overwrite) as tmp:
      try:
        write(tmp, overwrite=True, **kwargs)
      except Exception as e:  # pylint: disable=broad-except
        interrupt = _interrupt_behind(e)
        if interrupt is None and not noted:
          raise
        # Ctrl-C inside third-party code can surface as another error
        # (zipfile's "Can't close the ZIP file while there is an open
        # writing handle", NumPy's "__array__() got an unexpected keyword
        # argument 'copy'"): say what happened (the temporary file is
        # removed; `filepath` is untouched).
        raise interrupt or KeyboardInterrupt(
            'Ctrl-C during the save of %s, which keeps what it held'
            % os.fspath(filepath)) from None
  if noted:
    # C code swallowed the Ctrl-C and the save finished: `filepath` holds
    # the new file; stop as the user asked.
    raise KeyboardInterrupt('Ctrl-C during the save of %s, which was '
                            'completed' % os.fspath(filepath))


def _interrupt_behind(error):
  """The KeyboardInterrupt an exception was raised while handling, if
  any."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, KeyboardInterrupt):
      return error
    error = error.__context__
  return None
