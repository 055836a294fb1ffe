"""The job ledger ``_sweeps/<name>/jobs.jsonl``: which job ran which run, on which backend.

Append-only JSON lines, each written whole in one write and fsync'ed (a killed writer can tear
only the last line, which the next writer ends first). Two kinds of record: a submission
``{"run_id", "job_id", "kind", "t"}`` by the controller, and ``{"run_id", "job_id", "event":
"row_unwritten", "error", "t"}`` by a job that failed and could not write its failed row (a full
disk, a read-only root), so the run shows as failed rather than running. No grid imports here:
jobs write to it too.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any

UNWRITTEN = "row_unwritten"


def failures(ledger: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``{run_id: error}`` of the ledger's runs whose latest job failed without a row."""
    return {r: rec["unwritten"] for r, rec in ledger.items() if "unwritten" in rec}


def ledger_path(sweep_dir: Path) -> Path:
    return sweep_dir / "jobs.jsonl"


def record_jobs(sweep_dir: Path, kind: str, items: list[tuple[str, str]]) -> None:
    """Append ``(run_id, job_id)`` submissions to the ledger."""
    now = time.time()
    _append(sweep_dir, [{"run_id": r, "job_id": str(j), "kind": kind, "t": now} for r, j in items])


def record_failure(sweep_dir: Path, run_id: str, job_id: str, error: str) -> None:
    """Note in the ledger that ``job_id`` ended ``run_id`` failed without writing its row (a full
    disk, a read-only results root): the run shows as failed with ``error``, not as running."""
    _append(sweep_dir, [{"run_id": run_id, "job_id": str(job_id), "event": UNWRITTEN, "error": error[:2000],
                         "t": time.time()}])


def _append(sweep_dir: Path, records: list[dict[str, Any]]) -> None:
    """One JSON object per line, all in one write, flushed to disk. A torn last line (a writer
    killed mid-append) is ended first, so a new record never lands on it."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    from ..store import open_nofollow, root_of  # lazily: pandas is not needed to read a ledger

    with os.fdopen(open_nofollow(ledger_path(sweep_dir), os.O_RDWR | os.O_CREAT | os.O_APPEND,
                                 root_of(sweep_dir)), "ab+") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                text = "\n" + text
        f.write(text.encode())
        f.flush()
        os.fsync(f.fileno())


def read_ledger(sweep_dir: Path, problems: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The latest submission of each run: ``{run_id: {"job_id", "kind", "t"}}``, plus
    ``"unwritten"`` (the error) when that job recorded a failure it could not write as a row. Lines that are not
    records (torn, not JSON, JSON of another shape) are skipped; ``problems`` gets one message per
    skipped line, naming it, or one for a ledger that is not a regular file (a symlink is not
    followed, a FIFO not waited on: read as empty)."""
    out: dict[str, dict[str, Any]] = {}
    for event, rec in _records(sweep_dir, problems):
        if event:
            sub = out.get(rec["run_id"])
            if sub is not None and sub["job_id"] == rec["job_id"]:
                sub["unwritten"] = rec["error"]
        else:
            out[rec["run_id"]] = rec
    return out


def jobs_by_run(sweep_dir: Path) -> dict[str, set[str]]:
    """Every job the ledger names for each run, earlier attempts too (a preempted or failed job
    whose run a later one finished): ``read_ledger`` keeps only the latest."""
    out: dict[str, set[str]] = {}
    for _, rec in _records(sweep_dir, None):
        out.setdefault(rec["run_id"], set()).add(rec["job_id"])
    return out


def _records(sweep_dir: Path, problems: list[str] | None) -> list[tuple[bool, dict[str, Any]]]:
    """The ledger's records in file order, ``(is a failure event, record)``, ``job_id`` as text;
    what is neither is skipped (and named in ``problems``, as ``read_ledger`` says)."""
    from ..store import parse_json, read_regular  # lazily, as in _append

    p = ledger_path(sweep_dir)
    try:  # the file itself only: a planted link's target would have its lines shown in problems
        data = read_regular(p)
    except FileNotFoundError:
        return []
    except OSError as e:
        if problems is not None:
            why = "a symbolic link, not followed" if e.errno == errno.ELOOP else e.strerror or str(e)
            problems.append(f"{p}: not read ({why}): no job is known from it")
        return []
    out = []
    for i, line in enumerate(data.decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        rec = parse_json(line, dict)
        ok = isinstance(rec, dict) and isinstance(rec.get("run_id"), str) and isinstance(rec.get("job_id"), str | int)
        if ok and rec.get("event") == UNWRITTEN and isinstance(rec.get("error"), str):
            out.append((True, rec | {"job_id": str(rec["job_id"])}))
            continue
        if not (ok and isinstance(rec.get("kind"), str)):
            if problems is not None:
                problems.append(f"{p} line {i}: not a job record, skipped ({line[:60]!r})")
            continue
        rec["job_id"] = str(rec["job_id"])
        out.append((False, rec))
    return out
