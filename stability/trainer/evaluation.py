"""Error of a model on a split (top-1, top-5, loss, and per image), and pycls' precise BN."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunConfig
from ..data.datasets import DataBundle, batches, eval_batch_size
from .distributed import Dist, all_reduce
from .execution import is_compiled

# pycls' BN.NUM_SAMPLES_PRECISE: the training images whose batch statistics replace the running
# ones before an evaluation (``precise_bn``); a smaller training set uses all of its images.
PRECISE_BN_SAMPLES = 8192


@dataclass(frozen=True)
class Evaluation:
    top1: float  # error, percent
    top5: float
    loss: float  # mean cross-entropy, no label smoothing
    correct: np.ndarray | None = None  # per image, in the split's order (``per_image=True``)

    def __iter__(self):  # top1, top5, loss, correct = evaluate(...)
        return iter((self.top1, self.top5, self.loss, self.correct))


@torch.no_grad()
def evaluate(model: nn.Module, data: DataBundle, cfg: RunConfig, device: torch.device,
             autocast: Callable, d: Dist = Dist(), fmt: torch.memory_format = torch.contiguous_format,
             per_image: bool = False) -> Evaluation:
    """The error of ``model`` on ``data.val`` (sharded over ranks; ``data.split("test")`` to read
    another split). ``per_image``: also whether each image's top-1 class is right (in-memory
    splits, whose rank shards are ``range(rank, n, world_size)``)."""
    model.eval()
    correct1, correct5 = torch.zeros((), device=device), torch.zeros((), device=device)
    loss = torch.zeros((), device=device)
    hits = torch.zeros(len(data.val), device=device) if per_image else None
    n, k, seen = 0, min(5, data.num_classes), 0
    full = eval_batch_size(cfg.batch_size) if is_compiled(model) else 0  # one graph for every split
    for x, y in batches(data, cfg.batch_size, cfg.seed, cfg.num_workers, 0, 0, False, device, d):
        x, y = x.to(device, non_blocking=True, memory_format=fmt), y.to(device, non_blocking=True)
        if len(y) < full:  # zeros: in eval mode no image's output depends on another's
            x = torch.cat([x, x.new_zeros((full - len(y), *x.shape[1:]))]).contiguous(memory_format=fmt)
        with autocast():
            logits = model(x).float()[: len(y)]
        loss += F.cross_entropy(logits, y, reduction="sum")
        top = logits.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        correct1 += hit[:, 0].sum()
        correct5 += hit.any(dim=1).sum()
        if hits is not None:
            idx = torch.arange(seen, seen + len(y), device=device) * d.world_size + d.rank
            hits[idx] = hit[:, 0].float()
            seen += len(y)
        n += len(y)
    model.train()
    counts = all_reduce(torch.stack([correct1, correct5, loss, torch.tensor(float(n), device=device)]), d)
    c1, c5, loss_sum, total = counts.tolist()
    correct = all_reduce(hits, d).cpu().numpy().astype(bool) if hits is not None else None
    return Evaluation(100.0 * (1 - c1 / total), 100.0 * (1 - c5 / total), loss_sum / total, correct)


def pack_correct(correct: np.ndarray) -> bytes:
    """Per-image correctness as bytes (``np.packbits``, big-endian bit order): 38 bytes for 300 images."""
    return np.packbits(np.asarray(correct, bool)).tobytes()


@torch.no_grad()
def precise_bn(model: nn.Module, data: DataBundle, cfg: RunConfig, device: torch.device, autocast: Callable,
               d: Dist = Dist(), fmt: torch.memory_format = torch.contiguous_format,
               samples: int = PRECISE_BN_SAMPLES) -> int:
    """pycls' ``compute_precise_bn_stats``: every BatchNorm's running mean and variance replaced by
    the average of its batch statistics over ``samples`` training images (all of them when the
    training set is smaller), averaged over ranks. Returns the batches used (0: no BatchNorm)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    train_split = data.split("train")
    per_batch = eval_batch_size(cfg.batch_size)  # evaluation batches of the training images, in order
    n_iter = max(1, min(samples // per_batch, -(-len(data.train) // per_batch)))
    mus = [torch.zeros_like(bn.running_mean) for bn in bns]
    sqs = [torch.zeros_like(bn.running_var) for bn in bns]
    moms = [bn.momentum for bn in bns]
    was_training = model.training
    model.train()
    for bn in bns:
        bn.momentum = 1.0  # running stats := this batch's
    loader = batches(train_split, cfg.batch_size, cfg.seed, cfg.num_workers, 0, 0, False, device, d)
    used = 0
    for x, _ in itertools.islice(loader, n_iter):
        with autocast():
            model(x.to(device, non_blocking=True, memory_format=fmt))
        for i, bn in enumerate(bns):
            mus[i] += bn.running_mean
            sqs[i] += bn.running_var + bn.running_mean.square()
        used += 1
    scale = all_reduce(torch.tensor(float(used), device=device), d)
    for i, bn in enumerate(bns):
        mean = all_reduce(mus[i], d) / scale
        bn.running_var.copy_(all_reduce(sqs[i], d) / scale - mean.square())
        bn.running_mean.copy_(mean)
        bn.momentum = moms[i]
    model.train(was_training)
    return used


def evaluate_ema(ema_model: nn.Module, data: DataBundle, cfg: RunConfig, device: torch.device, autocast: Callable,
                 d: Dist, fmt: torch.memory_format, final: bool) -> Evaluation:
    """The EMA model's validation error; ``final``: after ``precise_bn`` (pycls recomputes the
    statistics before every evaluation; we do before the final one, whose error the analyses read)."""
    if final:
        precise_bn(ema_model, data, cfg, device, autocast, d, fmt)
    return evaluate(ema_model, data, cfg, device, autocast, d, fmt)


def split_errors(net: nn.Module, ema_model: nn.Module | None, data: DataBundle, cfg: RunConfig, device: torch.device,
                autocast: Callable, d: Dist, fmt: torch.memory_format) -> dict:
    """The finished model's (and EMA's) error and per-image correctness on the held-out test
    split: the runs row's ``test_*`` columns (none without ``test_split``)."""
    if not cfg.test_split:
        return {}
    test, out = data.split("test"), {}
    for prefix, model in (("test", net), ("test_ema", ema_model)):
        if model is not None:
            m = evaluate(model, test, cfg, device, autocast, d, fmt, per_image=True)
            out |= {f"{prefix}_top1_err": m.top1, f"{prefix}_correct": pack_correct(m.correct),
                    "test_images": len(m.correct)}
    return out
