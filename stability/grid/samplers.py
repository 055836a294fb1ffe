"""Samplers: how a sweep chooses its points, one class per strategy (Optuna's ``BaseSampler``
pattern, at the level of a whole sweep).

A sampler owns three things the controller, the CLI, ``grid status`` and ``reproduce`` ask of
it, so none of them branches on a sampler's name:

- its **plan of record** (:meth:`Sampler.plan_of_record`): the runs a sweep has planned, from
  the spec (``random``, ``sobol``, ``grid``: a pure function of the spec) or read back from the
  saved plan and the Optuna record (``tpe``: points asked as results came in);
- its **next points** (:meth:`Sampler.ask`): none for a fixed plan; one trial per free slot
  (``tpe``, ``mode: async``) or the next wave of each study whose wave has ended (``waves``);
- its **dry run** (:meth:`Sampler.dry_run`): what ``grid run --dry-run`` shows, planned in
  memory without touching the sweep's files.

The spec's ``sampler:`` mapping is checked by the class its ``name`` picks
(:meth:`Sampler.settle`), so a new strategy is one subclass added to :data:`SAMPLERS`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import ConfigError, shown
from .plan import (
    PlannedRun,
    check_cells,
    check_data,
    grid_values,
    optuna_points,
    plan_cells,
    plan_from_frame,
    points_from_unit,
    replan,
    tpe_sampler,
)

if TYPE_CHECKING:
    from .spec import GridSpec, Range, SamplerSpec


class BadSetting(ValueError):
    """A ``sampler:`` field a strategy refuses: ``field`` (``sampler.mode``) and why."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class Sampler:
    """A sweep's sampling strategy (subclasses set ``name`` and override what differs).

    Args:
        spec: the validated grid spec whose points this sampler chooses.
    """

    name: ClassVar[str] = ""

    def __init__(self, spec: GridSpec):
        self.spec = spec

    @classmethod
    def settle(cls, settings: SamplerSpec, has_ranges: bool) -> SamplerSpec:
        """The ``sampler:`` settings as this strategy reads them (defaults filled in), or
        :class:`BadSetting`. Fixed plans take no ``mode`` and no ``wave``."""
        if settings.mode is not None:
            raise BadSetting("sampler.mode", f"{shown(settings.mode)} is not allowed (tpe only: a {cls.name} "
                                             "plan is fixed by the spec)")
        if settings.wave is not None:
            raise BadSetting("sampler.wave", "a wave size is for tpe (mode: waves)")
        return settings

    @classmethod
    def for_spec(cls, spec: GridSpec) -> Sampler:
        """The object that runs ``spec`` (a strategy with modes returns the mode's class)."""
        return cls(spec)

    @classmethod
    def points_per_cell(cls, n: int, ranges: int) -> int:
        """Points a cell holds at most, for the spec's size cap (``ranges``: range axes)."""
        return n if ranges else 1

    @classmethod
    def unit_draws(cls, n: int, dims: int, seed: int) -> np.ndarray | None:
        """``n`` x ``dims`` draws in the unit cube that stand for the Optuna sampler's own on float
        ranges (bit for bit: a test compares them), or None where only Optuna can draw them."""
        return None

    @classmethod
    def optuna_sampler(cls, ranges: dict[str, Range], n: int, seed: int) -> tuple[Any, int, int]:
        """The Optuna sampler that draws a cell's ``n`` points, how many trials to ask of it and
        how many of the first to drop."""
        raise NotImplementedError

    def points(self, n: int, seed: int) -> list[dict[str, Any]]:
        """``n`` points of the spec's ranges for a cell whose sampler seed is ``seed``."""
        ranges = self.spec.ranges
        if ranges and all(r.kind != "int" for r in ranges.values()):
            u = self.unit_draws(n, len(ranges), seed)
            if u is not None:
                return points_from_unit(ranges, u)
        return optuna_points(ranges, *self.optuna_sampler(ranges, n, seed))

    def plan(self) -> list[PlannedRun]:
        """Every run of a fixed plan, in spec order (an adaptive sampler: its first points)."""
        return plan_cells(self.spec, self.points, self.spec.sampler.n)

    def plan_of_record(self, storage) -> list[PlannedRun]:
        """The plan a ``grid run`` starts from. A fixed plan is recomputed from the spec; a saved
        plan holding a run the spec no longer plans (an edited range, base field or axis under the
        same name) is refused, so two studies never mix in one sweep; a spec that only adds runs
        (more points, more seeds) extends it. Its data is checked before anything is submitted."""
        from .. import store
        from .state import load_plan

        spec = self.spec
        plan = self.plan()
        check_data(spec, plan)
        try:
            saved = load_plan(spec.sweep_dir)
        except store.CorruptFiles:
            return plan  # recomputed from the spec and saved over the corrupt file
        if saved is not None and (gone := set(saved.run_id) - {r.run_id for r in plan}):
            raise ConfigError(f"sweep {spec.name!r} was planned from a different spec ({len(gone)} of its "
                              f"{len(saved)} planned runs are not in this spec's plan): give the changed study a "
                              f"new name, or remove {spec.sweep_dir} to start it again", spec.path)
        return plan

    def recorded_plan(self) -> tuple[list[PlannedRun], list[str]]:
        """The plan as ``grid status`` reports it, read only: the saved plan, else the spec's
        (the same plan); with a line per unreadable plan file."""
        from .. import store
        from .state import load_plan

        try:
            saved = load_plan(self.spec.sweep_dir)
        except store.CorruptFiles as e:
            return self.plan(), [f"{e}; planned from the spec instead"]
        return (plan_from_frame(saved) if saved is not None else self.plan()), []

    def ask(self, plan: list[PlannedRun], statuses: dict[str, str], storage, free_slots: int) -> list[PlannedRun]:
        """New runs to add to ``plan`` now (``statuses``: run_id -> status; ``free_slots``: runs
        that may start now). A fixed plan has none."""
        return []

    def dry_run(self, free_slots: Callable[[], int]) -> list[PlannedRun]:
        """What ``grid run --dry-run`` shows, planned in memory (``free_slots``: asked only by a
        sampler that needs the backend's capacity)."""
        return self.plan()

    def dry_run_note(self) -> str:
        """What the dry run's count leaves out (empty for a fixed plan)."""
        return ""


