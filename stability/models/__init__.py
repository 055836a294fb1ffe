"""Model zoo: ViT_P / ViT_C presets and RegNetY baselines.

The preset table imports no torch; the builders (``build_model`` ...) load torch on first use,
so that ``stability.config`` and ``stability grid status`` start fast.
"""

from importlib import import_module

from .presets import PAPER_COMPLEXITY, REGNET_SIZES, STEMS, VIT_SIZES, model_names, resolve

_LAZY = {
    "Complexity": "build", "ModelSpec": "spec", "build_model": "build",
    "attention_layers": "build", "count_complexity": "build", "layer_groups": "build", "memory_format": "build", "model_spec": "spec",
    "ViT": "vit", "ConvStem": "vit", "PatchifyStem": "vit",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PAPER_COMPLEXITY", "REGNET_SIZES", "STEMS", "VIT_SIZES", "model_names", "resolve",
           *_LAZY]
