"""Per-batch augmentation of the training loop: ``augment`` (augment.py), then MixUp / CutMix
(torchvision's ``transforms.v2``) with soft targets.

Every draw comes from a seed of (run seed, step, rank), so a resumed run sees the same batches.
With mixing on, the targets are (N, classes) probabilities that sum to 1 for every batch (one-hot
when a batch is left unmixed, ``mix_prob`` < 1), so the loss and the step see one kind of target;
``F.cross_entropy`` takes them, and its label smoothing composes: (1 - s) * target + s / C.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .augment import augment_batch, seeded

MIX_SALT = 0x5F3759DF  # the mix draws are not the augment draws of the same step


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of a step's batch augmentation on one rank."""
    return (seed * 1_000_003 + step) * 64 + rank


def augment_and_mix(x: torch.Tensor, y: torch.Tensor, cfg: Any, num_classes: int, step: int, rank: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch ``x, y`` with ``cfg.augment``, then mixed (``mix_batch``)."""
    seed = step_seed(cfg.seed, step, rank)
    return mix_batch(augment_batch(x, cfg.augment, seed), y, cfg, num_classes, seed)


def mixing(cfg: Any) -> bool:
    return cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0


@functools.lru_cache(maxsize=8)
def _mixer(mixup: float, cutmix: float, switch: float, num_classes: int) -> Any:
    from torchvision.transforms import v2

    if mixup > 0 and cutmix > 0:
        both = [v2.CutMix(alpha=cutmix, num_classes=num_classes), v2.MixUp(alpha=mixup, num_classes=num_classes)]
        return v2.RandomChoice(both, p=[switch, 1 - switch])
    if cutmix > 0:
        return v2.CutMix(alpha=cutmix, num_classes=num_classes)
    return v2.MixUp(alpha=mixup, num_classes=num_classes)  # Beta(0, 0) is no distribution: build only what is on


def mix_batch(x: torch.Tensor, y: torch.Tensor, cfg: Any, num_classes: int, seed: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp or CutMix of the batch (``cfg``: mixup_alpha, cutmix_alpha, mix_prob,
    mix_switch_prob); ``y`` becomes soft (N, num_classes) targets. Unchanged when both alphas are 0."""
    if not mixing(cfg):
        return x, y
    with seeded(seed ^ MIX_SALT):
        if torch.rand(()).item() >= cfg.mix_prob:
            return x, torch.nn.functional.one_hot(y, num_classes).float()
        return _mixer(cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_switch_prob, num_classes)(x, y)


def hard_labels(y: torch.Tensor) -> torch.Tensor:
    """Class indices of targets: ``y`` itself, or the argmax of soft targets (the dominant class)."""
    return y if y.dim() == 1 else y.argmax(1)
