"""The grid controller: plan, submit what is missing, watch, tell Optuna, ask tpe's next trials
(one per free slot, or the next wave), repeat.

Idempotent: everything it needs is on disk (plan, job ledger, results), so rerunning the same
command after a killed controller, a crashed node or a cancelled array submits only the runs that
have neither a finished row nor a live job. Within one invocation a run is submitted at most
once; a job that dies without writing a result leaves its run ``missing`` (rerun to resubmit).
A tpe point is saved in the plan before its runs are submitted, and a trial asked but not saved
(a controller killed in between) is adopted into the plan by the next one, so no asked point is
lost or asked twice. ``executor.max_failures`` stops submitting once that many runs failed.
"""

from __future__ import annotations

import contextlib
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import store
from ..errors import printable
from ..store import RunStatus as S
from ..trainer.run_lock import RunLock, RunTaken, run_owner
from .backends import BACKENDS, Backend, SubmitRefused, backend_for
from .cost import RATE_FIELDS, StudyCost, feed_warning, no_gpu_note, study_cost
from .joblogs import job_files
from .kinds import resolve_kind
from .ledger import failures, jobs_by_run, read_ledger, record_jobs
from .local_time import TIME_FIELDS, LocalTime, is_local_cpu, local_time
from .lock import SweepLock
from .plan import COST_FIELDS, PlannedRun, config_groups, plan_frame
from .samplers import Sampler, sampler_for
from .spec import GridSpec, save_spec_copy
from .state import (
    DONE,
    RUNNING_JOB_STATES,
    cells_by_data,
    counts,
    data_rows,
    done_ids,
    eta_seconds,
    run_rows,
    save_plan,
    stem_outcomes,
    sweep_data,
    sweep_state,
    to_submit,
)
from .studies import open_storage, tell


@dataclass
class RunOptions:
    retry_failed: bool = False
    wait: bool = True
    poll_s: float = 2.0
    show_progress: bool = True


@dataclass
class Outcome:
    state: pd.DataFrame
    submitted: list[str] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)  # run_id -> last log lines
    stopped: str | None = None  # why submitting stopped early (executor.max_failures), one line
    quarantined: list[str] = field(default_factory=list)  # unreadable files moved aside, and why
    wall_s: float = 0.0
    stems: list[dict] = field(default_factory=list)  # how each stem's runs ended (state.stem_outcomes)
    data: list[dict] = field(default_factory=list)  # the data its runs recorded, when several (state.sweep_data)

    def counts(self) -> dict[str, int]:
        """Runs per status, in status order, the statuses that have runs only."""
        c = self.state.status.value_counts() if len(self.state) else pd.Series(dtype=int)
        return {str(s): int(c[s]) for s in S if c.get(s, 0)}


def trial_slots(backend: Backend) -> int:
    """Runs an async tpe sweep keeps in flight (queued or running): the backend's capacity
    (local: ``max_parallel``), else, where the scheduler queues (slurm), its ``parallelism``
    (``array_parallelism``)."""
    cap = backend.capacity()
    return max(1, cap if cap is not None else backend.parallelism())


@dataclass
class DryRun:
    """Everything ``grid run --dry-run`` prints: the plan (made in memory, nothing written; an
    async tpe sweep asks one trial per slot of the spec's backend), what its count leaves out,
    the training cost on one GPU model (``grid.cost``), its warnings (data workers, no GPU) and,
    for local jobs without a GPU, their time on this machine (``grid.local_time``)."""

    plan: list[PlannedRun]
    note: str
    cost: StudyCost  # of the planned runs that have no result yet
    warnings: list[str]
    done: int = 0  # planned runs that already have a result (a `grid run` trains the others)
    local: LocalTime | None = None  # local jobs on this machine's CPUs: steps timed here


