"""Recurrent layers: loops are refused with the fix; unrolled, they are exact.

Keras 3 traces LSTM/GRU/SimpleRNN to a while loop read through TensorList
ops. Taken for a leaf (the advice an unsupported-op error once gave) or for
the network's input, the loop's cost vanished and the layers before it
left the regularizer. Unrolled, the steps are plain matmuls: their FLOPs
are checked here against a hand count, with the channels before the layer
still regularized.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import errors
from morph_net.framework import graph_view
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.framework import suggest
from morph_net.network_regularizers import flop_regularizer

L = keras.layers
T, C, F, U, O = 10, 4, 8, 6, 5  # steps, input, conv, hidden, output widths
GATES = {'LSTM': 4, 'GRU': 3, 'SimpleRNN': 1}  # kernel columns per unit


def _model(layer, head=None):
  """Conv1D(F) -> BN -> `layer` -> Conv1D(O) (Dense(O) on a last state)."""
  inputs = keras.Input((T, C))
  x = L.Conv1D(F, 3, padding='same', name='conv1')(inputs)
  x = L.BatchNormalization(name='bn1')(x)
  x = layer(x)
  x = (head or L.Conv1D(O, 1, name='conv2'))(x)
  return keras.Model(inputs, x)


def _hand_count(gates, alive_f, steps_out):
  """conv1 + the RNN's T input matmuls and T - 1 recurrent ones (the first
  step's reads the zero initial state, a constant) + the head."""
  return (2 * T * 3 * C * alive_f + T * 2 * alive_f * gates * U +
          (T - 1) * 2 * U * gates * U + steps_out * 2 * U * O)


@pytest.mark.parametrize('make, cell', [
    (lambda: L.LSTM(U, return_sequences=True, name='rnn'), 'LSTMCell'),
    (lambda: L.LSTM(U, name='rnn'), 'LSTMCell'),
    (lambda: L.GRU(U, return_sequences=True, name='rnn'), 'GRUCell'),
    (lambda: L.SimpleRNN(U, name='rnn'), 'SimpleRNNCell'),
    (lambda: L.Bidirectional(L.LSTM(U), name='bi'), 'LSTMCell'),
], ids=['lstm_sequences', 'lstm_last', 'gru', 'simple_rnn', 'bidirectional'])
def test_recurrent_loop_is_refused_naming_its_cell_and_unroll(make, cell):
  head = L.Dense(O, name='head')
  model = _model(make(), head)
  with pytest.raises(errors.UnsupportedOpError) as info:
    flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  message = str(info.value)
  assert '(%s)' % cell in message
  assert 'unroll=True' in message and 'does not analyze loops' in message
  assert 'LeafOpHandler()' not in message


def test_gru_with_sliced_kernels_gets_no_unroll_promise():
  """reset_after=False multiplies by slices of the recurrent kernel, which
  the analysis does not count even unrolled: the error says so."""
  model = _model(L.GRU(U, reset_after=False, return_sequences=True,
                       name='rnn'))
  with pytest.raises(errors.UnsupportedOpError) as info:
    flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  message = str(info.value)
  # The facts: the cell, the settings that make it countable, no promise.
  assert '(GRUCell)' in message
  assert 'reset_after=True' in message and 'implementation=2' in message
  assert 'counts exactly' not in message


@pytest.mark.parametrize('name', sorted(GATES))
@pytest.mark.parametrize('sequences', [True, False])
def test_unrolled_rnn_flops_match_hand_count_and_conv_stays_regularized(
    name, sequences):
  layer = getattr(L, name)(U, unroll=True, return_sequences=sequences,
                           name='rnn')
  head = None if sequences else L.Dense(O, name='head')
  model = _model(layer, head)
  reg = flop_regularizer.GammaFlopsRegularizer(model, 0.01)
  steps_out = T if sequences else 1
  assert float(reg.get_cost()) == _hand_count(GATES[name], F, steps_out)
  # Three dead BatchNorm channels leave conv1 and every input matmul of
  # the loop: the channels before the RNN are regularized through it.
  gamma = np.ones(F, np.float32)
  gamma[:3] = 0.0
  model.get_layer('bn1').gamma.assign(gamma)
  assert float(reg.get_cost()) == _hand_count(GATES[name], F - 3, steps_out)


def _list_ops():
  """(the TensorListPopBack op, its view, the concrete function) of a
  traced function whose output is read from a TensorList."""

  @tf.function
  def body(x):
    handle = tf.raw_ops.TensorListFromTensor(tensor=x, element_shape=[-1, 3])
    return tf.raw_ops.TensorListPopBack(input_handle=handle,
                                        element_shape=[-1, 3],
                                        element_dtype=tf.float32)[1]

  concrete = body.get_concrete_function(tf.TensorSpec([4, 2, 3]))
  view = graph_view.GraphView.from_model(concrete)
  pop = next(op for op in concrete.graph.get_operations()
             if op.type == 'TensorListPopBack')
  return pop, view, concrete


class _Renamed:
  """`op` seen as another op type (one the tables do not know)."""

  def __init__(self, op, op_type):
    self._op = op
    self.type = op_type

  def __getattr__(self, name):
    return getattr(self._op, name)


def test_an_op_reading_a_list_handle_gets_no_leaf_advice():
  """Its output channels came in through the handle: neither a leaf nor a
  passthrough of input 0 is provably right."""
  pop, view, _ = _list_ops()
  for op in (pop, _Renamed(pop, 'MyListOp')):
    advice = suggest.suggest_handler(op, view)
    assert 'LeafOpHandler()' not in advice
    assert 'GroupingOpHandler()' not in advice
    assert 'TensorList' in advice


def test_a_list_op_reached_by_the_walk_is_refused():
  _, _, concrete = _list_ops()
  with pytest.raises(errors.UnsupportedOpError) as info:
    orm.OpRegularizerManager(concrete)
  assert 'TensorListPopBack' in str(info.value)
  assert 'does not analyze loops' in str(info.value)


def test_loop_op_types_are_in_the_table():
  table = op_handlers.default_op_handler_dict()
  for op_type in ('While', 'StatelessWhile', 'TensorListStack',
                  'CudnnRNNV3'):
    assert type(table[op_type]).__name__ == 'RecurrentLoopOpHandler'
