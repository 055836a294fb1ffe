"""The sweep's Optuna record: one study per (cell, stem) in ``results/_sweeps/<name>/optuna.db``.

Only the controller opens this storage (one SQLite writer; jobs never touch it, so it is safe
on NFS). Every finished point is told: completed -> COMPLETE with its mean top-1 error over
seeds; diverged -> PRUNED at the step it diverged (intermediate value 100); stopped by the run's
pruner (status ``pruned``) -> PRUNED at the earliest step it was pruned at (intermediate value: the
top-1 error the pruned runs recorded), with ``pruned_at_step`` and ``prune_rule``; failed -> FAIL.
A point with a failed run is FAIL, else one with a diverged run is told as diverged. So
``optuna-dashboard`` and ``optuna.visualization`` see every run, the unstable ones included.
``tpe`` asks its trials from these studies (in waves, or one per free slot: ``ask_free``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from ..store import TERMINAL, RunStatus, opened_by_name
from .plan import (
    CellRuns,
    PlannedRun,
    cell_key,
    cell_seed,
    cells,
    distributions,
    in_ranges,
    stem_label,
    tpe_sampler,
)

if TYPE_CHECKING:
    from .spec import GridSpec


def open_storage(spec: GridSpec, in_memory: bool = False):
    """The sweep's Optuna storage (``optuna.db`` in its folder; ``in_memory``: no file).
    ``ConfigError`` when a name of the database is a link or other non-file, or its folder
    resolves out of the sweep's own."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if in_memory:
        return optuna.storages.InMemoryStorage()
    spec.sweep_dir.mkdir(parents=True, exist_ok=True)
    db = spec.sweep_dir.absolute() / "optuna.db"
    # SQLite follows a link at the database's name (and at its journal's), creating or writing the
    # file it leads to: only a regular file, or none, is opened (the controller holds the sweep's
    # lock, so nothing of the sweep's own changes these names meanwhile)
    for end in ("", "-journal", "-wal", "-shm"):
        opened_by_name(db.with_name(db.name + end), spec.sweep_dir, "the sweep's Optuna storage not opened")
    return optuna.storages.RDBStorage(f"sqlite:///{db}")


def study_name(spec: GridSpec, cell: str, stem: str | None) -> str:
    return f"{spec.name}/{cell or 'all'}/stem={stem}"


def _study(spec: GridSpec, storage, cell: dict[str, Any], stem: str | None):
    import optuna

    study = optuna.create_study(study_name=study_name(spec, cell_key(cell), stem), storage=storage,
                                direction="minimize", load_if_exists=True)
    # A controller builds a fresh sampler for every wave: seeding it by the trials already in the
    # study keeps the plan a function of the spec and the history, while a later wave does not
    # replay the first wave's random start-up draws.
    seed = cell_seed(spec.sampler.seed, {**cell, "stem": stem}) + len(study.get_trials(deepcopy=False))
    study.sampler = tpe_sampler(seed)
    return study


def _studies(spec: GridSpec):
    """Every (cell, cell key, stem axis value, stem label) study of a tpe sweep, in spec order."""
    for cell in cells(spec):
        for stem in spec.axes.get("stem", [None]):
            # Runs are recorded under the stem the model fixes when there is no stem axis.
            yield cell, cell_key(cell), stem, stem_label(spec, cell, stem)


def _ask_one(study, planner: CellRuns, dists: dict, planned: set[str], wave: int) -> list[PlannedRun]:
    """One trial asked from ``study`` as its runs (point = the trial number), recorded on the
    trial (``run_ids``); [] when the space is exhausted. A point whose runs are planned already
    (int ranges) is told FAIL and asked again: a point is never planned twice."""
    import optuna

    for _attempt in range(10):
        trial = study.ask(dists)
        runs = planner.runs([trial.params], trial.number, wave)
        if not planned & {r.run_id for r in runs}:
            trial.set_user_attr("run_ids", [r.run_id for r in runs])
            planned |= {r.run_id for r in runs}
            return runs
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return []


