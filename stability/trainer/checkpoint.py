"""What lets a run resume: its state beyond the weights and the checkpoint file (the stop flag that
turns a signal into a save is ``stopping``'s)."""

from __future__ import annotations

import errno
import os
import shlex
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from .. import store
from ..config import RunConfig, config_hash
from ..data.datasets import DataError
from ..errors import ConfigError, shown
from .ema import WeightEMA
from .optim import keep_impl

# 2: the weight EMA; 3: the run's identity, loaded without unpickling code; 4: no rows (they are
# streamed to the store: ``store.append_rows``), only model, optimizer, EMA and loop state
CHECKPOINT_VERSION = 4
FULL_DISK_BYTES = 1 << 20  # less free than this after a failed write: the disk is full


def checkpoint_path(cfg: RunConfig) -> Path:
    return store.checkpoint_path(cfg.results, cfg.sweep, cfg.run_id)


@dataclass
class RunState:
    """The loop state a checkpoint holds beyond model and optimizer state (no rows: those are in
    the store, up to ``step``)."""

    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # batches done in ``epoch``
    step: int = 0  # global optimizer steps done
    epoch_loss_sum: float = 0.0
    epoch_correct: float = 0.0
    epoch_seen: int = 0
    wall_time_s: float = 0.0
    started_at: str = ""
    best_top1_err: float | None = None  # over the epochs so far (their rows are in the store)
    init_val_loss: float | None = None  # the model at step 0, before any update (LR sensitivity's ℓ₀)
    init_top1_err: float | None = None
    # The pruner's verdict when it stopped the run ({"rule", "step", "signals"}): a rerun that
    # continues the run past it keeps it on the runs row, with the pruner off (trainer/pruning.py)
    pruned: dict | None = None
    # What it trains on ({"classes", "train", "val"}: ``data_fingerprint``): data_root is not part of
    # the run id (data may move), so a resume checks the data is still the run's (older checkpoints: None)
    data: dict | None = None


def data_fingerprint(data: Any) -> dict[str, int]:
    """A dataset's shape as a checkpoint records it: classes and image counts (the test split held out)."""
    return {"classes": int(data.num_classes), "train": len(data.train), "val": len(data.val)}


# A fingerprint's keys -> the runs row's columns of it
FINGERPRINT_COLUMNS = dict(zip(("classes", "train", "val"), store.DATA_COLUMNS, strict=True))


def data_columns(fingerprint: dict[str, int]) -> dict[str, int]:
    """A fingerprint as the runs row records it."""
    return {col: fingerprint[k] for k, col in FINGERPRINT_COLUMNS.items()}


def _said(d: dict) -> str:
    return f"{d.get('classes')} classes, {d.get('train')} training and {d.get('val')} validation images"


def _where(cfg: RunConfig) -> str:
    return f"data_root {cfg.data_root}" if cfg.data_root else f"dataset {cfg.dataset}"


def rerun_data_warning(cfg: RunConfig, data: dict[str, int]) -> str | None:
    """What a ``--rerun`` from scratch says when the result it replaces was trained on other data
    than the run reads now (data_root is not in the run id: ``data_root=`` of another dataset keeps
    the id). Not refused: training a run again on the data given is what ``--rerun`` asks, and
    where it leaves its sweep on two datasets, the analyses keep them apart (the ``data`` stratum)
    and ``grid status`` says so. None when the row agrees, has no result, or predates the record."""
    rows = store.read_table(cfg.results, "runs", sweep=cfg.sweep, run_ids=[cfg.run_id],
                            columns=["status", *store.DATA_COLUMNS])
    done = rows[rows["status"].isin(store.DONE)] if len(rows) else rows
    if not len(done) or done.iloc[-1][list(store.DATA_COLUMNS)].isna().any():
        return None
    saved = {k: int(done.iloc[-1][col]) for k, col in FINGERPRINT_COLUMNS.items()}
    if saved == data:
        return None
    return (f"warning: run {cfg.run_id}: the {done.iloc[-1]['status']} result this rerun replaces was trained on "
            f"{_said(saved)}; {_where(cfg)} holds {_said(data)}: it trains on this data (its sweep's analyses keep "
            "runs on different data apart)")


def identity_hash(cfg: RunConfig) -> str:
    """The full hash of what makes the run this run (``run_id`` is its first 12 characters)."""
    return config_hash(cfg.identity(), 64)


class NotThisRun(Exception):
    """A checkpoint that is not of the run it was found for (copied, or of another config)."""


