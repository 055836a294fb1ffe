"""One writer per run: the process that trains a run holds an OS lock on its owner file.

Two processes can be given the same run: a controller that misread its ledger resubmits a
live run, two `stability train` commands name the same config, Slurm requeues a job whose first
incarnation still runs on a node that lost contact. Whoever takes ``_sweeps/<sweep>/owners/
<run_id>.lock`` first trains the run and writes its rows; the other ends at once with
:class:`RunTaken`, before it writes anything, so the store never holds rows from two writers.
The lock file holds the owner's record (job id, host, pid, since); the OS drops the lock when
its holder dies, even by SIGKILL. Lock files stay (a few bytes each): removing one while
another process waits on it would let two processes hold "the" lock. Over NFS ``flock`` is
emulated with POSIX locks, which reach across clients with NFSv4 or NLM; on a filesystem where
they do not, this guard is local to each node (as the sweep lock, ``grid/lock.py``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .. import store
from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

    from ..config import RunConfig
    from .distributed import Dist

TAKE_TIMEOUT_S = 10.0  # a prober holds it for microseconds; a requeued job's old self may be exiting


class RunTaken(ConfigError):
    """Another live process trains this run: this one leaves it alone (the message names it)."""


class RunDone(Exception):
    """The run already has a result (completed or diverged), found under its lock: ``row`` is
    its runs row. Training it again needs ``rerun``."""

    def __init__(self, row: dict):
        super().__init__(f"run {row.get('run_id')} already has a result ({row.get('status', 'done')})")
        self.row = row


def _record(fd: int) -> dict | None:
    try:
        return store.parse_json(os.pread(fd, 4096, 0), dict)
    except OSError:
        return None


def _describe(run_id: str, rec: dict | None) -> str:
    if not rec:
        return f"run {run_id} is being trained by another process"
    who = (f"job {rec['job_id']} (pid {rec.get('pid')} on {rec.get('host')})" if rec.get("job_id")
           else f"pid {rec.get('pid')} on {rec.get('host')} (a `stability train`)")
    return f"run {run_id} is being trained by {who} since {rec.get('since')}: this process leaves it alone"


class RunLock:
    """``with RunLock(root, sweep, run_id, job_id):`` — raises :class:`RunTaken` when held."""

    def __init__(self, root: str | os.PathLike, sweep: str, run_id: str, job_id: str | None = None):
        self.path, self.run_id, self.job_id = store.owner_path(root, sweep, run_id), run_id, job_id
        self.root, self.sweep = root, sweep
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        # an owners/ folder linked into another sweep would lock (and block) that sweep's run of the same id
        store.in_own(self.path.parent, store.sweep_dir(self.root, self.sweep), "the run's owner lock is not taken")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + TAKE_TIMEOUT_S
        fd = store.open_nofollow(self.path, os.O_RDWR | os.O_CREAT, self.root)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    rec = _record(fd)
                    os.close(fd)
                    raise RunTaken(_describe(self.run_id, rec)) from None
                time.sleep(0.05)
        rec = {"job_id": self.job_id, "host": socket.gethostname(), "pid": os.getpid(),
               "since": datetime.now(UTC).isoformat(timespec="seconds")}
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(rec).encode(), 0)
            # What a killed writer of this run left (temp files of a checkpoint, a result): the owner's
            # to remove at any age, since no other live process writes this run while we hold it. It
            # refuses a folder of the run linked out of the sweep's own: then the lock goes at once.
            store.remove_run_temps(self.root, self.sweep, self.run_id)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def run_owner(root: str | os.PathLike, sweep: str, run_id: str) -> dict | None:
    """The record of the live process that trains ``run_id`` (None when no process holds it)."""
    path = store.owner_path(root, sweep, run_id)
    try:
        store.in_own(path.parent, store.sweep_dir(root, sweep), "")
        fd = store.open_regular(path)  # a planted link or FIFO is no owner (nor waited on)
    except (OSError, ConfigError):  # nor is another sweep's lock, reached through a linked owners/
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _record(fd) or {}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def refuse_if_done(cfg: RunConfig, d: Dist, device: torch.device, rerun: bool = False) -> None:
    """:class:`RunDone` when the run has a result (completed or diverged) and ``rerun`` is off:
    read by the lock holder, and agreed on by every rank of a distributed run."""
    import torch

    from .distributed import all_reduce

    if rerun:
        return
    rows = store.read_table(cfg.results, "runs", sweep=cfg.sweep, run_ids=[cfg.run_id]) if d.is_main else None
    done = rows[rows.status.isin(store.DONE)] if rows is not None else None
    row = done.drop(columns="sweep").iloc[-1].to_dict() if done is not None and len(done) else None
    if d.enabled and all_reduce(torch.tensor(float(row is not None), device=device), d, "max").item() and row is None:
        row = {"run_id": cfg.run_id}  # the lock holder (another rank) found the result
    if row is not None:
        raise RunDone(row)
