"""One training run from a ``RunConfig``: set up, train, evaluate, store.

The grid calls :func:`train` with a config and nothing else; this module knows no sweep logic.
Its parts live beside it: ``optim`` (parameter groups, optimizer, lr schedule), ``tracing``
(gradient norms and the device-side buffer of per-step values), ``checkpoint`` (run state,
save/resume, the stop flag). Hot-loop rule: no host sync per step; the buffer is read with one
``.tolist()`` every ``trace_every`` steps (the flush), which also judges divergence and stops.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import store
from ..config import RunConfig, resolve_compile
from ..data.datasets import (
    DataBundle,
    DataError,
    batches,
    check_decode,
    check_source,
    load_dataset,
    seed_all,
    steps_per_epoch,
)
from ..data.mix import augment_and_mix
from ..detector import count_spikes
from ..errors import ConfigError
from ..models import build_model, count_complexity, memory_format, model_spec
from ..progress import Reporter
from ..pruner import RunPruner
from ..store import RunStatus
from .checkpoint import (
    RunState,
    checkpoint_path,
    data_columns,
    data_fingerprint,
    rerun_data_warning,
    resume_state,
    save_checkpoint,
)
from .distributed import Dist, autocast_for, barrier, from_env, init, setup_device
from .ema import WeightEMA, make_ema
from .evaluation import evaluate, evaluate_ema, split_errors
from .execution import compile_net, execution_columns
from .optim import lr_at, make_optimizer
from .provenance import job_id, now, run_identity, timestamp
from .pruning import Pruned, make_pruner, overruled_verdict, pruned_result, verdict_columns
from .rows import epoch_row
from .run_lock import RunDone, RunLock, refuse_if_done
from .run_record import Record, Rows
from .step import Step, StepOut, train_step
from .stopping import STOP_SIGNALS, Preempted, StopFlag
from .tracing import GradTracer, TraceBuffer

__all__ = ["RunDone", "Step", "StepOut", "evaluate", "train", "train_step"]

COLLAPSE_FRACTION = 0.9  # collapsed: final train loss >= 0.9 x ln(classes), i.e. never left chance


def train(cfg: RunConfig, reporter: Reporter | None = None, *, resume: bool = True, stop: threading.Event | None = None,
          signals: tuple[int, ...] = STOP_SIGNALS, rerun: bool = False, record_refusals: bool = True) -> dict[str, Any]:
    """Run ``cfg`` to completion (or divergence) and write its rows; returns the runs row.

    Resumes from the run's checkpoint when one exists. On one of ``signals`` (or ``stop`` set)
    it saves a checkpoint, records status ``preempted`` and raises :class:`Preempted`. The run's
    lock is held throughout, every decision on the run's state taken under it: a second process
    raises ``RunTaken`` before it writes anything, one that gets it late :class:`RunDone`.
    ``record_refusals`` False: a set-up refused for bad input (``ConfigError``, ``DataError``)
    writes no runs row (the command line, whose user reads the error); a grid job keeps it
    True, so its controller sees the run failed and why."""
    with RunLock(cfg.results, cfg.sweep, cfg.run_id, job_id()) if from_env().is_main else nullcontext():
        return _train(cfg, reporter, resume, stop, signals, rerun, record_refusals)


def refuse_bad_input(cfg: RunConfig, rerun: bool = False) -> None:
    """What a run's set-up would refuse and can be known before it takes its lock (the device,
    the data's presence, ``decode: gpu`` off CUDA): ``ConfigError`` or ``DataError``. The data
    is not asked of a run that has a result and is not rerun: ``train`` answers it with
    :class:`RunDone` (decided under the lock), with no data, on any machine."""
    device = setup_device(cfg.device, from_env())
    check_decode(cfg.decode, device)
    if rerun or not _has_result(cfg):
        check_source(cfg.dataset, cfg.data_root, cfg.download)


def _has_result(cfg: RunConfig) -> bool:
    rows = store.read_table(cfg.results, "runs", sweep=cfg.sweep, run_ids=[cfg.run_id], columns=["status"])
    return rows is not None and bool(rows.status.isin(store.DONE).any())


def _train(cfg: RunConfig, reporter: Reporter | None, resume: bool, stop: threading.Event | None,
           signals: tuple[int, ...], rerun: bool = False, record_refusals: bool = True) -> dict[str, Any]:
    """Set up (a failure there is a failed run too, recorded before re-raising, unless it is a
    refused input and ``record_refusals`` is off), then run."""
    d = from_env()
    rec = Record(cfg, d, run_identity(cfg) | {"world_size": d.world_size}, RunState(started_at=now()), time.monotonic())
    flag, started_group = StopFlag(stop), False
    try:
        device = setup_device(cfg.device, d)
        started_group = init(d, device.type)
        refuse_if_done(cfg, d, device, rerun)
        lp = _setup(cfg, d, device, rec, reporter, resume, flag.event, rerun)
    except Exception as e:
        refused = not record_refusals and isinstance(e, ConfigError | DataError)
        if not isinstance(e, RunDone) and not refused:  # a result is the record: nothing of ours to write
            rec.write(RunStatus.FAILED, error=f"{type(e).__name__}: {e}"[:2000], finished_at=timestamp(now()))
        if started_group:
            torch.distributed.destroy_process_group()
        raise
    return _run(lp, rec, flag, signals, started_group)


def _setup(cfg: RunConfig, d: Dist, device: torch.device, rec: Record, reporter: Reporter | None,
           resume: bool, stop: threading.Event, rerun: bool = False) -> Loop:
    """Data, model, optimizer, EMA and tracer; the checkpoint's state, if any; the loop."""
    rec.base["device"] = str(device)
    data = load_dataset(cfg.dataset, cfg.data_root, image_size=cfg.image_size, download=cfg.download,
                        synthetic_size=cfg.synthetic_size, seed=cfg.seed, test_split=cfg.test_split)
    spec = model_spec(cfg.model, cfg.stem, num_classes=data.num_classes, image_size=data.image_size)
    rec.base |= {"params": (c := count_complexity(spec)).params, "flops": c.flops}
    seed_all(cfg.seed)
    fmt = memory_format(spec.family)
    model = build_model(spec, freeze_stem=cfg.freeze_stem, qk_norm=cfg.qk_norm).to(device, memory_format=fmt)
    opt = make_optimizer(cfg, model, device.type)
    ema = make_ema(model, cfg.ema_alpha, cfg.ema_period, cfg.batch_size, cfg.epochs, cfg.warmup_epochs)
    tracer = GradTracer(model, device, attention=cfg.trace_attention)
    spe = steps_per_epoch(data, cfg.batch_size, cfg.steps_per_epoch, d.world_size, cfg.accum_steps)
    rec.st.data = data_fingerprint(data)
    rec.base |= data_columns(rec.st.data)
    rec.st = resume_state(cfg, model, opt, device, ema, rec.st, resume, d.is_main)
    if rerun and rec.st.step == 0 and rec.st.pruned is None:  # from scratch: a verdict once overruled stays so
        rec.st.pruned = overruled_verdict(cfg)
    if rerun and rec.st.step == 0 and d.is_main and (note := rerun_data_warning(cfg, rec.st.data)):
        print(f"stability: {note}", file=sys.stderr, flush=True)  # read before the new row replaces it
    net: nn.Module = model
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compiled := resolve_compile(cfg.compile, device.type):
        net = compile_net(net, cfg.compile_mode)
    rec.base |= execution_columns(compiled, cfg.compile_mode, opt, device)
    step = Step(net=net, opt=opt, tracer=tracer, autocast=autocast_for(device), accum_steps=cfg.accum_steps,
                label_smoothing=cfg.label_smoothing, grad_clip=cfg.grad_clip, distributed=d.enabled, z_loss=cfg.z_loss)
    bound = cfg.divergence_factor * math.log(max(data.num_classes, 2))
    return Loop(cfg=cfg, step=step, model=model, data=data, device=device, fmt=fmt, ema=ema, d=d, st=rec.st,
                buffer=TraceBuffer(tracer, device, cfg.run_id, d, bound), stop=stop, ckpt=checkpoint_path(cfg),
                reporter=reporter, spe=spe, total_steps=cfg.epochs * spe, warmup_steps=round(cfg.warmup_epochs * spe),
                t0=rec.t0, pruner=make_pruner(cfg, rec.st, cfg.epochs * spe, data.num_classes))


