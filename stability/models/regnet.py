"""RegNetY baselines built with torchvision's ``RegNet`` from the preset table."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .presets import RegNetSize


def build_regnet(size: RegNetSize, num_classes: int) -> nn.Module:
    from torchvision.models.regnet import BlockParams, RegNet  # slow import: only when needed

    with torch.device("cpu"):  # the width rule computes with tensors; not on "meta"
        params = BlockParams.from_init_params(
            depth=size.depth, w_0=size.w_0, w_a=size.w_a, w_m=size.w_m,
            group_width=size.group_width, se_ratio=0.25,
        )
    model = RegNet(params, num_classes=num_classes, norm_layer=partial(nn.BatchNorm2d, eps=1e-5))
    if size.stem_stride != 2:
        model.stem[0].stride = (size.stem_stride, size.stem_stride)
    return model


def regnet_layer_groups(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """Parameters by layer, input -> output: stem, each stage's blocks, head."""
    groups = [("stem", list(model.stem.parameters()))]
    for s, stage in enumerate(model.trunk_output):
        groups += [(f"blocks.{s}.{b}", list(block.parameters())) for b, block in enumerate(stage)]
    groups.append(("head", list(model.fc.parameters())))
    return groups
