"""What a run records about its own gradients, without a host sync per step.

:class:`GradTracer` computes per-layer gradient norms (every step), parameter norms, update norms
and, for attention layers, the largest attention logit and the attention entropy (on trace
steps). :class:`TraceBuffer` keeps every step's loss, correct count, lr and norms
on the device and turns them into ``steps`` and ``grad_norms`` rows with one ``.tolist()`` per
flush (one all-reduce when distributed), judging divergence and the stop flag on the way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models import attention_layers, layer_groups
from .distributed import Dist, all_reduce
from .rows import grad_row, step_row


class GradTracer:
    """Per-layer gradient norms, parameter norms and update ratios with no per-layer syncs.

    Every step: per-parameter grad norms via ``torch._foreach_norm``, summed per layer with one
    ``index_add_`` (the total grad norm falls out). Results stay on the device until ``flush``.
    """

    def __init__(self, model: nn.Module, device: torch.device, attention: bool = True):
        groups = [(name, [p for p in ps if p.requires_grad], depth)
                  for depth, (name, ps) in enumerate(layer_groups(model))]
        self.layers = [(name, depth) for name, ps, depth in groups if ps]  # frozen layers: none
        self.params = [p for _, ps, _ in groups for p in ps]
        index = [i for i, (_, ps, _) in enumerate(g for g in groups if g[1]) for _ in ps]
        self.index = torch.tensor(index, device=device)
        self.n_layers = len(self.layers)
        self.numel = [sum(p.numel() for p in ps) for _, ps, _ in groups if ps]  # RMS = norm / sqrt(numel)
        rows = {name: i for i, (name, _) in enumerate(self.layers)}
        self.attn = [(rows[n], m) for n, m in attention_layers(model).items() if n in rows] if attention else []
        self._nan = torch.full((self.n_layers, 2), math.nan, device=device)
        self._before: list[torch.Tensor] | None = None

    def probe(self, on: bool) -> None:
        """Record attention statistics in the coming forward passes (trace steps only: each
        probed forward pays an extra QKᵀ per attention layer)."""
        for _, m in self.attn:
            m.probe = on
            if on:
                m.probed = None

    def attention(self) -> torch.Tensor:
        """(layers, 2): [max attention logit, mean attention entropy] of the last probed forward,
        NaN for layers without attention (a device tensor)."""
        out = self._nan.clone()
        for row, m in self.attn:
            if m.probed is not None:
                out[row] = m.probed
        return out

    def _per_layer(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        norms = torch.stack(torch._foreach_norm(tensors)).float()
        sq = torch.zeros(self.n_layers, device=norms.device).index_add_(0, self.index, norms.square())
        return sq.sqrt()

    def grads(self) -> list[torch.Tensor]:
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]

    def grad_norms(self) -> torch.Tensor:
        """Per-layer grad norms (device tensor); ``.square().sum().sqrt()`` is the total."""
        return self._per_layer(self.grads())

    def before_step(self) -> None:
        # One foreach copy into buffers kept between trace steps: a clone per parameter is a
        # kernel launch (and an allocation) each, which is what a launch-bound GPU step pays for.
        params = [p.detach() for p in self.params]
        if self._before is None:
            self._before = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(self._before, params)

    def after_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(param norms, update norms) per layer, for the step since ``before_step``."""
        params = [p.detach() for p in self.params]
        torch._foreach_sub_(self._before, params)  # before − after: the update, negated (same norm)
        return self._per_layer(params), self._per_layer(self._before)


