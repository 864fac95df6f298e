"""Scale-free sources: channels whose common scale the loss does not see.

A BatchNorm whose output reaches, through positively homogeneous ops only
(ReLU, pooling, padding, reshapes, convolutions, matmuls), nothing but
other BatchNorms is scale-free: multiplying its gamma and beta by a > 0
multiplies what the next BatchNorms normalize by a, which they divide out
(in training, with batch statistics). The same holds for a conv kernel
whose output is batch-normalized. The loss then depends only on the ratios
between the channels, so an absolute |gamma| (or kernel norm) threshold
says little and an L1 penalty shrinks the whole layer for free: which
layers die follows this invariance, not what their channels are worth.

`scale_free(view, facts, tensor, start_affine)` decides it for a source's
tensor by a forward walk. Regularizers then measure such a source's
channels relative to the source's own scale (see
`framework.sources.source_vectors`). The walk is conservative: any op not
known to commute with a positive scale (an add of two activations, a
concat, a multiply by data, a saturating activation, the network's output)
makes the source scale-dependent, which keeps the absolute signal.
"""

import collections

from morph_net.framework import op_types
from morph_net.framework import patterns

# Ops through which a positive scale passes unchanged: f(a x) = a f(x).
_HOMOGENEOUS = frozenset([
    'Relu', 'LeakyRelu', 'MaxPool', 'MaxPool3D', 'MaxPoolV2', 'AvgPool',
    'AvgPool3D', 'Identity', 'Reshape', 'Squeeze', 'ExpandDims', 'Transpose',
    'StridedSlice', 'Slice', 'Split', 'SplitV', 'Pad', 'PadV2', 'MirrorPad',
    'Cast', 'SpaceToBatchND', 'BatchToSpaceND', 'SpaceToDepth',
    'DepthToSpace', 'Mean',
])
# Linear ops with a weight: the scale passes to their output.
_LINEAR = frozenset(op_types.CONV_LAYOUTS) | frozenset([
    'MatMul', 'BatchMatMul', 'BatchMatMulV2', 'BatchMatMulV3', 'Einsum'])
# A constant added before a normalization is removed by it; before a
# nonlinearity it breaks homogeneity.
_ADDS = frozenset(['BiasAdd', 'Add', 'AddV2', 'Sub'])
_MAX_OPS = 256  # a normalization is a few ops away; keeps the pass linear


def scale_free(view, facts, tensor, start_affine=False):
  """Whether every path from `tensor` reaches a BatchNorm's normalization
  through positively homogeneous ops only.

  Args:
    view: the graph view.
    facts: the pattern pass's `patterns.Facts`.
    tensor: the source's activation (a BatchNorm's scaled output, or a
      conv/matmul output).
    start_affine: the first parameter add on the way is the source's own
      offset (a BatchNorm's beta, which scales with gamma).
  """
  outputs = {op.name for op in view.output_ops}
  stack = [(tensor, False, start_affine)]
  seen = set()
  visited = 0
  reached = False
  while stack:
    t, biased, own_offset = stack.pop()
    key = (t.name, biased, own_offset)
    if key in seen:
      continue
    seen.add(key)
    visited += 1
    if visited > _MAX_OPS:
      return False
    consumers = list(t.consumers())
    if not consumers or t.op.name in outputs:
      return False  # the network's output sees the scale
    for op in consumers:
      kind = _step(op, t, view, facts)
      if kind == 'normalized':
        reached = True
        continue
      if kind == 'add' and own_offset:
        nxt = [(o, biased, False) for o in op.outputs]
      elif kind == 'add':
        nxt = [(o, True, False) for o in op.outputs]
      elif kind == 'linear':
        nxt = [(o, biased, own_offset) for o in op.outputs]
      elif kind == 'homogeneous' and not biased:
        nxt = [(o, False, own_offset) for o in op.outputs]
      else:
        return False
      stack.extend(nxt)
  return reached


def _step(op, tensor, view, facts):
  """How `op` treats its input `tensor`: 'normalized', 'linear' (a scale
  passes, a constant shift too), 'homogeneous' (a scale passes), 'add' (a
  parameter is added), or None (the scale is seen)."""
  if op.type in op_types.BATCH_NORMS and op.inputs[0].name == tensor.name:
    return 'normalized'
  fact = facts.first(op, patterns.BatchNormScale) if facts else None
  if fact is not None and tensor.name not in {
      op.inputs[i].name for i in fact.param_inputs}:
    return 'normalized'
  if op.type in _LINEAR:
    return 'linear'
  if op.type in _HOMOGENEOUS:
    return 'homogeneous'
  if op.type in _ADDS and len(op.inputs) == 2:
    first = op.inputs[0].name == tensor.name
    other = op.inputs[1] if first else op.inputs[0]
    if (first or op.type != 'Sub') and other.name != tensor.name and (
        not view.depends_on_input(other)):
      return 'add'
  return None


def scale_free_sources(sources, view, facts, kinds):
  """The names of the source ops whose channels are scale-free.

  Args:
    sources: the manager's sources.
    view, facts: the graph view and the pattern pass's facts.
    kinds: source -> 'gamma', 'group_lasso' or None (not normalizable).
  """
  found = collections.OrderedDict()
  for s in sources:
    kind = kinds(s)
    if kind is None:
      continue
    if scale_free(view, facts, s.tensor, start_affine=(kind == 'gamma')):
      found[s.op.name] = True
  return set(found)


def normalized_sources(family, sources, view, facts):
  """The source op names a family measures relative to their own scale
  (its `normalize` setting: 'auto' finds the scale-free ones in Keras
  models and tf.functions; True takes every normalizable source)."""
  setting = getattr(family, 'normalize', False)
  if family is None or not setting or family.normalizable is None or (
      setting == 'auto' and not view.eager):
    return frozenset()
  if setting is True:
    return frozenset(s.op.name for s in sources
                     if family.normalizable(s) is not None)
  return frozenset(scale_free_sources(sources, view, facts,
                                      family.normalizable))
