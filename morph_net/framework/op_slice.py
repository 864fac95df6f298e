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