class RandomSampler(Sampler):
    """Independent uniform draws (log-uniform for ``loguniform``), Optuna's ``RandomSampler``."""

    name = "random"

    @classmethod
    def unit_draws(cls, n, dims, seed):
        # RandomSampler draws each parameter in order with RandomState(seed).uniform(lo, hi).
        return np.random.RandomState(seed).random_sample((n, dims))

    @classmethod
    def optuna_sampler(cls, ranges, n, seed):
        import optuna

        return optuna.samplers.RandomSampler(seed=seed), n, 0


class SobolSampler(Sampler):
    """Scrambled Sobol points, Optuna's ``QMCSampler(qmc_type="sobol")``: fills the space evenly."""

    name = "sobol"

    @classmethod
    def unit_draws(cls, n, dims, seed):
        # QMCSampler's scrambled Sobol points: dimensions in spec order, sample ids from 0.
        from scipy.stats import qmc

        with warnings.catch_warnings():  # "balance needs n = 2^k": Optuna draws any n, so do we
            warnings.simplefilter("ignore", UserWarning)
            return qmc.Sobol(dims, seed=seed, scramble=True).random(n)

    @classmethod
    def optuna_sampler(cls, ranges, n, seed):
        import optuna

        with warnings.catch_warnings():  # "experimental" since Optuna 3.0; stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                                 warn_independent_sampling=False)
        # Optuna's QMC sampler draws a study's first trial at random (to learn the search
        # space): one extra trial is asked and dropped so every point is a Sobol point.
        return sampler, n + 1, 1


class GridSampler(Sampler):
    """``n`` evenly spaced values per range axis (log-spaced for ``loguniform``), crossed."""

    name = "grid"

    @classmethod
    def points_per_cell(cls, n: int, ranges: int) -> int:
        return n ** ranges if ranges else 1

    @classmethod
    def optuna_sampler(cls, ranges, n, seed):
        import optuna

        grid = {k: grid_values(r, n) for k, r in ranges.items()}
        return optuna.samplers.GridSampler(grid, seed=seed), math.prod(len(v) for v in grid.values()), 0


