"""One optimizer step (the hot loop's body): forward, loss, backward, clipping, tracing, update.
No host sync: every value it returns stays on the device until the trace buffer's flush."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.mix import hard_labels
from .optim import set_lr
from .tracing import GradTracer


@dataclass
class Step:
    """What one optimizer step needs. ``net`` runs forward (DDP and/or compiled); ``tracer``
    None means no gradient norms at all (a benchmark's baseline)."""

    net: nn.Module
    opt: torch.optim.Optimizer
    tracer: GradTracer | None
    autocast: Callable[[], Any] = nullcontext
    accum_steps: int = 1
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    distributed: bool = False
    z_loss: float = 0.0  # coefficient of log^2 Z (Wortsman et al. 2023): 0 = off


@dataclass
class StepOut:
    """Device tensors: the step's mean cross-entropy, correct count, per-layer grad norms, on a
    trace step (parameter norms, update norms, attention statistics), and the mean log Z."""

    loss: torch.Tensor
    correct: torch.Tensor
    layer_norms: torch.Tensor | None
    traced: tuple[torch.Tensor, ...] | None
    log_z: torch.Tensor | None = None


def train_step(s: Step, x: torch.Tensor, y: torch.Tensor, lr: float, trace: bool = False) -> StepOut:
    """One optimizer step on the global batch ``x, y`` (``y``: class indices or (N, C) soft targets,
    as MixUp/CutMix make; ``accum_steps`` micro-batches; with DDP the gradients are all-reduced on
    the last one only, so the traced norms are identical on every rank). No host sync."""
    set_lr(s.opt, lr)
    loss, correct, log_z = (torch.zeros((), device=x.device) for _ in range(3))
    accum, trace = s.accum_steps, trace and s.tracer is not None
    if trace:
        s.tracer.probe(True)
    for i, (xm, ym) in enumerate(zip(x.chunk(accum), y.chunk(accum), strict=True)):
        sync = i == accum - 1 or not s.distributed
        with (nullcontext() if sync else s.net.no_sync()), s.autocast():
            logits = s.net(xm).float()  # one cast (bf16 under autocast) for the loss and log Z
            ce = F.cross_entropy(logits, ym, label_smoothing=s.label_smoothing)
            lse = logits.logsumexp(-1)  # log Z per example: output-logit growth, and the z-loss
            micro = (ce + s.z_loss * lse.square().mean() if s.z_loss else ce) / accum
        micro.backward()
        loss += ce.detach() / accum
        log_z += lse.detach().mean() / accum
        correct += logits.detach().argmax(1).eq(hard_labels(ym)).sum()  # soft targets: their top class
    norms = s.tracer.grad_norms() if s.tracer is not None else None
    if s.grad_clip is not None:
        if norms is None:
            torch.nn.utils.clip_grad_norm_(s.net.parameters(), s.grad_clip)
        else:
            total = norms.square().sum().sqrt()
            torch._foreach_mul_(s.tracer.grads(), (s.grad_clip / (total + 1e-6)).clamp(max=1.0))
    if trace:
        s.tracer.probe(False)
        attn = s.tracer.attention()
        s.tracer.before_step()
    s.opt.step()
    s.opt.zero_grad(set_to_none=True)
    return StepOut(loss, correct, norms, (*s.tracer.after_step(), attn) if trace else None, log_z)
