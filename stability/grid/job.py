"""The function every job runs, whatever the backend: one training run from a config dict.

:class:`RunJob` is a ``submitit.helpers.Checkpointable``: on Slurm's USR2 (time limit or
preemption) the trainer finishes its step, saves a checkpoint, and submitit requeues the job,
which resumes from it. ``scontrol requeue`` (SIGTERM) also checkpoints; Slurm restarts the job.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import submitit


class RunJob(submitit.helpers.Checkpointable):
    """One training run; ``threads`` caps torch's intra-op threads (None: the job's CPUs)."""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        import torch

        from ..config import run_config
        from ..train import Preempted, train

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
        return {k: row.get(k) for k in ("run_id", "status", "top1_err", "diverged_at_step")}
