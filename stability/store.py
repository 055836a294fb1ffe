"""The parquet results store: four tables, hive-partitioned by sweep, one file per run.

Layout (``root`` is the results folder)::

    root/<table>/sweep=<name>/<run_id>.parquet                 one run's rows (written atomically)
    root/<table>/sweep=<name>/<run_id>.chunk-<step>.parquet    a running run's streamed rows
    root/<table>/sweep=<name>/part-<id>.parquet                compacted rows of many runs

A running run appends its epochs/steps/grad_norms rows as chunks (:func:`append_rows`, each
holding the rows before ``<step>`` that the previous chunks do not), so readers see its curves
while it trains and a checkpoint never carries rows. When it ends, :func:`finish_rows` merges the
chunks into ``<run_id>.parquet`` and removes them. Every rows file is written by temp file and
rename. Precedence makes every row readable exactly once in each state a crash can leave: a run's
own file wins over its chunks, and either wins over the run's rows in a compacted file (so
rewriting or rerunning a run after compaction never duplicates it). Plain duckdb/pandas globs see
the same rows except in the instant between writing a run's file and removing its chunks (as
in :func:`compact`). A resumed run first drops its rows past its checkpoint (:func:`truncate_rows`).
``sweep`` lives in the path only (hive partition), never inside files.
No torch here: notebooks and the dashboard import this module cheaply.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ConfigError


class CorruptFiles(ConfigError):
    """Result files that cannot be read; the message names each file and why (exit 2 in the CLI)."""


STALE_TMP_S = 600.0  # no write of one file takes ten minutes: an older temp file is a killed writer's
# 2: EMA errors and the collapsed flag; 3: job_id, the job that wrote the row; 4: validation
# losses (final, at init, per epoch), log Z per step, attention logits/entropy and grad/update
# RMS per traced layer (older files read them all as null); 5: the held-out test split's errors
# and per-image correctness (``test_split`` runs); 6: the pruner's verdict (``pruned`` runs, and
# runs a rerun continued past it: ``pruned_at_step``, ``prune_rule``, ``prune_signals``); 7: how
# the step executed (``compiled``, ``compile_mode``, ``optimizer_impl``, ``amp_dtype``); 8: the data
# it trained on (``data_classes``, ``train_images``, ``val_images``: data_root is not in the run id);
# 9: torch's CPU threads (``threads``)
SCHEMA_VERSION = 9
# The runs row's record of what a run's data held: classes, training and validation images
DATA_COLUMNS = ("data_classes", "train_images", "val_images")


class RunStatus(StrEnum):
    """Every status a run can have, in display order. A runs row holds one of the first six
    (``WRITTEN``); ``pending`` (not started: its job is queued, or it was not submitted yet) and
    ``missing`` (its job ended without a result) are what the grid derives for a planned run that
    has no current row of its own."""

    COMPLETED = "completed"
    DIVERGED = "diverged"  # non-finite loss or loss > divergence_factor x ln(classes): a result
    PRUNED = "pruned"  # stopped by the run's pruner as doomed (checkpoint kept: a rerun continues it)
    FAILED = "failed"  # an exception (bad data root, OOM ...): not a result
    PREEMPTED = "preempted"  # stopped by a signal after saving a checkpoint; resumes
    RUNNING = "running"
    PENDING = "pending"
    MISSING = "missing"


WRITTEN = (RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.PRUNED, RunStatus.FAILED, RunStatus.PREEMPTED,
           RunStatus.RUNNING)
DONE = (RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.PRUNED)  # results: a grid does not train them again
TERMINAL = (*DONE, RunStatus.FAILED)  # nothing more will happen without a rerun

_I, _F, _S, _T, _B = pa.int64(), pa.float64(), pa.string(), pa.timestamp("us", tz="UTC"), pa.binary()

SCHEMAS: dict[str, pa.Schema] = {
    "runs": pa.schema([
        ("run_id", _S), ("status", _S), ("model", _S), ("stem", _S), ("optimizer", _S),
        ("lr", _F), ("wd", _F), ("epochs", _I), ("batch_size", _I), ("warmup_epochs", _F),
        ("seed", _I), ("dataset", _S),
        # what the data held (classes, training and validation images): two runs of one sweep on
        # other data are two strata (``analysis.with_design``), and a rerun cannot swap it silently
        *((c, _I) for c in DATA_COLUMNS),
        ("params", _I), ("flops", _I), ("top1_err", _F),
        ("top5_err", _F), ("best_top1_err", _F), ("ema_top1_err", _F), ("ema_top5_err", _F),
        ("final_train_loss", _F), ("final_val_loss", _F), ("init_val_loss", _F), ("init_top1_err", _F),
        ("collapsed", pa.bool_()),
        # the test split (``test_split`` > 0): final errors, and which images were right
        # (``np.packbits`` of one bool per image in the split's order; ``analysis.correct_of``)
        ("test_top1_err", _F), ("test_ema_top1_err", _F), ("test_images", _I), ("test_correct", _B),
        ("test_ema_correct", _B),
        ("diverged_at_step", _I),
        # the pruner's verdict: the step it fired at, its rule, the signal values (JSON); kept on
        # the row of a run that ``--rerun`` continued past it (pruner.py)
        ("pruned_at_step", _I), ("prune_rule", _S), ("prune_signals", _S),
        ("n_spikes", _I), ("wall_time_s", _F), ("device", _S),
        # how the step executed (trainer/execution.py): torch.compile and its mode (null when not
        # compiled), the optimizer's implementation (fused | foreach | loop), the autocast dtype
        # (null: fp32); older files read them as null
        ("compiled", pa.bool_()), ("compile_mode", _S), ("optimizer_impl", _S), ("amp_dtype", _S),
        ("threads", _I),  # torch's CPU threads: on CPU they split the sums (bit-identity needs the same)
        ("world_size", _I), ("host", _S), ("slurm_job_id", _S), ("job_id", _S), ("git_sha", _S),
        ("stability_version", _S), ("config_json", _S), ("started_at", _T), ("finished_at", _T),
        ("error", _S), ("schema_version", _I),
    ]),
    "epochs": pa.schema([
        ("run_id", _S), ("epoch", _I), ("train_loss", _F), ("train_top1_err", _F),
        ("val_top1_err", _F), ("val_top5_err", _F), ("val_ema_top1_err", _F),
        ("val_ema_top5_err", _F), ("val_loss", _F), ("lr", _F), ("time_s", _F),
        ("schema_version", _I),
    ]),
    "steps": pa.schema([
        ("run_id", _S), ("step", _I), ("epoch", _I), ("loss", _F), ("lr", _F),
        ("grad_norm", _F), ("log_z", _F), ("schema_version", _I),
    ]),
    "grad_norms": pa.schema([
        ("run_id", _S), ("step", _I), ("layer", _S), ("depth", _I), ("grad_norm", _F),
        ("param_norm", _F), ("update_ratio", _F), ("grad_rms", _F), ("update_rms", _F),
        ("attn_logit_max", _F), ("attn_entropy", _F), ("schema_version", _I),
    ]),
}
TABLES = tuple(SCHEMAS)


def plain_name(kind: str, name: str) -> str:
    """``name`` (a sweep, a run id: often read from a results file) as one path component;
    ``ValueError`` for one that could lead elsewhere (``..``, a ``/``), so no path is built from it."""
    if not is_plain(name):
        raise ValueError(f"{kind} {name!r} is not a plain name: no path is built from it")
    return name


def is_plain(name: object) -> bool:
    """Whether ``name`` is one path component that leads nowhere else (``plain_name``)."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def table_dir(root: str | os.PathLike, table: str, sweep: str) -> Path:
    return Path(root) / table / f"sweep={plain_name('sweep', sweep)}"


