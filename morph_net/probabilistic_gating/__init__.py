"""morph_net.probabilistic_gating."""