def dry_run(spec: GridSpec, gpu: str | None = None, timed: dict | None = None) -> DryRun:
    """The dry run of ``spec``, costed on the device ``gpu`` names (a key of
    ``models/throughput.json``; None: its default). An unknown ``gpu`` is a ``ConfigError``.
    Planned runs that already have a result (read from the sweep's runs table, nothing written)
    are counted, not costed: the cost is what a ``grid run`` would still train. Local jobs without
    a GPU are also timed here (``timed``: steps timed so far, ``local_time.local_time``'s)."""
    from ..models import throughput

    table = throughput.load()
    device = table.device(table.default_device if gpu is None else gpu)  # checked before anything is planned
    sampler = sampler_for(spec)
    plan = sampler.dry_run(lambda: trial_slots(backend_for(spec)))
    done = done_ids(run_rows(spec.results, spec.name)) & {r.run_id for r in plan}  # a rerun trains the rest
    todo = [r for r in plan if r.run_id not in done]
    groups = config_groups(todo, COST_FIELDS + RATE_FIELDS, set(spec.ranges))
    name = spec.name + (f" ({len(done)} of {len(plan)} done, not costed)" if done else "")
    cost = study_cost(name, groups, spec.executor, table, device)
    kind = resolve_kind(spec.executor.kind)
    warnings = [w for w in (feed_warning(spec.executor, groups, cost), no_gpu_note([spec.executor], device),
                            *data_warnings(groups, kind)) if w]
    local = None
    if is_local_cpu(spec.executor, kind):
        local = local_time(config_groups(todo, COST_FIELDS + RATE_FIELDS + TIME_FIELDS, set(spec.ranges)), spec.executor, timed)
    return DryRun(plan, sampler.dry_run_note(), cost, warnings, len(done), local)


def data_warnings(groups: list, kind: str) -> list[str]:
    """One line per data source of ``groups`` (``(config, runs)``) that this machine lacks: a
    dry run plans for a cluster from a laptop, so it warns where a ``grid run`` with local jobs
    (``kind``) refuses, and where Slurm jobs would have to find the data on their nodes."""
    from ..data.datasets import DataError, check_source

    why = ("a grid run refuses it" if kind == "local" else
           "the Slurm jobs must find it on their nodes; a grid run with local jobs refuses it")
    out = []
    for dataset, root, download in sorted({(c.dataset, c.data_root, c.download) for c, _ in groups}, key=str):
        try:
            check_source(dataset, root, download)
        except DataError as e:
            out.append(f"warning: {e}, on this machine ({why})")
    return out


def alive_jobs(spec: GridSpec, run_ids: list[str], backend: Backend | None = None,
               ledger: dict[str, dict[str, Any]] | None = None, done: set[str] = frozenset()) -> dict[str, str]:
    """``{run_id: job state}`` for runs whose latest job still lives, asked of the backend that
    ran it (the ledger names it; ``backend`` answers for its own jobs). A run that is not ``done``
    and whose lock a live process holds counts as running too, whatever the ledger says (a job
    the ledger lost, a ``stability train`` of the same config): submitting it again would only
    start a process that finds the run taken."""
    ledger = read_ledger(spec.sweep_dir) if ledger is None else ledger
    by_kind: dict[str, dict[str, str]] = {}  # kind -> {job_id: run_id}
    for r in run_ids:
        if r in ledger:
            by_kind.setdefault(ledger[r]["kind"], {})[str(ledger[r]["job_id"])] = r
    out = {}
    for kind, jobs in by_kind.items():
        if backend is not None and kind == backend.name:
            asked = backend
        elif kind in BACKENDS:
            asked = backend_for(spec, kind)
        else:
            continue  # a backend this process does not know: its jobs cannot be seen
        out |= {jobs[j]: state for j, state in asked.alive(list(jobs)).items() if j in jobs}
    for r in run_ids:
        if r not in out and r not in done and run_owner(spec.results, spec.name, r) is not None:
            out[r] = "RUNNING"
    return out


# How long a job this invocation submitted may be neither listed by the scheduler nor done before it
# counts as ended: squeue can lag sbatch by a second, but a queued array task cancelled before it
# started is never listed again, and sacct never reports it done (grid run waited for it for ever).
UNSEEN_GRACE_S = 60.0


