"""One vocabulary across families: every regularizer takes its alive
threshold as `threshold=`, the original MorphNet's names (gamma_threshold,
alive_threshold) keep working, and giving both, or neither where there is
no default, is an error naming the argument."""

import keras
import numpy as np
import pytest

from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import latency_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.probabilistic_gating import LogisticSigmoidGating
from morph_net.tools import structure_exporter


def _bn_model():
  inputs = keras.Input((6, 6, 3))
  x = keras.layers.Conv2D(4, 3, name='c1')(inputs)
  x = keras.layers.BatchNormalization(name='bn1')(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.Conv2D(2, 1, name='c2')(x)
  model = keras.Model(inputs, x)
  model.get_layer('bn1').gamma.assign(np.asarray([1.0, 0.05, 0.2, 0.5],
                                                  np.float32))
  return model


def _alive(reg):
  return structure_exporter.StructureExporter(
      reg.op_regularizer_manager).get_alive_counts()['c1']


@pytest.mark.parametrize('cls,extra', [
    (flop_regularizer.GammaFlopsRegularizer, {}),
    (model_size_regularizer.GammaModelSizeRegularizer, {}),
    (latency_regularizer.GammaLatencyRegularizer, {'hardware': 'V100'}),
])
def test_gamma_threshold_by_either_name(cls, extra):
  model = _bn_model()
  by_original = cls(model, gamma_threshold=0.3, **extra)
  by_shared = cls(model, threshold=0.3, **extra)
  assert _alive(by_original) == _alive(by_shared) == 2  # 1.0 and 0.5
  assert _alive(cls(model, threshold=0.1, **extra)) == 3
  with pytest.raises(TypeError, match='once'):
    cls(model, gamma_threshold=0.3, threshold=0.3, **extra)
  with pytest.raises(TypeError, match='threshold='):
    cls(model, **extra)


def test_group_lasso_takes_threshold_already():
  model = _bn_model()
  reg = flop_regularizer.GroupLassoFlopsRegularizer(model, threshold=0.0)
  assert _alive(reg) == 4


def _gated_model():
  inputs = keras.Input((6, 6, 3))
  x = keras.layers.Conv2D(4, 3, name='c1')(inputs)
  x = LogisticSigmoidGating(name='gate')(x)
  return keras.Model(inputs, keras.layers.Conv2D(2, 1, name='c2')(x))


@pytest.mark.parametrize('cls,extra', [
    (flop_regularizer.LogisticSigmoidFlopsRegularizer, {}),
    (latency_regularizer.LogisticSigmoidLatencyRegularizer,
     {'hardware': 'V100'}),
])
def test_gate_threshold_by_either_name(cls, extra):
  model = _gated_model()
  # Probabilities sigmoid(3, 0, -1, -3) = 0.95, 0.5, 0.27, 0.047.
  model.get_layer('gate').mask_logits.assign(
      np.asarray([3.0, 0.0, -1.0, -3.0], np.float32))
  default = cls(model, mask_as_alive_vector=False, **extra)
  assert _alive(default) == 3  # alive_threshold 0.1
  by_original = cls(model, alive_threshold=0.4, mask_as_alive_vector=False,
                    **extra)
  by_shared = cls(model, threshold=0.4, mask_as_alive_vector=False, **extra)
  assert _alive(by_original) == _alive(by_shared) == 2
  with pytest.raises(TypeError, match='once'):
    cls(model, alive_threshold=0.5, threshold=0.5, **extra)


def test_latency_without_hardware_names_the_choices():
  with pytest.raises(TypeError, match='hardware=.*V100'):
    latency_regularizer.GammaLatencyRegularizer(_bn_model(), threshold=0.1)


def test_every_cost_is_float64_combined_included():
  from morph_net.network_regularizers import combined  # pylint: disable=g-import-not-at-top
  model = _bn_model()
  flops = flop_regularizer.GammaFlopsRegularizer(model, threshold=0.1)
  size = model_size_regularizer.GammaModelSizeRegularizer(model, threshold=0.1)
  both = combined.CombinedRegularizer([(flops, 1.0), (size, 2.0)])
  for reg in (flops, size, both):
    assert reg.get_cost().dtype == 'float64', reg
  assert float(both.get_cost()) == float(flops.get_cost()) + 2.0 * float(
      size.get_cost())


def test_one_spelling_table_for_resources():
  """'FLOPs'/'flops', 'ModelSize'/'model_size'/'weights' name the same
  resource in structure_cost as in the cost model; a typo lists them."""
  import morph_net.keras as mk  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import cost_model  # pylint: disable=g-import-not-at-top
  model = _bn_model()
  structure = {'c1': 2}
  flops = mk.structure_cost(model, structure, cost='flops')
  assert mk.structure_cost(model, structure, cost='FLOPs') == flops
  size = mk.structure_cost(model, structure, cost='model_size')
  for alias in ('ModelSize', 'weights', 'size'):
    assert cost_model.resource_name(alias) == 'model_size'
    assert mk.structure_cost(model, structure, cost=alias) == size
  # c1 (3x3x3 -> 2) and c2 (1x1, 2 -> 2): weights 54 + 4.
  assert size == 58
  with pytest.raises(ValueError, match="'flops'.*got 'flopz'"):
    mk.structure_cost(model, structure, cost='flopz')