class TpeSampler(Sampler):
    """Optuna's multivariate TPE, one study per (cell, stem), asked as results come in. Its plan
    is a record (``plan.parquet`` + ``optuna.db``), never recomputed. ``mode`` picks the subclass:
    :class:`TpeAsync` (one trial per free slot) or :class:`TpeWaves`."""

    name = "tpe"
    modes: ClassVar[tuple[str, ...]] = ("async", "waves")

    @classmethod
    def settle(cls, settings: SamplerSpec, has_ranges: bool) -> SamplerSpec:
        if not has_ranges:
            raise BadSetting("sampler.name", "tpe needs at least one range in space")
        if settings.mode is not None and settings.mode not in cls.modes:
            raise BadSetting("sampler.mode", f"{shown(settings.mode)} is not allowed (allowed: {', '.join(cls.modes)})")
        mode = settings.mode or ("waves" if settings.wave is not None else "async")
        if mode == "async" and settings.wave is not None:
            raise BadSetting("sampler.wave", "a wave size is for mode: waves (async asks one trial per free slot)")
        return dataclasses.replace(settings, mode=mode)

    @classmethod
    def for_spec(cls, spec: GridSpec) -> Sampler:
        return {"async": TpeAsync, "waves": TpeWaves}[spec.sampler.mode or "async"](spec)

    @classmethod
    def optuna_sampler(cls, ranges, n, seed):
        return tpe_sampler(seed), n, 0

    def plan(self) -> list[PlannedRun]:
        """The first wave's points drawn as a fresh study would (before any result)."""
        s = self.spec.sampler
        return plan_cells(self.spec, self.points, min(s.wave or s.n, s.n))

    def plan_of_record(self, storage) -> list[PlannedRun]:
        """The saved plan with the trials asked but never saved adopted (a controller killed in
        between); a first start plans what :meth:`start` asks."""
        from .. import store
        from .state import load_plan
        from .studies import adopt_asked

        spec = self.spec
        try:
            saved = load_plan(spec.sweep_dir)
        except store.CorruptFiles as e:
            raise ConfigError(f"{e}: a tpe plan holds the points Optuna asked for and cannot be rebuilt "
                              f"from the spec; move it away to start sweep {spec.name!r} again") from None
        if saved is not None and len(saved):
            plan, why = replan(spec, plan_from_frame(saved))
            if why:
                raise ConfigError(f"sweep {spec.name!r} was planned from a different spec ({why}): give the "
                                  f"changed study a new name, or remove {spec.sweep_dir} to start it again", spec.path)
            return plan + adopt_asked(spec, plan, storage)
        check_cells(spec)  # a bad config fails now, before anything is asked
        plan = adopt_asked(spec, [], storage)  # asked by a controller killed before its first save
        return plan + self.start(plan, storage)

    def start(self, plan: list[PlannedRun], storage) -> list[PlannedRun]:
        """What a first start asks before anything runs (async: nothing, slots ask)."""
        return []

    def recorded_plan(self) -> tuple[list[PlannedRun], list[str]]:
        from .state import load_plan

        saved = load_plan(self.spec.sweep_dir)  # unreadable: raised, a tpe plan cannot be rebuilt
        return (plan_from_frame(saved) if saved is not None else []), []

    def dry_run(self, free_slots: Callable[[], int]) -> list[PlannedRun]:
        from .studies import open_storage

        return self.ask([], {}, open_storage(self.spec, in_memory=True), free_slots())


class TpeAsync(TpeSampler):
    """Async TPE: each free slot asks the next trial as soon as a run ends."""

    def ask(self, plan, statuses, storage, free_slots):
        from .studies import ask_free

        return ask_free(self.spec, plan, statuses, storage, free_slots)

    def dry_run_note(self) -> str:
        return (" (one trial per free slot; each finished run's slot asks the next, up to "
                f"{plan_size(self.spec)} runs in all; the cost counts the runs shown)")


class TpeWaves(TpeSampler):
    """TPE in waves: ``wave`` trials per study, the next wave once they have all ended."""

    def start(self, plan, storage):
        from .studies import ask_wave

        return ask_wave(self.spec, plan, {}, storage)

    def ask(self, plan, statuses, storage, free_slots):
        from .studies import ask_wave

        return ask_wave(self.spec, plan, statuses, storage)

    def dry_run_note(self) -> str:
        return (f" (first wave; later waves follow the results, up to {plan_size(self.spec)} runs in all; "
                "the cost counts the runs shown)")


SAMPLERS: dict[str, type[Sampler]] = {c.name: c for c in (RandomSampler, SobolSampler, GridSampler, TpeSampler)}


def check_settings(settings: SamplerSpec, has_ranges: bool) -> SamplerSpec:
    """The spec's ``sampler:`` settings checked by the class its name picks (``BadSetting``)."""
    if settings.name not in SAMPLERS:
        raise BadSetting("sampler.name", f"unknown sampler {shown(settings.name)} (allowed: {', '.join(SAMPLERS)})")
    return SAMPLERS[settings.name].settle(settings, has_ranges)


def sampler_for(spec: GridSpec) -> Sampler:
    """The strategy object of ``spec``: the class its ``sampler.name`` names in :data:`SAMPLERS`."""
    return SAMPLERS[spec.sampler.name].for_spec(spec)


def make_plan(spec: GridSpec) -> list[PlannedRun]:
    """The plan of a random/sobol/grid spec (tpe: its first points), computed from the spec."""
    return sampler_for(spec).plan()


def size_factors(spec: GridSpec) -> dict[str, int]:
    """What the plan's size multiplies: cells of the non-stem axes, stems, points, seeds."""
    k = len(spec.ranges)
    points = SAMPLERS[spec.sampler.name].points_per_cell(spec.sampler.n, k)
    return {"cell": math.prod(len(v) for a, v in spec.axes.items() if a != "stem"),
            "stem": len(spec.axes.get("stem", [None])), "point": points, "seed": len(spec.seeds)}


def plan_size(spec: GridSpec) -> int:
    """How many runs the spec plans at most, counted without planning (duplicates not removed)."""
    return math.prod(size_factors(spec).values())
