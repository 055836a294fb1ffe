"""The table of presets printed by ``stability models`` (counted, never typed in)."""

from __future__ import annotations

from typing import Any

from .build import count_complexity, model_spec
from .presets import REGNET_SIZES, VIT_SIZES


def preset_names() -> list[str]:
    """ViT_P and ViT_C of every size, then the RegNetY presets."""
    names = []
    for size in VIT_SIZES:
        suffix = size[len("vit_"):]
        names += [f"vit_p_{suffix}", f"vit_c_{suffix}"]
    return names + list(REGNET_SIZES)


def model_table() -> list[dict[str, Any]]:
    rows = []
    for name in preset_names():
        spec = model_spec(name)
        c = count_complexity(spec)
        rows.append({"name": name, "stem": spec.stem or spec.family, "depth": spec.depth,
                     "width": spec.width or None, "heads": spec.heads, "params": c.params,
                     "flops": c.flops, "image_size": spec.image_size, "tokens": spec.tokens})
    return rows
