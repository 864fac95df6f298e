"""A regularizer family: which channels carry a regularizer, and how tied
channels' regularizers combine.

Families do not change the op-handler table: every family analyzes the
network with the same handlers, then declares its sources from what the
analysis found (facts from the pattern pass, compute entries). The concrete
families (Gamma, GroupLasso, LogisticSigmoid) are built in
`morph_net.network_regularizers.families`, next to the op regularizers they
use.
"""

import dataclasses
from typing import Callable

from morph_net.framework import grouping_regularizers


@dataclasses.dataclass(frozen=True)
class Family:
  """What makes Gamma, GroupLasso or gating regularizers differ.

  Attributes:
    name: e.g. 'Gamma'.
    find_sources: callable (ctx, ops) that calls `ctx.add_source` for every
      regularized tensor; `ctx` is the manager's channel-graph builder (with
      `facts`, `computes` and `view`), `ops` the analyzed ops, producers
      first.
    grouping: how tied channels combine (a grouping regularizer class).
    sources_description: what the sources are, for the error raised when a
      network has none (e.g. 'BatchNorm scales (scale=True)').
    remedy: what to do then.
    normalize: measure scale-free sources (`framework.invariance`)
      relative to their own scale: 'auto' (in Keras models and
      tf.functions; tf.compat.v1 graphs keep the original MorphNet's
      absolute values), True (every source, every graph) or False (never).
    normalizable: callable (source) -> 'gamma', 'group_lasso' or None:
      which sources the normalization applies to.
  """
  name: str
  find_sources: Callable
  grouping: type = grouping_regularizers.MaxGroupingRegularizer
  sources_description: str = 'regularizer sources'
  remedy: str = ''
  normalize: object = False
  normalizable: Callable = None
