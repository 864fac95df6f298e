"""Tools around the regularizers: export, summaries, analysis, graph builders.

`morph_net.tools.plot` (matplotlib) is imported on demand, not here.
"""

from morph_net.tools.analyze import analyze
from morph_net.tools.analyze import format_table
from morph_net.tools.configurable_ops import ConfigurableOps
from morph_net.tools.configurable_ops import VANISHED
from morph_net.tools.structure_exporter import StructureExporter
from morph_net.tools.summaries import write_summaries

__all__ = ['ConfigurableOps', 'StructureExporter', 'VANISHED', 'analyze',
           'format_table', 'write_summaries']
