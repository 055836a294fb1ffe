"""Build a model by name and count its complexity."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .presets import REGNET_SIZES, VIT_SIZES
from .regnet import build_regnet, regnet_layer_groups
from .spec import ModelSpec, model_spec
from .vit import ConvStem, PatchifyStem, ViT

__all__ = ["Complexity", "ModelSpec", "attention_layers", "build_model", "count_complexity", "layer_groups",
           "memory_format", "model_spec"]


def build_model(spec: ModelSpec, *, freeze_stem: bool = False, qk_norm: bool = False) -> nn.Module:
    """Instantiate ``spec``. ``freeze_stem`` keeps the stem at its random init (MoCo v3);
    ``qk_norm`` (ViTs) normalises each head's queries and keys (a RegNet has no attention)."""
    if spec.family == "regnet":
        key = spec.name
        model = build_regnet(replace(REGNET_SIZES[key], depth=spec.depth), spec.num_classes)
        stem_module = model.stem
    else:
        size = VIT_SIZES["vit_" + spec.name.split("_", 2)[2]]
        if spec.stem == "conv":
            channels = (*size.conv_channels[:-1], size.width)
            stem_module = ConvStem(size.conv_kernels, size.conv_strides, channels)
        else:
            stem_module = PatchifyStem(size.width, size.patch_size)
        model = ViT(stem_module, tokens=spec.tokens, width=size.width, depth=spec.depth, heads=size.heads,
                    mlp_dim=size.mlp_dim, num_classes=spec.num_classes, qk_norm=qk_norm)
    if freeze_stem:
        stem_module.requires_grad_(False)
    return model


def attention_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{layer group name: its attention module}`` (empty for a RegNet)."""
    return model.attention_layers() if isinstance(model, ViT) else {}


def layer_groups(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """Parameters per layer in depth order (stem first, head last)."""
    if isinstance(model, ViT):
        return model.layer_groups()
    return regnet_layer_groups(model)


@dataclass(frozen=True)
class Complexity:
    params: int
    flops: int  # multiply-adds per image (the paper's "FLOPs": one MAC = one FLOP)


def count_complexity(spec: ModelSpec) -> Complexity:
    """Count params and multiply-adds of one forward pass on meta tensors (no compute).

    ``torch.utils.flop_counter`` counts 2 FLOPs per multiply-add; we halve it to report FLOPs
    as the paper and pycls do (1 MAC = 1 FLOP).
    """
    with torch.device("meta"):
        model = build_model(spec).eval()
        x = torch.empty(1, 3, spec.image_size, spec.image_size)
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return Complexity(params=params, flops=math.ceil(counter.get_total_flops() / 2))


def memory_format(family: str) -> torch.memory_format:
    """channels_last for the all-conv RegNetY (+11% images/s on CPU, benchmarks/step_options.py);
    ViTs keep the default: their only convs, the stem, gained nothing measurable."""
    return torch.channels_last if family == "regnet" else torch.contiguous_format
