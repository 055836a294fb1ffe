"""A model's resolved description (``ModelSpec``) from its name: plain arithmetic, no torch, so
that ``stability models``, configs and planning start fast."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .presets import REGNET_SIZES, VIT_SIZES, canonical_name, resolve


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build one model: the resolved preset plus overrides."""

    name: str
    family: str  # "vit" | "regnet"
    stem: str | None
    depth: int
    width: int
    heads: int | None
    image_size: int
    num_classes: int
    tokens: int | None


def stem_output_size(image_size: int, strides: Sequence[int], kernels: Sequence[int]) -> int:
    """Side length of the token grid after the stem (convs with padding k // 2)."""
    size = image_size
    for k, s in zip(kernels, strides, strict=True):
        size = (size + 2 * (k // 2) - k) // s + 1
    return size


def model_spec(
    name: str,
    stem: str | None = None,
    *,
    num_classes: int | None = None,
    image_size: int | None = None,
    depth: int | None = None,
) -> ModelSpec:
    """Resolve a name + overrides into a ``ModelSpec`` (raises ``ValueError`` on bad names)."""
    key, stem = resolve(name, stem)
    if key in REGNET_SIZES:
        size = REGNET_SIZES[key]
        image = image_size or size.image_size
        classes = num_classes or size.num_classes
        return ModelSpec(key, "regnet", None, depth or size.depth, 0, None, image, classes, None)
    size = VIT_SIZES[key]
    image = image_size or size.image_size
    if stem == "conv":
        side = stem_output_size(image, size.conv_strides, size.conv_kernels)
        default_depth = size.depth - 1  # the conv stem costs about one block
    else:
        side = image // size.patch_size
        default_depth = size.depth
    return ModelSpec(
        canonical_name(key, stem), "vit", stem, depth or default_depth, size.width, size.heads, image,
        num_classes or size.num_classes, side * side,
    )
