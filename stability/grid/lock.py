"""One controller per sweep: an OS file lock on ``_sweeps/<name>/lock`` held for the controller's
life, and a lease record (host, pid, since, heartbeat) beside it.

The file lock is what excludes a second controller on the same machine or a local filesystem;
the OS drops it when its holder dies. ``flock`` over NFS is unreliable on some clusters (the lock
may be local to each client), so the lease also counts: a lease from another host whose heartbeat
is younger than ``LEASE_TIMEOUT_S`` refuses the lock too; an older one (its host died or lost the
filesystem) is taken over, and the new lease says so. ``grid status`` and the dashboard never lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from ..errors import ConfigError

LEASE_TIMEOUT_S = 300.0  # a heartbeat older than this is a dead controller's
HEARTBEAT_S = 30.0


def _age(rec: dict) -> float:
    """Seconds since the lease's heartbeat; a lease without a readable one counts as dead, and so
    does one dated further ahead than the timeout (clock skew between hosts is seconds, not that:
    a future date is a corrupt or forged lease and must not lock a sweep forever)."""
    try:
        age = time.time() - float(rec.get("heartbeat"))
    except (TypeError, ValueError):
        return float("inf")
    return age if -LEASE_TIMEOUT_S < age < float("inf") else float("inf")


def read_lease(sweep_dir: Path) -> dict | None:
    """The sweep's lease record (``lease.json``), if one can be read (``store.read_json``: a
    symlink, FIFO, or JSON of another shape or depth reads as none)."""
    from ..store import read_json

    return read_json(sweep_dir / "lease.json", dict)


def controller_lease(sweep_dir: Path) -> dict | None:
    """The lease of the controller running the sweep now (host, pid, since, heartbeat), read
    without taking the lock; None when it was released or not renewed within ``LEASE_TIMEOUT_S``."""
    rec = read_lease(sweep_dir)
    return rec if rec is not None and rec.get("released") is None and _age(rec) < LEASE_TIMEOUT_S else None


class SweepLock:
    """``with SweepLock(sweep_dir, name):`` — raises ``ConfigError`` naming the holder when taken."""

    def __init__(self, sweep_dir: Path, name: str):
        self.dir, self.name = sweep_dir, name
        self.path, self.lease_path = sweep_dir / "lock", sweep_dir / "lease.json"
        self._fd: int | None = None
        self._extra: dict = {}
        self._beat = 0.0
        self.since = ""

    def holder(self) -> dict | None:
        """The lease record, if one can be read."""
        return read_lease(self.dir)

    def _taken(self, rec: dict | None) -> str:
        if not rec:
            return f"sweep {self.name!r} is being run by another controller (lock {self.path})"
        age = _age(rec)
        return (f"sweep {self.name!r} is being run by pid {rec.get('pid')} on {rec.get('host')} since "
                f"{rec.get('since')} (heartbeat {age:.0f} s ago): wait for it to end, or stop it; "
                f"`stability grid status` works meanwhile")

    def acquire(self) -> SweepLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        from ..store import open_nofollow, root_of

        fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, root_of(self.dir))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(self._taken(self.holder())) from None
        rec = self.holder()
        me = socket.gethostname()
        took_over = None
        if rec and rec.get("host") != me and rec.get("released") is None:
            if _age(rec) < LEASE_TIMEOUT_S:  # another host holds it (flock does not reach across NFS)
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise ConfigError(self._taken(rec))
            took_over = rec
        self._fd = fd
        self.since = datetime.now(UTC).isoformat(timespec="seconds")
        self._extra = {"took_over": took_over} if took_over else {}  # kept in every rewrite of the lease
        self._write()
        return self

    def _write(self, **extra) -> None:
        from ..store import write_text_atomic

        now = time.time()
        rec = {"host": socket.gethostname(), "pid": os.getpid(), "since": self.since, "heartbeat": now,
               **self._extra, **extra}
        write_text_atomic(self.lease_path, json.dumps(rec), within=self.dir)
        self._beat = now

    def beat(self) -> None:
        """Refresh the heartbeat (cheap to call often: it writes at most every ``HEARTBEAT_S``)."""
        if self._fd is not None and time.time() - self._beat >= HEARTBEAT_S:
            self._write()

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self._write(released=time.time())
        except OSError:
            pass  # the lock still goes: the OS drops it with the descriptor
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> SweepLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