def _run(lp: Loop, rec: Record, flag: StopFlag, signals: tuple[int, ...], started_group: bool) -> dict[str, Any]:
    """The loop, and the runs row of how it ended: result, preempted (checkpointed) or failed.
    The stop signals are the flag's from before the running row is written (a stop then is seen
    at the first step) until the last row is (a stop while a result is written changes nothing)."""
    flag.install(signals)
    try:
        rec.write(RunStatus.RUNNING)
        return _run_stoppable(lp, rec, flag, started_group)
    finally:
        flag.uninstall()


def _run_stoppable(lp: Loop, rec: Record, flag: StopFlag, started_group: bool) -> dict[str, Any]:
    try:
        result = _run_loop(lp)
        barrier(lp.d)  # every rank done with the group before any tears it down
    except Preempted as p:
        _save(lp, rec)
        rec.write(RunStatus.PREEMPTED)
        raise flag.preempted(str(p)) from None
    except Pruned as p:  # a result, checkpointed: ``--rerun`` continues it with the pruner off
        result = {"status": RunStatus.PRUNED, **pruned_result(lp.st, p.verdict, lp.last_epoch, lp.pruner.signals.loss[-1])}
        _save(lp, rec)
        return _finish(lp, rec, result, keep_checkpoint=True)
    except BaseException as e:
        with suppress(OSError):  # rows past the checkpoint, for a post-mortem (a resume drops them)
            lp.rows.stream(lp.cfg, lp.d, lp.st.step)
        rec.write(RunStatus.FAILED, error=f"{type(e).__name__}: {e}"[:2000], finished_at=timestamp(now()))
        raise
    finally:
        lp.data.close()
        if started_group:
            torch.distributed.destroy_process_group()
    return _finish(lp, rec, result)


