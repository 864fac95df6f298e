"""Files of the `morphnet` command line: inputs read, outputs written.

Reading: structure JSON (validated), `.keras` models (with a clear error
naming any custom class this process has not imported, and the
`--custom-module` option that imports it). Outputs: `check_output` refuses
an input's path and, without `--overwrite`, an existing file (`cli.py`
writes through the one atomic writer, `morph_net.framework.atomic_files`).
"""

import importlib
import importlib.util
import json
import os
import sys
import zipfile

# A width above this cannot be built on any machine we know of; refusing it
# early beats an out-of-memory error deep inside TensorFlow.
MAX_WIDTH = 1 << 20


class CLIError(Exception):
  """A user-facing error: printed on one line, exit code 2."""


# ----------------------------------------------------------------- inputs
def check_file(path, what):
  if not os.path.exists(path):
    raise CLIError('%s %s: no such file' % (what, path))
  if os.path.isdir(path):
    raise CLIError('%s %s: is a directory, expected a file' % (what, path))


def load_structure(path):
  """{layer name: width} from a structure JSON, validated."""
  check_file(path, 'structure')
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise CLIError('structure %s: malformed JSON (line %d, column %d: %s)'
                   % (path, e.lineno, e.colno, e.msg)) from None
  except (OSError, UnicodeDecodeError) as e:
    raise CLIError('structure %s: cannot read: %s' % (path, e)) from None
  if not isinstance(data, dict):
    raise CLIError('structure %s: expected a JSON object {layer name: '
                   'width}, got %s' % (path, type(data).__name__))
  bad = [k for k, v in data.items()
         if isinstance(v, bool) or not isinstance(v, int) or v < 0 or
         v > MAX_WIDTH]
  if bad:
    raise CLIError('structure %s: widths must be non-negative integers; '
                   'bad entries: %s (a width is at most %d)' % (
                       path, ', '.join('%s=%r' % (k, data[k])
                                       for k in bad[:5]), MAX_WIDTH))
  return data


def _config_objects(node):
  """Every serialized object ({'class_name', 'module', ...}) in a config."""
  stack = [node]
  while stack:
    node = stack.pop()
    if isinstance(node, dict):
      if isinstance(node.get('class_name'), str):
        yield node
      stack.extend(node.values())
    elif isinstance(node, list):
      stack.extend(node)


def unregistered_classes(path, keras):
  """[(class name, module, registered name)] of the custom classes a .keras
  file's config names that this process cannot resolve (empty if the file
  has no readable config)."""
  try:
    with zipfile.ZipFile(path) as archive:
      config = json.loads(archive.read('config.json').decode('utf-8'))
  except (OSError, KeyError, ValueError, zipfile.BadZipFile):
    return []
  missing = []
  for obj in _config_objects(config):
    module = obj.get('module')
    if not isinstance(module, str) or module.split('.')[0] in (
        'keras', 'builtins', 'numpy'):
      continue
    registered = obj.get('registered_name') or obj['class_name']
    if keras.saving.get_registered_object(registered) is not None:
      continue
    entry = (obj['class_name'], module, registered)
    if entry not in missing:
      missing.append(entry)
  return missing


def custom_class_message(path, missing):
  classes = ', '.join(
      '%r (registered as %r, defined in module %r when saved)'
      % (name, registered, module) for name, module, registered in missing[:5])
  modules = []
  for _, module, _ in missing:
    if module not in modules:
      modules.append(module)
  return ('model %s: uses custom class%s %s, which %s not registered in this '
          'process. Import the module that defines %s before loading: pass '
          '%s (a module name importable from here, or the path of its .py '
          'file)' % (path, 'es' if len(missing) > 1 else '', classes,
                     'are' if len(missing) > 1 else 'is',
                     'them' if len(missing) > 1 else 'it',
                     ' '.join('--custom-module %s' % m for m in modules)))


def import_custom_modules(names):
  """Imports each module name or .py file (custom layers register on
  import); a CLIError says which one failed and why."""
  for name in names or []:
    try:
      if name.endswith('.py'):
        check_file(name, 'custom module')
        module_name = os.path.splitext(os.path.basename(name))[0]
        spec = importlib.util.spec_from_file_location(module_name, name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
      else:
        if os.getcwd() not in sys.path:  # as `python -m` would find it
          sys.path.append(os.getcwd())
        importlib.import_module(name)
    except CLIError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      first = (str(e).strip().splitlines() or [''])[0]
      raise CLIError('--custom-module %s: cannot import it: %s: %s'
                     % (name, type(e).__name__, first[:300])) from None


# ---------------------------------------------------------------- outputs
def check_output_dir(path):
  """Refuses an output path whose directory is missing."""
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise CLIError('output %s: directory %s does not exist'
                   % (path, directory))


def check_output(path, inputs, overwrite, suffix='.keras'):
  """Refuses an output path that is one of `inputs`, or that exists
  without `overwrite`, or whose directory is missing, or that does not end
  with `suffix`."""
  if not path.endswith(suffix):
    raise CLIError('output %s: must end with %s' % (path, suffix))
  check_output_dir(path)
  if not os.path.exists(path):
    return
  for source in inputs:
    if os.path.exists(source) and os.path.samefile(path, source):
      raise CLIError('output %s: is the input %s; writing onto it would '
                     'destroy it. Write to another file' % (path, source))
  if not overwrite:
    raise CLIError('output %s: exists; pass --overwrite to replace it, or '
                   'choose another file' % path)
