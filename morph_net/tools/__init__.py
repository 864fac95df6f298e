"""Tools around the regularizers: structure export, graph-mode builders."""

from morph_net.tools.structure_exporter import StructureExporter

__all__ = ['StructureExporter']
