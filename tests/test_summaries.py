"""TensorBoard summaries: cost, term and alive counts reach the event file."""

import glob

import tensorflow as tf

from conftest import conv_bn_model
from morph_net.network_regularizers import flop_regularizer
from morph_net.tools import summaries


def _model():
  model = conv_bn_model((8, 8, 3), (4,), 2, padding='valid', use_bias=True)
  model.get_layer('bn1').gamma.assign([1.0, 0.0, 1.0, 0.0])
  return model


def test_summaries_are_written_and_readable(tmp_path):
  reg = flop_regularizer.GammaFlopsRegularizer(_model(), 0.1)
  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default():
    written = summaries.write_summaries(reg, step=7)
  writer.flush()
  assert written['morph_net/alive/conv1'] == 2
  assert written['morph_net/FLOPs'] == 2 * 36 * 27 * 2 + 2 * 2 * 2
  events = glob.glob(str(tmp_path / 'events.out.tfevents.*'))
  assert events
  tags = {}
  for event in tf.compat.v1.train.summary_iterator(events[0]):
    for value in event.summary.value:
      tags[value.tag] = (event.step, float(tf.make_ndarray(value.tensor)))
  assert tags['morph_net/alive/conv1'] == (7, 2.0)
  assert tags['morph_net/FLOPs'][1] == written['morph_net/FLOPs']
  assert 'morph_net/regularization_term' in tags
