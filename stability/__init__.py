"""stability: measure training stability (ViT_P vs ViT_C)."""
__version__ = "0.1.0"