@dataclass
class _Sweep:
    """What one ``grid run`` keeps between its looks at the sweep."""

    sampler: Sampler
    storage: Any  # the Optuna record
    plan: list[PlannedRun]
    rerun: set[str]  # runs whose unreadable files were quarantined: submitted again
    outcome: Outcome
    said: set[str] | None  # runs whose end was printed (piped output), None: a live table
    submitted: dict[str, Any] = field(default_factory=dict)  # run_id -> job, this invocation
    rows_cache: dict = field(default_factory=dict)  # parsed result files, kept until they change
    told: dict = field(default_factory=dict)  # points already in the Optuna record
    failed_seen: list[str] = field(default_factory=list)  # submitted runs that failed, in the order seen
    ended: set[str] = field(default_factory=set)  # runs seen neither live nor done after a second read
    unseen: dict[str, float] = field(default_factory=dict)  # submitted run -> when first seen neither alive nor done


class Controller:
    def __init__(self, spec: GridSpec, opts: RunOptions | None = None, console=None,
                 backend: Backend | None = None, lock: SweepLock | None = None):
        """``backend``: one made already (the CLI starts the local launcher before its own
        imports, a test may bring its own); by default the spec's, made and closed here.
        ``lock``: the sweep's lock, taken already (by the CLI, before it starts a launcher);
        by default taken and released here."""
        from ..progress import make_console

        self.backend, self.lock = backend, lock
        self.spec = spec
        self.opts = opts or RunOptions()
        self.console = console or make_console(stderr=True)
        self.dir = spec.sweep_dir

    def run(self) -> Outcome:
        """Run the sweep to its end (or one pass with ``wait=False``), holding its lock."""
        t0 = time.monotonic()
        with nullcontext(self.lock) if self.lock else SweepLock(self.dir, self.spec.name) as self.lock:
            if self.backend is not None:  # its maker closes it
                return self._run(self.backend, t0)
            backend = backend_for(self.spec)
            try:
                backend.start()  # the local launcher's torch import overlaps the planning below
                return self._run(backend, t0)
            finally:
                backend.close()

    def _run(self, backend: Backend, t0: float) -> Outcome:
        """Start (plan of record, quarantine), then look / submit / tell / ask until nothing is
        left to wait for, then the final state."""
        sweep = self._start()
        live = None
        if self.opts.show_progress and self.opts.wait:
            from rich.live import Live

            live = Live(console=self.console, refresh_per_second=2, transient=False)
            live.start()
        try:
            while (step := self._step(backend, sweep, live)) != "done":
                if step == "wait":
                    backend.wait(self.opts.poll_s)
        except KeyboardInterrupt:
            self._after_ctrl_c(backend, sweep, live)
            raise
        finally:
            if live:
                live.stop()
                if not self.console.is_terminal:  # rich ends a piped table without its newline
                    self.console.line()
        return self._finish(backend, sweep, t0)

    def _start(self) -> _Sweep:
        spec = self.spec
        store.check_writable(spec.results)  # before anything is planned or submitted
        storage = open_storage(spec)
        sampler = sampler_for(spec)
        plan = sampler.plan_of_record(storage)  # the sweep's folder exists: the lock made it
        save_spec_copy(spec)
        save_plan(self.dir, plan_frame(plan))
        quarantined, rerun = quarantine_unreadable(spec)
        for line in quarantined:  # said now: a controller killed later must not hide it
            self.console.print(printable(line), markup=False, highlight=False, soft_wrap=True)
        # Piped output: rich draws a live table only when it stops, so say each run as it ends.
        said: set[str] | None = None if self.console.is_terminal or not self.opts.show_progress else set()
        return _Sweep(sampler, storage, plan, rerun, Outcome(state=pd.DataFrame(), quarantined=quarantined), said)

    def _step(self, backend: Backend, sw: _Sweep, live) -> str:
        """One look at the sweep: submit what is due (``again``), else tell Optuna and ask the
        sampler's next points (``again`` when it gave some), else ``wait`` or ``done``."""
        spec, outcome, submitted = self.spec, sw.outcome, sw.submitted
        self.lock.beat()
        runs = run_rows(spec.results, spec.name, sw.rows_cache)
        ledger = read_ledger(self.dir)
        alive = alive_jobs(spec, [r.run_id for r in sw.plan], backend, ledger, done_ids(runs))
        now = time.monotonic()
        for rid, job in submitted.items():  # this invocation's jobs (reaps local ones)
            if rid in alive or job.done():
                sw.unseen.pop(rid, None)
            elif now - sw.unseen.setdefault(rid, now) < UNSEEN_GRACE_S:
                alive[rid] = "submitted"  # just submitted: the scheduler may not list it yet
        # A run may have ended, and written its row (or the ledger its failure), after they were
        # read: a run not alive now, with a job or a row but no result, is read again, once.
        known = set(ledger) | set(runs.run_id)
        ended = {r.run_id for r in sw.plan if r.run_id in known and r.run_id not in alive} - done_ids(runs)
        if ended - sw.ended:
            runs, ledger = run_rows(spec.results, spec.name, sw.rows_cache), read_ledger(self.dir)
            ended -= done_ids(runs)
        sw.ended = ended
        state = sweep_state(sw.plan, runs, alive, set(ledger), failures(ledger))
        if sw.said is not None:  # every look, the first before anything is submitted
            self._say_ended(state, runs, sw.said)
        want = to_submit(state, self.opts.retry_failed) | (state.run_id.isin(sw.rerun) & state.job_state.isna())
        if outcome.stopped is None and (why := self._too_many_failures(state, submitted, sw.failed_seen)):
            outcome.stopped = why
            self.console.print(printable(why), markup=False, highlight=False, soft_wrap=True, style="red")
        todo = [rid for rid in state.run_id[want] if rid not in submitted] if not outcome.stopped else []
        running = int(state.job_state.notna().sum())  # live jobs, queued ones included
        if (cap := backend.capacity()) is not None:
            todo = todo[:max(0, cap - running)]
        if todo:  # submit before telling Optuna: a free slot should not wait on SQLite
            self._submit(backend, sw.plan, todo, submitted)
            if sw.said is not None:  # a run submitted again (retried, quarantined) says its new end
                sw.said.difference_update(todo)
            sw.ended -= set(todo)  # if one ends before the next look, that look reads its row again
            outcome.submitted += todo
            return "again"
        tell(spec, sw.plan, runs, sw.storage, sw.told)  # before asking: each ask sees every result
        held_back = want & ~state.run_id.isin(submitted)  # over capacity until now
        if not outcome.stopped:  # free: slots no run holds, live or about to be submitted
            statuses = dict(zip(state.run_id, state.status, strict=True))
            free = trial_slots(backend) - running - int(held_back.sum())
            if new := sw.sampler.ask(sw.plan, statuses, sw.storage, free):
                sw.plan += new
                save_plan(self.dir, plan_frame(sw.plan))  # the record of asked points, before submitting
                return "again"
        if live:
            live.update(self._render(state, backend))
        if not self.opts.wait:
            return "done"
        if not state.job_state.notna().any() and (not held_back.any() or outcome.stopped):
            return "done"
        return "wait"

    def _after_ctrl_c(self, backend: Backend, sw: _Sweep, live) -> None:
        """Ctrl-C reached the jobs too where the backend says so (``ctrl_c_grace_s``: local runs,
        one process group): wait for this invocation's jobs to save their checkpoints and exit, at
        most that long (a second Ctrl-C stops waiting), then draw the table once more. Without the
        wait the last table is the look before the signal (``running``) while the CLI's line says
        the runs stopped, and the runs would still be writing their ``preempted`` rows."""
        grace = getattr(backend, "ctrl_c_grace_s", None)
        left = [rid for rid, job in sw.submitted.items() if not job.done()] if grace is not None else []
        deadline = time.monotonic() + (grace or 0.0)
        with contextlib.suppress(KeyboardInterrupt):
            while left and (now := time.monotonic()) < deadline:
                if live:
                    live.update(self._render(self._state(backend, sw)[1], backend,
                                             f"interrupted: waiting for {len(left)} run(s) to save a checkpoint "
                                             "(Ctrl-C again: stop waiting)"))
                self.lock.beat()
                backend.wait(min(self.opts.poll_s, deadline - now))
                left = [rid for rid in left if not sw.submitted[rid].done()]
        if live:
            note = f"interrupted: {len(left)} run(s) had not stopped yet" if left else "interrupted"
            live.update(self._render(self._state(backend, sw)[1], backend, note))

    def _state(self, backend: Backend, sw: _Sweep) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The runs rows and the sweep's state, read now (jobs asked of their backends)."""
        runs = run_rows(self.spec.results, self.spec.name, sw.rows_cache)
        ledger = read_ledger(self.dir)
        alive = alive_jobs(self.spec, [r.run_id for r in sw.plan], backend, ledger, done_ids(runs))
        return runs, sweep_state(sw.plan, runs, alive, set(ledger), failures(ledger))

    def _finish(self, backend: Backend, sw: _Sweep, t0: float) -> Outcome:
        spec, outcome = self.spec, sw.outcome
        runs, outcome.state = self._state(backend, sw)
        tell(spec, sw.plan, runs, sw.storage, sw.told)
        data = data_rows(spec.results, spec.name, outcome.state.run_id, runs)
        outcome.stems = stem_outcomes(outcome.state, runs, data=data)
        outcome.data = sweep_data(data)
        for rid in outcome.state.run_id[outcome.state.status.eq(S.MISSING)]:
            if rid in sw.submitted:
                outcome.lost[rid] = backend.log_tail(str(sw.submitted[rid].job_id)) or "(no log)"
        outcome.wall_s = time.monotonic() - t0
        return outcome

    def _too_many_failures(self, state: pd.DataFrame, submitted: dict, seen: list[str]) -> str | None:
        """The line that stops submitting once ``executor.max_failures`` runs of those this
        invocation submitted failed (a fraction: of the runs it submitted); None until then.
        Diverged runs are results, not failures."""
        limit = self.spec.executor.max_failures
        if limit is None:
            return None
        failed = state[state.status.eq(S.FAILED) & state.run_id.isin(submitted)]
        errors = dict(zip(failed.run_id, failed.error, strict=True))
        seen += [rid for rid in submitted if rid in errors and rid not in seen]  # submission order
        need = limit if limit >= 1 else limit * len(submitted)
        if not seen or len(seen) < need:
            return None
        rule = f"{limit}" if limit >= 1 else f"{limit} of the {len(submitted)} submitted"
        first = next(iter(str(errors[seen[0]] or "no error recorded").strip().splitlines()), "")[:300]
        ids = ", ".join(seen[:5]) + (f" and {len(seen) - 5} more" if len(seen) > 5 else "")
        unsubmitted = int((to_submit(state, self.opts.retry_failed) & ~state.run_id.isin(submitted)).sum())
        live = int(state.job_state.notna().sum())
        return (f"sweep {self.spec.name}: stopped submitting, {len(seen)} runs failed (executor.max_failures: "
                f"{rule}): {ids}; first error ({seen[0]}): {first}; {unsubmitted} planned runs left unsubmitted"
                + (f", waiting for the {live} still live" if live and self.opts.wait else ""))

    def _submit(self, backend: Backend, plan: list[PlannedRun], todo: list[str], submitted: dict) -> None:
        by_id = {r.run_id: r for r in plan}
        try:
            jobs = backend.submit([(rid, by_id[rid].config.to_dict()) for rid in todo])
        except SubmitRefused as e:  # the jobs taken before the refusal run: record them, then say it
            self._record(backend, e.submitted, submitted)
            raise
        self._record(backend, jobs, submitted)

    def _record(self, backend: Backend, jobs: list, submitted: dict) -> None:
        record_jobs(self.dir, backend.name, [(s.run_id, s.job_id) for s in jobs])
        for s in jobs:
            submitted[s.run_id] = s.job

    def _say_ended(self, state: pd.DataFrame, runs: pd.DataFrame, said: set[str]) -> None:
        """One line per run that ended since the last look (piped output only): the first look
        counts what had ended before, so a resumed sweep does not repeat its history."""
        ended = state[state.status.isin([*DONE, S.FAILED])]
        if "" not in said:  # the first look
            said.update(["", *ended.run_id])
            failed = int(ended.status.eq(S.FAILED).sum()) if self.opts.retry_failed else 0
            if len(ended):
                self.console.print(f"{len(ended)} of {len(state)} runs had ended before this start"
                                   + (f" ({failed} failed: --retry failed submits {'it' if failed == 1 else 'them'} "
                                      "again)" if failed else ""), markup=False, highlight=False, soft_wrap=True)
            return
        new = [r for r in ended.itertuples() if r.run_id not in said]
        errs = runs.drop_duplicates("run_id", keep="last").set_index("run_id")["top1_err"] if len(runs) else {}
        for r in new:
            said.add(r.run_id)
            err = errs.get(r.run_id) if hasattr(errs, "get") else None
            what = f"{r.status}, top-1 error {err:.1f} %" if r.status == S.COMPLETED and err == err and err is not None \
                else str(r.status)
            # the sweep named: reproduce runs several in turn into one log
            line = f"{self.spec.name}: run {r.run_id} ({r.stem}): {what} [{len(said) - 1} of {len(state)} ended]"
            self.console.print(f"{time.strftime('%H:%M:%S')} {printable(line)}",  # a tpe plan's ids come from its file
                               markup=False, highlight=False, soft_wrap=True)

    def _render(self, state: pd.DataFrame, backend: Backend, note: str | None = None):
        """The table per stem; ``note`` (plain text) replaces the ETA in the title."""
        from rich.table import Table
        from rich.text import Text

        spec = self.spec
        by_stem = counts(state, ["stem"]) if len(state) else None
        total = counts(state) if len(state) else None
        done = int(state.status.isin(DONE).sum())
        eta = eta_seconds(state, backend.parallelism()) if note is None else None
        title = (f"sweep {spec.name} \\[{backend.name}]: {done}/{len(state)} done"
                 + (f", ETA {eta / 60:.1f} min" if eta else "") + (f"; {note}" if note else ""))
        table = Table(title=title)
        cols = [*S, "total"]  # every status: preempted ones too (waiting to resume), so the columns add up
        table.add_column("stem")
        for c in cols:
            table.add_column(c, justify="right")
        if by_stem is not None:
            for stem, row in by_stem.iterrows():
                table.add_row(Text(printable(stem)), *[str(int(row[c])) for c in cols])
            table.add_row("all", *[str(int(total.iloc[0][c])) for c in cols], style="bold")
        return table


