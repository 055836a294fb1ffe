"""A job's files under a sweep's ``logs/`` folder, found by parsing their submitit names: read
only, no scheduler asked. The backends, ``grid clean`` and the read-only sweep record use them."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .. import store

_JOB_FILE = re.compile(r"(?:(?P<task>\d+)_(?:log\.out|log\.err|result\.pkl)|submitted\.pkl)")


def job_files(folder: Path, job_ids: set[str]) -> dict[str, list[Path]]:
    """The submitit files under ``folder`` of each of ``job_ids`` (``<job_id>_<task>_log.err``,
    ``_log.out``, ``_result.pkl``, ``<job_id>_submitted.pkl``), sorted. Names are parsed and
    compared, never globbed from a job id (a ledger is not trusted: ``*`` or ``../x`` must match
    nothing), and symlinked folders are not followed."""
    out: dict[str, list[Path]] = {}
    for dirpath, _, names in os.walk(folder, followlinks=False):
        for name in names:
            for job in {name[:i] for i, c in enumerate(name) if c == "_"} & job_ids:
                if _JOB_FILE.fullmatch(name[len(job) + 1:]):
                    out.setdefault(job, []).append(Path(dirpath) / name)
    return {job: sorted(paths) for job, paths in out.items()}


def job_log_tail(folder: Path, job_id: str, lines: int = 5) -> str:
    """Last lines of a job's stderr log (``<job_id>_<task>_log.err``, as submitit names them):
    the first task's that says anything (a failed rank 0, not a rank its failure stopped)."""
    for p in job_files(folder, {str(job_id)}).get(str(job_id), []):
        if p.name.endswith("_log.err") and (text := _tail(p)):
            return "\n".join(text[-lines:])
    return ""


def _tail(p: Path, size: int = 64 * 1024) -> list[str]:
    """The lines of a log's last ``size`` bytes. Only a regular file at the name itself is read:
    a planted symlink (a secret elsewhere) or FIFO (a reader blocked for ever) reads as empty."""
    try:
        fd = store.open_regular(p)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as f:
        f.seek(max(0, os.fstat(fd).st_size - size))
        return f.read(size).decode(errors="replace").strip().splitlines()