def _check_identity(payload: Any, cfg: RunConfig) -> None:
    if not isinstance(payload, dict) or not {"model", "optimizer", "state", "rng"} <= set(payload):
        raise ValueError("not a stability checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise NotThisRun(f"of checkpoint version {payload.get('version')!s:.20} (this code writes "
                         f"{CHECKPOINT_VERSION} and cannot resume older ones)")
    if payload.get("run_id") != cfg.run_id or payload.get("identity") != identity_hash(cfg):
        raise NotThisRun(f"of run {payload.get('run_id')!s:.40}, not of run {cfg.run_id} (its config differs)")


class BadState(Exception):
    """A checkpoint whose loop state this run cannot have reached (planted, or damaged)."""


def _steps_per_epoch(cfg: RunConfig, data: dict | None) -> int | None:
    """The run's steps per epoch from its data fingerprint (``steps_per_epoch`` of the dataset: the
    training images in whole global batches, at most ``cfg.steps_per_epoch``); the cap alone without
    a fingerprint, None without either."""
    n = data.get("train") if isinstance(data, dict) else None
    whole = n // cfg.batch_size if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None
    caps = [v for v in (whole, cfg.steps_per_epoch) if v is not None]
    return min(caps) if caps else None


def _in(name: str, value: Any, lo: float, hi: float, allowed: str) -> None:
    if not lo <= value <= hi:
        raise BadState(f"invalid: its loop state's {name} {shown(value)} is out of range (allowed: {allowed})")


def checked_state(saved: Any, cfg: RunConfig, data: dict | None = None) -> RunState:
    """A checkpoint's loop state, checked before anything of the checkpoint is applied: each
    field of its type (``validate``'s checks: 'x' is no epoch, NaN no wall time) and in the range
    this run can reach (``epoch`` below ``epochs``, ``batch`` at most the steps per epoch, ``step``
    at most the steps of the epochs so far, errors in [0, 100], ``started_at`` a time with its
    zone, ``data`` a fingerprint, ``pruned`` a verdict). ``BadState`` names the first field that
    is not; ``data`` is the fingerprint of the data the run reads now (it bounds the steps)."""
    from ..validate import checked_fields

    if not isinstance(saved, dict) or not all(isinstance(k, str) for k in saved):
        raise BadState(f"invalid: its loop state is a {type(saved).__name__}, not a mapping of fields")
    try:
        st = RunState(**checked_fields(RunState, saved, None))
    except ConfigError as e:
        raise BadState(f"invalid: its loop state's {e}") from None
    spe = _steps_per_epoch(cfg, st.data if data is None else data)
    last = cfg.epochs - 1
    _in("epoch", st.epoch, 0, last, f"0 to {last}: epochs={cfg.epochs}")
    big = float("inf")
    _in("batch", st.batch, 0, big if spe is None else spe,
        "0 or more" if spe is None else f"0 to {spe}, the steps per epoch")
    most = big if spe is None else st.epoch * spe + st.batch
    _in("step", st.step, st.batch, most, f"{st.batch} (its batch) or more" if spe is None else
        f"{st.batch} to {most}: epoch {st.epoch} x {spe} steps per epoch + batch {st.batch}")
    _in("epoch_seen", st.epoch_seen, 0, big, "0 or more")
    _in("epoch_correct", st.epoch_correct, 0, st.epoch_seen, f"0 to its epoch_seen {st.epoch_seen}")
    _in("wall_time_s", st.wall_time_s, 0, big, "0 or more")
    for name in ("best_top1_err", "init_top1_err"):
        if (v := getattr(st, name)) is not None:
            _in(name, v, 0, 100, "0 to 100 %, or null")
    try:
        started = pd.Timestamp(st.started_at)
    except (ValueError, TypeError, OverflowError):
        started = None
    if started is None or pd.isna(started) or started.tzinfo is None:
        raise BadState(f"invalid: its loop state's started_at {shown(st.started_at)} is not a time with its zone "
                       "(allowed: ISO 8601, as 2025-01-31T12:00:00+00:00)")
    if st.data is not None and (set(st.data) != {"classes", "train", "val"} or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in st.data.values())):
        raise BadState(f"invalid: its loop state's data {shown(st.data)} is no data fingerprint (allowed: "
                       "classes, train and val, integers >= 0)")
    v = st.pruned
    if v is not None and (set(v) != {"rule", "step", "signals"} or not isinstance(v["rule"], str)
                          or not isinstance(v["signals"], str) or not isinstance(v["step"], int)
                          or isinstance(v["step"], bool) or v["step"] < 0):
        raise BadState(f"invalid: its loop state's pruned {shown(v)} is no pruner verdict (allowed: rule and "
                       "signals as text, step an integer >= 0, or null)")
    return st


def _check_rng(saved: Any) -> None:
    """The saved generator state is one this torch can set (checked before anything is applied)."""
    want = torch.get_rng_state()
    if not isinstance(saved, torch.Tensor) or saved.dtype != want.dtype or saved.shape != want.shape:
        raise BadState(f"invalid: its random generator state is {shown(saved, 60)}, not a torch generator's")


