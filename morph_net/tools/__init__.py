"""morph_net.tools."""
