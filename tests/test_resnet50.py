"""ResNet50 at full width: costs equal an independent count from shapes."""

import numpy as np
import pytest
import keras

from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.tools import structure_exporter

THRESHOLD = 0.01


@pytest.fixture(scope='module')
def resnet():
  model = keras.applications.ResNet50(weights=None,
                                      input_shape=(224, 224, 3))
  flops = flop_regularizer.GammaFlopsRegularizer(model, THRESHOLD)
  size = model_size_regularizer.GammaModelSizeRegularizer(model, THRESHOLD)
  return model, flops, size


def _conv_and_dense(model):
  convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
  dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
  return convs, dense


def independent_counts(model):
  convs, dense = _conv_and_dense(model)
  flops = 0
  weights = 0
  for layer in convs:
    _, out_h, out_w, c_out = layer.output.shape
    kh, kw, c_in, c_out_k = layer.kernel.shape
    assert c_out == c_out_k
    flops += 2 * out_h * out_w * kh * kw * c_in * c_out
    weights += kh * kw * c_in * c_out
  for layer in dense:
    n_in, n_out = layer.kernel.shape
    flops += 2 * n_in * n_out
    weights += n_in * n_out
  return flops, weights


def test_layer_census(resnet):
  model = resnet[0]
  convs, dense = _conv_and_dense(model)
  assert len(convs) == 53 and len(dense) == 1


def test_flops_match_independent_count(resnet):
  model, flops_reg, _ = resnet
  expected, _ = independent_counts(model)
  # Known figure: ~4.1 GMACs, i.e. ~8.2 GFLOPs, for ResNet50 at 224.
  assert 7.5e9 < expected < 8.5e9
  assert float(flops_reg.get_cost()) == pytest.approx(expected, rel=1e-3)


def test_model_size_matches_kernel_weight_count(resnet):
  model, _, size_reg = resnet
  _, expected = independent_counts(model)
  convs, dense = _conv_and_dense(model)
  kernels = sum(int(np.prod(l.kernel.shape)) for l in convs + dense)
  assert expected == kernels
  assert float(size_reg.get_cost()) == pytest.approx(expected, rel=1e-3)


def test_all_convs_exported_at_full_width(resnet):
  model, flops_reg, _ = resnet
  convs, _ = _conv_and_dense(model)
  counts = structure_exporter.StructureExporter(
      flops_reg.op_regularizer_manager).get_alive_counts()
  assert counts == {l.name: l.filters for l in convs}


def test_term_is_positive_and_finite(resnet):
  _, flops_reg, size_reg = resnet
  for reg in (flops_reg, size_reg):
    term = float(reg.get_regularization_term())
    assert np.isfinite(term) and term > 0
