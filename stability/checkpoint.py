"""What lets a run stop and resume: its state beyond the weights, the checkpoint file, and the
stop flag that turns a signal (Slurm's preemption, ``scontrol requeue``, Ctrl-C) into a save."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import store
from .config import RunConfig
from .ema import WeightEMA
from .errors import ConfigError

CHECKPOINT_VERSION = 2  # 2: the weight EMA
FULL_DISK_BYTES = 1 << 20  # less free than this after a failed write: the disk is full


class Preempted(Exception):
    """Raised after a checkpoint was saved on a stop signal (or a ``stop`` request).

    ``signum`` is the signal that stopped the run (None for a ``stop`` request) and
    ``previous_handler`` the handler it displaced (submitit's, inside a Slurm job).
    """

    def __init__(self, message: str, signum: int | None = None, previous_handler: Any = None):
        super().__init__(message)
        self.signum = signum
        self.previous_handler = previous_handler


def checkpoint_path(cfg: RunConfig) -> Path:
    return store.checkpoint_path(cfg.results, cfg.sweep, cfg.run_id)


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
    init_val_loss: float | None = None  # the model at step 0, before any update (LR sensitivity's ℓ₀)
    init_top1_err: float | None = None


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, st: RunState,
                     cfg: RunConfig, ema: WeightEMA | None) -> None:
    payload = {
        "version": CHECKPOINT_VERSION, "config": cfg.to_dict(), "model": model.state_dict(),
        "optimizer": opt.state_dict(), "state": st.__dict__, "rng": torch.get_rng_state(),
        "ema": ema.state_dict() if ema else None,
    }
    # Our own file object, closed on any error: torch.save's would stay open in the traceback,
    # keeping a removed temp file's blocks on a full disk while the failed row is written.
    with store.atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(payload, f)
        except RuntimeError as e:  # torch reports a failed write as "unexpected pos ..."
            st = os.fstatvfs(f.fileno())
            if st.f_bavail * st.f_frsize < FULL_DISK_BYTES:
                raise OSError(errno.ENOSPC, "No space left on device (writing a checkpoint)", str(path)) from e
            raise


def load_checkpoint(cfg: RunConfig, model: nn.Module, opt: torch.optim.Optimizer,
                     device: torch.device, ema: WeightEMA | None) -> RunState | None:
    """The run's saved state applied to ``model``, ``opt`` and ``ema`` (None: start afresh).
    A checkpoint that cannot be read is moved to the sweep's quarantine with a warning naming
    it, and the run starts afresh: a garbage file must not fail every rerun. With
    ``bad_checkpoint=fail`` the run fails instead, naming the file and leaving it in place."""
    path = checkpoint_path(cfg)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location=device, weights_only=False)
        if not isinstance(payload, dict) or not {"model", "optimizer", "state", "rng"} <= set(payload):
            raise ValueError("not a stability checkpoint")
    except Exception as e:  # noqa: BLE001 - unpickling garbage raises anything
        if cfg.bad_checkpoint == "fail":
            raise ConfigError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:120]}); it is left "
                              f"in place (bad_checkpoint=fail): inspect it, then remove it or rerun with "
                              f"bad_checkpoint=restart") from None
        dest = store.quarantine(cfg.results, cfg.sweep, path)
        print(f"stability: checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:120]}); moved to "
              f"{dest}; run {cfg.run_id} starts afresh", file=sys.stderr, flush=True)
        return None
    if payload.get("version") != CHECKPOINT_VERSION:
        print(f"stability: checkpoint {path} is of version {payload.get('version')} (this code writes "
              f"{CHECKPOINT_VERSION}); run {cfg.run_id} starts afresh", file=sys.stderr, flush=True)
        return None
    model.load_state_dict(payload["model"])
    opt.load_state_dict(payload["optimizer"])
    if ema is not None and payload.get("ema") is not None:
        ema.load_state_dict(payload["ema"])
    torch.set_rng_state(payload["rng"])
    return RunState(**payload["state"])


# Ctrl-C too: an interrupted run checkpoints and reads as preempted, and the same command resumes it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopFlag:
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