def sweeps(root: str | os.PathLike, table: str = "runs") -> list[str]:
    """The sweeps that have a folder of ``table`` under ``root``, sorted."""
    base = Path(root) / table
    found = (d.name[len("sweep="):] for d in base.glob("sweep=*") if d.is_dir()) if base.is_dir() else ()
    return sorted(name for name in found if is_plain(name))  # a planted sweep=.. folder is no sweep


def sweep_dir(root: str | os.PathLike, sweep: str) -> Path:
    """A sweep's own record under a results root: spec, plan, job ledger, checkpoints, logs."""
    return Path(root) / "_sweeps" / plain_name("sweep", sweep)


def root_of(sweep_folder: str | os.PathLike) -> Path:
    """The results root a sweep's own folder (``sweep_dir``: ``<root>/_sweeps/<name>``) lies in."""
    return Path(sweep_folder).absolute().parents[1]


def logs_dir(root: str | os.PathLike, sweep: str) -> Path:
    """A sweep's job logs: ``<job_id>_<task>_log.{out,err}`` (submitit's names, every backend)."""
    return sweep_dir(root, sweep) / "logs"


def checkpoint_path(root: str | os.PathLike, sweep: str, run_id: str) -> Path:
    """A run's checkpoint while it is unfinished (removed when it completes or diverges: the
    results are the record; a failed run keeps it, so a rerun resumes)."""
    return sweep_dir(root, sweep) / "checkpoints" / f"{plain_name('run', run_id)}.pt"


def owner_path(root: str | os.PathLike, sweep: str, run_id: str) -> Path:
    """The lock file the process that trains a run holds (``trainer/run_lock.py``)."""
    return sweep_dir(root, sweep) / "owners" / f"{plain_name('run', run_id)}.lock"


def progress_path(root: str | os.PathLike, sweep: str, run_id: str) -> Path:
    """A running run's progress note (epoch, step, last errors), rewritten every epoch and
    removed when the run completes or diverges: what the dashboard shows of a running run."""
    return sweep_dir(root, sweep) / "progress" / f"{plain_name('run', run_id)}.json"


def write_progress(root: str | os.PathLike, sweep: str, run_id: str, note: dict) -> None:
    write_text_atomic(progress_path(root, sweep, run_id), json.dumps(note), within=sweep_dir(root, sweep))


