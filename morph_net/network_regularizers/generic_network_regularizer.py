"""The network regularizer: a manager, a cost function, and a calculator.

FLOPs, model size and activation regularizers differ only in the
coefficient function (latency: in the calculator); Gamma, GroupLasso and
gating differ only in their `framework.Family`, which decides which channels
carry regularizers (see `families`). The named regularizers are thin
subclasses.
"""

from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.network_regularizers import cost_calculator


class NetworkRegularizer:
  """Base of every network regularizer.

  Args:
    output_boundary: list of ops of a `tf.compat.v1` graph, a Keras model or
      a concrete function.
    family: the `framework.Family` (see `families`).
    coeff_fn: Compute -> coefficient (see `resource_function`).
    name: regularizer name (for summaries).
    cost_name: name of the cost (e.g. 'FLOPs').
    batch_size: multiplies every op's cost.
    op_handler_dict: op type -> handler entries merged into a copy of the
      default table (for op types of your own).
    input_boundary: ops where the analysis stops (graph mode).
    force_group: regexes of ops (or Keras layers) whose channels are tied.
    regularizer_blacklist: regexes of sources not to regularize.
    create_grouping_regularizer: how tied channels combine (Max default).
    input_signature: `tf.TensorSpec`s for models with unknown input shape.
    regularizer_decorator, decorator_parameters: a callable
      (op_regularizer, **decorator_parameters) -> op regularizer applied to
      each source. See `OpRegularizerManager` for all of these.
    calculator_factory: optional manager -> calculator with get_cost and
      get_regularization_term, replacing the bilinear CostCalculator (the
      latency roofline uses this).
  """

  def __init__(self, output_boundary, family, coeff_fn, name,
               cost_name, batch_size=1, op_handler_dict=None,
               input_boundary=None, force_group=None,
               regularizer_blacklist=None, create_grouping_regularizer=None,
               input_signature=None, regularizer_decorator=None,
               decorator_parameters=None, calculator_factory=None):
    table = op_handlers.default_op_handler_dict()
    table.update(op_handler_dict or {})
    self._family = family
    self._manager = orm.OpRegularizerManager(
        output_boundary, table, family=family,
        create_grouping_regularizer=create_grouping_regularizer,
        force_group=force_group, regularizer_blacklist=regularizer_blacklist,
        input_boundary=input_boundary, input_signature=input_signature,
        regularizer_decorator=regularizer_decorator,
        decorator_parameters=decorator_parameters)
    self._manager.validate()
    if calculator_factory is not None:
      self._calculator = calculator_factory(self._manager)
    else:
      self._calculator = cost_calculator.CostCalculator(
          self._manager, coeff_fn, batch_size=batch_size)
    self._name = name
    self._cost_name = cost_name

  def get_regularization_term(self, ops=None):
    """strength x this is what to add to the loss (differentiable)."""
    return self._calculator.get_regularization_term(ops)

  def get_cost(self, ops=None):
    """The resource cost of the network with its alive channels."""
    return self._calculator.get_cost(ops)

  def per_op_costs(self):
    """{op name: cost} with the current alive channels (eager models)."""
    return self._calculator.per_op_costs()

  @property
  def family(self):
    """The `framework.Family` (which channels carry regularizers)."""
    return self._family

  @property
  def op_regularizer_manager(self):
    return self._manager

  @property
  def name(self):
    return self._name

  @property
  def cost_name(self):
    return self._cost_name
