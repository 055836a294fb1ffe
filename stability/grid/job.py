"""The function every job runs, whatever the backend: one training run from a config dict.

:class:`RunJob` is a ``submitit.helpers.Checkpointable``: on Slurm's USR2 (time limit or
preemption) the trainer finishes its step, saves a checkpoint, and submitit requeues the job,
which resumes from it. ``scontrol requeue`` (SIGTERM) also checkpoints; Slurm restarts the job.
A Slurm job runs :class:`SlurmRunJob`: a stop other than USR2 ends its log with one line
(``preempted_line``), as a local run's does, not with submitit's traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import submitit

from ..trainer.run_lock import RunTaken
from ..trainer.stopping import Preempted


class RunJob(submitit.helpers.Checkpointable):
    """One training run; ``threads`` caps torch's intra-op threads (None: the job's CPUs)."""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        import torch

        from ..config import run_config
        from ..trainer.train import RunDone, train

        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0)
        if threads:
            torch.set_num_threads(threads)
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # one run over several tasks: DDP
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        cfg = run_config(config)
        try:
            row = train(cfg, signals=(signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT))
        except Preempted as p:
            if p.signum == signal.SIGUSR2 and callable(p.previous_handler):
                # submitit's handler: dumps our checkpoint() submission and requeues the job.
                p.previous_handler(p.signum, None)
            raise
        except RunTaken:
            raise  # another job trains it: nothing of ours to record
        except RunDone as done:  # ended by another job before this one got its lock (a requeue)
            row = done.row
        except Exception as e:
            _note_unwritten_failure(cfg, e)
            raise
        return {k: row.get(k) for k in ("run_id", "status", "top1_err", "diverged_at_step")}


class SlurmRunJob(RunJob):
    """:class:`RunJob` as a Slurm job runs it. A run stopped after its checkpoint (``scontrol
    requeue``'s or ``scancel``'s SIGTERM, ``scancel --signal``) ends the job with one line and
    exit status 128 + the signal: submitit would log the stop as "Submitted job triggered an
    exception" with a traceback, which reads as a crash. Its result file is written as submitit
    writes a failure's, so the controller sees the job end at once. (On rank 0, USR2 never gets
    here: submitit's handler requeues the job and exits.)"""

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        from ..trainer.distributed import from_env

        try:
            return super().__call__(config)
        except Preempted as p:
            line = preempted_line(config, p, "a requeue of this job (scontrol requeue), else the same "
                                  "`stability grid run`, resumes it")
            if from_env().is_main:
                print(line, file=sys.stderr, flush=True)
            _write_result(("error", line))
            raise SystemExit(stopped_code(p)) from None


def _write_result(result: tuple[str, Any]) -> None:
    """This task's submitit result file, as ``submitit.core.submission.process_job`` writes it."""
    from submitit.core.utils import cloudpickle_dump, temporary_save_path

    with temporary_save_path(submitit.JobEnvironment().paths.result_pickle) as tmp:
        cloudpickle_dump(result, tmp)


def stopped_code(stop: Preempted) -> int:
    """The exit status of a job whose run was stopped after its checkpoint: 128 + the signal, as a
    shell reports a process the signal ended (SIGTERM for a ``stop`` request)."""
    return 128 + (stop.signum or signal.SIGTERM)


def preempted_line(config: dict[str, Any], stop: Preempted,
                   resumes: str = "the same `stability grid run` resumes it") -> str:
    """How a run's log ends when a signal stopped it after its checkpoint (a Ctrl-C, the time
    limit's SIGTERM, ``scontrol requeue``): what happened and what resumes it, where a traceback
    read as a crash."""
    from ..config import run_config
    from ..trainer.checkpoint import checkpoint_path

    cfg = run_config(config)
    by = signal.Signals(stop.signum).name if stop.signum else "a stop request"
    return f"stability: run {cfg.run_id} preempted ({stop}, by {by}): checkpoint saved at {checkpoint_path(cfg)}; {resumes}"


def _note_unwritten_failure(cfg, error: BaseException) -> None:
    """A run that failed must not stay "running": when its failed row is not on disk (the disk
    is full, the root read-only), the ledger says so, naming the error (best effort: the ledger
    may be on the same full disk)."""
    from .. import store
    from ..trainer.distributed import from_env
    from ..trainer.provenance import job_id
    from .ledger import record_failure

    if not from_env().is_main or not (job := job_id()):
        return
    try:
        rows = store.read_table(cfg.results, "runs", sweep=cfg.sweep, columns=["status"], run_ids=[cfg.run_id])
        if rows.status.eq(store.RunStatus.FAILED).any():
            return
        record_failure(store.sweep_dir(cfg.results, cfg.sweep), cfg.run_id, job,
                       f"{type(error).__name__}: {error} (its failed row could not be written)")
    except OSError:
        pass
