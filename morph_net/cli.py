"""The `morphnet` command line: analyze, slim and plot saved Keras models.

    morphnet analyze MODEL.keras [--json] [--input-shape H,W,C]
    morphnet slim MODEL.keras STRUCTURE.json -o OUT.keras [--overwrite]
        [--expand-to-cost FLOPS] [--round-to N] [--input-shape H,W,C]
    morphnet plot STRUCTURE.json [--model MODEL.keras] -o widths.png
    morphnet profile MODEL.keras [MODEL.keras ...] --name NAME -o SPEC.json
        [--batch-size 1] [--widths 0.25,0.5,0.75,1] [--repeats 20]

Every command takes `--custom-module MODULE` (repeatable): a module name or
a `.py` file to import before loading models, for models with custom
layers (registered with `keras.saving.register_keras_serializable`).

Bad inputs (a missing file, malformed JSON, a structure naming a layer the
model does not have, a file that is not a Keras model, a custom class not
imported) end with a one-line `morphnet: error: ...` on stderr and exit
code 2; `--debug` shows the traceback of unexpected errors instead. Output
files are written atomically; `slim` never writes onto its input model and
replaces an existing output only with `--overwrite`.
"""

import argparse
import contextlib
import math
import os
import sys
import zipfile

from morph_net._cli_files import check_file
from morph_net._cli_files import check_output
from morph_net._cli_files import check_output_dir
from morph_net._cli_files import CLIError
from morph_net._cli_files import custom_class_message
from morph_net._cli_files import import_custom_modules
from morph_net._cli_files import load_structure
from morph_net._cli_files import MAX_WIDTH
from morph_net._cli_files import unregistered_classes

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2


# ----------------------------------------------------------------- inputs
def import_tf_quietly():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  # Register morph_net's serializable layers (gating) before loading.
  with contextlib.suppress(ImportError):
    import morph_net.probabilistic_gating  # pylint: disable=g-import-not-at-top,unused-import
  return tf, keras


def load_model(path):
  """A Keras model from a .keras file, or a CLIError saying why not."""
  check_file(path, 'model')
  if path.endswith('.keras') and not zipfile.is_zipfile(path):
    raise CLIError('model %s: not a Keras model file (a .keras file is a zip '
                   'archive written by model.save; this one is not)' % path)
  _, keras = import_tf_quietly()
  try:
    model = keras.saving.load_model(path, compile=False)
  except Exception as e:  # pylint: disable=broad-except
    missing = unregistered_classes(path, keras)
    if missing:
      raise CLIError(custom_class_message(path, missing)) from None
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise CLIError('model %s: not a loadable Keras model file (.keras): '
                   '%s: %s' % (path, type(e).__name__, first[:300])) from None
  if not isinstance(model, keras.Model):
    raise CLIError('model %s: holds a %s, not a Keras model'
                   % (path, type(model).__name__))
  return model


def layer_names(model):
  """Names of every layer of a model, nested models and layers included,
  and their paths ('block/conv': what the exporter writes where nested
  layers share a name)."""
  from morph_net.framework import keras_trace  # pylint: disable=g-import-not-at-top
  names = []
  for path, layer in keras_trace._layer_paths(model):  # pylint: disable=protected-access
    names.append(layer.name)
    if path != layer.name:
      names.append(path)
  return names


def check_structure_names(structure, model, structure_path, model_path):
  known = set(layer_names(model))
  unknown = [k for k in structure if k not in known]
  if unknown:
    raise CLIError('structure %s names layer%s the model %s does not have: '
                   '%s' % (structure_path, 's' if len(unknown) > 1 else '',
                           model_path, ', '.join(unknown[:10])))


def _input_signature(shape_text):
  if not shape_text:
    return None
  tf, _ = import_tf_quietly()
  try:
    dims = [int(d) for d in shape_text.split(',')]
  except ValueError:
    raise CLIError('--input-shape %r: expected comma-separated integers, '
                   'e.g. 224,224,3' % shape_text) from None
  if any(d < 1 or d > MAX_WIDTH for d in dims):
    raise CLIError('--input-shape %r: every dimension must be an integer in '
                   '[1, %d], e.g. 224,224,3' % (shape_text, MAX_WIDTH))
  return [tf.TensorSpec([None] + dims, tf.float32)]


