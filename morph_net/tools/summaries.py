"""TensorBoard summaries of a network regularizer (TF2 `tf.summary`).

Records are written with `tf.summary.write` and scalar metadata: the same
records as `tf.summary.scalar`, whose implementation lives in the optional
`tensorboard` package; this needs only TensorFlow.

    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
      write_summaries(regularizer, step)
"""

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from morph_net.tools import structure_exporter

REGULARIZATION_TERM_NAME = 'regularization_term'


def _scalar_metadata():
  metadata = summary_pb2.SummaryMetadata()
  metadata.plugin_data.plugin_name = 'scalars'
  metadata.data_class = summary_pb2.DATA_CLASS_SCALAR
  return metadata


def write_scalar(tag, value, step):
  """Writes one scalar to the default summary writer; True if written."""
  return tf.summary.write(tag, tf.constant(value, tf.float32), step=step,
                          metadata=_scalar_metadata())


def write_summaries(regularizer, step, exporter=None, prefix='morph_net'):
  """Writes cost, regularization term and per-layer alive counts.

  Call under a default summary writer (`with writer.as_default():`).

  Args:
    regularizer: a network regularizer (e.g. GammaFlopsRegularizer).
    step: the global step (int).
    exporter: optional StructureExporter to reuse (one is built otherwise).
    prefix: tag prefix ('' for none).

  Returns:
    {tag: value} of what was written (as Python numbers).
  """
  if exporter is None:
    exporter = structure_exporter.StructureExporter(
        regularizer.op_regularizer_manager)
  head = prefix + '/' if prefix else ''
  values = {
      head + regularizer.cost_name.replace(' ', '_'):
          float(regularizer.get_cost()),
      head + REGULARIZATION_TERM_NAME:
          float(regularizer.get_regularization_term()),
  }
  for name, count in exporter.get_alive_counts().items():
    values['%salive/%s' % (head, name)] = count
  for tag, value in values.items():
    write_scalar(tag, value, step)
  return values
