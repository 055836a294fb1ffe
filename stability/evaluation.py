"""Validation error of a model: top-1 and top-5, sharded over ranks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import RunConfig
from .data import DataBundle, batches
from .distributed import Dist, all_reduce


@torch.no_grad()
def evaluate(model: nn.Module, data: DataBundle, cfg: RunConfig, device: torch.device,
             autocast: Callable, d: Dist = Dist(), fmt: torch.memory_format = torch.contiguous_format
             ) -> tuple[float, float, float]:
    """(top-1, top-5) error in percent and the mean cross-entropy (no label smoothing) on the
    validation set (sharded over ranks)."""
    model.eval()
    correct1, correct5 = torch.zeros((), device=device), torch.zeros((), device=device)
    loss = torch.zeros((), device=device)
    n, k = 0, min(5, data.num_classes)
    for x, y in batches(data, cfg.batch_size, cfg.seed, cfg.num_workers, 0, 0, False, device, d):
        x, y = x.to(device, non_blocking=True, memory_format=fmt), y.to(device, non_blocking=True)
        with autocast():
            logits = model(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum")
        top = logits.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        correct1 += hit[:, 0].sum()
        correct5 += hit.any(dim=1).sum()
        n += len(y)
    model.train()
    counts = all_reduce(torch.stack([correct1, correct5, loss, torch.tensor(float(n), device=device)]), d)
    c1, c5, loss_sum, total = counts.tolist()
    return 100.0 * (1 - c1 / total), 100.0 * (1 - c5 / total), loss_sum / total
