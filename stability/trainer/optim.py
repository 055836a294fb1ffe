"""The optimizer side of a run: parameter groups, optimizer, and the lr schedule (per step)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import RunConfig


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to ``base_lr`` over ``warmup_steps``, then half-cosine to 0 (per step)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def param_groups(model: nn.Module, wd: float, decay_embeddings: bool) -> list[dict[str, Any]]:
    """No weight decay on norm gains and biases (1-d tensors); the parameters the model names in
    ``no_weight_decay()`` (timm's convention: its embeddings) only when ``decay_embeddings`` is off."""
    exempt = model.no_weight_decay() if hasattr(model, "no_weight_decay") and not decay_embeddings else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in exempt else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.wd, cfg.decay_embeddings)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