PROGRESS_FIELDS = {"epoch": int, "epochs": int, "step": int, "total_steps": int, "val_top1_err": float,
                   "updated_at": str}  # what a reader of a note may rely on (train_loss may be NaN: JSON's)


def read_progress(root: str | os.PathLike, sweep: str, run_id: str) -> dict | None:
    """The progress note of a running run: None when there is none, it cannot be read, or it
    lacks a field of ``PROGRESS_FIELDS`` of that type (``sweep`` and ``run_id`` may come from a
    results file: a name that is not plain reads nothing)."""
    try:
        note = read_json(progress_path(root, sweep, run_id), dict)
    except ValueError:  # a name that is not plain
        return None
    ok = note is not None and all(
        type(note.get(k)) is t or (t is float and type(note.get(k)) is int) for k, t in PROGRESS_FIELDS.items())
    return note if ok else None


def check_root(root: str | os.PathLike) -> None:
    """``NotADirectoryError`` naming ``root`` when a file is in the way of the results root (a
    reader would otherwise see an empty root and call every run pending)."""
    if Path(root).exists() and not Path(root).is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder (a file is in the way of the results root)", str(root))


def check_writable(root: str | os.PathLike) -> None:
    """Fail now, not after set-up and training, when ``root`` cannot take files (a file in the
    way, read-only, no permission, full): the ``OSError`` names the path."""
    check_root(root)
    with atomic_path(Path(root) / ".write-check") as tmp:
        tmp.write_bytes(b"ok")
    (Path(root) / ".write-check").unlink(missing_ok=True)


