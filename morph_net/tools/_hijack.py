"""Swapping a module's layer functions or Keras classes for configurable ones.

Network code written against a module (`slim.conv2d(...)`, or
`from tf_keras.layers import Conv2D`) takes its widths from a
parameterization once the module's names point at configurable versions.
Each swap returns what it replaced, so it can be undone.
"""

from morph_net.tools import _slim_compat


def _forward(method):
  """A plain function calling `method` (tf_slim arg_scopes key on it)."""

  def forwarded(*args, **kwargs):
    return method(*args, **kwargs)

  forwarded.__name__ = method.__name__
  forwarded.__doc__ = method.__doc__
  return forwarded


def hijack_functions(configurable_ops, module, names):
  """Points `module.<name>` at `configurable_ops.<name>` for each of
  `names` the module has; returns {name: original}."""
  originals = {}
  for name in names:
    if not hasattr(module, name):
      continue
    originals[name] = getattr(module, name)
    forwarded = _forward(getattr(configurable_ops, name))
    setattr(module, name, _slim_compat.arg_scoped(forwarded))
  return originals


def recover_functions(originals, module):
  """Puts back what `hijack_functions` (or `hijack_module_functions`)
  replaced: `originals` is the dict it returned."""
  for name, function in originals.items():
    setattr(module, name, function)
