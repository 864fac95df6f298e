"""A static report of a network's prunable layers: groups, widths, costs.

`analyze` crawls a model (Keras 3 model, `tf.function`, or the output ops of
a `tf.compat.v1` graph) with the default op-handler table, which needs no
BatchNorm and no regularizer source, and reports, for each conv / matmul
layer, its channel group, its width and its cost at full width:
    FLOPs   = 2 x positions x kernel elements x C_in x C_out
    weights = kernel elements x C_in x C_out (biases are not counted)
(depthwise convs are linear in C_out). They are an evaluation of the
network's one cost model (`network_regularizers.cost_model`) with every
channel alive: exactly what the FLOPs and model-size regularizers report.

>>> import keras
>>> inputs = keras.Input((8, 8, 3))
>>> x = keras.layers.Conv2D(4, 3, padding='same', name='conv')(inputs)
>>> x = keras.layers.GlobalAveragePooling2D()(x)
>>> model = keras.Model(inputs, keras.layers.Dense(2, name='fc')(x))
>>> report = analyze(model)
>>> [(l.name, l.channels, int(l.flops)) for l in report.layers]
[('conv', 4, 13824), ('fc', 2, 16)]
>>> int(report.flops), int(report.weights)
(13840, 116)
"""

import dataclasses
import json

import numpy as np

from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.network_regularizers import cost_model

__all__ = ['LayerReport', 'Report', 'analyze', 'format_table']


@dataclasses.dataclass
class LayerReport:
  """One prunable layer (a Keras layer, or a graph op in graph mode).

  Attributes:
    name: Keras layer name, or the op name in graph mode.
    op_type: TF op type(s) of its compute ops, e.g. 'Conv2D' or
      'DepthwiseConv2dNative+Conv2D' for a separable conv.
    group: channel group id; layers whose output channels are tied (e.g. by
      a residual add) share it. Numbered 0, 1, ... in network order.
    channels: output channel count (the width a structure JSON sets).
    flops: FLOPs per example at full width.
    weights: kernel weights at full width.
    prunable: False when its channels are tied to the network's output (its
      width is fixed by the task) or it is only depthwise.
  """
  name: str
  op_type: str
  group: int
  channels: int
  flops: float
  weights: float
  prunable: bool = True

  def to_dict(self):
    return dataclasses.asdict(self)


@dataclasses.dataclass
class Report:
  """The analysis of a network: its layers and their total cost."""
  layers: list
  flops: float
  weights: float

  def to_dict(self):
    return {'flops': self.flops, 'weights': self.weights,
            'layers': [l.to_dict() for l in self.layers]}

  def to_json(self, **kwargs):
    return json.dumps(self.to_dict(), **kwargs)

  def layer(self, name):
    for l in self.layers:
      if l.name == name:
        return l
    raise KeyError('No layer %r in the report; layers: %s'
                   % (name, [l.name for l in self.layers]))


def analyze(model_or_boundary, input_signature=None, input_boundary=None,
            op_handler_dict=None):
  """Reports every conv / matmul layer of a network at full width.

  Args:
    model_or_boundary: a Keras 3 model, a `tf.function` concrete function,
      or a list of output ops of a `tf.compat.v1` graph.
    input_signature: `tf.TensorSpec`s for a model whose input shape is not
      known.
    input_boundary: graph mode only: ops where the walk stops.
    op_handler_dict: overrides merged into the default op-handler table
      (for op types of your own).

  Returns:
    A `Report`. Layers appear in network order (producers first).
  """
  table = op_handlers.default_op_handler_dict()
  table.update(op_handler_dict or {})
  manager = orm.OpRegularizerManager(
      model_or_boundary, table, input_boundary=input_boundary,
      input_signature=input_signature)
  return report_of(manager)


def report_of(manager):
  """The `Report` of an analyzed network (see `analyze`)."""
  output_labels = set(manager.output_labels().tolist())
  everything = np.ones(manager.num_labels)
  flops = cost_model.CostModel(manager, 'flops').per_op(everything)
  weights = cost_model.CostModel(manager, 'model_size').per_op(everything)
  layers, label_sets = [], []
  for key, entry in manager.layers(include_depthwise=True).items():
    width_ops = [c for c in entry.computes if not c.linear]
    # A separable conv's width is its pointwise (non-depthwise) output.
    labels = manager.channel_labels((width_ops or entry.computes)[0].output)
    prunable = any(not output_labels.intersection(
        manager.channel_labels(c.output).tolist()) for c in width_ops)
    label_sets.append(labels)
    layers.append(LayerReport(
        name=key, op_type='+'.join(c.op.type for c in entry.computes),
        group=0, channels=len(labels),
        flops=float(sum(flops[c.op.name] for c in entry.computes)),
        weights=float(sum(weights[c.op.name] for c in entry.computes)),
        prunable=prunable))
  for layer, group in zip(layers, _group_ids(label_sets)):
    layer.group = group
  return Report(layers=layers, flops=float(sum(l.flops for l in layers)),
                weights=float(sum(l.weights for l in layers)))


def _group_ids(label_arrays):
  """Layers sharing any channel label are one group (union-find)."""
  parent = list(range(len(label_arrays)))

  def find(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  owner = {}
  for i, labels in enumerate(label_arrays):
    for lab in np.unique(labels).tolist():
      j = owner.setdefault(lab, i)
      ri, rj = find(i), find(j)
      if ri != rj:
        parent[max(ri, rj)] = min(ri, rj)
  ids, out = {}, []
  for i in range(len(label_arrays)):
    out.append(ids.setdefault(find(i), len(ids)))
  return out


def _human(x):
  """1234567 -> '1.23M'."""
  for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
    if abs(x) >= scale:
      return '%.2f%s' % (x / scale, unit)
  return '%d' % x


def format_table(report):
  """The report as an aligned text table with a totals line.

  Columns: layer, op type, group (a '*' marks a layer a structure does not
  set: its width is fixed by the output, or it is depthwise and follows its
  input), channels, FLOPs, weights, share of total FLOPs.
  """
  header = ('layer', 'op type', 'group', 'channels', 'FLOPs', 'weights',
            '%FLOPs')
  total = report.flops or 1.0
  rows = [(l.name, l.op_type, '%d%s' % (l.group, '' if l.prunable else '*'),
           str(l.channels), _human(l.flops), _human(l.weights),
           '%.1f' % (100.0 * l.flops / total)) for l in report.layers]
  footer = ('total', '', '', '', _human(report.flops),
            _human(report.weights), '100.0' if report.flops else '0.0')
  widths = [max(len(r[i]) for r in [header, footer] + rows)
            for i in range(len(header))]

  def line(cells):
    return '  '.join(c.ljust(w) if i < 2 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

  rule = '-' * len(line(header))
  out = [line(header), rule] + [line(r) for r in rows] + [rule, line(footer)]
  out.append('%d layers, %d groups; FLOPs %s (%d), weights %s (%d); '
             '* = not prunable (output width or depthwise)' % (
                 len(report.layers), len({l.group for l in report.layers}),
                 _human(report.flops), report.flops,
                 _human(report.weights), report.weights))
  return '\n'.join(out)