QUARANTINE_JOB = "grid-run-quarantine"  # what the owner record says while a controller holds a run's lock


def quarantine_unreadable(spec: GridSpec) -> tuple[list[str], set[str]]:
    """Move the sweep's unreadable result files into ``_sweeps/<name>/quarantine/``: a run with
    one loses its other files too, so it is missing and rerun whole. A compacted part file holds
    rows of many runs: when one of the curve tables goes, the finished runs left without rows in
    it are marked failed (their runs row says which file took them) and returned, for this
    controller to rerun. A run's files move, and its row is marked, only under its owner lock
    (``run_lock.RunLock``), the check made again there: a run a live process trains is left in
    place and named (the next grid run looks again). One line per moved file, marked run or run
    left in place, each beginning "quarantined" or "left in place"."""
    root, name = spec.results, spec.name
    lines: list[str] = []
    found = store.unreadable(root, name)
    # a run's own files and chunks (a name no run can have, ``..parquet``, has no owner lock)
    own = sorted({rid for p, _ in found if not p.name.startswith("part-") and store.is_plain(rid := store.run_of(p))})
    lost_tables = set()
    with contextlib.ExitStack() as held:
        mine = set()
        for rid in own:
            if (who := _hold(held, root, name, rid)) is None:
                mine.add(rid)
            else:
                bad = [(p, why) for p, why in found if not p.name.startswith("part-") and store.run_of(p) == rid]
                lines.append(f"left in place {len(bad)} unreadable file(s) of run {rid} ({bad[0][0]}: {bad[0][1]}): "
                             f"{who} trains it; the next grid run after it ends moves them, if still unreadable")
        if own:  # again, under the locks: a writer may have replaced a file since the first look
            found = store.unreadable(root, name)
        for path, why in found:
            files, rid = [path], store.run_of(path)
            if path.name.startswith("part-"):
                if path.parent.parent.name != "runs":
                    lost_tables.add((path.parent.parent.name, path))
            elif rid in mine:  # a run's own file or chunk: the run goes whole
                files += store.run_files(root, name, rid)
            elif store.is_plain(rid):  # its owner is live (said above), or it went bad after the first look
                if rid not in own:
                    lines.append(f"left in place {path}: unreadable ({why}) since this check began; "
                                 "the next grid run moves it")
                continue
            for f in dict.fromkeys(files):  # a name no run can have: the file alone
                if f.exists():
                    dest = store.quarantine(root, name, f)
                    lines.append(f"quarantined {f} -> {dest}: " + (f"unreadable ({why})" if f == path else "same run"))
    return lines, _mark_lost(spec, sorted(lost_tables), lines)


