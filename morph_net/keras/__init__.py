"""morph_net.keras."""