@dataclass
class Flushed:
    """What one flush read back: rows, the sums the epoch needs, and the two verdicts."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    grads: list[dict[str, Any]] = field(default_factory=list)
    loss_sum: float = 0.0  # finite losses only
    correct: float = 0.0
    last_loss: float | None = None
    last_lr: float | None = None
    diverged_at: int | None = None  # the first step whose loss is non-finite or above the bound
    stop: bool = False  # some rank was asked to stop


class TraceBuffer:
    """Per-step values on the device until :meth:`flush`.

    ``bound``: a loss above it (or non-finite) is divergence. The per-layer norms of every step are
    kept so that the diverging step's are recorded even when it was not a trace step.
    """

    def __init__(self, tracer: GradTracer, device: torch.device, run_id: str, d: Dist = Dist(),
                 bound: float = math.inf):
        self.tracer, self.device, self.run_id, self.d, self.bound = tracer, device, run_id, d, bound
        self.losses: list[torch.Tensor] = []
        self.gnorms: list[torch.Tensor] = []
        self.log_z: list[torch.Tensor] = []
        self.lrs: list[float] = []
        self.traces: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.layer_hist: list[torch.Tensor] = []
        self.correct = torch.zeros((), device=device)
        self._nan = torch.full((), math.nan, device=device)

    def __len__(self) -> int:
        return len(self.losses)

    def add(self, step: int, loss: torch.Tensor, correct: torch.Tensor, layer_norms: torch.Tensor, lr: float,
            traced: tuple[torch.Tensor, ...] | None = None, log_z: torch.Tensor | None = None) -> None:
        """Step ``step``'s values (``traced``: its parameter norms, update norms and, optionally,
        attention statistics on a trace step; ``log_z``: the mean log-partition of its logits)."""
        self.losses.append(loss)
        self.correct += correct
        self.gnorms.append(layer_norms.square().sum().sqrt())
        self.layer_hist.append(layer_norms)
        self.log_z.append(self._nan if log_z is None else log_z.float())
        self.lrs.append(lr)
        if traced is not None:
            params, updates, *attn = traced
            self.traces.append((step, layer_norms, params, updates,
                                attn[0] if attn else self.tracer._nan))

    def flush(self, next_step: int, epoch: int, stop: bool) -> Flushed:
        """Read the buffered steps (they end before ``next_step``) into rows and clear them. Every
        rank reaches the same verdicts at the same step."""
        d, device = self.d, self.device
        stop_flag = torch.tensor([1.0 if stop else 0.0], device=device)
        if not self.losses:
            return Flushed(stop=bool(all_reduce(stop_flag, d, "max").item()))
        n, L = len(self.losses), self.tracer.n_layers
        first = next_step - n
        # losses are per-rank means: average them over ranks; correct counts add up.
        shared = torch.cat([torch.stack(self.losses).float() / d.world_size, self.correct[None]])
        shared = all_reduce(torch.cat([shared, stop_flag]), d)
        packed = torch.cat([shared, torch.stack(self.gnorms).float(), torch.stack(self.log_z)]
                           + [torch.cat([t[1].float(), t[2].float(), t[3].float(), t[4].float().T.reshape(-1)])
                              for t in self.traces]
                           + [torch.cat(self.layer_hist).float()]).tolist()
        loss_vals = packed[:n]
        out = Flushed(correct=packed[n], stop=packed[n + 1] > 0, last_loss=loss_vals[-1], last_lr=self.lrs[-1])
        gns, lzs = packed[n + 2:2 * n + 2], packed[2 * n + 2:3 * n + 2]
        for i, (loss, gn, lz, lr) in enumerate(zip(loss_vals, gns, lzs, self.lrs, strict=True)):
            step = first + i
            out.steps.append(step_row(run_id=self.run_id, step=step, epoch=epoch, loss=loss, lr=lr,
                                      grad_norm=gn, log_z=_finite(lz)))
            if out.diverged_at is None and not (math.isfinite(loss) and loss <= self.bound):
                out.diverged_at = step
        pos = 3 * n + 2
        layers, root = self.tracer.layers, [math.sqrt(k) for k in self.tracer.numel]
        for step, *_ in self.traces:
            g, p, u, z, h = (packed[pos + k * L:pos + (k + 1) * L] for k in range(5))
            pos += 5 * L
            for (name, depth), gi, pi, ui, zi, hi, r in zip(layers, g, p, u, z, h, root, strict=True):
                out.grads.append(grad_row(run_id=self.run_id, step=step, layer=name, depth=depth, grad_norm=gi,
                                          param_norm=pi, update_ratio=ui / pi if pi > 0 else None,
                                          grad_rms=gi / r, update_rms=ui / r,
                                          attn_logit_max=_finite(zi), attn_entropy=_finite(hi)))
        bad = out.diverged_at
        if bad is not None and not any(t[0] == bad for t in self.traces):
            # The per-layer norms of the step that diverged, traced or not (no parameter norms).
            at = pos + (bad - first) * L
            for (name, depth), gi, r in zip(layers, packed[at:at + L], root, strict=True):
                out.grads.append(grad_row(run_id=self.run_id, step=bad, layer=name, depth=depth, grad_norm=gi,
                                          grad_rms=gi / r))
        out.loss_sum = sum(v for v in loss_vals if math.isfinite(v))
        for buf in (self.losses, self.gnorms, self.log_z, self.lrs, self.traces, self.layer_hist):
            buf.clear()
        self.correct = torch.zeros((), device=device)
        return out


def _finite(v: float) -> float | None:
    """NaN marks "not measured" in the packed buffer (a layer without attention, a probe that was
    off): it is stored as null. An inf of a diverged run is a measurement and is kept."""
    return None if math.isnan(v) else v
