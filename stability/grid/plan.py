"""Plan: a spec -> the list of run configs, deterministically, sampled through Optuna.

Grid axes (lists) are crossed. Range axes are sampled once per *cell* of the non-stem axes and
the same points are used for every stem: ViT_P and ViT_C see the same (lr, wd) pairs (a paired
design). ``random``, ``sobol`` and ``grid`` plans are pure functions of the spec; ``tpe`` plans
grow from the results told to its studies, a trial per free slot or a wave at a time (see
``stability.grid.studies``).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import HASH_SEPARATORS, RunConfig, canonical_hash, config_from_json, run_config
from ..errors import ConfigError
from ..models.presets import resolve
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


def sample_points(ranges: dict[str, Range], sampler: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` points (grid: ``n`` values per axis, crossed), as Optuna's samplers draw them.

    Float ranges with ``random`` or ``sobol`` take a vectorised path that reproduces Optuna's
    RandomSampler / QMCSampler draws exactly (a test compares them); everything else asks an
    in-memory Optuna study.
    """
    if not ranges:
        return [{}]
    if sampler in ("random", "sobol") and all(r.kind != "int" for r in ranges.values()):
        return _vectorised_points(ranges, sampler, n, seed)
    return optuna_points(ranges, sampler, n, seed)


def _vectorised_points(ranges: dict[str, Range], sampler: str, n: int, seed: int) -> list[dict[str, Any]]:
    """Optuna's draws without a study: RandomSampler draws uniforms in the (log) space of each
    parameter in order with ``RandomState(seed)``; QMCSampler maps scrambled Sobol points
    (dimensions in spec order, sample ids from 0) the same way."""
    names = list(ranges)
    lo = np.array([math.log(ranges[k].lo) if ranges[k].kind == "loguniform" else ranges[k].lo for k in names])
    hi = np.array([math.log(ranges[k].hi) if ranges[k].kind == "loguniform" else ranges[k].hi for k in names])
    if sampler == "random":
        u = np.random.RandomState(seed).uniform(lo, hi, size=(n, len(names)))
    else:
        from scipy.stats import qmc

        with warnings.catch_warnings():  # "balance needs n = 2^k": Optuna draws any n, so do we
            warnings.simplefilter("ignore", UserWarning)
            u = lo + qmc.Sobol(len(names), seed=seed, scramble=True).random(n) * (hi - lo)
    cols = {}
    for j, k in enumerate(names):
        v = np.exp(u[:, j]) if ranges[k].kind == "loguniform" else u[:, j]
        cols[k] = np.clip(v, ranges[k].lo, ranges[k].hi).tolist()
    keys = list(ranges)
    return [{k: cols[k][i] for k in keys} for i in range(n)]


def optuna_points(ranges: dict[str, Range], sampler: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` points asked from an in-memory Optuna study with the named sampler."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = distributions(ranges)
    skip = 0
    if sampler == "grid":
        grid = {k: grid_values(r, n) for k, r in ranges.items()}
        sampler_obj = optuna.samplers.GridSampler(grid, seed=seed)
        count = math.prod(len(v) for v in grid.values())
    elif sampler == "random":
        sampler_obj, count = optuna.samplers.RandomSampler(seed=seed), n
    elif sampler == "sobol":
        # Optuna's QMC sampler draws a study's first trial at random (to learn the search
        # space); we ask one extra trial and drop it so every point is a Sobol point.
        with warnings.catch_warnings():  # "experimental" since Optuna 3.0; stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler_obj = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                                     warn_independent_sampling=False)
        count, skip = n + 1, 1
    elif sampler == "tpe":
        sampler_obj, count = tpe_sampler(seed), n
    else:
        raise ValueError(f"unknown sampler {sampler!r}")
    study = optuna.create_study(sampler=sampler_obj)
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


def make_plan(spec: GridSpec) -> list[PlannedRun]:
    """The full plan of a random/sobol/grid spec (tpe: its first wave). Duplicate configs
    (possible with int ranges) are planned once."""
    n = spec.sampler.n
    if spec.sampler.name == "tpe":
        n = min(spec.sampler.wave or n, n)
    plan: list[PlannedRun] = []
    seen: set[str] = set()
    for cell in cells(spec):
        seed = cell_seed(spec.sampler.seed, cell)
        points = sample_points(spec.ranges, spec.sampler.name, n, seed)
        for run in CellRuns(spec, cell).runs(points):
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
    a missing ``data_root``), so a sweep fails before its first run rather than run by run."""
    from ..data import DataError, check_source
    from .backends import resolve_kind

    sources = set()
    for run in runs:
        cfg = config_from_json(run.config_json)
        sources.add((cfg.dataset, cfg.data_root, cfg.download))
    for dataset, root, download in sorted(sources, key=str):
        try:
            check_source(dataset, root, download, here=resolve_kind(spec.executor.kind) == "local")
        except DataError as e:
            raise ConfigError(str(e), spec.path) from None


def plan_mismatch(spec: GridSpec, plan: list[PlannedRun]) -> str | None:
    """Why a saved plan is not what ``spec`` plans now (None when every saved run still is).

    A tpe plan is read back rather than recomputed, so a spec edited after its first wave
    (another ``base`` field, seeds, axes) would otherwise reuse runs of the old configuration."""
    by_cell = {cell_key(c): c for c in cells(spec)}
    planners: dict[tuple[str, str | None], CellRuns] = {}
    for r in plan:
        if r.cell not in by_cell:
            return f"its cell {r.cell or 'all'!r} is not in the spec's space any more"
        stem = r.stem if "stem" in spec.axes else None
        planner = planners.setdefault((r.cell, stem), CellRuns(spec, by_cell[r.cell], [stem]))
        cfg = r.config
        if r.run_id not in {x.run_id for x in planner.runs([{k: getattr(cfg, k) for k in spec.ranges}])}:
            return f"run {r.run_id} ({r.cell or 'all'}, stem {r.stem}, seed {r.seed}) is not what the spec plans now"
    return None


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


def estimate_cost(plan: list[PlannedRun], flops_per_s: float = 100e12) -> dict[str, float]:
    """Total training FLOPs (3x forward per image, forward + backward), images seen, and GPU-hours
    at ``flops_per_s`` sustained (100 TFLOP/s: about 10% MFU of an H100's bf16 peak, what a 4GF
    ViT reached eagerly in ``benchmarks/gpu_check.py``)."""
    from ..data import SIZES
    from ..models import model_spec

    total_flops = 0.0
    images = 0.0
    cache: dict[tuple, int] = {}
    for run in plan:
        c = run.config
        n_train, default_px = SIZES[c.dataset]
        n_train = n_train or c.synthetic_size
        per_epoch = n_train // c.batch_size
        steps = c.epochs * min(per_epoch, c.steps_per_epoch or per_epoch)
        seen = steps * c.batch_size
        key = (*resolve(c.model, c.stem), c.image_size or default_px)
        if key not in cache:
            from ..models.build import count_complexity

            cache[key] = count_complexity(model_spec(c.model, c.stem, image_size=key[2])).flops
        total_flops += 3 * 2 * cache[key] * seen  # MACs -> FLOPs, forward + backward
        images += seen
    return {"train_flops": total_flops, "images": images, "flops_per_s": flops_per_s,
            "gpu_hours": total_flops / flops_per_s / 3600}
