"""The table of presets printed by ``stability models``: counted, never typed in.

Counting the FLOPs of 20 presets (36GF included) takes seconds, so the counts are kept in
``complexity.json`` beside this file, each under a key of everything that decides it (the
resolved spec and the preset's architecture revision). A preset whose key changed is counted
again; ``tests/test_models.py`` recounts every preset and fails when the file is stale
(``python -m stability.models.table`` rewrites it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from .presets import REGNET_SIZES, VIT_SIZES, architecture_revision, resolve
from .spec import ModelSpec, model_spec

COUNTS = Path(__file__).with_name("complexity.json")


def preset_names() -> list[str]:
    """ViT_P and ViT_C of every size, then the RegNetY presets."""
    names = []
    for size in VIT_SIZES:
        suffix = size[len("vit_"):]
        names += [f"vit_p_{suffix}", f"vit_c_{suffix}"]
    return names + list(REGNET_SIZES)


def spec_key(name: str, spec: ModelSpec) -> str:
    """A digest of everything that decides a preset's counts."""
    size, stem = resolve(name)
    blob = json.dumps([dataclasses.asdict(spec), architecture_revision(size, stem)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def count_presets() -> dict[str, dict[str, Any]]:
    """Count every preset now (seconds): ``{name: {"key", "params", "flops"}}``."""
    from .build import count_complexity  # torch: only when something must be counted

    out = {}
    for name in preset_names():
        spec = model_spec(name)
        c = count_complexity(spec)
        out[name] = {"key": spec_key(name, spec), "params": c.params, "flops": c.flops}
    return out


def saved_counts() -> dict[str, dict[str, Any]]:
    """``complexity.json`` as saved (``{}`` when it cannot be read)."""
    try:
        saved = json.loads(COUNTS.read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def complexity(spec: ModelSpec, saved: dict[str, dict[str, Any]] | None = None) -> dict[str, int]:
    """``{"params", "flops"}`` of ``spec``: from ``complexity.json`` when it holds this exact
    spec (a preset at its own image size and classes), else counted (torch, about a second)."""
    saved = saved_counts() if saved is None else saved
    hit = saved.get(spec.name)
    try:
        if hit is not None and hit.get("key") == spec_key(spec.name, spec):
            return {"params": hit["params"], "flops": hit["flops"]}
    except ValueError:  # not a preset name: counted below
        pass
    from .build import count_complexity  # torch: only for a spec the file does not cover

    c = count_complexity(spec)
    return {"params": c.params, "flops": c.flops}


def model_table() -> list[dict[str, Any]]:
    saved = saved_counts()
    rows = []
    for name in preset_names():
        spec = model_spec(name)
        hit = complexity(spec, saved)
        rows.append({"name": name, "stem": spec.stem or spec.family, "depth": spec.depth,
                     "width": spec.width or None, "heads": spec.heads, "params": hit["params"],
                     "flops": hit["flops"], "image_size": spec.image_size, "tokens": spec.tokens})
    return rows


if __name__ == "__main__":
    COUNTS.write_text(json.dumps(count_presets(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {COUNTS}")
