"""Atomic file writes (temp file + rename) and cleanup of stale temp files.

Every file morph_net writes (structure JSON, slim `.keras` models, plots,
hardware specs, cycle records) is first written to a hidden temp file in
the destination directory, then renamed over the destination, so a reader
never sees half a file. Temp
names carry the writer's process id (`.tmp_morphnet_<pid>_<random><suffix>`):
a later write in the same directory removes the temp files of writers that
were killed (their process is gone and the file has not been touched for
`STALE_AFTER_S` seconds).
"""

import contextlib
import os
import re
import signal
import tempfile
import threading
import time

__all__ = ['atomic_path', 'interrupts_noted', 'naming_destination',
           'write_text', 'remove_stale_temp_files', 'STALE_AFTER_S']

_PREFIX = '.tmp_morphnet_'
_OURS = re.compile(r'^\.tmp_morphnet_(\d+)_')
# Temp files of earlier versions (tempfile.mkstemp, no pid): '.tmp_' plus 8
# random characters, optionally one of the suffixes they used.
_LEGACY = re.compile(r'^\.tmp_[a-z0-9_]{8}(\.keras|\.png|\.pdf|\.svg)?$')
# A dead writer's file untouched this long is stale; a live writer's never is.
STALE_AFTER_S = 60.0
# Legacy names do not say who wrote them: only age tells.
_LEGACY_STALE_AFTER_S = 3600.0


def _pid_alive(pid):
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OSError):
    return True  # Exists (someone else's process) or cannot tell: keep.
  return True


def remove_stale_temp_files(directory, now=None):
  """Removes temp files left in `directory` by interrupted atomic writes.

  Args:
    directory: the directory to clean.
    now: the current time (seconds since the epoch); `time.time()` if None.

  Returns:
    The names removed, sorted.
  """
  now = time.time() if now is None else now
  removed = []
  try:
    names = os.listdir(directory)
  except OSError:
    return removed
  for name in names:
    if not name.startswith('.tmp_'):
      continue
    path = os.path.join(directory, name)
    try:
      age = now - os.stat(path).st_mtime
    except OSError:
      continue  # Renamed or removed meanwhile.
    ours = _OURS.match(name)
    if ours:
      stale = age > STALE_AFTER_S and not _pid_alive(int(ours.group(1)))
    else:
      stale = bool(_LEGACY.match(name)) and age > _LEGACY_STALE_AFTER_S
    if stale:
      with contextlib.suppress(OSError):
        os.remove(path)
        removed.append(name)
  return sorted(removed)


def _default_permissions(path):
  """mkstemp files are 0600; give the output the usual umask permissions."""
  mask = os.umask(0)
  os.umask(mask)
  os.chmod(path, 0o666 & ~mask)


def _fsync(path):
  with contextlib.suppress(OSError):
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


@contextlib.contextmanager
def atomic_path(path, suffix='', overwrite=True):
  """Yields a temp path to write; on success it becomes `path` atomically.

  The temp file lies in `path`'s directory (a rename never crosses file
  systems); it is removed if the body raises. Stale temp files of killed
  writers in that directory are removed first.

  Args:
    path: the destination.
    suffix: the temp file's suffix (some writers pick the format from it,
      e.g. '.keras' or '.png').
    overwrite: if False, an existing `path` is never replaced: the final
      step is a hard link, which fails atomically if `path` exists.

  Yields:
    The temp path.

  Raises:
    FileExistsError: `overwrite` is False and `path` exists.
    OSError: writing failed (e.g. a full disk); the message names `path`
      (see `naming_destination`), and `path` is unchanged.
  """
  directory = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    # A Ctrl-C between creating the temp file and knowing its name would
    # leave it behind: it is delivered once `tmp` is set (and removed).
    with _interrupts_deferred():
      remove_stale_temp_files(directory)
      try:
        fd, tmp = tempfile.mkstemp(prefix='%s%d_' % (_PREFIX, os.getpid()),
                                   suffix=suffix, dir=directory)
      except OSError as e:
        _reraise_naming(e, path)
      os.close(fd)
    yield tmp
    _default_permissions(tmp)
    _fsync(tmp)
    if overwrite:
      os.replace(tmp, path)
    else:
      _link_no_overwrite(tmp, path)
  except OSError as e:
    _reraise_naming(e, path)
  finally:
    with _interrupts_deferred():  # a second Ctrl-C: remove first
      if tmp is not None:
        with contextlib.suppress(OSError):
          os.remove(tmp)
  _fsync(directory)


@contextlib.contextmanager
def _sigint_swapped(accept, wrap):
  """While the body runs, SIGINT goes to `wrap(previous)`, where the
  handler in place, `previous`, satisfies `accept`; yields `previous`, or
  None where nothing was swapped. Only the main thread handles signals:
  elsewhere `previous` is None."""
  previous = None
  if threading.current_thread() is threading.main_thread():
    previous = signal.getsignal(signal.SIGINT)
  if not accept(previous):
    yield None
    return
  signal.signal(signal.SIGINT, wrap(previous))
  try:
    yield previous
  finally:
    signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _interrupts_deferred():
  """SIGINT (Ctrl-C) that arrives while the body runs is delivered when it
  ends, to the handler in place before (where SIGINT is handled from
  Python, in the main thread)."""
  held = []
  previous = None
  try:
    with _sigint_swapped(callable, lambda _: lambda signum, frame:
                         held.append(frame)) as previous:
      yield
  finally:
    if held:
      previous(signal.SIGINT, held[0])


@contextlib.contextmanager
def interrupts_noted():
  """Yields a list that gets an entry for each SIGINT delivered while the
  body runs, where SIGINT raises KeyboardInterrupt (Python's default
  handler, which still runs). A program's own SIGINT handler (e.g. "stop
  after this epoch") is left alone, and so is every thread but the main
  one: the list stays empty."""
  noted = []

  def wrap(previous):
    def note(signum, frame):
      noted.append(signum)
      previous(signum, frame)
    return note

  with _sigint_swapped(lambda h: h is signal.default_int_handler, wrap):
    yield noted


def _reraise_naming(error, path):
  named = naming_destination(error, path)
  if named is error:
    raise error
  raise named from error


def naming_destination(error, path):
  """`error` (an OSError), or one of its type whose message names `path`.

  A full disk raises OSError(ENOSPC) from deep inside a writer (zipfile,
  h5py, json) with no file name, or with the temp file's: the user needs
  the file they asked for.
  """
  path = os.fspath(path)
  if path in str(error):
    return error
  try:
    if error.errno is not None:
      return type(error)(error.errno, error.strerror or str(error), path)
    return type(error)('%s (writing %s)' % (error, path))
  except Exception:  # pylint: disable=broad-except
    return error  # an OSError subclass with another constructor


def _link_no_overwrite(tmp, path):
  try:
    os.link(tmp, path)
  except FileExistsError:
    raise
  except OSError:
    # No hard links on this file system: check, then rename (a tiny race).
    if os.path.exists(path):
      raise FileExistsError(path) from None
    os.replace(tmp, path)


def write_text(path, text, overwrite=True):
  """Writes `text` (UTF-8) to `path` atomically; see `atomic_path`."""
  with atomic_path(path, overwrite=overwrite) as tmp:
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)