def open_regular(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """``os.open`` of the regular file at ``path`` itself, never blocking: a symlink planted at the
    name is ``OSError`` ``ELOOP`` (not followed), a FIFO, device or socket ``OSError`` ``EINVAL``
    (not waited on: opening a FIFO to read blocks until a writer comes, possibly for ever)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or socket): not opened", str(path))
        os.set_blocking(fd, True)  # O_NONBLOCK was for the open only: no descriptor handed on carries it
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike) -> bytes:
    """The bytes of the regular file at ``path`` itself (``open_regular``); ``OSError`` otherwise."""
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read()


def parse_json(text: str | bytes, kind: type) -> Any:
    """``text`` parsed as JSON when it is one value of type ``kind``, else None: a reader of an
    untrusted record gets what it expects or nothing (no ``RecursionError`` from nesting either)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return value if isinstance(value, kind) else None


def read_json(path: str | os.PathLike, kind: type) -> Any:
    """A small untrusted JSON record under a results root (a lease, a progress note, a check
    record): its value when the regular file at ``path`` holds one of type ``kind``; None when it
    is missing, a symlink, a FIFO or other non-file, unreadable, not JSON, too deep or another type."""
    try:
        return parse_json(read_regular(path), kind)
    except OSError:
        return None


READABLE = "readable.json"  # in a sweep's folder: {file: [size, mtime_ns, inode]} whose footer read


def unreadable(root: str | os.PathLike, sweep: str) -> list[tuple[Path, str]]:
    """A sweep's result files that cannot be read whole (truncated, garbage, empty, a page whose
    bytes no longer match its checksum), with why, so a controller can check a whole sweep at start. A file
    whose size, mtime and inode match the last check's record of a good read is not read again
    (results are replaced whole, never edited in place: any rewrite changes the inode or mtime);
    the record is kept best-effort in ``_sweeps/<sweep>/readable.json`` when that folder exists."""
    root, own = Path(root), sweep_dir(root, sweep)
    record = own / READABLE
    known = read_json(record, dict) or {}  # a record of another shape: every file checked afresh
    good: dict[str, list[int]] = {}
    out = []
    for table in TABLES:
        for p in _sweep_files(root, table, sweep).get(sweep, []):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue  # replaced or compacted away meanwhile
            except OSError as e:
                out.append((p, _why(e)))
                continue
            key, sig = str(p.relative_to(root)), [st.st_size, st.st_mtime_ns, st.st_ino]
            if known.get(key) != sig:
                try:  # only the read blames the file: nothing the record holds can
                    _read_checked(p, table)
                except FileNotFoundError:
                    continue
                except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
                    out.append((p, _why(e)))
                    continue
            good[key] = sig
    if good != known and record.parent.is_dir():
        # best effort: a read-only folder, or one linked out of the sweep's, is checked in full next time
        with contextlib.suppress(OSError, ConfigError):
            write_text_atomic(record, json.dumps(good, separators=(",", ":")), within=own)
    return out


def damaged(root: str | os.PathLike, sweep: str, read_errors: list[str]) -> dict[Path, str]:
    """``{file: why}`` of a sweep's corrupt result files: those the full check finds
    (:func:`unreadable`) and those a read just failed on (``read_table``'s ``errors`` lines,
    ``"<file>: <why>"``: a file the cached check passed before, damaged in place since)."""
    found = dict(unreadable(root, sweep))
    for e in read_errors:
        path, _, why = e.partition(": ")
        found.setdefault(Path(path), " ".join(why.split())[:200])
    return found


def quarantine(root: str | os.PathLike, sweep: str, path: Path) -> Path:
    """Move a sweep's file (under its own folder or one of its table folders) into
    ``_sweeps/<sweep>/quarantine/`` (kept for a post-mortem, out of every reader's way); returns
    where it went. ``ConfigError`` when the file, or the quarantine, resolves elsewhere: a folder
    linked to another sweep's, or out of the root, is never moved from nor into."""
    own, parts = sweep_dir(root, sweep), path.relative_to(root).parts if path.is_relative_to(root) else ()
    if path.is_relative_to(own):  # checkpoints/<run>.pt, not _sweeps/<name>/...
        home, rel = own, path.relative_to(own)
    elif len(parts) > 2 and parts[0] in TABLES and parts[1] == f"sweep={sweep}":
        home, rel = table_dir(root, parts[0], sweep), Path(*parts)
    else:
        raise ConfigError(f"{path} is not a file of sweep {sweep!r}: not moved to its quarantine")
    dest = own / "quarantine" / rel.parent / f"{path.name}.{int(time.time())}"
    # a move out of the root is a delete there, one into it a write elsewhere; one from another
    # sweep's folder (a link inside the root) would take that sweep's result
    in_own(path.parent, home, f"{path} not moved")
    in_own(own / "quarantine", own, f"{path} not moved")  # before its folders are made
    dest.parent.mkdir(parents=True, exist_ok=True)
    in_own(dest.parent, own, f"{path} not moved")
    os.replace(path, dest)
    return dest


DIGEST_KEY = b"stability.digest"


def digest(df: pd.DataFrame) -> str:
    """A hash of a frame's values and column names: stored in each result file's metadata when it
    is written and compared when a file is checked (``unreadable``). Page checksums cover page
    data only; a flipped byte in a page header can turn a value into null without any error."""
    rows = pd.util.hash_pandas_object(df, index=False).to_numpy()
    return hashlib.sha256(rows.tobytes() + "\0".join(map(str, df.columns)).encode()).hexdigest()[:32]


def with_digest(t: pa.Table) -> pa.Table:
    """``t`` with the digest of its values (as a reader will get them) in its schema metadata."""
    return t.replace_schema_metadata({**(t.schema.metadata or {}), DIGEST_KEY: digest(t.to_pandas()).encode()})


def check_digest(t: pa.Table) -> None:
    """``ValueError`` when a whole table read back does not hash to the digest it was written
    with (files written before digests have none and pass)."""
    want = (t.schema.metadata or {}).get(DIGEST_KEY)
    if want is not None and digest(t.to_pandas()).encode() != want:
        raise ValueError("its values do not match the digest they were written with (corrupt)")


def to_arrow(table: str, rows: pd.DataFrame | list[dict]) -> pa.Table:
    """Rows -> an arrow table with exactly ``SCHEMAS[table]``: missing columns become null, and a
    column the schema does not have is an error (a misspelt key must not become a silent null)."""
    schema = SCHEMAS[table]
    df = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows.copy()
    unknown = sorted(set(df.columns) - set(schema.names))
    if unknown:
        raise ValueError(f"{table}: unknown column(s) {', '.join(map(str, unknown))} "
                         f"(allowed: {', '.join(schema.names)})")
    df["schema_version"] = SCHEMA_VERSION
    for name in schema.names:
        if name not in df.columns:
            df[name] = None
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


@contextmanager
def atomic_path(path: str | os.PathLike, within: str | os.PathLike | None = None) -> Iterator[Path]:
    """A dot-prefixed temp path beside ``path`` to write to; on success it is renamed over
    ``path`` (a reader sees the old file or the new one, never half of one), on any failure it
    is removed (no stale temp file filling a disk). A temp file of the same target left by a
    killed writer (SIGKILL skips ``finally``) is removed by the next successful write once it is
    older than ``STALE_TMP_S``. Dot-prefixed names are skipped by pyarrow datasets and by
    '*.parquet' globs. ``within``: a sweep's own folder (``in_own``) that ``path``'s folder must
    resolve under, checked before anything is made, written or removed (``ConfigError``); by
    default the ``<root>/_sweeps/<name>`` that ``path`` is named under, if any (a checkpoint, a
    plan, a lease: none is written through a link there)."""
    path = Path(path)
    within = within if within is not None else next(
        (a for a in path.absolute().parents if a.parent.name == "_sweeps"), None)
    if within is not None:
        in_own(path.parent, Path(within), f"{path.name} not written")
    path.parent.mkdir(parents=True, exist_ok=True)
    if within is not None:  # again: a link planted while its folders were made
        in_own(path.parent, Path(within), f"{path.name} not written")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    now = time.time()
    for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - old.stat().st_mtime > STALE_TMP_S:
                old.unlink()
        except OSError:
            pass  # gone already, or not ours to remove


def remove_run_temps(root: str | os.PathLike, sweep: str, run_id: str) -> int:
    """Remove the temp files a killed writer of ``run_id`` left (its result files and chunks,
    checkpoint and progress note), whatever their age: only the run's owner calls this, under its
    lock, so no live writer of this run can own them. Returns how many went. ``ConfigError``
    naming the folder, before anything is removed, when one of them resolves out of the sweep's
    own folder (a symlink planted there: the run would write and delete elsewhere)."""
    folders = [table_dir(root, t, sweep) for t in TABLES]
    names = [f"{glob.escape(run_id)}.*parquet"] * len(folders)  # its file and its chunks
    owns = list(folders)
    folders += [checkpoint_path(root, sweep, run_id).parent, progress_path(root, sweep, run_id).parent]
    names += [f"{glob.escape(run_id)}.pt", f"{glob.escape(run_id)}.json"]
    owns += [sweep_dir(root, sweep)] * 2
    for folder, own in zip(folders, owns, strict=True):
        in_own(folder, own, f"nothing of run {run_id} written or removed (nothing under a results root is "
                            "trusted: remove the link)")
    removed = 0
    for folder, name in zip(folders, names, strict=True):
        for old in folder.glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                unlink_under(old, folder)
                removed += 1
    return removed


def unlink_under(path: Path, folder: Path) -> None:
    """Remove ``path`` only when it lies under ``folder`` once both are resolved (symlinked
    folders followed; a symlink itself is removed, never its target): ``PermissionError``
    naming both otherwise. Every delete of a file found under a results root goes through here."""
    where = path.parent.resolve(strict=True) / path.name
    if not where.is_relative_to(folder.resolve(strict=True)):
        raise PermissionError(errno.EPERM, f"not under {folder} (resolved: {where}); not removed", str(path))
    where.unlink()


def in_root(folder: Path, root: str | os.PathLike, outcome: str) -> None:
    """``ConfigError`` (ending in ``outcome``: what was not done) when ``folder`` resolves, after
    symlinks, outside the results root ``root``: the one check of every write, move and delete
    that follows a path under a root (``unlink_under`` raises ``PermissionError`` instead)."""
    where = folder.resolve()
    if not where.is_relative_to(Path(root).resolve()):
        raise ConfigError(f"{folder} leads out of the results root (to {where}): {outcome}")


def in_own(path: Path, own: Path, outcome: str) -> Path:
    """``path`` resolved, after symlinks; ``ConfigError`` (ending in ``outcome``) when that is not
    under ``own``, a sweep's own folder (``sweep_dir``, ``table_dir``: two levels under its results
    root), where it is named: the root itself may be a link, nothing below it may lead elsewhere,
    not out of the root nor into another sweep's folder. The check of every write and delete of a
    sweep's files (``in_root`` is the root-wide one)."""
    own = Path(own).absolute()
    root, where = own.parents[1].resolve(), Path(path).resolve()
    if not where.is_relative_to(root):  # the plainer message where it says it all
        raise ConfigError(f"{path} leads out of the results root (to {where}): {outcome}")
    if not where.is_relative_to(root / own.parent.name / own.name):
        raise ConfigError(f"{path} resolves to {where}, outside {own} (a symbolic link on its way): {outcome}")
    return where


def opened_by_name(path: Path, own: Path, outcome: str) -> Path:
    """``path``, for a library that opens it by name and follows a link there (SQLite): its
    folder must resolve under the sweep's own folder ``own`` (``in_own``), and it must be a
    regular file or nothing; else ``ConfigError`` (ending in ``outcome``) naming it."""
    in_own(path.parent, own, outcome)
    if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
        raise ConfigError(f"{path} is not a regular file (a symbolic link, FIFO or folder): {outcome} "
                          "(nothing under a results root is trusted); remove it")
    return path


def discard(path: Path, root: str | os.PathLike) -> None:
    """Remove ``path`` when it is there and lies under ``root`` once resolved (``unlink_under``);
    one that a planted symlinked folder puts elsewhere is left alone, and so is a missing one."""
    with contextlib.suppress(FileNotFoundError, PermissionError):
        unlink_under(path, Path(root))


def open_nofollow(path: str | os.PathLike, flags: int, root: str | os.PathLike, mode: int = 0o644) -> int:
    """``os.open`` of a file under the results root ``root`` that is written in place (a lock, a
    ledger, a log), never through a symlink: not one planted at its name (``O_NOFOLLOW``), nor a
    folder on its way that leads out of the root. Either would write outside the root.
    ``ConfigError`` naming the link (the CLI's one line, exit 2)."""
    in_root(Path(path).parent, root, f"{Path(path).name} not written there (nothing under a results root is trusted)")
    try:
        return open_regular(path, flags, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfigError(f"{path} is a symbolic link: not followed (nothing under a results root is "
                              "trusted); remove it") from None
        if e.errno == errno.EINVAL and os.path.lexists(path):  # a FIFO would block or swallow what we write
            raise ConfigError(f"{path} is not a regular file (a FIFO, device or socket): not used (nothing "
                              "under a results root is trusted); remove it") from None
        raise


def _atomic_write(table: pa.Table, path: Path) -> None:
    # path's folder is its sweep's table folder: a link there to another sweep's is refused
    with atomic_path(path, within=path.parent) as tmp:  # page checksums and a digest: a flipped byte reads as corruption
        pq.write_table(with_digest(table), tmp, write_page_checksum=True)


def write_text_atomic(path: str | os.PathLike, text: str, within: str | os.PathLike | None = None) -> Path:
    """Write ``text`` to ``path`` atomically (``atomic_path``, ``within`` the folder it must resolve under)."""
    with atomic_path(path, within) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_run(
    root: str | os.PathLike,
    sweep: str,
    run_id: str,
    tables: dict[str, pd.DataFrame | list[dict]],
) -> None:
    """Write (or overwrite) one run's rows, one table at a time, each file atomically.

    ``runs`` is written last so that a reader who sees a finished run also sees its curves.
    """
    for name in sorted(tables, key=lambda t: t == "runs"):
        _atomic_write(to_arrow(name, tables[name]), table_dir(root, name, sweep) / f"{plain_name('run', run_id)}.parquet")


ROW_TABLES = ("epochs", "steps", "grad_norms")  # what a run streams; its one runs row is rewritten
CHUNK = ".chunk-"  # <run_id>.chunk-<step>.parquet: the rows before <step> the earlier chunks lack


def is_chunk(p: Path) -> bool:
    return CHUNK in p.name


def run_of(p: Path) -> str:
    """The run a per-run file (its own or a chunk) belongs to."""
    return p.name.split(CHUNK)[0].removesuffix(".parquet")


def run_chunks(root: str | os.PathLike, table: str, sweep: str, run_id: str) -> list[Path]:
    """A run's chunks of ``table``, in step order (the step in the name is zero-padded)."""
    return sorted(table_dir(root, table, sweep).glob(f"{glob.escape(run_id)}{CHUNK}*.parquet"))


def _chunk_path(root: str | os.PathLike, table: str, sweep: str, run_id: str, to_step: int) -> Path:
    return table_dir(root, table, sweep) / f"{plain_name('run', run_id)}{CHUNK}{to_step:010d}.parquet"


def run_files(root: str | os.PathLike, sweep: str, run_id: str) -> list[Path]:
    """Every file of a run's results (its own files and chunks, all tables), and its checkpoint
    when it has chunks: what goes to quarantine together when one is unreadable (a resume whose
    streamed rows went would leave a gap, so its checkpoint goes with them)."""
    own = [table_dir(root, t, sweep) / f"{plain_name('run', run_id)}.parquet" for t in TABLES]
    chunks = [c for t in ROW_TABLES for c in run_chunks(root, t, sweep, run_id)]
    ckpt = [checkpoint_path(root, sweep, run_id)] if chunks else []
    return [p for p in (*own, *chunks, *ckpt) if p.exists()]


def append_rows(root: str | os.PathLike, sweep: str, run_id: str, to_step: int,
                rows: dict[str, pd.DataFrame | list[dict]]) -> None:
    """Stream a running run's new rows (all before step ``to_step``) as one chunk per table,
    each atomically; ``steps`` last, so a reader that sees the new steps (the dashboard keys its
    cache on that table) sees the rest too. Tables without new rows write nothing."""
    for table in sorted((t for t in rows if len(rows[t])), key=lambda t: t == "steps"):
        _atomic_write(to_arrow(table, rows[table]), _chunk_path(root, table, sweep, run_id, to_step))


def _read_checked(p: Path, table: str) -> pa.Table:
    """One result file of ``table``, whole and checked: every page against its checksum, the values
    against the digest they were written with, and, when a column is not of its schema's type (a
    foreign writer's), the typed read every reader makes (``_read_typed``): a file that cannot be
    parsed as ``table`` is as unreadable as a truncated one."""
    t = pq.read_table(pa.OSFile(str(p)), page_checksum_verification=True)
    check_digest(t)
    schema = SCHEMAS[table]
    if any(f.name in schema.names and f.type != schema.field(f.name).type for f in t.schema):
        _read_typed(p, table)
    return t


def _read_typed(p: Path, table: str, columns: list[str] | None = None, filters: list | None = None) -> pa.Table:
    """A result file as the readers see it: cast to ``SCHEMAS[table]`` (missing columns null)."""
    return pq.read_table(p, columns=columns, schema=SCHEMAS[table], filters=filters, page_checksum_verification=True)


def _why(e: Exception) -> str:
    """An unreadable file's reason on one line."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _read_rows(p: Path, table: str) -> pd.DataFrame:
    return _read_checked(p, table).to_pandas()


def truncate_rows(root: str | os.PathLike, sweep: str, run_id: str, step: int, epoch: int
                  ) -> tuple[int, list[Path]]:
    """Drop a run's streamed rows from step ``step`` on (epochs rows from ``epoch``): what its
    checkpoint does not cover (streamed after the save, by a killed or failed attempt), so a
    resumed run writes each row once. A finished attempt's own file (a rerun's predecessor)
    becomes a chunk of the rows it keeps, an empty one from step 0, which also keeps the run's
    compacted rows hidden. An unreadable chunk is quarantined. Returns (rows dropped, files
    quarantined)."""
    dropped, moved = 0, []
    for table in ROW_TABLES:
        d, col = table_dir(root, table, sweep), "epoch" if table == "epochs" else "step"
        limit = epoch if table == "epochs" else step
        final, chunks = d / f"{run_id}.parquet", run_chunks(root, table, sweep, run_id)
        if final.exists():  # the file hides the chunks: removing them first changes no reader's view
            for c in chunks:
                unlink_under(c, d)
            chunks = [final]
        for p in chunks:
            try:
                df = _read_rows(p, table)
            except Exception:  # noqa: BLE001 - pyarrow raises several types for bad files
                moved.append(quarantine(root, sweep, p))
                continue
            keep = df[df[col] < limit]
            dropped += len(df) - len(keep)
            if p == final:  # the chunk first: the file wins over it until the file goes
                _atomic_write(to_arrow(table, keep), _chunk_path(root, table, sweep, run_id, step))
                unlink_under(p, d)
            elif len(keep) < len(df):  # removed first: a reader may miss these rows a moment, never doubles them
                unlink_under(p, d)
                if len(keep):
                    _atomic_write(to_arrow(table, keep), _chunk_path(root, table, sweep, run_id, step))
        if step == 0 and not run_chunks(root, table, sweep, run_id) and any(d.glob("part-*.parquet")):
            _atomic_write(to_arrow(table, []), _chunk_path(root, table, sweep, run_id, 0))
    return dropped, moved


def finish_rows(root: str | os.PathLike, sweep: str, run_id: str) -> dict[str, pd.DataFrame]:
    """Merge a run's chunks into its own file per table (each written atomically before its
    chunks are removed: the file wins over them meanwhile); returns the merged rows. A chunk that
    cannot be read is ``CorruptFiles`` naming it, before anything is written."""
    frames, errors = {}, []
    for table in ROW_TABLES:
        parts = []
        for c in run_chunks(root, table, sweep, run_id):
            try:
                parts.append(_read_rows(c, table))
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
                errors.append(f"{c}: {_why(e)}")
        parts = [p for p in parts if len(p)]
        frames[table] = pd.concat(parts, ignore_index=True) if parts else SCHEMAS[table].empty_table().to_pandas()
    if errors:
        raise CorruptFiles(f"run {run_id}: its streamed rows cannot be merged: " + "; ".join(errors))
    for table, df in frames.items():
        chunks = run_chunks(root, table, sweep, run_id)
        _atomic_write(to_arrow(table, df), table_dir(root, table, sweep) / f"{run_id}.parquet")
        for c in chunks:
            unlink_under(c, table_dir(root, table, sweep))
    return frames


@dataclass
class Results:
    """The four tables of a results root as pandas DataFrames (``sweep`` column included)."""

    runs: pd.DataFrame
    epochs: pd.DataFrame
    steps: pd.DataFrame
    grad_norms: pd.DataFrame
    root: Path
    errors: list[str] = field(default_factory=list)  # unreadable files, skipped


def _empty(table: str) -> pd.DataFrame:
    df = SCHEMAS[table].empty_table().to_pandas()
    df.insert(1, "sweep", pd.Series(dtype="string"))
    return df


def _sweep_files(root: Path, table: str, sweep: str | None) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for name in sweeps(root, table):
        if sweep is None or name == sweep:
            d = table_dir(root, table, name)
            out[name] = sorted(p for p in d.glob("*.parquet") if not p.name.startswith((".", "_")))
    return out


def _read_sweep(files: list[Path], table: str, columns: list[str] | None, errors: list[str],
                run_ids: set[str] | None = None, cache: dict | None = None) -> pd.DataFrame:
    """Read one sweep's files; a run's own file wins over its chunks, and either over the
    run's compacted rows (module docstring)."""
    schema = SCHEMAS[table]
    cols = [c for c in (columns or schema.names) if c in schema.names]
    if "run_id" not in cols:
        cols = ["run_id", *cols]
    final = {p.stem for p in files if not p.name.startswith("part-") and not is_chunk(p)}
    own = {run_of(p) for p in files if not p.name.startswith("part-")}
    frames = []
    for p in files:
        compacted = p.name.startswith("part-")
        if not compacted and ((run_ids is not None and run_of(p) not in run_ids) or (is_chunk(p) and run_of(p) in final)):
            continue  # a per-run file of another run, or a chunk its run's file replaces: not even opened
        filters = [("run_id", "in", sorted(run_ids))] if run_ids is not None and compacted else None
        key = None
        if cache is not None:  # files are replaced atomically: (mtime, size) changes with any write
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            key = (st.st_mtime_ns, st.st_size, tuple(cols), repr(filters))
            hit = cache.get(p)
            if hit is not None and hit[0] == key:
                frames.append(hit[1] if not (compacted and own) else hit[1][~hit[1]["run_id"].isin(own)])
                continue
        try:
            t = _read_typed(p, table, cols, filters)
        except Exception as e:  # corrupt or foreign file: report it, keep the rest
            errors.append(f"{p}: {type(e).__name__}: {e}")
            continue
        df = t.to_pandas()
        if key is not None:
            cache[p] = (key, df)
        if compacted and own:
            df = df[~df["run_id"].isin(own)]
        frames.append(df)
    frames = [f for f in frames if len(f)]
    if not frames:
        return schema.empty_table().select(cols).to_pandas()
    return pd.concat(frames, ignore_index=True)