def _save(lp: Loop, rec: Record) -> None:
    """Stream the rows so far, then checkpoint: what a checkpoint covers is always in the store."""
    lp.rows.stream(lp.cfg, lp.d, lp.st.step)
    rec.st.wall_time_s += time.monotonic() - rec.t0
    rec.t0 = time.monotonic()
    if lp.d.is_main:
        save_checkpoint(lp.ckpt, lp.model, lp.step.opt, lp.st, lp.cfg, lp.ema)


def _finish(lp: Loop, rec: Record, result: dict[str, Any], keep_checkpoint: bool = False) -> dict[str, Any]:
    """The last rows streamed, the run's chunks merged into its files, then the runs row."""
    cfg = lp.cfg
    try:
        lp.rows.stream(cfg, lp.d, lp.st.step)
        tables = store.finish_rows(cfg.results, cfg.sweep, cfg.run_id) if lp.d.is_main else None
    except BaseException as e:  # a torn chunk, a full disk: the row must not stay "running"
        rec.write(RunStatus.FAILED, error=f"{type(e).__name__}: {e}"[:2000], finished_at=timestamp(now()))
        raise  # the checkpoint stays: a rerun resumes from it once the bad chunk is quarantined
    row = rec.write(result.pop("status"), n_spikes=count_spikes(tables["steps"]) if tables else None,
                    finished_at=timestamp(now()), **{**verdict_columns(lp.st), **result})
    if lp.d.is_main and not keep_checkpoint:
        store.discard(lp.ckpt, cfg.results)  # the results are the record now; checkpoints are for resume
        store.discard(store.progress_path(cfg.results, cfg.sweep, cfg.run_id), cfg.results)
    return row


