"""The optimizer side of a run: parameter groups, optimizer, its implementation, and the lr
schedule (per step)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..errors import ConfigError


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


def resolve_impl(impl: str, device_type: str) -> str:
    """``auto``: fused on CUDA (one kernel for every parameter's update), foreach elsewhere (torch's
    own default on CPU is the per-parameter loop; benchmarks/step_options.py measures the three)."""
    if impl != "auto":
        return impl
    return "fused" if device_type == "cuda" else "foreach"


def impl_flags(impl: str) -> dict[str, bool]:
    """The optimizer keywords of a resolved implementation (explicit False: torch's None would pick)."""
    return {"fused": impl == "fused", "foreach": impl == "foreach"}


def impl_of(opt: torch.optim.Optimizer) -> str:
    """The implementation ``opt``'s (first) parameter group runs: fused, foreach or loop."""
    g = opt.param_groups[0]
    return "fused" if g.get("fused") else "foreach" if g.get("foreach") else "loop"


def make_optimizer(cfg: RunConfig, model: nn.Module, device_type: str | None = None) -> torch.optim.Optimizer:
    """AdamW or SGD over :func:`param_groups`, as ``cfg.optimizer_impl`` resolves on ``device_type``
    (default: the device of the model's parameters)."""
    device_type = device_type or next(model.parameters()).device.type
    impl = resolve_impl(cfg.optimizer_impl, device_type)
    groups = param_groups(model, cfg.wd, cfg.decay_embeddings)
    try:
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **impl_flags(impl))
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, **impl_flags(impl))
    except RuntimeError as e:  # a device torch has no fused kernel for
        raise ConfigError(f"optimizer_impl: {impl} is not supported by torch {torch.__version__} for "
                          f"{cfg.optimizer} on {device_type} (use foreach or loop): {e}") from None


def keep_impl(opt: torch.optim.Optimizer, load: Callable[[], None]) -> None:
    """Run ``load`` (``opt.load_state_dict``), keeping ``opt``'s implementation: a state dict brings
    its groups' fused/foreach flags, so a checkpoint written under another implementation (or
    before there was a choice) would silently replace the chosen one. The step counts follow:
    fused wants them on the parameter's device, the others on the CPU (no host sync per step)."""
    flags = {k: opt.param_groups[0].get(k) for k in ("fused", "foreach")}
    load()
    for g in opt.param_groups:
        g.update(flags)
        for p in g["params"]:
            state = opt.state.get(p, {})
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(p.device if flags["fused"] else "cpu", torch.float32)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