def read_table(
    root: str | os.PathLike,
    table: str,
    sweep: str | None = None,
    columns: list[str] | None = None,
    errors: list[str] | None = None,
    run_ids: list[str] | None = None,
    cache: dict | None = None,
) -> pd.DataFrame:
    """One table of a results root, optionally one sweep, some columns and some runs only.

    ``cache`` (a dict the caller keeps) holds each file's frame until the file changes, so a
    caller that reads again and again (the grid controller) only parses what is new."""
    errors = errors if errors is not None else []
    wanted = set(run_ids) if run_ids is not None else None
    frames = []
    for name, files in _sweep_files(Path(root), table, sweep).items():
        df = _read_sweep(files, table, columns, errors, wanted, cache)
        df.insert(1, "sweep", name)
        frames.append(df)
    if not frames:
        df = _empty(table)
        return df if columns is None else df[[c for c in df.columns if c in {"run_id", "sweep", *columns}]]
    out = pd.concat(frames, ignore_index=True)
    out["sweep"] = out["sweep"].astype("string")
    return out


def signature(root: str | os.PathLike, table: str = "runs") -> tuple:
    """(file, mtime, size) of a table's files: a cheap cache key that changes with any write."""
    base = Path(root) / table
    if not base.is_dir():
        return ()
    out = []
    for p in base.glob("sweep=*/*.parquet"):
        try:
            s = p.stat()
        except FileNotFoundError:  # replaced while we listed
            continue
        out.append((str(p), s.st_mtime_ns, s.st_size))
    return tuple(sorted(out))