def ask_wave(spec: GridSpec, plan: list[PlannedRun], statuses: dict[str, str], storage
             ) -> list[PlannedRun]:
    """tpe waves: the next wave of every (cell, stem) study whose previous wave has finished."""
    wave = spec.sampler.wave or spec.sampler.n
    dists = distributions(spec.ranges)
    new: list[PlannedRun] = []
    planned = {r.run_id for r in plan}
    for cell, key, stem, label in _studies(spec):
        mine = [r for r in plan if r.cell == key and r.stem == label]
        if any(statuses.get(r.run_id) not in TERMINAL for r in mine):
            continue  # this study's wave is still running
        asked = len({r.point for r in mine})
        k = min(wave, spec.sampler.n - asked)
        if k <= 0:
            continue
        study = _study(spec, storage, cell, label)
        planner = CellRuns(spec, cell, [stem])
        for _ in range(k):
            runs = _ask_one(study, planner, dists, planned, asked // wave)
            if not runs:
                break  # the space is exhausted: plan no more for this study
            new += runs
    return new


def ask_free(spec: GridSpec, plan: list[PlannedRun], statuses: dict[str, str], storage, slots: int
             ) -> list[PlannedRun]:
    """Async tpe: one new trial per free slot (``slots``: runs that may start now), each from the
    study with the fewest points in flight (then the fewest asked, then spec order) that has
    fewer than ``n``. A trial takes one slot per seed. The caller tells finished points first, so
    each ask sees every result so far; the points in flight are RUNNING trials, which the
    constant-liar TPE keeps the new one away from. A run's ``wave`` is the number of its study's
    points that had finished when it was asked."""
    n, per_trial = spec.sampler.n, len(spec.seeds)
    todo = []
    for i, (cell, key, stem, label) in enumerate(_studies(spec)):
        points: dict[int, bool] = {}  # point -> finished (every seed's run terminal)
        for r in plan:
            if r.cell == key and r.stem == label:
                points[r.point] = points.get(r.point, True) and statuses.get(r.run_id) in TERMINAL
        if len(points) < n:
            finished = sum(points.values())
            todo.append([len(points) - finished, len(points), i, finished, cell, stem, label])
    if slots <= 0 or not todo:
        return []
    dists = distributions(spec.ranges)
    planned = {r.run_id for r in plan}
    opened: dict[int, tuple[Any, CellRuns]] = {}
    new: list[PlannedRun] = []
    while slots > 0 and todo:
        entry = min(todo)
        _, asked, i, finished, cell, stem, label = entry
        if i not in opened:
            opened[i] = (_study(spec, storage, cell, label), CellRuns(spec, cell, [stem]))
        runs = _ask_one(*opened[i], dists, planned, finished)
        if not runs:
            todo.remove(entry)  # the space is exhausted: plan no more for this study
            continue
        new += runs
        slots -= per_trial
        entry[0] += 1
        entry[1] += 1
        if entry[1] >= n:
            todo.remove(entry)
    return new


def adopt_asked(spec: GridSpec, plan: list[PlannedRun], storage) -> list[PlannedRun]:
    """The runs of trials asked but not in the plan (a controller killed between asking and
    saving the plan): planned now, so an asked point is neither lost nor asked again. A trial
    whose point is planned already, or beyond ``n``, is told FAIL."""
    import optuna

    names = set(optuna.get_all_study_names(storage))
    planned = {r.run_id for r in plan}
    new: list[PlannedRun] = []
    for cell, key, stem, label in _studies(spec):
        if study_name(spec, key, label) not in names:
            continue
        mine = [r for r in plan if r.cell == key and r.stem == label]
        points = {r.point for r in mine}
        orphans = None
        study = None
        for t in optuna.load_study(study_name=study_name(spec, key, label), storage=storage).get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.number in points:
                continue
            if study is None:
                study = _study(spec, storage, cell, label)
                orphans = CellRuns(spec, cell, [stem])
            runs = orphans.runs([t.params], t.number, 0) if in_ranges(spec, t.params) else []  # a file's point
            if not runs or planned & {r.run_id for r in runs} or len(points) >= spec.sampler.n:
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                continue
            study_id = storage.get_study_id_from_name(study.study_name)
            storage.set_trial_user_attr(storage.get_trial_id_from_study_id_trial_number(study_id, t.number),
                                        "run_ids", [r.run_id for r in runs])
            planned |= {r.run_id for r in runs}
            points.add(t.number)
            new += runs
    return new


def tell(spec: GridSpec, plan: list[PlannedRun], runs: pd.DataFrame, storage,
         told: dict | None = None) -> int:
    """Tell every finished point not told yet; returns how many trials were told or added.

    ``told`` (a dict the caller keeps between calls) remembers the points already in the
    storage with their statuses, so a controller that tells after every finished run does not
    query every study again."""
    from optuna.trial import TrialState, create_trial

    by_id = runs.drop_duplicates("run_id", keep="last").set_index("run_id") if len(runs) else None
    status_of = dict(zip(by_id.index, by_id.status, strict=True)) if by_id is not None else {}
    groups: dict[tuple[str, str | None, int], list[PlannedRun]] = {}
    for r in plan:
        groups.setdefault((r.cell, r.stem, r.point), []).append(r)
    cell_by_key = {cell_key(c): c for c in cells(spec)}
    dists = distributions(spec.ranges)
    studies: dict[tuple[str, str | None], Any] = {}
    count = 0
    for (cell, stem, point), members in groups.items():
        outcome = tuple(status_of.get(m.run_id) for m in members)
        if not all(s in TERMINAL for s in outcome):
            continue
        if told is not None and told.get((cell, stem, point)) == outcome:
            continue
        rows = by_id.loc[[m.run_id for m in members]]
        if (cell, stem) not in studies:
            studies[(cell, stem)] = _study(spec, storage, cell_by_key.get(cell, {}), stem)
        study = studies[(cell, stem)]
        ids = [m.run_id for m in members]
        verdict: dict[str, Any] = {}
        if RunStatus.FAILED in set(rows.status):
            state, value, inter = TrialState.FAIL, None, {}
        elif RunStatus.DIVERGED in set(rows.status):
            step = int(rows.diverged_at_step.dropna().min())
            state, value, inter = TrialState.PRUNED, None, {step: 100.0}
            verdict = {"diverged_at_step": step}
        elif RunStatus.PRUNED in set(rows.status):
            state, value, inter, verdict = TrialState.PRUNED, None, *_pruned(rows)
        else:
            state, value, inter = TrialState.COMPLETE, float(rows.top1_err.mean()), {}
        attrs = {"run_ids": ids, "point": point, "stem": stem, "cell": cell,
                 "statuses": rows.status.tolist(), "top1_err": rows.top1_err.tolist(), **verdict}
        trials = study.get_trials(deepcopy=False)
        same = [t for t in trials if t.user_attrs.get("run_ids") == ids]
        if any(t.state == state and t.user_attrs.get("statuses") == attrs["statuses"] for t in same):
            if told is not None:
                told[(cell, stem, point)] = outcome
            continue  # already told with this outcome
        params = {k: members[0].config.to_dict()[k] for k in dists}
        asked = [t for t in same if t.state == TrialState.RUNNING]
        if asked:  # a tpe trial: tell the one that asked for this point, by its number
            number = asked[0].number
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(study.study_name), number)
            for k, v in attrs.items():
                storage.set_trial_user_attr(trial_id, k, v)
            for s, v in inter.items():
                storage.set_trial_intermediate_value(trial_id, s, v)
            study.tell(number, value if state == TrialState.COMPLETE else None, state=state)
        else:
            study.add_trial(create_trial(params=params, distributions=dists, value=value,
                                         state=state, user_attrs=attrs, intermediate_values=inter))
        if told is not None:
            told[(cell, stem, point)] = outcome
        count += 1
    return count


def _pruned(rows: pd.DataFrame) -> tuple[dict[int, float], dict[str, Any]]:
    """A point's pruned runs as Optuna sees a pruned trial: one intermediate value at the
    earliest step a run was pruned at (the mean top-1 error its pruned runs recorded; 100 when
    none was), and that run's verdict (``pruned_at_step``, ``prune_rule``) as user attributes."""
    hit = rows[rows.status == RunStatus.PRUNED]
    at = pd.to_numeric(hit.get("pruned_at_step", pd.Series(None, index=hit.index)), errors="coerce")
    first = hit.loc[at.idxmin()] if at.notna().any() else hit.iloc[0]
    step = int(at.min()) if at.notna().any() else 0
    err = pd.to_numeric(hit.top1_err, errors="coerce").mean()
    rule = first.get("prune_rule")
    return ({step: float(err) if err == err else 100.0},
            {"pruned_at_step": step, "prune_rule": None if rule is None or rule != rule else str(rule)})
