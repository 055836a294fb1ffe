"""Where a grid's runs execute: one :class:`Backend` per kind, the only place that branches on kinds.

The controller, ``grid status`` and the CLI talk to a backend through eight calls — ``start``,
``submit``, ``alive``, ``capacity``, ``parallelism``, ``wait``, ``log_tail``, ``close`` — and its
``name`` (recorded in the job ledger beside each job id), and reads its ``ctrl_c_grace_s`` (None
unless a Ctrl-C of the controller stops its jobs too: how long they take to stop). Three ship:

- ``slurm``: submitit job arrays (chunked below MaxArraySize); liveness from ``squeue``.
- ``local``: forked from a warm launcher (``stability.grid.local``); the job id is the pid.
- ``debug``: submitit's DebugExecutor, in this process, one run after another.

A new backend (another scheduler) is one class with these methods, one entry in
:data:`BACKENDS` and its name in ``kinds.EXECUTOR_KINDS`` (what a spec may name); a test or notebook may also hand an instance to the controller directly.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ConfigError
from .joblogs import job_log_tail
from .kinds import resolve_kind
from .local import STOP_GRACE_S


@dataclass
class Submitted:
    """One submitted run: ``job`` has ``job_id`` and ``done()`` (a submitit job or the like)."""

    run_id: str
    job: Any

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)


@dataclass
class FinishedJob:
    """A job that was over when submit returned (in-process backends)."""

    job_id: str

    def done(self) -> bool:
        return True


class SubmitRefused(ConfigError):
    """The scheduler refused a submission (one line for the CLI); ``submitted``: the items of the
    same call it had taken before (earlier arrays), which the caller must still record."""

    submitted: Sequence[Submitted] = ()


class Backend(Protocol):
    name: str

    def start(self) -> None:
        """Begin what is slow to start (the local launcher's imports), before the first submit."""

    def submit(self, items: list[tuple[str, dict[str, Any]]]) -> list[Submitted]:
        """Start ``(run_id, config)`` items; returns them with their jobs, in order."""

    def alive(self, job_ids: list[str]) -> dict[str, str]:
        """``{job_id: state}`` of the given jobs that may still produce a result."""

    def capacity(self) -> int | None:
        """Jobs that may run at once (the controller submits no more); None: submit all, the
        scheduler queues them."""

    def parallelism(self) -> int:
        """Jobs expected to run at once, for ETAs."""

    def wait(self, timeout: float) -> None:
        """Return when a job may have ended, or after ``timeout`` seconds."""

    def log_tail(self, job_id: str, lines: int = 5) -> str:
        """The last lines of a job's error log ("" when there is none)."""

    def close(self) -> None:
        """Release what the backend holds; submitted jobs go on where the backend allows."""


class _FolderBackend:
    """What the shipped backends share: submitit-named logs under ``<sweep>/logs``."""

    name = "?"
    # Seconds a job of this backend may take, once a Ctrl-C of the controller reached it too (the
    # same process group), to save its checkpoint and exit; None: a Ctrl-C does not reach its jobs.
    ctrl_c_grace_s: float | None = None

    def __init__(self, spec):
        from ..store import logs_dir  # lazily: parsing a spec needs no pandas

        self.spec = spec
        self.ex = spec.executor
        self.folder = logs_dir(spec.results, spec.name)

    def start(self) -> None:
        pass

    def capacity(self) -> int | None:
        return None

    def parallelism(self) -> int:
        return self.ex.max_parallel

    def wait(self, timeout: float) -> None:
        time.sleep(timeout)

    def log_tail(self, job_id: str, lines: int = 5) -> str:
        return job_log_tail(self.folder, job_id, lines)

    def close(self) -> None:
        pass


# ---- slurm -----------------------------------------------------------------------------------

# Slurm states in which a job may still produce its result.
ALIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING",
                "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


_SUBMIT_FILE = re.compile(r"[0-9a-f]{32}\.pkl|\.submission_file_[0-9a-f]{32}\.sh")  # submitit's, before a job id


def max_array_size(default: int = 1000) -> int:
    """Slurm's MaxArraySize (``scontrol show config``); array indices must stay below it."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return default
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else default


def slurm_alive(job_ids: list[str]) -> dict[str, str]:
    """``{job_id: state}`` of the given jobs that squeue still lists as alive. A squeue that does
    not answer in time (a busy or unreachable controller) says nothing of them: each counts as
    alive (``UNKNOWN``), never as ended, which would resubmit a run whose job still lives."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=30).stdout
    except subprocess.TimeoutExpired:
        return dict.fromkeys(job_ids, "UNKNOWN")
    except (OSError, subprocess.SubprocessError):
        return {}  # no squeue here: no Slurm job can be seen from this machine
    alive = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] in ALIVE_STATES:
            alive[parts[0]] = parts[1]
    wanted = set(job_ids)
    return {j: s for j, s in alive.items() if j in wanted}


