"""The original MorphNet's module name for `OutputNonPassthroughOpHandler` (see `conv_op_handlers`)."""

from morph_net.framework.conv_op_handlers import OutputNonPassthroughOpHandler

__all__ = ['OutputNonPassthroughOpHandler']
