"""One training run from a ``RunConfig``: train, trace, detect divergence, checkpoint, store.

The grid calls :func:`train` with a config and nothing else; this module knows no sweep logic.
Hot-loop rules: no host sync per step. Losses, per-step grad norms and per-layer traces are kept
in device buffers and read with one ``.tolist()`` every ``trace_every`` steps (the flush).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, TensorDataset

from . import __version__, store
from .analysis.spikes import count_spikes
from .augment import augment_batch
from .config import RunConfig
from .data import DataBundle, EpochSampler, load_dataset
from .distributed import Dist, all_reduce, from_env, init
from .ema import WeightEMA, make_ema
from .models import build_model, count_complexity, layer_groups, model_spec, resolve
from .models.presets import canonical_name

CHECKPOINT_VERSION = 2  # 2: the weight EMA
COLLAPSE_FRACTION = 0.9  # collapsed: final train loss >= 0.9 x ln(classes), i.e. never left chance


class Preempted(Exception):
    """Raised after a checkpoint was saved on a stop signal (or a ``stop`` request).

    ``signum`` is the signal that stopped the run (None for a ``stop`` request) and
    ``previous_handler`` the handler it displaced (submitit's, inside a Slurm job).
    """

    def __init__(self, message: str, signum: int | None = None, previous_handler: Any = None):
        super().__init__(message)
        self.signum = signum
        self.previous_handler = previous_handler


class Reporter(Protocol):
    """Progress callbacks (the CLI draws a rich progress bar with them)."""

    def on_start(self, total_steps: int, start_step: int) -> None: ...
    def on_log(self, step: int, epoch: int, loss: float, lr: float) -> None: ...
    def on_epoch(self, row: dict[str, Any]) -> None: ...


def checkpoint_path(cfg: RunConfig) -> Path:
    return store.sweep_dir(cfg.results, cfg.sweep) / "checkpoints" / f"{cfg.run_id}.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to ``base_lr`` over ``warmup_steps``, then half-cosine to 0 (per step)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def param_groups(model: nn.Module, wd: float, decay_embeddings: bool) -> list[dict[str, Any]]:
    """No weight decay on norm gains and biases (1-d tensors); embeddings as configured."""
    embeddings = {"cls_token", "pos_embed"}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or (not decay_embeddings and name in embeddings):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.wd, cfg.decay_embeddings)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


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
class RunState:
    """Everything a checkpoint holds beyond model and optimizer state."""

    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # batches done in ``epoch``
    step: int = 0  # global optimizer steps done
    epoch_loss_sum: float = 0.0
    epoch_correct: float = 0.0
    epoch_seen: int = 0
    wall_time_s: float = 0.0
    started_at: str = ""
    epochs_rows: list[dict] = field(default_factory=list)
    steps_rows: list[dict] = field(default_factory=list)
    grad_rows: list[dict] = field(default_factory=list)


def _save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, st: RunState,
                     cfg: RunConfig, ema: WeightEMA | None) -> None:
    payload = {
        "version": CHECKPOINT_VERSION, "config": cfg.to_dict(), "model": model.state_dict(),
        "optimizer": opt.state_dict(), "state": st.__dict__, "rng": torch.get_rng_state(),
        "ema": ema.state_dict() if ema else None,
    }
    with store.atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                     device: torch.device, ema: WeightEMA | None) -> RunState | None:
    if not path.is_file():
        return None
    payload = torch.load(path, map_location=device, weights_only=False)
    if payload.get("version") != CHECKPOINT_VERSION:
        return None
    model.load_state_dict(payload["model"])
    opt.load_state_dict(payload["optimizer"])
    if ema is not None and payload.get("ema") is not None:
        ema.load_state_dict(payload["ema"])
    torch.set_rng_state(payload["rng"])
    return RunState(**payload["state"])


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class _StopFlag:
    """Set by a stop signal (or by a caller) so the loop checkpoints after the current step."""

    def __init__(self, event: threading.Event | None = None) -> None:
        self.event = event or threading.Event()
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self.event.set()

    def install(self, signals: tuple[int, ...]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in signals:
            self._old[sig] = signal.signal(sig, self._handle)

    def preempted(self, message: str) -> Preempted:
        return Preempted(message, self.signum, self._old.get(self.signum))

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def _loader(data: DataBundle, cfg: RunConfig, epoch: int, start: int, train: bool,
            device: torch.device, d: Dist) -> DataLoader:
    """Training: this rank's share of each global batch (strided, see ``EpochSampler``), from
    batch ``start`` of the epoch. Validation: every example once over all ranks (no drop)."""
    ds = data.train if train else data.val
    per_rank = cfg.batch_size // d.world_size
    if train:
        sampler = EpochSampler(len(ds), seed=cfg.seed, epoch=epoch, rank=d.rank,
                               world_size=d.world_size, start=start * per_rank)
    else:
        sampler = range(d.rank, len(ds), d.world_size)
    batches = BatchSampler(sampler, per_rank if train else 2 * cfg.batch_size, drop_last=train)
    if isinstance(ds, TensorDataset):  # in memory: one fancy-index per batch, no collate
        return DataLoader(ds, sampler=batches, batch_size=None)
    workers = cfg.num_workers
    return DataLoader(ds, batch_sampler=batches, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=False,
                      generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))


def memory_format(family: str) -> torch.memory_format:
    """channels_last for the all-conv RegNetY (+11% images/s on CPU, benchmarks/step_options.py);
    ViTs keep the default: their only convs, the stem, gained nothing measurable."""
    return torch.channels_last if family == "regnet" else torch.contiguous_format


@torch.no_grad()
def evaluate(model: nn.Module, data: DataBundle, cfg: RunConfig, device: torch.device,
             autocast: Callable, d: Dist = Dist(),
             memory_format: torch.memory_format = torch.contiguous_format) -> tuple[float, float]:
    """(top-1, top-5) error in percent on the validation set (sharded over ranks)."""
    model.eval()
    correct1 = torch.zeros((), device=device)
    correct5 = torch.zeros((), device=device)
    n = 0
    k = min(5, data.num_classes)
    for x, y in _loader(data, cfg, 0, 0, False, device, d):
        x, y = x.to(device, non_blocking=True, memory_format=memory_format), y.to(device, non_blocking=True)
        with autocast():
            logits = model(x)
        top = logits.float().topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        correct1 += hit[:, 0].sum()
        correct5 += hit.any(dim=1).sum()
        n += len(y)
    model.train()
    counts = all_reduce(torch.stack([correct1, correct5, torch.tensor(float(n), device=device)]), d)
    c1, c5, total = counts.tolist()
    return 100.0 * (1 - c1 / total), 100.0 * (1 - c5 / total)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"],
                             cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: RunConfig, reporter: Reporter | None = None, *, resume: bool = True,
          stop: threading.Event | None = None,
          signals: tuple[int, ...] = STOP_SIGNALS) -> dict[str, Any]:
    """Run ``cfg`` to completion (or divergence) and write its rows; returns the runs row.

    Resumes from the run's checkpoint when one exists. On one of ``signals`` (or ``stop`` set)
    it saves a checkpoint, records status ``preempted`` and raises :class:`Preempted`.
    """
    t0 = time.monotonic()
    size, stem = resolve(cfg.model, cfg.stem)
    st = RunState(started_at=_now())
    base_row: dict[str, Any] = {
        "run_id": cfg.run_id, "model": size if stem is None else canonical_name(size, stem),
        "stem": stem or "regnet", "optimizer": cfg.optimizer, "lr": cfg.lr, "wd": cfg.wd,
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "warmup_epochs": cfg.warmup_epochs,
        "seed": cfg.seed, "dataset": cfg.dataset, "world_size": 1, "host": socket.gethostname(),
        "slurm_job_id": _slurm_job_id(), "git_sha": _git_sha(), "stability_version": __version__,
        "config_json": json.dumps(cfg.to_dict(), sort_keys=True),
    }

    d = from_env()
    base_row["world_size"] = d.world_size
    started_group = False

    def write(status: str, **extra: Any) -> dict[str, Any]:
        row = {**base_row, "status": status, "started_at": _ts(st.started_at),
               "wall_time_s": st.wall_time_s + time.monotonic() - t0, **extra}
        if d.is_main:  # one writer per run, whatever the number of processes
            tables: dict[str, Any] = {"runs": [row]}
            if status != "running":
                tables |= {"epochs": st.epochs_rows, "steps": st.steps_rows, "grad_norms": st.grad_rows}
            store.write_run(cfg.results, cfg.sweep, cfg.run_id, tables)
        return row

    try:  # set-up failures (bad data root ...) are failed runs too, recorded before re-raising
        device = resolve_device(cfg.device)
        if device.type == "cuda" and d.enabled:
            device = torch.device("cuda", d.local_rank)
            torch.cuda.set_device(device)
        started_group = init(d, device.type)
        base_row["device"] = str(device)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        data = load_dataset(cfg.dataset, cfg.data_root, image_size=cfg.image_size,
                            download=cfg.download, synthetic_size=cfg.synthetic_size, seed=cfg.seed)
        spec = model_spec(cfg.model, cfg.stem, num_classes=data.num_classes, image_size=data.image_size)
        complexity = count_complexity(spec)
        base_row |= {"params": complexity.params, "flops": complexity.flops}
        _seed_all(cfg.seed)
        fmt = memory_format(spec.family)
        model = build_model(spec, freeze_stem=cfg.freeze_stem).to(device, memory_format=fmt)
        opt = make_optimizer(cfg, model)
        ema = make_ema(model, cfg.ema_alpha, cfg.ema_period, cfg.batch_size, cfg.epochs, cfg.warmup_epochs)
        tracer = GradTracer(model, device)
        if cfg.batch_size % (d.world_size * cfg.accum_steps):
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by world_size x accum_steps "
                             f"= {d.world_size} x {cfg.accum_steps}: the global batch must stay exact")
        n_batches = len(data.train) // cfg.batch_size
        if n_batches == 0:
            raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set "
                             f"({len(data.train)} images)")
        ckpt = checkpoint_path(cfg)
        if resume and (loaded := _load_checkpoint(ckpt, model, opt, device, ema)):
            st = loaded
            if d.is_main:
                print(f"stability: run {cfg.run_id} resumes from {ckpt} (epoch {st.epoch}, "
                      f"step {st.step})", file=sys.stderr, flush=True)
        net: nn.Module = model
        if d.enabled:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            net = torch.compile(net)
    except Exception as e:
        write("failed", error=f"{type(e).__name__}: {e}"[:2000], finished_at=_ts(_now()))
        if started_group:
            torch.distributed.destroy_process_group()
        raise
    spe = min(n_batches, cfg.steps_per_epoch or n_batches)
    total_steps = cfg.epochs * spe
    warmup_steps = round(cfg.warmup_epochs * spe)
    bound = cfg.divergence_factor * math.log(max(data.num_classes, 2))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext

    write("running")
    flag = _StopFlag(stop)
    flag.install(signals)
    try:
        result = _loop(cfg, net, model, opt, tracer, data, device, autocast, st, spe, total_steps,
                       warmup_steps, bound, flag.event, ckpt, reporter, d, fmt, ema)
    except Preempted as p:
        st.wall_time_s += time.monotonic() - t0
        t0 = time.monotonic()
        if d.is_main:
            _save_checkpoint(ckpt, model, opt, st, cfg, ema)
        write("preempted")
        raise flag.preempted(str(p)) from None
    except BaseException as e:
        write("failed", error=f"{type(e).__name__}: {e}"[:2000], finished_at=_ts(_now()))
        raise
    finally:
        flag.uninstall()
        if started_group:
            torch.distributed.destroy_process_group()
    row = write(result.pop("status"), n_spikes=count_spikes(st.steps_rows),
                finished_at=_ts(_now()), **result)
    if d.is_main:
        ckpt.unlink(missing_ok=True)  # the results are the record now; checkpoints are for resume
        store.progress_path(cfg.results, cfg.sweep, cfg.run_id).unlink(missing_ok=True)
    return row


def _loop(cfg: RunConfig, net: nn.Module, model: nn.Module, opt: torch.optim.Optimizer,
          tracer: GradTracer, data: DataBundle, device: torch.device, autocast: Callable,
          st: RunState, spe: int, total_steps: int, warmup_steps: int, bound: float,
          stop: threading.Event, ckpt: Path, reporter: Reporter | None, d: Dist,
          fmt: torch.memory_format, ema: WeightEMA | None) -> dict[str, Any]:
    """The epoch/step loop; returns the final metrics of the runs row (status included).

    ``net`` is what runs forward (DDP and/or compiled), ``model`` the plain module, ``fmt`` the
    memory format it was built in (inputs follow it), ``ema`` the weight average (or None).
    Each optimizer
    step sees the global batch: ``accum_steps`` micro-batches per rank, gradients averaged over
    ranks by DDP (synchronised on the last micro-batch only), so the traced gradient norms are
    the all-reduced ones and identical on every rank.
    """
    net.train()
    if reporter and d.is_main:
        reporter.on_start(total_steps, st.step)
    # Device-side buffers, read once per flush.
    losses: list[torch.Tensor] = []
    gnorms: list[torch.Tensor] = []
    lrs: list[float] = []
    traces: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    layer_hist: list[torch.Tensor] = []  # every step's per-layer norms: the divergence step's are kept
    correct = torch.zeros((), device=device)
    accum = cfg.accum_steps

    def flush(epoch: int) -> tuple[int | None, bool]:
        """Move buffered rows to the host (one sync, one all-reduce when distributed).

        Returns the first diverged step (if any) and whether any rank was asked to stop: every
        rank reaches the same verdicts at the same step.
        """
        nonlocal correct
        stop_flag = torch.tensor([1.0 if stop.is_set() else 0.0], device=device)
        if not losses:
            return None, bool(all_reduce(stop_flag, d, "max").item())
        first = st.step - len(losses)
        n = len(losses)
        # losses are per-rank means: average them over ranks; correct counts add up.
        shared = torch.cat([torch.stack(losses).float() / d.world_size, correct[None]])
        shared = all_reduce(torch.cat([shared, stop_flag]), d)
        packed = torch.cat([shared, torch.stack(gnorms).float()] + [torch.cat(t[1:]) for t in traces]
                           + [torch.cat(layer_hist).float()]).tolist()
        loss_vals, st.epoch_correct = packed[:n], st.epoch_correct + packed[n]
        stopped = packed[n + 1] > 0
        gnorm_vals = packed[n + 2:2 * n + 2]
        correct = torch.zeros((), device=device)
        bad = None
        for i, (loss, gn, lr) in enumerate(zip(loss_vals, gnorm_vals, lrs, strict=True)):
            step = first + i
            st.steps_rows.append({"run_id": cfg.run_id, "step": step, "epoch": epoch, "loss": loss,
                                  "lr": lr, "grad_norm": gn})
            if bad is None and not (math.isfinite(loss) and loss <= bound):
                bad = step
        pos = 2 * n + 2
        L = tracer.n_layers
        for step, *_ in traces:
            g, p, u = packed[pos:pos + L], packed[pos + L:pos + 2 * L], packed[pos + 2 * L:pos + 3 * L]
            pos += 3 * L
            for (name, depth), gi, pi, ui in zip(tracer.layers, g, p, u, strict=True):
                st.grad_rows.append({"run_id": cfg.run_id, "step": step, "layer": name, "depth": depth,
                                     "grad_norm": gi, "param_norm": pi,
                                     "update_ratio": ui / pi if pi > 0 else None})
        if bad is not None and not any(t[0] == bad for t in traces):
            # The per-layer norms of the step that diverged, traced or not (no parameter norms).
            at = pos + (bad - first) * L
            for (name, depth), gi in zip(tracer.layers, packed[at:at + L], strict=True):
                st.grad_rows.append({"run_id": cfg.run_id, "step": bad, "layer": name, "depth": depth,
                                     "grad_norm": gi, "param_norm": None, "update_ratio": None})
        st.epoch_loss_sum += sum(v for v in loss_vals if math.isfinite(v))
        if reporter and d.is_main:
            reporter.on_log(st.step, epoch, loss_vals[-1], lrs[-1])
        losses.clear(), gnorms.clear(), lrs.clear(), traces.clear(), layer_hist.clear()
        return bad, stopped

    def diverged(step: int) -> dict[str, Any]:
        st.steps_rows = [r for r in st.steps_rows if r["step"] <= step]
        st.grad_rows = [r for r in st.grad_rows if r["step"] <= step]
        return {"status": "diverged", "diverged_at_step": step, "top1_err": 100.0,
                "top5_err": 100.0, "best_top1_err": 100.0, "collapsed": False,
                **({"ema_top1_err": 100.0, "ema_top5_err": 100.0} if ema else {}),
                "final_train_loss": st.steps_rows[-1]["loss"] if st.steps_rows else None}

    while st.epoch < cfg.epochs:
        epoch = st.epoch
        t_epoch = time.monotonic()
        for x, y in _loader(data, cfg, epoch, st.batch, True, device, d):
            if st.batch >= spe:
                break
            x, y = x.to(device, non_blocking=True, memory_format=fmt), y.to(device, non_blocking=True)
            x = augment_batch(x, cfg.augment, (cfg.seed * 1_000_003 + st.step) * 64 + d.rank)
            lr = lr_at(st.step, cfg.lr, warmup_steps, total_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = torch.zeros((), device=device)
            for i, (xm, ym) in enumerate(zip(x.chunk(accum), y.chunk(accum), strict=True)):
                sync = i == accum - 1 or not d.enabled
                with (nullcontext() if sync else net.no_sync()), autocast():
                    logits = net(xm)
                    micro = F.cross_entropy(logits.float(), ym, label_smoothing=cfg.label_smoothing) / accum
                micro.backward()
                loss += micro.detach()
                correct += logits.detach().argmax(1).eq(ym).sum()
            layer_norms = tracer.grad_norms()
            if cfg.grad_clip is not None:
                total = layer_norms.square().sum().sqrt()
                torch._foreach_mul_(tracer.grads(), (cfg.grad_clip / (total + 1e-6)).clamp(max=1.0))
            trace = st.step % cfg.trace_every == 0
            if trace:
                tracer.before_step()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if trace:
                traces.append((st.step, layer_norms, *tracer.after_step()))
            if ema is not None and ema.due(st.batch):
                ema.update(model, epoch)
            losses.append(loss)
            gnorms.append(layer_norms.square().sum().sqrt())
            layer_hist.append(layer_norms)
            lrs.append(lr)
            st.epoch_seen += len(y) * d.world_size
            st.step += 1
            st.batch += 1
            # One process checks its stop flag every step; several agree on it at each flush.
            if len(losses) >= cfg.trace_every or (stop.is_set() and not d.enabled):
                bad, stopped = flush(epoch)
                if bad is not None:
                    return diverged(bad)
                if stopped:
                    raise Preempted(f"stopped at step {st.step}")
        bad, stopped = flush(epoch)
        if bad is not None:
            return diverged(bad)
        if stopped:
            raise Preempted(f"stopped at step {st.step}")
        top1, top5 = evaluate(net, data, cfg, device, autocast, d, fmt)
        ema1, ema5 = evaluate(ema.model, data, cfg, device, autocast, d, fmt) if ema else (None, None)
        row = {"run_id": cfg.run_id, "epoch": epoch,
               "train_loss": st.epoch_loss_sum / max(st.batch, 1),
               "train_top1_err": 100.0 * (1 - st.epoch_correct / max(st.epoch_seen, 1)),
               "val_top1_err": top1, "val_top5_err": top5, "val_ema_top1_err": ema1,
               "val_ema_top5_err": ema5, "lr": _last_lr(st), "time_s": time.monotonic() - t_epoch}
        st.epochs_rows.append(row)
        if reporter and d.is_main:
            reporter.on_epoch(row)
        st.epoch, st.batch = epoch + 1, 0
        st.epoch_loss_sum = st.epoch_correct = 0.0
        st.epoch_seen = 0
        if st.epoch < cfg.epochs and d.is_main:
            _save_checkpoint(ckpt, model, opt, st, cfg, ema)
            store.write_text_atomic(store.progress_path(cfg.results, cfg.sweep, cfg.run_id), json.dumps(
                {"epoch": st.epoch, "epochs": cfg.epochs, "step": st.step, "total_steps": total_steps,
                 "val_top1_err": top1, "train_loss": row["train_loss"], "updated_at": _now()}))
    last = st.epochs_rows[-1]
    return {"status": "completed", "top1_err": last["val_top1_err"], "top5_err": last["val_top5_err"],
            "best_top1_err": min(r["val_top1_err"] for r in st.epochs_rows),
            "ema_top1_err": last["val_ema_top1_err"], "ema_top5_err": last["val_ema_top5_err"],
            "final_train_loss": last["train_loss"],
            "collapsed": last["train_loss"] >= COLLAPSE_FRACTION * math.log(max(data.num_classes, 2))}


def _last_lr(st: RunState) -> float | None:
    return st.steps_rows[-1]["lr"] if st.steps_rows else None


def _ts(iso: str | None) -> pd.Timestamp | None:
    return pd.Timestamp(iso) if iso else None


def _slurm_job_id() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")