class SlurmBackend(_FolderBackend):
    """submitit job arrays with the spec's resources; ``array_size`` caps one array (default:
    the cluster's MaxArraySize)."""

    name = "slurm"

    def __init__(self, spec):
        super().__init__(spec)
        self._executor = None

    def executor(self):
        if self._executor is None:
            import submitit

            ex = self.ex
            self.folder.mkdir(parents=True, exist_ok=True)
            executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=ex.max_num_timeout)
            params: dict[str, Any] = {
                "job_name": f"stability-{self.spec.name}", "time": ex.timeout_min, "nodes": ex.nodes,
                "ntasks_per_node": ex.tasks_per_node, "array_parallelism": ex.array_parallelism,
                "signal_delay_s": ex.signal_delay_s,
            }
            optional = {"partition": ex.partition, "account": ex.account, "qos": ex.qos,
                        "constraint": ex.constraint, "gpus_per_node": ex.gpus_per_node,
                        "gpus_per_task": ex.gpus_per_task, "cpus_per_task": ex.cpus_per_task,
                        "mem": f"{int(ex.mem_gb * 1024)}M" if ex.mem_gb else None}
            params |= {k: v for k, v in optional.items() if v is not None}
            if ex.extra:
                params["additional_parameters"] = dict(ex.extra)
            executor.update_parameters(**params)
            self._executor = executor
        return self._executor

    def submit(self, items: list[tuple[str, dict[str, Any]]]) -> list[Submitted]:
        from .job import SlurmRunJob

        if not items:
            return []
        executor, fn = self.executor(), SlurmRunJob()
        chunk = max(1, self.ex.array_size or max_array_size())
        out: list[Submitted] = []
        for i in range(0, len(items), chunk):
            part = items[i:i + chunk]
            try:
                jobs = self._sbatch(executor.map_array, fn, [cfg for _, cfg in part])
            except SubmitRefused as e:
                e.submitted = out  # the arrays sbatch took before: the caller records them
                raise
            out += [Submitted(rid, job) for (rid, _), job in zip(part, jobs, strict=True)]
        return out

    def _sbatch(self, submit: Callable[..., list], *args: Any) -> list:
        """``submit(*args)``; an sbatch that refuses (a bad partition or sbatch option, no controller)
        is one ``ConfigError`` with sbatch's words, and the files submitit wrote for it are removed."""
        import contextlib
        import io

        from submitit.core.utils import FailedJobError

        from ..store import discard

        before = set(os.listdir(self.folder))
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said):  # submitit prints sbatch's stderr before raising it
                return submit(*args)
        except FailedJobError as e:
            for name in set(os.listdir(self.folder)) - before:
                if _SUBMIT_FILE.fullmatch(name):
                    discard(self.folder / name, self.folder)
            words = "; ".join(line.strip() for line in (str(e) or said.getvalue()).splitlines() if line.strip())
            raise SubmitRefused(f"executor: sbatch refused the jobs: {words[:500] or 'no reason given'} (the spec's "
                                "executor fields and the --profile's: partition, account, qos, constraint, extra ...)",
                                str(self.spec.path)) from None

    def alive(self, job_ids: list[str]) -> dict[str, str]:
        return slurm_alive(job_ids)

    def parallelism(self) -> int:
        return self.ex.array_parallelism


