"""Model presets as data: the paper's ViT sizes (224 px) and small CPU sizes (32 px).

A *size* (``vit_4gf``) and a *stem* (``patchify`` | ``conv``) are separate choices. With the conv
stem the model has one block fewer, as in the paper (its stem costs about one block). The names
``vit_p_4gf`` / ``vit_c_4gf`` are aliases that fix the stem.
"""

from __future__ import annotations

from dataclasses import dataclass

STEMS = ("patchify", "conv")


@dataclass(frozen=True)
class ViTSize:
    """One row of the ViT table. ``depth`` is ViT_P's depth; ViT_C uses ``depth - 1``."""

    width: int
    mlp_dim: int
    heads: int
    depth: int
    patch_size: int
    conv_kernels: tuple[int, ...]
    conv_strides: tuple[int, ...]
    conv_channels: tuple[int, ...]
    image_size: int
    num_classes: int


# Xiao et al. 2021, Table 1 (and pycls configs). The last conv entry is the 1x1 conv to the width.
_C_1GF = ((3, 3, 3, 3, 1), (2, 2, 2, 2, 1), (24, 48, 96, 192, 192))
_C_4GF = ((3, 3, 3, 3, 1), (2, 2, 2, 2, 1), (48, 96, 192, 384, 384))
_C_18GF = ((3, 3, 3, 3, 3, 3, 1), (2, 2, 1, 2, 1, 2, 1), (64, 128, 128, 256, 256, 512, 768))
_C_36GF = ((3, 3, 3, 3, 3, 3, 1), (2, 2, 1, 2, 1, 2, 1), (64, 128, 128, 256, 256, 512, 1024))
# CPU sizes at 32 px: patch 4 (8x8 tokens) vs three 3x3 conv-BN-ReLU (strides 1, 2, 2) whose
# channels double up to the width, then a 1x1 to the width: the paper's pattern (1GF: 24, 48,
# 96, 192 then 1x1 192). With one block fewer the FLOPs are within 1.3% of ViT_P (counted).
_C_TINY = ((3, 3, 3, 1), (1, 2, 2, 1), (24, 48, 96, 96))
_C_SMALL = ((3, 3, 3, 1), (1, 2, 2, 1), (32, 64, 128, 128))

VIT_SIZES: dict[str, ViTSize] = {
    "vit_1gf": ViTSize(192, 576, 3, 12, 16, *_C_1GF, 224, 1000),
    "vit_4gf": ViTSize(384, 1152, 6, 12, 16, *_C_4GF, 224, 1000),
    "vit_18gf": ViTSize(768, 3072, 12, 12, 16, *_C_18GF, 224, 1000),
    "vit_36gf": ViTSize(1024, 4096, 16, 14, 16, *_C_36GF, 224, 1000),
    "vit_tiny": ViTSize(96, 288, 3, 6, 4, *_C_TINY, 32, 10),
    "vit_small": ViTSize(128, 384, 4, 8, 4, *_C_SMALL, 32, 10),
}

# The paper's published numbers (GF = 1e9 multiply-adds, params in millions), for checks.
PAPER_COMPLEXITY: dict[str, tuple[float, float]] = {
    "vit_p_1gf": (1.1, 4.8),
    "vit_c_1gf": (1.1, 4.6),
    "vit_p_4gf": (3.9, 18.5),
    "vit_c_4gf": (4.0, 17.8),
    "vit_p_18gf": (17.5, 86.6),
    "vit_c_18gf": (17.7, 81.6),
    "vit_p_36gf": (35.9, 178.4),
    "vit_c_36gf": (35.0, 167.8),
}


@dataclass(frozen=True)
class RegNetSize:
    """torchvision RegNetY parameters (Radosavovic et al. 2020)."""

    depth: int
    w_0: int
    w_a: float
    w_m: float
    group_width: int
    image_size: int
    num_classes: int
    stem_stride: int = 2


REGNET_SIZES: dict[str, RegNetSize] = {
    "regnety_400mf": RegNetSize(16, 48, 27.89, 2.09, 8, 224, 1000),
    "regnety_800mf": RegNetSize(14, 56, 38.84, 2.4, 16, 224, 1000),
    "regnety_1_6gf": RegNetSize(27, 48, 20.71, 2.65, 24, 224, 1000),
    "regnety_3_2gf": RegNetSize(21, 80, 42.63, 2.66, 24, 224, 1000),
    "regnety_4gf": RegNetSize(22, 96, 31.41, 2.24, 64, 224, 1000),
    "regnety_8gf": RegNetSize(17, 192, 76.82, 2.19, 56, 224, 1000),
    "regnety_16gf": RegNetSize(18, 200, 106.23, 2.48, 112, 224, 1000),
    # 32 px: stride-1 stem so the four stages see 32 -> 16 -> 8 -> 4 -> 2; sized to 39 MFLOPs,
    # within 5% of vit_p_tiny / vit_c_tiny (41.1 / 40.6 MFLOPs): the CPU peak study is FLOP-matched.
    "regnety_tiny": RegNetSize(10, 56, 38.84, 2.4, 8, 32, 10, stem_stride=1),
}


# A preset whose computation changed after run ids were issued gets a revision, which enters the
# run id (``RunConfig.identity``) so results of the old architecture are never reused for it.
# Revision 1 of every conv stem: pycls' init (3x3 normal sqrt(2/out), 1x1 normal sqrt(1/out))
# and the tiny/small channels in the paper's pattern; of regnety_tiny: FLOP-matched to the ViTs.
_REVISIONS: dict[tuple[str, str | None], int] = {("regnety_tiny", None): 1}


def architecture_revision(size: str, stem: str | None) -> int:
    """0 for a preset as first released; bumped when what it computes changes."""
    return 1 if stem == "conv" else _REVISIONS.get((size, stem), 0)


def resolve(name: str, stem: str | None = None) -> tuple[str, str | None]:
    """Map a model name (+ optional stem) to ``(size_or_regnet_name, stem)``.

    ``vit_c_4gf`` -> ``("vit_4gf", "conv")``; ``vit_4gf`` + ``stem=None`` -> patchify.
    Raises ``ValueError`` naming the allowed values.
    """
    if name in REGNET_SIZES:
        if stem not in (None, "regnet"):
            raise ValueError(f"stem: model {name!r} has no ViT stem (got {stem!r}); leave stem unset")
        return name, None
    if stem is not None and stem not in STEMS:
        raise ValueError(f"stem: unknown stem {stem!r} (allowed: {', '.join(STEMS)})")
    for prefix, fixed in (("vit_p_", "patchify"), ("vit_c_", "conv")):
        if name.startswith(prefix) and "vit_" + name[len(prefix):] in VIT_SIZES:
            if stem is not None and stem != fixed:
                raise ValueError(f"stem: {name!r} fixes stem={fixed!r}, got stem={stem!r}")
            return "vit_" + name[len(prefix):], fixed
    if name in VIT_SIZES:
        return name, stem or "patchify"
    raise ValueError(f"model: unknown model {name!r} (allowed: {', '.join(model_names())})")


def canonical_name(size: str, stem: str) -> str:
    """``("vit_4gf", "conv")`` -> ``"vit_c_4gf"``."""
    return f"vit_{'c' if stem == 'conv' else 'p'}_{size[len('vit_'):]}"


def model_names() -> list[str]:
    """Every accepted model name: sizes, stem aliases and RegNetY presets."""
    names = []
    for size in VIT_SIZES:
        suffix = size[len("vit_"):]
        names += [size, f"vit_p_{suffix}", f"vit_c_{suffix}"]
    return names + list(REGNET_SIZES)
