"""Tools around the regularizers: structure export, graph-mode builders."""

from morph_net.tools.structure_exporter import StructureExporter
from morph_net.tools.summaries import write_summaries

__all__ = ['StructureExporter', 'write_summaries']
