"""Plan: a spec -> the list of run configs, deterministically, sampled through Optuna.

Grid axes (lists) are crossed. Range axes are sampled once per *cell* of the non-stem axes and
the same points are used for every stem: ViT_P and ViT_C see the same (lr, wd) pairs (a paired
design). Which points a cell gets is the sampler's choice (``stability.grid.samplers``); this
module turns points into runs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import HASH_SEPARATORS, RunConfig, canonical_hash, config_from_json, run_config
from ..errors import ConfigError
from ..models.presets import resolve

if TYPE_CHECKING:  # plans read a spec's fields; the spec checks its sampler with .samplers
    from .spec import GridSpec, Range

PLAN_COLUMNS = ("run_id", "cell", "stem", "point", "seed", "wave", "optimizer", "epochs", "config_json")


@dataclass
class PlannedRun:
    run_id: str
    cell: str  # the non-stem grid values, "optimizer=adamw,epochs=50" ("" when none)
    stem: str | None
    point: int  # index of the sampled point in its cell (tpe: the trial number)
    seed: int
    wave: int  # tpe waves: the wave; async: the study's points finished when it was asked
    optimizer: str
    epochs: int
    config_json: str  # the validated config (see ``stability.config.config_json``)

    @functools.cached_property
    def config(self) -> RunConfig:
        """Parsed on demand: a 100,000-run plan is strings until a run is submitted."""
        return config_from_json(self.config_json)

    @property
    def study(self) -> str:
        """Name of the Optuna study this run is a trial of: one per (cell, stem)."""
        return f"{self.cell or 'all'}|stem={self.stem}"


class ConfigTemplate:
    """A validated config with some fields left open (a cell's sampled ranges).

    ``id_format % encode(values)`` and ``json_format % encode(values)`` are the canonical JSON
    behind ``RunConfig.run_id`` and the plan's ``config_json`` of the config with those values,
    byte for byte (a test checks), without building a dataclass per point. The values are not
    re-validated: the spec checked both ends of every range.
    """

    _MARK = "\x01open\x01"

    def __init__(self, cfg: RunConfig, open_fields: list[str]):
        self.cfg = cfg
        self.open = sorted(open_fields)  # sort_keys writes them in this order
        self.id_format = self._format(cfg.identity(), HASH_SEPARATORS)
        self.json_format = self._format(cfg.to_dict(), None)

    def _format(self, d: dict[str, Any], separators) -> str:
        """Canonical JSON with a ``%s`` slot per open field."""
        marked = {**d, **{k: f"{self._MARK}{k}" for k in self.open}}
        text = json.dumps(marked, sort_keys=True, separators=separators, default=str).replace("%", "%%")
        return re.sub(r'"\\u0001open\\u0001\w+"', "%s", text)

    def encode(self, values: dict[str, Any]) -> tuple[str, ...]:
        """The open values as json.dumps writes them (floats and ints: repr)."""
        return tuple(repr(v) if type(v) in (float, int) else json.dumps(v) for v in map(values.__getitem__, self.open))


def cells(spec: GridSpec) -> list[dict[str, Any]]:
    """The cross product of the non-stem grid axes, in spec order. A bundle axis (a list of
    mappings) contributes all the fields of its chosen mapping."""
    axes = {k: v for k, v in spec.axes.items() if k != "stem"}
    out = []
    for values in itertools.product(*axes.values()):
        cell: dict[str, Any] = {}
        for key, v in zip(axes, values, strict=True):
            cell |= v if isinstance(v, dict) else {key: v}
        out.append(cell)
    return out


def cell_key(cell: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in cell.items())


def cell_seed(base_seed: int, cell: dict[str, Any]) -> int:
    """A sampler seed per cell that depends on the cell's values, not on its position."""
    h = hashlib.sha256(f"{base_seed}|{cell_key(cell)}".encode()).hexdigest()
    return int(h[:8], 16)


def distributions(ranges: dict[str, Range]) -> dict[str, Any]:
    from optuna.distributions import FloatDistribution, IntDistribution

    out = {}
    for k, r in ranges.items():
        if r.kind == "int":
            out[k] = IntDistribution(int(r.lo), int(r.hi))
        else:
            out[k] = FloatDistribution(r.lo, r.hi, log=r.kind == "loguniform")
    return out


def grid_values(r: Range, n: int) -> list[float | int]:
    """``n`` evenly spaced values of a range (log-spaced for loguniform)."""
    if r.kind == "int":
        return sorted({int(round(v)) for v in np.linspace(r.lo, r.hi, n)})
    space = np.geomspace if r.kind == "loguniform" else np.linspace
    return [float(v) for v in space(r.lo, r.hi, n)]


def points_from_unit(ranges: dict[str, Range], u: np.ndarray) -> list[dict[str, Any]]:
    """Points of float ranges from draws ``u`` in the unit cube (one row per point, one column per
    range in spec order): scaled into each range's (log) space, as Optuna's samplers map theirs."""
    names = list(ranges)
    lo = np.array([math.log(ranges[k].lo) if ranges[k].kind == "loguniform" else ranges[k].lo for k in names])
    hi = np.array([math.log(ranges[k].hi) if ranges[k].kind == "loguniform" else ranges[k].hi for k in names])
    x = lo + u * (hi - lo)
    cols = {}
    for j, k in enumerate(names):
        v = np.exp(x[:, j]) if ranges[k].kind == "loguniform" else x[:, j]
        cols[k] = np.clip(v, ranges[k].lo, ranges[k].hi).tolist()
    return [{k: cols[k][i] for k in names} for i in range(len(u))]


def optuna_points(ranges: dict[str, Range], sampler, count: int, skip: int = 0) -> list[dict[str, Any]]:
    """``count`` points asked from an in-memory Optuna study with ``sampler`` (an Optuna
    sampler object), the first ``skip`` dropped; ``[{}]`` when there is no range."""
    import optuna

    if not ranges:
        return [{}]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = distributions(ranges)
    study = optuna.create_study(sampler=sampler)
    points = []
    for i in range(count):
        trial = study.ask(dists)
        points.append(dict(trial.params))
        # Telling each trial before the next ask keeps GridSampler from handing out a grid
        # point twice (its known failure under parallel askers); the value is irrelevant here.
        # (Not after the last: a finished grid then calls study.stop(), outside an optimize loop.)
        if i < count - 1:
            study.tell(trial, 0.0)
    return points[skip:]


def tpe_sampler(seed: int):
    import optuna

    # constant_liar: trials asked in one wave avoid each other while their results are pending.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                      n_startup_trials=8)


def stem_label(spec: GridSpec, cell: dict[str, Any], stem: str | None) -> str:
    """The stem a (cell, stem) study's runs are recorded under: the stem axis' value, else the
    stem the model name fixes (``vit_c_tiny`` -> conv), ``patchify`` for a bare ViT size, or
    ``regnet``."""
    if stem is not None:
        return stem
    from ..config import FIELDS

    model = cell.get("model", spec.base.get("model", FIELDS["model"].default))
    try:
        return resolve(model, cell.get("stem", spec.base.get("stem")))[1] or "regnet"
    except ValueError:
        return "regnet" if str(model).startswith("regnet") else "patchify"


def make_config(spec: GridSpec, values: dict[str, Any], where: str) -> RunConfig:
    try:
        return run_config({**spec.base, **values, "results": spec.results, "sweep": spec.name})
    except ConfigError as e:
        raise ConfigError(f"{where}: {str(e)}", spec.path) from None


class CellRuns:
    """The runs of one cell: every stem x seed run of each sampled point.

    The first point builds one validated :class:`ConfigTemplate` per (stem, seed); every point
    after it only fills in its sampled values, so big plans stay fast.
    """

    def __init__(self, spec: GridSpec, cell: dict[str, Any], stems: list[str | None] | None = None):
        self.spec, self.cell, self.key = spec, cell, cell_key(cell)
        stems = stems if stems is not None else spec.axes.get("stem", [None])
        self.slots = [(stem, seed) for stem in stems for seed in spec.seeds]
        self.templates: list[tuple[ConfigTemplate, str]] = []  # per slot: (template, stem label)

    def _build(self, point: dict[str, Any]) -> None:
        for stem, seed in self.slots:
            values = {**self.cell, **point, "seed": seed} | ({"stem": stem} if stem is not None else {})
            cfg = make_config(self.spec, values, f"space ({cell_key({**self.cell, 'stem': stem})})")
            self.templates.append((ConfigTemplate(cfg, list(point)), stem_label(self.spec, self.cell, stem)))

    def runs(self, points: list[dict[str, Any]], first_index: int = 0, wave: int = 0) -> list[PlannedRun]:
        """The runs of ``points`` (indices from ``first_index``), point by point, stem x seed."""
        if not points:
            return []
        if not self.templates:
            self._build(points[0])
        encode = self.templates[0][0].encode  # every template has the same open fields
        encoded = [encode(p) for p in points]
        per_slot = [([canonical_hash(t.id_format % e) for e in encoded], [t.json_format % e for e in encoded],
                     label, seed, t.cfg) for (t, label), (_, seed) in zip(self.templates, self.slots, strict=True)]
        key, out = self.key, []
        for i, p in enumerate(points):
            opt, ep = p.get("optimizer"), p.get("epochs")
            for ids, texts, label, seed, cfg in per_slot:
                out.append(PlannedRun(ids[i], key, label, first_index + i, seed, wave, opt or cfg.optimizer,
                                      ep or cfg.epochs, texts[i]))
        return out


def plan_cells(spec: GridSpec, points: Callable[[int, int], list[dict[str, Any]]], n: int) -> list[PlannedRun]:
    """Every cell's runs of the ``n`` points ``points(n, cell seed)`` draws, in spec order.
    Duplicate configs (possible with int ranges) are planned once."""
    plan: list[PlannedRun] = []
    seen: set[str] = set()
    for cell in cells(spec):
        for run in CellRuns(spec, cell).runs(points(n, cell_seed(spec.sampler.seed, cell))):
            if run.run_id not in seen:
                seen.add(run.run_id)
                plan.append(run)
    return plan


def check_cells(spec: GridSpec) -> None:
    """Build every cell's configs at the ranges' lower ends: a spec whose base, cells and ranges
    do not make valid runs fails now (``ConfigError``), not at its first ask; so does one whose
    data cannot be found (:func:`check_data`)."""
    point = {k: int(r.lo) if r.kind == "int" else r.lo for k, r in spec.ranges.items()}
    check_data(spec, [run for cell in cells(spec) for run in CellRuns(spec, cell).runs([point])])


def check_data(spec: GridSpec, runs: list[PlannedRun]) -> None:
    """``ConfigError`` naming the spec when the runs' data cannot be found (``data.check_source``:
    on this machine for local jobs; for Slurm jobs, whose nodes may mount other filesystems, only
    a missing ``data_root``) or holds fewer training images than one batch (``cost.images_seen``;
    image files only where the jobs are local), so a sweep fails before its first run rather than
    run by run."""
    from ..data.datasets import IMAGE_FILES, DataError, check_source
    from .cost import images_seen
    from .kinds import resolve_kind

    here = resolve_kind(spec.executor.kind) == "local"
    sources = {(cfg.dataset, cfg.data_root, cfg.download)
               for cfg, _ in config_groups(runs, ("dataset", "data_root", "download"), set(spec.ranges))}
    for dataset, root, download in sorted(sources, key=str):
        try:
            check_source(dataset, root, download, here=here)
        except DataError as e:
            raise ConfigError(str(e), spec.path) from None
    # a batch larger than the training set: every run would start and fail, one by one
    fields = ("dataset", "data_root", "batch_size", "test_split", "synthetic_size")
    for cfg, _ in config_groups(runs, fields, set(spec.ranges)):
        if here or cfg.dataset not in IMAGE_FILES:  # image files are counted where they are
            try:
                images_seen(cfg)
            except ConfigError as e:
                raise ConfigError(str(e), spec.path) from None


def in_ranges(spec: GridSpec, point: Any) -> bool:
    """Whether ``point``, read from a file (a saved plan, Optuna's database), holds exactly the
    spec's ranges, each a finite number of the range's type inside it: the only values a run
    takes from such a file."""
    if not isinstance(point, dict) or set(point) != set(spec.ranges):
        return False
    for k, r in spec.ranges.items():
        v = point[k]
        slack = 0 if r.kind == "int" else 1e-9 * max(abs(r.lo), abs(r.hi))  # a sampler's float rounding
        if type(v) is not (int if r.kind == "int" else float) or not (
                math.isfinite(v) and r.lo - slack <= v <= r.hi + slack):
            return False
    return True


def replan(spec: GridSpec, plan: list[PlannedRun]) -> tuple[list[PlannedRun], str | None]:
    """A saved plan (tpe: read back, not recomputed) with every run's config rebuilt from ``spec``
    and the run's point, and why not (None when every saved run is what the spec plans now).

    The file gives only each run's point, checked against the spec's ranges: what a job runs
    with (``results``, ``data_root``, ``dataset`` ...) is the spec's, never the file's, since
    nothing under a results root is trusted. A spec edited after its first wave (another
    ``base`` field, seeds, axes) would otherwise reuse runs of the old configuration."""
    by_cell = {cell_key(c): c for c in cells(spec)}
    planners: dict[tuple[str, str | None], CellRuns] = {}
    out = []
    for r in plan:
        if r.cell not in by_cell:
            return plan, f"its cell {r.cell or 'all'!r} is not in the spec's space any more"
        stem = r.stem if "stem" in spec.axes else None
        planner = planners.setdefault((r.cell, stem), CellRuns(spec, by_cell[r.cell], [stem]))
        try:
            saved = json.loads(r.config_json)
            point = {k: saved[k] for k in spec.ranges} if isinstance(saved, dict) else None
        except (TypeError, ValueError, KeyError, RecursionError):
            point = None
        if not in_ranges(spec, point):
            return plan, f"run {r.run_id!r}'s point is not one of the spec's ranges"
        match = next((x for x in planner.runs([point]) if x.run_id == r.run_id), None)
        if match is None:
            return plan, f"run {r.run_id} ({r.cell or 'all'}, stem {r.stem}, seed {r.seed}) is not what the spec plans now"
        out.append(dataclasses.replace(r, stem=match.stem, seed=match.seed, optimizer=match.optimizer,
                                       epochs=match.epochs, config_json=match.config_json))
    return out, None


def plan_frame(plan: list[PlannedRun]):
    """The plan as a DataFrame (the ``plan.parquet`` of a sweep)."""
    import pandas as pd

    return pd.DataFrame({c: [getattr(r, c) for r in plan] for c in PLAN_COLUMNS}, columns=list(PLAN_COLUMNS))


def plan_from_frame(df) -> list[PlannedRun]:
    """The inverse of :func:`plan_frame`; configs stay JSON until used. A plan written before
    the optimizer/epochs columns existed gets them from its configs."""
    if "optimizer" not in df or "epochs" not in df:
        parsed = [config_from_json(t) for t in df["config_json"]]
        df = df.assign(optimizer=[c.optimizer for c in parsed], epochs=[c.epochs for c in parsed])
    stems = [s if isinstance(s, str) else None for s in df["stem"].tolist()]
    cols = [df[c].tolist() for c in ("run_id", "cell")] + [stems] + [
        [int(v) for v in df[c].tolist()] for c in ("point", "seed", "wave")] + [
        df["optimizer"].tolist(), [int(v) for v in df["epochs"].tolist()], df["config_json"].tolist()]
    return [PlannedRun(*row) for row in zip(*cols, strict=True)]


# The fields that decide a run's training cost (images seen x FLOPs per image; grid/cost.py).
COST_FIELDS = ("dataset", "synthetic_size", "batch_size", "steps_per_epoch", "epochs", "model", "stem", "image_size")


def config_groups(plan: list[PlannedRun], fields: tuple[str, ...], ranged: set[str]) -> list[tuple[RunConfig, int]]:
    """One parsed config per group of runs that agree on ``fields``, with the group's size.

    Runs of one (cell, stem) differ only in their seed and sampled (``ranged``) values, so when
    no ranged field is among ``fields`` one config per (cell, stem) stands for all of them: a
    100,000-run plan parses a handful of configs, not 100,000."""
    if ranged & set(fields):
        return [(r.config, 1) for r in plan]
    first: dict[tuple, PlannedRun] = {}
    sizes: dict[tuple, int] = {}
    for r in plan:
        key = (r.cell, r.stem, r.epochs)
        first.setdefault(key, r)
        sizes[key] = sizes.get(key, 0) + 1
    return [(first[k].config, sizes[k]) for k in first]