def _who(rec: dict) -> str:
    """The live owner of a run, from its (untrusted, informative) owner record."""
    if not rec:
        return "another process"
    job = f"job {rec.get('job_id')}, " if rec.get("job_id") else ""
    return f"{job}pid {rec.get('pid')} on {rec.get('host')} (since {rec.get('since')})"


def _hold(held: contextlib.ExitStack, root, sweep: str, run_id: str) -> str | None:
    """Take ``run_id``'s owner lock into ``held``; None when taken, else who trains the run. A
    live owner is asked first, without waiting: ``RunLock`` waits for a holder to let go."""
    if (rec := run_owner(root, sweep, run_id)) is not None:
        return _who(rec)
    try:
        held.enter_context(RunLock(root, sweep, run_id, QUARANTINE_JOB))
    except RunTaken:  # it started meanwhile
        return _who(run_owner(root, sweep, run_id) or {})
    return None


def _mark_lost(spec: GridSpec, lost_tables: list[tuple[str, Path]], lines: list[str]) -> set[str]:
    """Mark failed the finished runs that lost their rows of a table with a quarantined part file,
    each under its owner lock (a ``stability train`` of the run that finds its result holds it a
    moment: waited for), its row and rows read again there; returns the runs marked."""
    root, name = spec.results, spec.name
    rerun: set[str] = set()
    for table, path in lost_tables:
        runs = store.read_table(root, "runs", sweep=name, columns=["run_id", "status"])
        have = set(store.read_table(root, table, sweep=name, columns=["run_id"]).run_id)
        for rid in dict.fromkeys(runs.run_id[_needs(runs, table) & ~runs.run_id.isin(have)]):
            if not store.is_plain(rid):
                lines.append(f"left in place run {rid!r}: not a plain name, not marked failed")
                continue
            try:
                with RunLock(root, name, rid, QUARANTINE_JOB):
                    row = store.read_table(root, "runs", sweep=name, run_ids=[rid]).drop(columns="sweep")
                    if not len(row) or not _needs(row.tail(1), table).iloc[0] or len(
                            store.read_table(root, table, sweep=name, run_ids=[rid], columns=["run_id"])):
                        continue  # rerun or rewritten meanwhile
                    row = row.iloc[-1].to_dict() | {
                        "status": str(S.FAILED), "error": f"its {table} rows were in {path.name}, unreadable and "
                        "quarantined: rerun (`grid run` does it at once; later: --retry failed)"}
                    store.write_run(root, name, rid, {"runs": [row]})
            except RunTaken as e:
                lines.append(f"left in place run {rid}: lost its {table} rows with {path.name}, but {e}")
                continue
            rerun.add(rid)
            lines.append(f"quarantined run {rid}: lost its {table} rows with {path.name}; marked failed, rerun")
    return rerun


