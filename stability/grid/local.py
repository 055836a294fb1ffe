"""Local runs from a warm launcher: torch is imported once, every run is still its own process.

A local grid of short runs used to spend most of its time starting Python and importing torch
(~4 s per run on a small machine). The controller now starts one launcher process
(``python -m stability.grid.local``) that imports torch and the trainer, then forks one child
per run task on request. Children are ordinary processes: ``<pid>.<start time>`` of rank 0 is
the job id in the ledger (the start time, in clock ticks since boot, tells a reused pid from
the job's), a crash takes down only that run, SIGTERM checkpoints it (``stability.trainer.train``), and they
outlive the controller (``--no-wait``). Several tasks per job make one DDP run on this machine
(gloo on CPU, NCCL on GPUs); with ``gpus_per_node`` each job gets its own GPUs.

Protocol (JSON lines): the controller writes ``{"token", "config", "tasks", "threads", "env",
"log_dir", "timeout_s"}``; the launcher answers ``{"token", "pid"}`` once forked and
``{"pid", "code"}`` when the job's last task has exited (``pid`` is the job id).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

# What a run imports: torch and the trainer, the model families, submitit, and torch._dynamo
# (with sympy: ~800 modules), which counting a model's FLOPs on meta tensors imports in every run.
PRELOAD = ("torch", "stability.trainer.train", "stability.models.vit", "stability.models.regnet", "stability.grid.job",
           "torch._dynamo")


FAILED_TASK_GRACE_S = 30.0
STOP_GRACE_S = 60.0  # a stopped run's time to save its checkpoint and exit before it is killed


def gpu_ids() -> list[str]:
    """GPUs this machine lets us use: CUDA_VISIBLE_DEVICES, else ``nvidia-smi -L``, else none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, None when there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]  # fields 3 and 22 of proc(5), counted after the name
    except (OSError, ValueError, IndexError):
        return None


def job_token(pid: int) -> str:
    """A local job's id: ``<pid>.<start time>``, which no later process with the same pid has."""
    st = _stat(pid)
    return f"{pid}.{st[1]}" if st else str(pid)


def pid_alive(job_id: str) -> bool:
    """A local job (id ``<pid>.<start time>``, or a bare pid) still runs: its process exists, is
    not a zombie, and started when the job did (a reused pid is another process)."""
    pid, _, started = str(job_id).partition(".")
    try:
        st = _stat(int(pid))
    except ValueError:
        return False
    return st is not None and st[0] != "Z" and (not started or st[1] == started)


@dataclass
class LocalJob:
    """A submitted local job; ``job_id`` is ``<pid>.<start time>`` of its rank-0 task."""

    pool: LocalPool
    job_id: str
    gpus: list[str] = field(default_factory=list)
    code: int | None = None

    def done(self) -> bool:
        self.pool.wait(0)
        return self.code is not None or not pid_alive(self.job_id)


class LauncherGone(ConfigError):
    """The launcher process died and could not be started again (one line, exit 2)."""


