"""What a run records about its own gradients, without a host sync per step.

:class:`GradTracer` computes per-layer gradient norms (every step), parameter norms and update
norms (on trace steps). :class:`TraceBuffer` keeps every step's loss, correct count, lr and norms
on the device and turns them into ``steps`` and ``grad_norms`` rows with one ``.tolist()`` per
flush (one all-reduce when distributed), judging divergence and the stop flag on the way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .distributed import Dist, all_reduce
from .models import layer_groups


class GradTracer:
    """Per-layer gradient norms, parameter norms and update ratios with no per-layer syncs.

    Every step: per-parameter grad norms via ``torch._foreach_norm``, summed per layer with one
    ``index_add_`` (the total grad norm falls out). Results stay on the device until ``flush``.
    """

    def __init__(self, model: nn.Module, device: torch.device):
        groups = [(name, [p for p in ps if p.requires_grad], depth)
                  for depth, (name, ps) in enumerate(layer_groups(model))]
        self.layers = [(name, depth) for name, ps, depth in groups if ps]  # frozen layers: none
        self.params = [p for _, ps, _ in groups for p in ps]
        index = [i for i, (_, ps, _) in enumerate(g for g in groups if g[1]) for _ in ps]
        self.index = torch.tensor(index, device=device)
        self.n_layers = len(self.layers)
        self._before: list[torch.Tensor] | None = None

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
        self._before = [p.detach().clone() for p in self.params]

    def after_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(param norms, update norms) per layer, for the step since ``before_step``."""
        params = [p.detach() for p in self.params]
        delta = torch._foreach_sub(params, self._before)
        self._before = None
        return self._per_layer(params), self._per_layer(delta)


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
        self.lrs: list[float] = []
        self.traces: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.layer_hist: list[torch.Tensor] = []
        self.correct = torch.zeros((), device=device)

    def __len__(self) -> int:
        return len(self.losses)

    def add(self, step: int, loss: torch.Tensor, correct: torch.Tensor, layer_norms: torch.Tensor, lr: float,
            traced: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Step ``step``'s values (``traced``: its parameter and update norms on a trace step)."""
        self.losses.append(loss)
        self.correct += correct
        self.gnorms.append(layer_norms.square().sum().sqrt())
        self.layer_hist.append(layer_norms)
        self.lrs.append(lr)
        if traced is not None:
            self.traces.append((step, layer_norms, *traced))

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
        packed = torch.cat([shared, torch.stack(self.gnorms).float()] + [torch.cat(t[1:]) for t in self.traces]
                           + [torch.cat(self.layer_hist).float()]).tolist()
        loss_vals = packed[:n]
        out = Flushed(correct=packed[n], stop=packed[n + 1] > 0, last_loss=loss_vals[-1], last_lr=self.lrs[-1])
        for i, (loss, gn, lr) in enumerate(zip(loss_vals, packed[n + 2:2 * n + 2], self.lrs, strict=True)):
            step = first + i
            out.steps.append({"run_id": self.run_id, "step": step, "epoch": epoch, "loss": loss, "lr": lr,
                              "grad_norm": gn})
            if out.diverged_at is None and not (math.isfinite(loss) and loss <= self.bound):
                out.diverged_at = step
        pos = 2 * n + 2
        layers = self.tracer.layers
        for step, *_ in self.traces:
            g, p, u = packed[pos:pos + L], packed[pos + L:pos + 2 * L], packed[pos + 2 * L:pos + 3 * L]
            pos += 3 * L
            for (name, depth), gi, pi, ui in zip(layers, g, p, u, strict=True):
                out.grads.append({"run_id": self.run_id, "step": step, "layer": name, "depth": depth,
                                  "grad_norm": gi, "param_norm": pi, "update_ratio": ui / pi if pi > 0 else None})
        bad = out.diverged_at
        if bad is not None and not any(t[0] == bad for t in self.traces):
            # The per-layer norms of the step that diverged, traced or not (no parameter norms).
            at = pos + (bad - first) * L
            for (name, depth), gi in zip(layers, packed[at:at + L], strict=True):
                out.grads.append({"run_id": self.run_id, "step": bad, "layer": name, "depth": depth,
                                  "grad_norm": gi, "param_norm": None, "update_ratio": None})
        out.loss_sum = sum(v for v in loss_vals if math.isfinite(v))
        self.losses.clear(), self.gnorms.clear(), self.lrs.clear(), self.traces.clear(), self.layer_hist.clear()
        self.correct = torch.zeros((), device=device)
        return out
