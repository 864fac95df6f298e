"""morph_net: resource-constrained structure learning for TF2 and Keras 3."""

__version__ = '0.1.0'