def _parse_cost(text):
  """'1.5e9', '300M', '2G' -> float."""
  scale = {'K': 1e3, 'M': 1e6, 'G': 1e9, 'T': 1e12}
  t = text.strip().upper()
  try:
    value = (float(t[:-1]) * scale[t[-1]] if t and t[-1] in scale
             else float(t))
  except ValueError:
    raise argparse.ArgumentTypeError(
        'expected a number such as 3e8 or 300M, got %r' % text) from None
  if not math.isfinite(value) or value <= 0:
    raise argparse.ArgumentTypeError(
        'expected a finite cost > 0 such as 3e8 or 300M, got %r' % text)
  return value


def _positive_int(text):
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError('expected a positive integer, got %r'
                                     % text)
  return value


def _analyze(model, input_signature=None):
  from morph_net.framework import errors  # pylint: disable=g-import-not-at-top
  from morph_net.tools import analyze  # pylint: disable=g-import-not-at-top
  try:
    return analyze.analyze(model, input_signature=input_signature)
  except errors.AnalysisError as e:
    first = str(e).strip().splitlines()[0]
    hint = (' (pass --input-shape H,W,C)'
            if isinstance(e, errors.UnknownShapeError) else '')
    raise CLIError('cannot analyze the model: %s%s' % (first, hint)) from None


def _save_model_atomically(model, path, overwrite=True):
  from morph_net.keras import _saving  # pylint: disable=g-import-not-at-top
  try:
    _saving.save(model.save, path, overwrite, _saving.MODEL_SUFFIXES)
  except FileExistsError:
    raise CLIError('output %s: was created by someone else while the slim '
                   'model was built; it was kept. Pass --overwrite to '
                   'replace it' % path) from None
  except OSError as e:
    raise CLIError('output %s: cannot write it: %s' % (path, e)) from None


def _progress(message):
  # Progress goes to stdout, so stderr holds nothing but the error, if any.
  print('morphnet: %s' % message, flush=True)


# --------------------------------------------------------------- commands
def cmd_analyze(args):
  model = load_model(args.model)
  from morph_net.tools import analyze  # pylint: disable=g-import-not-at-top
  report = _analyze(model, _input_signature(args.input_shape))
  if args.json:
    print(report.to_json(indent=2))
  else:
    print(analyze.format_table(report))
  return EXIT_OK


def cmd_slim(args):
  structure = load_structure(args.structure)  # fails fast, before TF loads
  if not structure:
    raise CLIError('structure %s: is empty ({}), so the slim model would be '
                   'the input model unchanged; give at least one {layer name: '
                   'width} entry' % args.structure)
  check_output(args.output, [args.model, args.structure], args.overwrite)
  model = load_model(args.model)
  check_structure_names(structure, model, args.structure, args.model)
  slim_model, expand_structure = _slim_functions()
  signature = _input_signature(args.input_shape)
  before = _analyze(model, signature)
  try:
    if args.expand_to_cost is not None:
      _progress('expanding the structure to %.4g FLOPs' % args.expand_to_cost)
      structure = expand_structure(model, structure, args.expand_to_cost,
                                   cost='flops', round_to=args.round_to,
                                   input_signature=signature)
    _progress('building the slim model (%d layers set)' % len(structure))
    slim = slim_model(model, structure, round_to=args.round_to,
                      input_signature=signature)
  except (KeyError, ValueError, TypeError, NotImplementedError) as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise CLIError('cannot slim %s to %s: %s' % (args.model, args.structure,
                                                 first)) from None
  except MemoryError:
    raise CLIError('cannot slim %s to %s: out of memory building the slim '
                   'model; the widths (or --expand-to-cost) are too large'
                   % (args.model, args.structure)) from None
  except Exception as e:  # pylint: disable=broad-except
    if type(e).__name__ != 'ResourceExhaustedError':
      raise
    raise CLIError('cannot slim %s to %s: out of memory building the slim '
                   'model (%s); the widths (or --expand-to-cost) are too '
                   'large' % (args.model, args.structure,
                              type(e).__name__)) from None
  after = _analyze(slim, signature)
  _save_model_atomically(slim, args.output, overwrite=args.overwrite)
  seed = {l.name: l.channels for l in before.layers}
  widths = {l.name: l.channels for l in after.layers}
  for name in structure:
    print('%-30s %6s -> %s' % (name, seed.get(name, '?'),
                               widths.get(name, 'removed')))
  print('FLOPs %d -> %d, weights %d -> %d; wrote %s'
        % (before.flops, after.flops, before.weights, after.weights,
           args.output))
  return EXIT_OK