def _needs(runs: pd.DataFrame, table: str) -> pd.Series:
    """Which finished runs must have rows in ``table``: a diverged or pruned run may end before
    its first epoch, so it needs steps and traces only."""
    return runs.status.eq(S.COMPLETED) | (runs.status.isin([S.DIVERGED, S.PRUNED]) & (table != "epochs"))


def _unreadable_lines(spec: GridSpec, read_errors: list[str]) -> list[str]:
    """One line per corrupt result file of the sweep, with what it means: those the full check
    finds (``store.unreadable``) and those a read just failed on (a file the check had passed
    before, damaged in place since)."""
    found = store.damaged(spec.results, spec.name, read_errors)
    return [f"{path}: {why} ({_meaning(path)})" for path, why in found.items()]


def _meaning(path: Path) -> str:
    """What an unreadable result file means for its runs, and what `grid run` does about it."""
    table, compacted = path.parent.parent.name, path.name.startswith("part-")
    if table == "runs":
        return ("its runs' results cannot be trusted; `grid run` moves it to quarantine and reruns them" if compacted
                else "its run's result cannot be trusted; `grid run` moves the run's files to quarantine and reruns it")
    if compacted:
        return (f"the {table} rows of the finished runs it held are lost; `grid run` moves it to quarantine "
                "and reruns those runs")
    return f"its run's {table} rows are lost; `grid run` moves the run's files to quarantine and reruns it"