@dataclass
class Loop:
    """One run's training loop: what the epoch functions share (``model`` is the plain module,
    ``fmt`` the memory format inputs follow, ``ema`` the weight average or None)."""

    cfg: RunConfig
    step: Step
    model: nn.Module
    data: DataBundle
    device: torch.device
    fmt: torch.memory_format
    ema: WeightEMA | None
    d: Dist
    st: RunState
    buffer: TraceBuffer
    stop: threading.Event
    ckpt: Path
    reporter: Reporter | None
    spe: int  # steps per epoch
    total_steps: int
    warmup_steps: int
    t0: float  # when this process started the run: checkpoints carry the wall time so far
    pruner: RunPruner | None = None  # None: no pruner, or a rerun continuing past its verdict
    rows: Rows = field(default_factory=Rows)
    last_epoch: dict[str, Any] | None = None  # the final epoch's row: the runs row's errors


def _run_loop(lp: Loop) -> dict[str, Any]:
    """The epochs; returns the final metrics of the runs row (status included)."""
    if lp.st.step == 0 and lp.st.init_val_loss is None:  # the untrained model: LR sensitivity's ℓ₀
        lp.st.init_top1_err, _, lp.st.init_val_loss, _ = evaluate(lp.step.net, lp.data, lp.cfg, lp.device,
                                                                  lp.step.autocast, lp.d, lp.fmt)
    lp.step.net.train()
    if lp.reporter and lp.d.is_main:
        lp.reporter.on_start(lp.total_steps, lp.st.step)
    while lp.st.epoch < lp.cfg.epochs:
        epoch, t_epoch = lp.st.epoch, time.monotonic()
        bad = _train_epoch(lp, epoch)
        if bad is not None:
            return _diverged(lp, bad)
        _end_epoch(lp, epoch, time.monotonic() - t_epoch)
    last, ema = lp.last_epoch, lp.ema.model if lp.ema else None
    return {**split_errors(lp.step.net, ema, lp.data, lp.cfg, lp.device, lp.step.autocast, lp.d, lp.fmt),
            "status": RunStatus.COMPLETED, "top1_err": last["val_top1_err"], "top5_err": last["val_top5_err"],
            "best_top1_err": lp.st.best_top1_err,
            "ema_top1_err": last["val_ema_top1_err"], "ema_top5_err": last["val_ema_top5_err"],
            "final_train_loss": last["train_loss"], "final_val_loss": last["val_loss"],
            "collapsed": last["train_loss"] >= COLLAPSE_FRACTION * math.log(max(lp.data.num_classes, 2))}


def _train_epoch(lp: Loop, epoch: int) -> int | None:
    """The epoch's steps from where the run stands; returns the diverged step, if any."""
    cfg, st, d = lp.cfg, lp.st, lp.d
    for x, y in batches(lp.data, cfg.batch_size, cfg.seed, cfg.num_workers, epoch, st.batch, True, lp.device, d,
                        auto_augment=cfg.auto_augment, decode=cfg.decode, prefetch_factor=cfg.prefetch_factor):
        if st.batch >= lp.spe:
            break
        x, y = x.to(lp.device, non_blocking=True, memory_format=lp.fmt), y.to(lp.device, non_blocking=True)
        x, y = augment_and_mix(x, y, cfg, lp.data.num_classes, st.step, d.rank)  # y: soft when mixing
        lr = lr_at(st.step, cfg.lr, lp.warmup_steps, lp.total_steps)
        out = train_step(lp.step, x, y, lr, trace=st.step % cfg.trace_every == 0)
        if lp.ema is not None and lp.ema.due(st.batch):
            lp.ema.update(lp.model, epoch)
        lp.buffer.add(st.step, out.loss, out.correct, out.layer_norms, lr, out.traced, out.log_z)
        st.epoch_seen += len(y) * d.world_size
        st.step += 1
        st.batch += 1
        # One process checks its stop flag every step; several agree on it at each flush.
        if len(lp.buffer) >= cfg.trace_every or (lp.stop.is_set() and not d.enabled):
            if (bad := _flush(lp, epoch)) is not None:
                return bad
    return _flush(lp, epoch)


