"""Tools around the regularizers: export, summaries, analysis, graph builders.

`morph_net.tools.plot` (matplotlib) is imported on demand, not here.
"""

from morph_net.tools.configurable_ops import ConfigurableOps
from morph_net.tools.configurable_ops import VANISHED
from morph_net.tools.structure_exporter import StructureExporter
from morph_net.tools.summaries import write_summaries

# `analyze` is a module (morph_net.tools.analyze.analyze / format_table):
# re-exporting the function here would shadow it.
__all__ = ['ConfigurableOps', 'StructureExporter', 'VANISHED',
           'write_summaries']