def status_report(spec: GridSpec) -> dict[str, Any]:
    """Everything ``stability grid status`` prints, as plain data (``--json``)."""
    sweep_dir = spec.sweep_dir
    store.check_root(spec.results)
    plan, unreadable = sampler_for(spec).recorded_plan()  # a fixed plan: the next grid run rewrites it
    read_errors: list[str] = []  # a page that fails its checksum in a column read here: named below
    runs = run_rows(spec.results, spec.name, errors=read_errors)
    ids = [r.run_id for r in plan]
    backend = backend_for(spec)
    problems: list[str] = []
    ledger = read_ledger(sweep_dir, problems)
    alive = alive_jobs(spec, ids, backend, ledger, done_ids(runs))
    state = sweep_state(plan, runs, alive, set(ledger), failures(ledger))
    data = data_rows(spec.results, spec.name, state.run_id, runs)
    total = counts(state).iloc[0].to_dict() if len(state) else {}
    cells = counts(*cells_by_data(state, data)).reset_index() if len(state) else pd.DataFrame()
    failed_runs = []
    for r in state[state.status.eq(S.FAILED)].itertuples():
        failed_runs.append({"run_id": r.run_id, "stem": r.stem, "error": r.error,
                            "log": backend.log_tail(ledger[r.run_id]["job_id"]) if r.run_id in ledger else ""})
    lost = []  # jobs that ended without a result: preempted ones left a checkpoint to resume
    for r in state[state.status.isin([S.MISSING, S.PREEMPTED])].itertuples():
        if r.run_id in ledger:
            lost.append({"run_id": r.run_id, "job_id": ledger[r.run_id]["job_id"], "preempted": r.status == S.PREEMPTED,
                         "log": backend.log_tail(ledger[r.run_id]["job_id"])})
    return {
        "sweep": spec.name, "results": str(Path(spec.results).absolute()), "planned": len(plan),  # from any folder
        "counts": {k: int(v) for k, v in total.items()},
        "cells": [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                  for row in cells.to_dict(orient="records")],
        "jobs": {"alive": len(alive), "running": sum(1 for s in alive.values() if s in RUNNING_JOB_STATES),
                 "pending": sum(1 for s in alive.values() if s not in RUNNING_JOB_STATES)},
        "failures": failed_runs, "lost": lost, "ledger_problems": problems,
        "pruned": state.run_id[state.status.eq(S.PRUNED)].tolist(),  # results `train --run ID --rerun` continues
        "unreadable": unreadable + _unreadable_lines(spec, read_errors),
        "eta_s": eta_seconds(state, backend.parallelism()),
        "stems": stem_outcomes(state, runs, data=data),
        "data": sweep_data(data),
    }


def clean_logs(spec: GridSpec) -> int:
    """Remove the submitit files of the jobs that ran runs now done, every attempt (a preempted
    or failed job whose run a later job finished, not only the latest); returns files removed.
    A job the ledger also names for a run not done keeps its files. Files are found by parsing
    their names against the ledger's job ids (``job_files``), and each delete must resolve under
    the sweep's own folder: nothing a ledger says can reach another job's files or a path
    outside the sweep."""
    by_run = jobs_by_run(spec.sweep_dir)
    done = done_ids(run_rows(spec.results, spec.name))
    keep = set().union(*(jobs for rid, jobs in by_run.items() if rid not in done))
    jobs = set().union(*(jobs for rid, jobs in by_run.items() if rid in done)) - keep
    logs, removed = store.logs_dir(spec.results, spec.name), 0
    if not logs.is_dir():
        return 0
    for paths in job_files(logs, jobs).values():
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                store.unlink_under(p, spec.sweep_dir)
                removed += 1
    for d in sorted(logs.iterdir()):  # a job's own folder (``logs/%j``), once empty
        if d.name in jobs and d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
            if d.resolve().is_relative_to(spec.sweep_dir.resolve()):
                d.rmdir()
    return removed
