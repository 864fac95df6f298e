"""The original MorphNet's module name for `GroupingOpHandler` (see `grouping_op_handlers`)."""

from morph_net.framework.grouping_op_handlers import GroupingOpHandler

__all__ = ['GroupingOpHandler']
