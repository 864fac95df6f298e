"""The original MorphNet's module name for `ConcatOpHandler` (see `axis_op_handlers`)."""

from morph_net.framework.axis_op_handlers import ConcatOpHandler

__all__ = ['ConcatOpHandler']
