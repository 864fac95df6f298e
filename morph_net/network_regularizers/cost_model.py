"""The network's cost model: one per-op cost entry per compute op, evaluated
over the analysis' channel classes.

Every cost the library reports is an evaluation of this model: the
regularizers' `get_cost` (tensors, during training), `analyze` and
`morphnet analyze` (numpy, every channel alive), `structure_cost` and
`expand_structure` (numpy, a structure's widths). No other module computes
positions or FLOPs from shapes.

>>> import keras
>>> from morph_net import framework
>>> inputs = keras.Input((4,))
>>> hidden = keras.layers.Dense(8, name='hidden')(inputs)
>>> model = keras.Model(inputs, keras.layers.Dense(2, name='out')(hidden))
>>> flops = CostModel(framework.OpRegularizerManager(model), 'flops')
>>> flops.full_cost()  # 2 x (4 x 8 + 8 x 2)
96.0
"""

from morph_net.network_regularizers import cost_calculator
from morph_net.network_regularizers import resource_function

# Resource name -> coefficient function (Compute -> Coefficients).
RESOURCES = {
    'flops': resource_function.flop_function,
    'model_size': resource_function.model_size_function,
    'activations': resource_function.activation_count_function,
}
_ALIASES = {'modelsize': 'model_size', 'size': 'model_size',
            'weights': 'model_size', 'activation_count': 'activations'}


def resource_name(name):
  """The canonical name ('flops', 'model_size', 'activations') of a
  resource name or alias ('FLOPs', 'ModelSize', 'size', 'weights', ...).

  Raises:
    ValueError: an unknown name.
  """
  key = str(name).lower()
  key = _ALIASES.get(key, key)
  if key not in RESOURCES:
    raise ValueError('Unknown resource %r; known: %s (or %s).'
                     % (name, ', '.join(sorted(RESOURCES)),
                        ', '.join(sorted(_ALIASES))))
  return key


def resource_name_or_none(name):
  """`resource_name(name)`, or None where `name` names no resource (a
  callable, a latency or combined cost): no structure cost reads it."""
  try:
    return resource_name(name) if isinstance(name, str) else None
  except ValueError:
    return None


def resource(name):
  """The coefficient function of a resource name ('flops', 'model_size',
  'activations'), or the argument itself if it is a function."""
  if callable(name):
    return name
  return RESOURCES[resource_name(name)]


class CostModel(cost_calculator.CostCalculator):
  """A `CostCalculator` for a named resource.

  Args:
    manager: an `OpRegularizerManager` (any family, or none).
    resource_name: 'flops', 'model_size', 'activations', or a coefficient
      function.
    batch_size: multiplies every op's cost.
  """

  def __init__(self, manager, resource_name='flops', batch_size=1):
    super().__init__(manager, resource(resource_name), batch_size=batch_size)
