"""OpSlice and OpGroup: which channel ranges of which ops are pruned together.

The manager groups channels one by one (see `OpRegularizerManager`); slices
and groups are the summary users see: an `OpSlice` is a contiguous range of an
op's output channels, and an `OpGroup` lists the slices whose channels are
tied position by position, so they live or die together.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Slice:
  """A range of channels: [start_index, start_index + size)."""
  start_index: int
  size: int

  def __str__(self):
    return '(%d, %d)' % (self.start_index, self.size)


@dataclasses.dataclass(frozen=True)
class OpSlice:
  """A channel range of one op's output."""
  op: object  # tf.Operation
  slice: Slice

  def __str__(self):
    return '%s %s' % (self.op.name, self.slice)


@dataclasses.dataclass(frozen=True)
class OpGroup:
  """Op slices whose channels are tied: alive and regularized as one.

  Attributes:
    op_slices: the member slices, in the graph's topological order.
    source_op_slices: members that carry a regularizer (e.g. a BatchNorm).
  """
  op_slices: tuple
  source_op_slices: tuple = ()

  @property
  def size(self):
    return self.op_slices[0].slice.size if self.op_slices else 0

  def __str__(self):
    return 'OpGroup[%s]' % ', '.join(str(s) for s in self.op_slices)


def slices_and_groups(ops, labels_of, source_names):
  """({op name: [OpSlice]}, {OpSlice: OpGroup}) from channel labels.

  Contiguous runs of an op's output channels are keyed by where their
  classes first appear; slices with the same key form one OpGroup.

  Args:
    ops: analyzed ops with channels, producers first.
    labels_of: tensor -> channel label per channel.
    source_names: names of the ops that carry regularizers.
  """
  first = {}
  runs = {}
  for t_index, op in enumerate(ops):
    t = op.outputs[0]
    keys = [first.setdefault(int(lab), (t_index, pos))
            for pos, lab in enumerate(labels_of(t))]
    op_runs, start = [], 0
    for pos in range(1, len(keys) + 1):
      if (pos == len(keys) or keys[pos][0] != keys[pos - 1][0]
          or keys[pos][1] != keys[pos - 1][1] + 1):
        op_runs.append((start, pos - start, keys[start]))
        start = pos
    runs[t.op] = op_runs
  groups = {}
  slices = {}
  for op, op_runs in runs.items():
    slices[op.name] = []
    for start, size, key in op_runs:
      s = OpSlice(op, Slice(start, size))
      slices[op.name].append(s)
      groups.setdefault((key, size), []).append(s)
  group_of = {}
  for members in groups.values():
    g = OpGroup(tuple(members), tuple(
        m for m in members if m.op.name in source_names))
    for m in members:
      group_of[m] = g
  return slices, group_of