def _slim_functions():
  """morph_net.keras.slim_model and expand_structure, imported lazily."""
  try:
    from morph_net.keras import expand_structure  # pylint: disable=g-import-not-at-top
    from morph_net.keras import slim_model  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CLIError('slimming is not available in this installation: %s'
                   % e) from None
  return slim_model, expand_structure


def cmd_profile(args):
  """Fits a latency model of this machine (morph_net.keras.profile)."""
  try:
    widths = [float(w) for w in args.widths.split(',')]
  except ValueError:
    widths = []
  if not widths or not all(0 < w <= 1 for w in widths):
    raise CLIError('--widths %r: expected comma-separated multipliers in '
                   '(0, 1], e.g. 0.25,0.5,1' % args.widths)
  check_output(args.output, args.models, args.overwrite, suffix='.json')
  models = [load_model(path) for path in args.models]
  from morph_net.network_regularizers import hardware  # pylint: disable=g-import-not-at-top
  from morph_net.keras import profile  # pylint: disable=g-import-not-at-top
  spec, fit = profile.profile_hardware(
      models, args.name, multipliers=widths, batch_size=args.batch_size,
      repeats=args.repeats, log=_progress)
  hardware.save_hardware(spec, args.output, fit=fit)
  print('%s: peak %.4g GFLOP/s, bandwidth %.4g GB/s, %.4g us per op '
        '(median error %.1f%% on %d timings); wrote %s'
        % (spec.name, spec.peak_compute, spec.memory_bandwidth,
           spec.op_overhead / 1e3, 100 * fit['median_relative_error'],
           len(fit['samples']), args.output))
  return EXIT_OK


def cmd_plot(args):
  structure = load_structure(args.structure)
  if not structure:
    raise CLIError('structure %s: is empty, nothing to plot'
                   % args.structure)
  if args.model:
    check_file(args.model, 'model')
  from morph_net.tools import plot  # pylint: disable=g-import-not-at-top
  try:
    plot.check_format(args.output)  # before the (slow) model load
  except ValueError as e:
    raise CLIError('output %s: %s' % (args.output, e)) from None
  seed = None
  learned = structure
  if args.model:
    model = load_model(args.model)
    check_structure_names(structure, model, args.structure, args.model)
    report = _analyze(model, _input_signature(args.input_shape))
    seed = {l.name: l.channels for l in report.layers}
    for name in structure:
      if name not in seed:
        seed[name] = _layer_width(model, name)
    # Network order, as in the paper's figure.
    order = [l.name for l in report.layers if l.name in structure]
    learned = {n: structure[n] for n in order + [
        n for n in structure if n not in order]}
  check_output_dir(args.output)
  try:
    plot.plot_widths(learned, args.output, seed=seed,
                     title=args.title or os.path.basename(args.structure),
                     log_scale=args.log)
  except ValueError as e:
    raise CLIError('output %s: %s' % (args.output, e)) from None
  print('wrote %s (%d layers)' % (args.output, len(learned)))
  return EXIT_OK


def _layer_width(model, name):
  layer = model.get_layer(name)
  config = layer.get_config()
  for key in ('filters', 'units'):
    if key in config:
      return int(config[key])
  return 0


