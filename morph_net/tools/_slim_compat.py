"""tf_slim's `arg_scope` for `ConfigurableOps`, without depending on tf_slim.

TF1 programs set layer defaults with `tf_slim.arg_scope([slim.conv2d],
padding='VALID', reuse=True, normalizer_fn=...)`. `ConfigurableOps.conv2d`
stands in for `slim.conv2d`, so it reads the entries for `slim.conv2d` too
(and likewise for separable_conv2d, fully_connected, batch_norm and the
pools). tf_slim is looked up in `sys.modules` only: a program that opens an
arg_scope has imported it, and one that has not pays nothing.

A scoped argument the native layer does not take is an error naming it,
never silently dropped; `slim_function_dict()` then builds the layers with
tf_slim itself.
"""

import functools
import inspect
import sys

import tensorflow as tf

# ConfigurableOps method -> the tf_slim function whose arg_scope applies.
SLIM_NAMES = {
    'conv2d': 'conv2d',
    'separable_conv2d': 'separable_conv2d',
    'fully_connected': 'fully_connected',
    'batch_norm': 'batch_norm',
    'max_pool2d': 'max_pool2d',
    'avg_pool2d': 'avg_pool2d',
}


def _slim():
  return sys.modules.get('tf_slim')


def scoped_arguments(method_name):
  """{argument: value} set by open tf_slim arg_scopes for the tf_slim
  function that `method_name` stands in for ({} without tf_slim)."""
  slim = _slim()
  if slim is None or method_name not in SLIM_NAMES:
    return {}
  function = getattr(slim, SLIM_NAMES[method_name], None)
  scopes = sys.modules.get('tf_slim.ops.arg_scope')
  if function is None or scopes is None:
    return {}
  key = scopes.arg_scope_func_key(function)
  return dict(scopes.current_arg_scope().get(key, {}))


def honors_slim_arg_scope(method):
  """Decorates a `ConfigurableOps` method: arguments an open tf_slim
  arg_scope sets for the matching slim function fill the ones the call
  leaves out (explicit arguments win, as in tf_slim)."""
  signature = inspect.signature(method)
  names = set(signature.parameters) - {'self'}

  @functools.wraps(method)
  def wrapper(self, *args, **kwargs):
    if self.function_for(method.__name__) is not None:
      return self._call_function(method.__name__, args, kwargs)  # pylint: disable=protected-access
    scoped = scoped_arguments(method.__name__)
    if scoped:
      given = signature.bind_partial(self, *args, **kwargs).arguments
      unknown = sorted(set(scoped) - names)
      if unknown:
        raise TypeError(
            'ConfigurableOps.%s: a tf_slim arg_scope sets %s, which the '
            'native %s does not take. Build with tf_slim itself: '
            'ConfigurableOps(..., function_dict=configurable_ops.'
            'slim_function_dict()).' % (method.__name__, unknown,
                                        method.__name__))
      for name, value in scoped.items():
        if name not in given:
          kwargs[name] = value
    return method(self, *args, **kwargs)

  return wrapper


def slim_function_dict():
  """The original MorphNet's layer functions: tf_slim's, for `function_dict`.

  Raises:
    ImportError: tf_slim is not installed (`pip install tf-slim`).
  """
  import tf_slim  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  table = {name: getattr(tf_slim, slim_name)
           for name, slim_name in SLIM_NAMES.items()}
  table.update(concat=tf.concat, add_n=tf.add_n)
  return table


def arg_scoped(function):
  """`function` made arg_scope-able when tf_slim is loaded (a hijacked
  module function must keep taking the defaults of open arg_scopes)."""
  slim = _slim()
  if slim is None:
    return function
  return slim.add_arg_scope(function)