# ---- local -----------------------------------------------------------------------------------


def local_threads(executor: Any) -> int:
    """Torch threads of each rank of a local job: this machine's CPUs over the ranks that run at
    once (``max_parallel`` x ``tasks_per_node``). The dry run times steps with the same."""
    return max(1, (os.cpu_count() or 1) // (executor.max_parallel * max(executor.tasks_per_node, 1)))


class LocalBackend(_FolderBackend):
    """Runs forked from a warm launcher on this machine, ``max_parallel`` at a time, each with an
    equal share of the cores. The launcher starts on :meth:`start` (or the first submit)."""

    name = "local"
    ctrl_c_grace_s = STOP_GRACE_S  # forked by the launcher, in the controller's process group

    def __init__(self, spec):
        super().__init__(spec)
        self._pool = None

    def start(self):
        """Start the launcher now, so that its torch import overlaps the caller's work."""
        if self._pool is None:
            from ..errors import ConfigError
            from .local import LocalPool, gpu_ids

            need = self.ex.gpus_per_node or 0
            if need and len(have := gpu_ids()) < need:  # no run could ever start: say so, do not wait
                raise ConfigError(f"executor.gpus_per_node: each run needs {need} GPU(s), this machine has "
                                  f"{len(have)} (CUDA_VISIBLE_DEVICES, else nvidia-smi -L)", self.spec.path)
            self._pool = LocalPool(self.folder, self.ex.timeout_min, self.ex.tasks_per_node,
                                   self.ex.gpus_per_node or 0)
        return self._pool

    def submit(self, items: list[tuple[str, dict[str, Any]]]) -> list[Submitted]:
        pool = self.start()
        return [Submitted(rid, pool.submit(cfg, local_threads(self.ex))) for rid, cfg in items]

    def alive(self, job_ids: list[str]) -> dict[str, str]:
        from .local import pid_alive

        return {j: "RUNNING" for j in job_ids if pid_alive(j)}

    def capacity(self) -> int | None:
        return self.ex.max_parallel if self._pool is None else self._pool.capacity(self.ex.max_parallel)

    def wait(self, timeout: float) -> None:
        if self._pool is None:
            time.sleep(timeout)
        else:
            self._pool.wait(timeout)  # wakes as soon as a run ends

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


# ---- debug -----------------------------------------------------------------------------------


class DebugBackend(_FolderBackend):
    """submitit's DebugExecutor: each run trains in this process when submitted (for tests and
    ``pdb``); a run that raises leaves its own failed row."""

    name = "debug"

    def submit(self, items: list[tuple[str, dict[str, Any]]]) -> list[Submitted]:
        import submitit

        from .job import RunJob

        self.folder.mkdir(parents=True, exist_ok=True)
        executor, fn = submitit.DebugExecutor(folder=self.folder), RunJob(os.cpu_count() or 1)
        out = []
        for rid, cfg in items:
            job = executor.submit(fn, cfg)
            try:
                job.result()
            except Exception:  # noqa: BLE001 - the run's own failed row says what happened
                pass
            # A DebugJob whose function raised would run it again when asked done(): hand back
            # a finished handle instead.
            out.append(Submitted(rid, FinishedJob(str(job.job_id))))
        return out

    def alive(self, job_ids: list[str]) -> dict[str, str]:
        return {}  # in-process jobs are over when submit returns

    def parallelism(self) -> int:
        return 1


BACKENDS: dict[str, Callable[..., Backend]] = {"slurm": SlurmBackend, "local": LocalBackend, "debug": DebugBackend}


def backend_for(spec, kind: str | None = None) -> Backend:
    """The backend a spec's ``executor.kind`` names (or ``kind``), made cheaply: nothing starts
    until the first submit (``LocalBackend.start`` starts its launcher early on purpose)."""
    return BACKENDS[resolve_kind(kind or spec.executor.kind)](spec)