# ------------------------------------------------------------------- main
def build_parser():
  parser = argparse.ArgumentParser(
      prog='morphnet',
      description='Analyze a saved Keras model, slim it to a learned '
      'structure, or plot a structure.')
  parser.add_argument('--debug', action='store_true',
                      help='show tracebacks of unexpected errors')
  sub = parser.add_subparsers(dest='command', metavar='COMMAND')
  sub.required = True
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument(
      '--custom-module', action='append', default=[], metavar='MODULE',
      help='import this module (a name, or a .py file) before loading '
      'models: the one defining their custom layers; repeatable')

  p = sub.add_parser('analyze', help='per-layer groups, widths and costs',
                     parents=[common])
  p.add_argument('model', help='a saved .keras model')
  p.add_argument('--json', action='store_true',
                 help='print JSON with keys flops, weights, layers')
  p.add_argument('--input-shape', help='H,W,C when the model input has '
                 'unknown spatial size')
  p.set_defaults(func=cmd_analyze)

  p = sub.add_parser('slim', help='build the model with a structure\'s '
                     'widths', parents=[common])
  p.add_argument('model', help='a saved .keras model')
  p.add_argument('structure', help='JSON {layer name: width}')
  p.add_argument('-o', '--output', required=True, help='OUT.keras')
  p.add_argument('--overwrite', action='store_true',
                 help='replace OUT.keras if it exists (never the input)')
  p.add_argument('--expand-to-cost', type=_parse_cost, metavar='FLOPS',
                 help='first scale the structure up to this many FLOPs '
                 '(e.g. 3e8 or 300M)')
  p.add_argument('--round-to', type=_positive_int, default=1, metavar='N',
                 help='round widths to multiples of N')
  p.add_argument('--input-shape', help='H,W,C when the model input has '
                 'unknown spatial size (the FLOPs are counted at it)')
  p.set_defaults(func=cmd_slim)

  p = sub.add_parser('plot', help='bar chart of per-layer widths',
                     parents=[common])
  p.add_argument('structure', help='JSON {layer name: width}')
  p.add_argument('--model', help='the seed .keras model (draws its widths)')
  p.add_argument('-o', '--output', required=True, help='widths.png')
  p.add_argument('--title')
  p.add_argument('--log', action='store_true', help='log-scaled widths')
  p.add_argument('--input-shape', help='H,W,C for --model')
  p.set_defaults(func=cmd_plot)

  p = sub.add_parser('profile', help='fit a latency model (hardware spec '
                     'JSON) of this machine by timing models at a few widths',
                     parents=[common])
  p.add_argument('models', nargs='+', help='saved .keras models to time')
  p.add_argument('--name', required=True, help='the spec\'s name')
  p.add_argument('-o', '--output', required=True, help='SPEC.json')
  p.add_argument('--overwrite', action='store_true',
                 help='replace SPEC.json if it exists (never an input)')
  p.add_argument('--batch-size', type=_positive_int, default=1)
  p.add_argument('--widths', default='0.25,0.5,0.75,1',
                 help='uniform width multipliers to time (default '
                 '0.25,0.5,0.75,1)')
  p.add_argument('--repeats', type=_positive_int, default=20,
                 help='timed calls per model and width (median kept)')
  p.set_defaults(func=cmd_profile)
  return parser


@contextlib.contextmanager
def _quiet_native_logs(enabled):
  """Sends TensorFlow's C++ start-up logs (written straight to fd 2, e.g.
  'Could not find cuda drivers') to /dev/null while Python's sys.stderr keeps
  writing to the terminal, so errors stay one clear line."""
  try:
    real = enabled and sys.stderr.fileno() == 2
  except (AttributeError, OSError, ValueError):
    real = False  # sys.stderr was replaced (e.g. captured by a test)
  if not real:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  old_stderr = sys.stderr
  sys.stderr = os.fdopen(os.dup(saved), 'w', buffering=1,
                         encoding=old_stderr.encoding, errors='replace')
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  os.close(devnull)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    sys.stderr.close()
    sys.stderr = old_stderr


def main(argv=None):
  """Entry point of the `morphnet` console script; returns the exit code."""
  args = build_parser().parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  verbose = args.debug or os.environ.get('MORPHNET_TF_LOGS') == '1'
  with _quiet_native_logs(not verbose):
    return _run(args)


def _run(args):
  try:
    import_custom_modules(getattr(args, 'custom_module', None))
    return args.func(args)
  except BrokenPipeError:
    # `morphnet analyze m.keras | head`: stop quietly.
    with contextlib.suppress(OSError):
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK
  except CLIError as e:
    print('morphnet: error: %s' % e, file=sys.stderr)
    return EXIT_BAD_INPUT
  except KeyboardInterrupt:
    print('morphnet: interrupted', file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    if args.debug:
      raise
    first = (str(e).strip().splitlines() or [''])[0]
    print('morphnet: internal error: %s: %s (rerun with --debug for the '
          'traceback)' % (type(e).__name__, first), file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == '__main__':
  sys.exit(main())