class LocalPool:
    """The controller's side: start the launcher, submit runs, wait for any to end."""

    def __init__(self, folder: Path, timeout_min: int, tasks_per_node: int = 1, gpus_per_node: int = 0):
        self.folder = folder
        self.timeout_s = 60 * timeout_min
        self.tasks = tasks_per_node
        self.gpus_per_job = gpus_per_node
        self.free_gpus = gpu_ids() if gpus_per_node else []
        self.jobs: dict[str, LocalJob] = {}
        self._token = 0
        self._buf = b""
        folder.mkdir(parents=True, exist_ok=True)
        self.restarts = 0
        self.proc = self._start()  # now, so its torch import overlaps the controller's planning

    def _start(self) -> subprocess.Popen:
        from ..store import open_nofollow, root_of

        self._buf = b""
        err_fd = open_nofollow(self.folder / "launcher.err", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                               root_of(self.folder.parent))  # the folder is <sweep>/logs
        with os.fdopen(err_fd, "ab") as err:
            return subprocess.Popen([sys.executable, "-m", "stability.grid.local"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err)

    def capacity(self, max_parallel: int) -> int:
        """Jobs that may run at once: ``max_parallel``, fewer when each job needs its own GPUs."""
        if not self.gpus_per_job:
            return max_parallel
        busy = sum(len(j.gpus) for j in self.jobs.values() if j.code is None)
        return min(max_parallel, (len(self.free_gpus) + busy) // self.gpus_per_job)

    def submit(self, config: dict[str, Any], threads: int | None) -> LocalJob:
        """Start one run; a launcher that died (killed, OOM) is started again once per submit:
        its jobs go on and are judged by their pids, and a run it may have started before dying
        is guarded by the run's lock (a second start ends at once, ``RunTaken``)."""
        for attempt in range(2):
            if self.proc.poll() is not None:
                print(f"stability: the local launcher exited ({self.proc.returncode}); starting it again "
                      f"(see {self.folder / 'launcher.err'})", file=sys.stderr, flush=True)
                self.proc, self.restarts = self._start(), self.restarts + 1
            try:
                return self._submit(config, threads)
            except (LauncherGone, BrokenPipeError):
                if attempt:
                    raise LauncherGone(f"the local launcher exited twice while starting a run; see "
                                       f"{self.folder / 'launcher.err'}") from None
        raise AssertionError("unreachable")

    def _submit(self, config: dict[str, Any], threads: int | None) -> LocalJob:
        gpus = self.free_gpus[:self.gpus_per_job] if self.gpus_per_job else []
        del self.free_gpus[:len(gpus)]
        env = {"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if self.gpus_per_job else {}
        self._token += 1
        msg = {"token": self._token, "config": config, "tasks": self.tasks, "threads": threads, "env": env,
               "log_dir": str(self.folder), "timeout_s": self.timeout_s}
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
            while True:  # the first answer waits for the launcher's imports
                for rec in self._read(None):
                    if rec.get("token") == self._token:
                        job = LocalJob(self, str(rec["pid"]), gpus)
                        self.jobs[job.job_id] = job
                        return job
        except BaseException:
            self.free_gpus += gpus
            raise

    def wait(self, timeout: float | None) -> None:
        """Return when a job ends (its exit is recorded) or after ``timeout`` seconds."""
        self._read(timeout)

    def _read(self, timeout: float | None) -> list[dict[str, Any]]:
        out = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                rec = json.loads(line)
                if "code" in rec and str(rec["pid"]) in self.jobs:
                    job = self.jobs[str(rec["pid"])]
                    job.code = int(rec["code"])
                    self.free_gpus += job.gpus
                out.append(rec)
            if out:
                return out
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                return out
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:  # the launcher is gone; jobs are judged by their pids
                if timeout is None:
                    raise LauncherGone(f"the local launcher exited; see {self.folder / 'launcher.err'}")
                time.sleep(left or 0)
                return out
            self._buf += chunk

    def close(self) -> None:
        """Let go of the launcher; running jobs go on (they are judged by their pids)."""
        if self.proc.poll() is not None:
            return
        self.wait(0)
        if all(j.code is not None for j in self.jobs.values()):
            self.proc.kill()  # nothing left to reap; its interpreter exit would take seconds
            self.proc.wait()
        else:
            self.proc.stdin.close()  # the launcher stays while its jobs run, reaping them


# ---- the launcher process ------------------------------------------------------------------


def _child(msg: dict[str, Any], rank: int, port: int, rank0_pid: int) -> None:
    """In a forked task: logs to files, its own environment, then the run. Never returns."""
    code = 1
    try:
        from ..store import open_nofollow, root_of

        job_id = job_token(rank0_pid)
        name = f"{job_id}_{rank}_log"
        root = root_of(Path(msg["log_dir"]).parent)  # <sweep>/logs
        out = open_nofollow(os.path.join(msg["log_dir"], f"{name}.out"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, root)
        err = open_nofollow(os.path.join(msg["log_dir"], f"{name}.err"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, root)
        devnull = os.open(os.devnull, os.O_RDONLY)
        for src, dst in ((devnull, 0), (out, 1), (err, 2)):
            os.dup2(src, dst)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.environ.update(msg["env"])
        os.environ["STABILITY_JOB_ID"] = job_id  # the runs row names the job that wrote it
        if msg["tasks"] > 1:
            os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(msg["tasks"]),
                               "LOCAL_WORLD_SIZE": str(msg["tasks"]), "MASTER_ADDR": "127.0.0.1",
                               "MASTER_PORT": str(port)})
        from ..trainer.stopping import Preempted
        from .job import RunJob, preempted_line, stopped_code

        try:
            print(json.dumps(RunJob(msg["threads"])(msg["config"])), flush=True)
            code = 0
        except Preempted as p:  # a stop, not a crash: one line, and 128 + the signal, as a Slurm job's
            print(preempted_line(msg["config"], p), file=sys.stderr)
            code = stopped_code(p)
    except BaseException:  # noqa: BLE001 - the traceback goes to the run's log
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """The launcher: fork jobs on request, report their ends, enforce time limits."""
    import importlib

    for name in PRELOAD:  # the point: imported once, shared by every fork
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    _Launcher().loop()


class _Launcher:
    """The launcher's state and its phases: wake, read requests (fork), reap, enforce limits."""

    def __init__(self):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the runs, not the launcher
        self.wake_r, self.wake_w = os.pipe()  # a child's exit wakes the loop at once (set_wakeup_fd)
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.reply = sys.stdout.buffer
        self.stdin = sys.stdin.buffer.raw
        self.jobs: dict[int, dict[str, Any]] = {}  # rank-0 pid -> {"id", "pids", "deadline", "code", "killed"}
        self.owner: dict[int, int] = {}  # task pid -> rank-0 pid
        self.buf, self.open = b"", True

    def loop(self) -> None:
        while self.open or self.jobs:
            ready, _, _ = select.select([self.stdin, self.wake_r] if self.open else [self.wake_r], [], [], 0.5)
            if self.wake_r in ready:
                self._drain_wakeups()
            if self.open:
                self._read_requests(self.stdin in ready)
            self._reap()
            self._enforce_limits()

    def send(self, rec: dict[str, Any]) -> None:
        try:
            self.reply.write((json.dumps(rec) + "\n").encode())
            self.reply.flush()
        except (BrokenPipeError, ValueError):
            pass  # the controller went away: its jobs go on

    def _drain_wakeups(self) -> None:
        while True:
            try:
                if not os.read(self.wake_r, 4096):
                    return
            except BlockingIOError:
                return

    def _read_requests(self, readable: bool) -> None:
        """Fork each requested job's tasks and answer with its job id; stdin closed: stop reading."""
        from ..trainer.distributed import free_port

        if readable:
            chunk = os.read(self.stdin.fileno(), 65536)
            self.open = bool(chunk)
            self.buf += chunk
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            msg = json.loads(line)
            port = free_port() if msg["tasks"] > 1 else 0
            pids: list[int] = []
            for rank in range(msg["tasks"]):
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    os.close(self.wake_r)
                    os.close(self.wake_w)
                    _child(msg, rank, port, pids[0] if pids else os.getpid())
                pids.append(pid)
            self.jobs[pids[0]] = {"id": job_token(pids[0]), "pids": set(pids), "code": 0, "killed": 0.0,
                                  "deadline": time.monotonic() + msg["timeout_s"]}
            self.owner.update({p: pids[0] for p in pids})
            self.send({"token": msg["token"], "pid": self.jobs[pids[0]]["id"]})

    def _reap(self) -> None:
        """Collect ended tasks; a job whose tasks have all ended is reported with its first failure."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            lead = self.owner.pop(pid, None)
            if lead is None:
                continue
            job = self.jobs[lead]
            job["pids"].discard(pid)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                job["code"] = job["code"] or code
                # one task failed: the others may hang in a collective. Give them a grace period
                # (rank 0 may be writing its own failed row), then the time-limit path stops them.
                job["deadline"] = min(job["deadline"], time.monotonic() + FAILED_TASK_GRACE_S)
            if not job["pids"]:
                del self.jobs[lead]
                self.send({"pid": job["id"], "code": job["code"]})

    def _enforce_limits(self) -> None:
        now = time.monotonic()
        for job in self.jobs.values():
            if now > job["deadline"] and not job["killed"]:
                job["killed"] = now  # SIGTERM: the run checkpoints and records "preempted"
                for p in job["pids"]:
                    _kill(p, signal.SIGTERM)
            elif job["killed"] and now > job["killed"] + STOP_GRACE_S:
                for p in job["pids"]:
                    _kill(p, signal.SIGKILL)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    serve()