def _check_fits(model: nn.Module, saved: Any, what: str) -> None:
    """Before anything is copied (``load_state_dict`` copies what matches, then raises): the
    saved weights have the model's names and shapes."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in saved.items()} if isinstance(saved, dict) else {}
    if want != have:
        diff = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
        raise ValueError(f"its {what} weights do not fit this model ({len(diff)} differ, e.g. {diff[0]!s:.60})")


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, st: RunState,
                     cfg: RunConfig, ema: WeightEMA | None) -> None:
    payload = {
        "version": CHECKPOINT_VERSION, "run_id": cfg.run_id, "identity": identity_hash(cfg), "config": cfg.to_dict(), "model": model.state_dict(),
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


def _check_data(payload: dict, cfg: RunConfig, data: dict | None) -> None:
    """``DataError`` when the checkpoint records other data than the run now reads (a data_root of
    another dataset: continuing would mix the two, and the weights may not even fit)."""
    saved = payload["state"].get("data") if isinstance(payload.get("state"), dict) else None
    if data is None or not isinstance(saved, dict) or saved == data:
        return
    afresh = ("stability train --run " + " ".join(shlex.quote(a) for a in (
        cfg.run_id, f"results={cfg.results}", f"sweep={cfg.sweep}", f"data_root={cfg.data_root}")) + " --rerun --no-resume"
        if cfg.data_root else "--rerun --no-resume")
    raise DataError(f"{_where(cfg)} holds {_said(data)}; run {cfg.run_id}'s checkpoint was trained on {_said(saved)}: "
                    f"not the run's data (give its data_root, or train it afresh on this one: {afresh})")


def load_checkpoint(cfg: RunConfig, model: nn.Module, opt: torch.optim.Optimizer,
                     device: torch.device, ema: WeightEMA | None, data: dict | None = None) -> RunState | None:
    """The run's saved state applied to ``model``, ``opt`` and ``ema`` (None: start afresh).

    Read with ``weights_only=True``: a file planted in a results root cannot run code. A
    checkpoint that cannot be read, or that names another run or config (copied onto this run's
    path), whose loop state this run cannot have reached (``checked_state``: epoch 99 of 3, step
    -1000, started_at 12), or whose weights do not fit the model, is moved to the sweep's quarantine with a
    warning naming it and why, and the run starts afresh: a wrong file must neither fail every
    rerun nor be resumed. With ``bad_checkpoint=fail`` the run fails instead, naming the file
    and leaving it in place."""
    path = checkpoint_path(cfg)
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle protocol: we say why below
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=device, weights_only=True)
        _check_identity(payload, cfg)
        _check_data(payload, cfg, data)
        state = checked_state(payload["state"], cfg, data)  # before anything is applied: a bad one starts afresh
        _check_rng(payload["rng"])
        _check_fits(model, payload["model"], "model")
        if ema is not None and payload.get("ema") is not None:
            _check_fits(ema.model, payload["ema"], "EMA")
        model.load_state_dict(payload["model"])
        keep_impl(opt, lambda: opt.load_state_dict(payload["optimizer"]))
        if ema is not None and payload.get("ema") is not None:
            ema.load_state_dict(payload["ema"])
        torch.set_rng_state(payload["rng"].cpu())  # map_location moved it to the device
    except DataError:  # the run's own checkpoint, on other data: the user's to fix, the file kept
        raise
    except Exception as e:  # noqa: BLE001 - unpickling garbage raises anything
        why = (str(e) if isinstance(e, NotThisRun | BadState)
               else f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
        if cfg.bad_checkpoint == "fail":
            raise ConfigError(f"checkpoint {path} is {why}; it is left in place (bad_checkpoint=fail): inspect it, "
                              f"then remove it or rerun with bad_checkpoint=restart") from None
        dest = store.quarantine(cfg.results, cfg.sweep, path)
        print(f"stability: checkpoint {path} is {why}; moved to {dest}; run {cfg.run_id} starts afresh",
              file=sys.stderr, flush=True)
        return None
    return state


def resume_state(cfg: RunConfig, model: nn.Module, opt: torch.optim.Optimizer, device: torch.device,
                 ema: WeightEMA | None, fresh: RunState, resume: bool, is_main: bool) -> RunState:
    """The checkpoint's state applied (``fresh`` without one), and the store's streamed rows cut
    back to it: rows an attempt streamed after its last save are trained and written again, once.
    ``fresh.data`` is the data the run reads now: a checkpoint of other data is refused."""
    st = (load_checkpoint(cfg, model, opt, device, ema, fresh.data) if resume else None) or fresh
    if is_main and st is not fresh:
        print(f"stability: run {cfg.run_id} resumes from {checkpoint_path(cfg)} (epoch {st.epoch}, "
              f"step {st.step})", file=sys.stderr, flush=True)
    if is_main:
        _, moved = store.truncate_rows(cfg.results, cfg.sweep, cfg.run_id, st.step, st.epoch)
        if moved and st.step:  # rows before the checkpoint are lost: resuming would leave a gap
            dest = store.quarantine(cfg.results, cfg.sweep, checkpoint_path(cfg))
            raise ConfigError(f"run {cfg.run_id}: its streamed rows in {moved[0].name} are unreadable (moved to "
                              f"{moved[0].parent}); its checkpoint cannot resume it exactly and was moved to {dest}: "
                              "the next attempt starts afresh")
    return st