def _flush(lp: Loop, epoch: int) -> int | None:
    """Buffered steps into the run's rows; the diverged step, or :class:`Preempted` on a stop."""
    st = lp.st
    f = lp.buffer.flush(st.step, epoch, lp.stop.is_set())
    lp.rows.steps += f.steps
    lp.rows.grads += f.grads
    st.epoch_loss_sum, st.epoch_correct = st.epoch_loss_sum + f.loss_sum, st.epoch_correct + f.correct
    if f.steps and lp.reporter and lp.d.is_main:
        lp.reporter.on_log(st.step, epoch, f.last_loss, f.last_lr)
    if f.diverged_at is None and lp.pruner and (verdict := lp.pruner.observe(f.steps, f.grads)):
        raise Pruned(verdict)
    if f.diverged_at is None and f.stop:
        raise Preempted(f"stopped at step {st.step}")
    return f.diverged_at


def _end_epoch(lp: Loop, epoch: int, seconds: float) -> None:
    """Evaluate, record the epoch's row, stream the rows, checkpoint, rewrite the progress note."""
    cfg, st, d, net, autocast = lp.cfg, lp.st, lp.d, lp.step.net, lp.step.autocast
    m = evaluate(net, lp.data, cfg, lp.device, autocast, d, lp.fmt)
    final = epoch == cfg.epochs - 1  # the EMA's final evaluation with precise BN statistics, as pycls
    e = evaluate_ema(lp.ema.model, lp.data, cfg, lp.device, autocast, d, lp.fmt, final) if lp.ema else None
    row = epoch_row(run_id=cfg.run_id, epoch=epoch, train_loss=st.epoch_loss_sum / max(st.batch, 1),
                    train_top1_err=100.0 * (1 - st.epoch_correct / max(st.epoch_seen, 1)),
                    val_top1_err=m.top1, val_top5_err=m.top5, val_ema_top1_err=e.top1 if e else None,
                    val_ema_top5_err=e.top5 if e else None, val_loss=m.loss,
                    lr=lr_at(st.step - 1, cfg.lr, lp.warmup_steps, lp.total_steps) if st.step else None, time_s=seconds)
    lp.rows.epochs.append(row)
    lp.last_epoch, st.best_top1_err = row, min(m.top1, st.best_top1_err if st.best_top1_err is not None else m.top1)
    if lp.reporter and d.is_main:
        lp.reporter.on_epoch(row)
    st.epoch, st.batch, st.epoch_loss_sum, st.epoch_correct, st.epoch_seen = epoch + 1, 0, 0.0, 0.0, 0
    lp.rows.stream(cfg, d, st.step)
    if st.epoch < cfg.epochs and d.is_main:
        so_far = replace(st, wall_time_s=st.wall_time_s + time.monotonic() - lp.t0)  # a resume counts it
        save_checkpoint(lp.ckpt, lp.model, lp.step.opt, so_far, cfg, lp.ema)
        store.write_progress(cfg.results, cfg.sweep, cfg.run_id, {
            "epoch": st.epoch, "epochs": cfg.epochs, "step": st.step, "total_steps": lp.total_steps,
            "val_top1_err": m.top1, "train_loss": row["train_loss"], "updated_at": now()})


def _diverged(lp: Loop, step: int) -> dict[str, Any]:
    rows = lp.rows  # rows past the diverged step are in the unstreamed buffer only
    rows.steps = [r for r in rows.steps if r["step"] <= step]
    rows.grads = [r for r in rows.grads if r["step"] <= step]
    errs = ["top1_err", "top5_err", "best_top1_err", *(["test_top1_err"] if lp.cfg.test_split else []),
            *(["ema_top1_err", "ema_top5_err", *(["test_ema_top1_err"] if lp.cfg.test_split else [])] if lp.ema else [])]
    return {"status": RunStatus.DIVERGED, "diverged_at_step": step, "collapsed": False, **dict.fromkeys(errs, 100.0),
            "final_train_loss": rows.steps[-1]["loss"] if rows.steps else None}