def load(root: str | os.PathLike, sweep: str | None = None) -> Results:
    """Load every table of ``root`` (all sweeps, or one). Unreadable files land in ``.errors``.

    A root (or sweep) without a single runs file is a ``ConfigError`` naming the path and the
    layout looked for, not empty tables: a wrong path must not read as "no runs yet"."""
    if not any(_sweep_files(Path(root), "runs", sweep).values()):
        where = Path(root)
        shown = f"{where} ({where.resolve()})" if not where.is_absolute() else str(where)
        found, expected = sweeps(root), table_dir(where, "runs", sweep or "<name>") / "<run_id>.parquet"
        raise ConfigError(
            f"{shown}: no results" + (f" of sweep {sweep!r}" if sweep else "") + f" (expected {expected}"
            + (f"; sweeps here: {', '.join(found)}" if sweep and found else "")
            + "; a results root is the folder a grid spec's 'results' or train's results= names)")
    errors: list[str] = []
    tables = {t: read_table(root, t, sweep, errors=errors) for t in TABLES}
    return Results(**tables, root=Path(root), errors=errors)


def compact(root: str | os.PathLike, sweep: str) -> dict[str, int]:
    """Merge a sweep's files into one ``part-*.parquet`` per table; returns rows per table.

    Runs that have chunks (running, or stopped unfinished) are left out: their writer owns
    their files. All four tables or none: every input is read first, and one unreadable file stops the
    compaction before anything is written (``CorruptFiles`` names each). Then each merged file is
    written atomically before its inputs are removed, so a crash leaves the old files or the new
    one (plus stale inputs, which per-run precedence makes harmless). Rows are never lost.
    """
    for table in TABLES:  # it writes and deletes there: a folder linked out of the root is refused first
        if (d := table_dir(root, table, sweep)).exists():
            in_root(d, root, "nothing compacted")
    merged: dict[str, tuple[pd.DataFrame, dict[Path, tuple]]] = {}
    errors: list[str] = []
    streaming = {run_of(p) for t in ROW_TABLES for p in _sweep_files(Path(root), t, sweep).get(sweep, []) if is_chunk(p)}
    for table in TABLES:  # a run that has chunks is left whole to its writer (finish_rows, truncate_rows)
        files = [p for p in _sweep_files(Path(root), table, sweep).get(sweep, [])
                 if p.name.startswith("part-") or run_of(p) not in streaming]
        seen = {p: _identity(p) for p in files}  # before reading: a file rewritten later is newer
        merged[table] = (_read_sweep(files, table, None, errors), seen)
    if errors:
        raise CorruptFiles(f"sweep {sweep!r}: nothing compacted, {len(errors)} unreadable file(s): "
                           + "; ".join(e.splitlines()[0][:300] for e in errors))
    counts = {}
    for table, (df, files) in merged.items():
        counts[table] = len(df) if files else 0
        if not files:
            continue
        out = table_dir(root, table, sweep) / f"part-{uuid.uuid4().hex[:12]}.parquet"
        _atomic_write(to_arrow(table, df), out)
        for p, ident in files.items():
            if _identity(p) == ident:  # a run that rewrote its file meanwhile keeps it (it wins)
                discard(p, root)
    return counts


def _identity(p: Path) -> tuple | None:
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
