"""morph_net.keras: the Keras 3 workflow (TensorFlow backend).

- `add_regularizer(model, regularizer, strength)`: a model that trains with
  `compile`/`fit` while minimizing loss + strength x regularization term, and
  reports the cost (e.g. 'FLOPs') and 'regularization_term' in the logs.
- `StructureExporterCallback(regularizer, log_dir, save_every_n_steps)`:
  writes `log_dir/learned_structure/alive_<step>` and TensorBoard scalars.
- `slim_model(model, structure, transfer_weights, round_to)`: the model
  rebuilt with a learned structure's widths (topology morphing, weights).
- `expand_structure(model, structure, target_cost, cost, round_to)`: scale
  a structure uniformly to a FLOPs/model-size budget (up or down).
- `add_gates(model)`: a copy with a FiGS gate after each prunable layer
  (same outputs at inference; `slim_model` folds the gates away).
- `analysis_of(model)`: the model's analysis (channel groups, costs,
  constraints), traced once and shared by the calls above (each of them
  also takes it in place of the model).
"""

from morph_net.keras._structure import analysis_of
from morph_net.keras._surgery import SlimModel
from morph_net.keras.expand import expand_structure
from morph_net.keras.gates import add_gates
from morph_net.keras.expand import structure_cost
from morph_net.keras.slim import slim_model
from morph_net.keras._width_rules import register_width_rule
from morph_net.keras.training import add_regularizer
from morph_net.keras.training import REGULARIZATION_TERM_NAME
from morph_net.keras.training import RegularizedModel
from morph_net.keras.callbacks import StructureExporterCallback
from morph_net.keras.cycles import run_cycles
from morph_net.keras import _builtin_rules  # registers the built-in width rules  # pylint: disable=unused-import

__all__ = [
    'REGULARIZATION_TERM_NAME',
    'RegularizedModel',
    'SlimModel',
    'StructureExporterCallback',
    'add_gates',
    'add_regularizer',
    'analysis_of',
    'expand_structure',
    'register_width_rule',
    'run_cycles',
    'slim_model',
    'structure_cost',
]
