"""Grid spec: YAML -> typed dataclasses, with errors that name the file, key path and allowed values.

```yaml
name: lr_wd
base: {dataset: digits, model: vit_tiny, epochs: 30, batch_size: 128}   # any RunConfig field
space:
  stem: [patchify, conv]                 # lists are crossed as grid axes
  lr: {loguniform: [1.0e-4, 1.0e-2]}     # ranges are sampled
  wd: {loguniform: [1.0e-3, 1.0]}
  # a list of mappings is one axis whose values set several fields together:
  # recipe: [{optimizer: adamw, lr: 1.0e-3}, {optimizer: sgd, lr: 0.5}]
sampler: {name: sobol, n: 64, seed: 0}   # n points per cell of the non-stem axes, shared by stems
# sampler: {name: tpe, n: 32, seed: 0}   # tpe: async (a free slot asks the next trial), or
#                                        # mode: waves, wave: k (ask k, wait for them, repeat)
seeds: [0]
executor: {kind: auto, array_parallelism: 64, timeout_min: 240}   # max_failures: 5 (or 0.5) stops early
results: results
```
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import FIELDS, SWEEP_NAME, RunConfig, run_config
from ..errors import ConfigError, shown
from ..validate import checked_fields, int64
from .kinds import EXECUTORS, resolve_kind
from .samplers import BadSetting, check_settings, plan_size, size_factors

RANGE_KINDS = ("loguniform", "uniform", "int")
TOP_KEYS = ("name", "base", "space", "sampler", "seeds", "executor", "results", "max_runs")
MAX_RUNS = 100_000  # a plan this big is a typo until the spec says otherwise (max_runs)
# Set by the spec itself, never per run.
RESERVED = ("results", "sweep", "seed")
_NOT_AN_AXIS = ("an execution field (where or how a run executes, not part of its id): values along an axis "
                "would be one run; set it in base, or compare executions in two sweeps")


@dataclass(frozen=True)
class Range:
    kind: str  # loguniform | uniform | int
    lo: float
    hi: float


@dataclass(frozen=True)
class SamplerSpec:
    """``n``: points per cell (for ``grid``: values per range axis). ``mode`` (tpe only):
    ``async`` asks one trial per free slot as runs finish; ``waves`` asks ``wave`` trials per
    study and waits for them all. Left out, it is ``waves`` when ``wave`` is given, else ``async``."""

    name: str = "sobol"  # random | sobol (scrambled QMC) | grid (n values per range axis) | tpe
    n: int = 16  # points per cell, shared by the stems (grid: n values per range axis, n**ranges points; tpe: trials per study)
    seed: int = 0  # of the sampler (a run's own seed is the spec's seeds)
    wave: int | None = None  # tpe: trials asked per study at a time (implies mode: waves)
    mode: str | None = None  # tpe: async (a free slot asks the next trial) | waves


@dataclass(frozen=True)
class ExecutorSpec:
    """Where the runs go. Slurm fields map to submitit's ``slurm_*`` parameters."""

    kind: str = "auto"  # auto (slurm when sbatch exists, else local) | slurm | local | debug
    max_parallel: int = 2  # local: processes at a time
    array_parallelism: int = 64  # slurm: array tasks in flight (queued or running) at a time
    timeout_min: int = 240  # a job's time limit (slurm: checkpointed and requeued; local: stopped as preempted)
    partition: str | None = None  # slurm: sbatch --partition
    account: str | None = None  # slurm: sbatch --account
    qos: str | None = None  # slurm: sbatch --qos
    constraint: str | None = None  # slurm: sbatch --constraint
    nodes: int = 1  # per run; ranks = nodes x tasks_per_node split the global batch
    tasks_per_node: int = 1  # processes (ranks) per node, one per GPU
    gpus_per_node: int | None = None  # slurm: sbatch --gpus-per-node
    gpus_per_task: int | None = None  # slurm: sbatch --gpus-per-task
    cpus_per_task: int | None = None  # slurm: per rank; num_workers auto = this - 1 on CUDA
    mem_gb: float | None = None  # slurm: memory per node (at least 1 MiB: --mem=0 would mean a whole node)
    max_num_timeout: int = 3  # slurm: requeues after a time limit before submitit gives up
    array_size: int | None = None  # slurm: jobs per array (None: the cluster's MaxArraySize)
    signal_delay_s: int = 90  # slurm: seconds before the time limit that the checkpoint signal comes
    # Stop submitting once this many runs of a `grid run` failed (a count >= 1) or this fraction
    # (0 < f < 1) of the runs it submitted did; None: never.
    max_failures: int | float | None = None  # stop submitting after N failed runs (or a fraction < 1); None: never
    extra: dict[str, Any] = field(default_factory=dict)  # any other sbatch option


@dataclass(frozen=True)
class GridSpec:
    name: str
    base: dict[str, Any]
    space: dict[str, list[Any] | Range]
    sampler: SamplerSpec
    seeds: tuple[int, ...]
    executor: ExecutorSpec
    results: str
    path: str = ""

    @property
    def axes(self) -> dict[str, list[Any]]:
        """Grid axes (lists), in spec order."""
        return {k: v for k, v in self.space.items() if isinstance(v, list)}

    @property
    def ranges(self) -> dict[str, Range]:
        return {k: v for k, v in self.space.items() if isinstance(v, Range)}

    @property
    def sweep_dir(self) -> Path:
        from ..store import sweep_dir  # pandas/pyarrow: not needed to parse a spec

        return sweep_dir(self.results, self.name)

    def kind(self) -> str:
        """The executor kind the runs go to on this machine (``auto`` resolved)."""
        return resolve_kind(self.executor.kind)


# The executor fields each kind reads (the others are the other kind's): what the dry run shows.
LOCAL_FIELDS = ("max_parallel", "timeout_min", "tasks_per_node", "gpus_per_node", "max_failures")


def executor_text(spec: GridSpec) -> str:
    """Where the runs would go, the spec and ``--profile`` merged: the kind, and each field that
    kind reads that is set (so a profile can be checked before anything is submitted)."""
    ex, kind = spec.executor, spec.kind()
    shown_fields = [f.name for f in dataclasses.fields(ExecutorSpec) if f.name != "kind" and (
        f.name != "max_parallel" if kind == "slurm" else f.name in LOCAL_FIELDS)]
    values = [f"{k}={getattr(ex, k)}" for k in shown_fields if getattr(ex, k) not in (None, {})]
    given = ""
    if ex.kind != kind:  # auto says why it resolved so (a copied spec would go to a cluster unannounced)
        why = {"slurm": ": sbatch is on PATH; kind: local runs here", "local": ": no sbatch on PATH"}
        given = f" (kind {ex.kind}{why.get(kind, '') if ex.kind == 'auto' else ''})"
    return f"executor: {kind}{given}: " + ", ".join(values)


def _err(src: str, path: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}", src)


def _given(d: dict, key: str) -> Any:
    """``d[key]``, an empty mapping where it is absent or null (``space: []`` or ``base: 0`` is
    given, and refused as not a mapping)."""
    value = d.get(key)
    return {} if value is None else value


def _mapping(src: str, path: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise _err(src, path, f"expected a mapping, got {type(value).__name__}")
    return value


def _int(src: str, path: str, value: Any, lo: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(src, path, f"expected an integer, got {shown(value)}")
    int64(path, value, src)
    if lo is not None and value < lo:
        raise _err(src, path, f"must be >= {lo}, got {value}")
    return value


def _dataclass_from(src: str, path: str, cls: type, d: dict) -> Any:
    """Build ``cls`` from ``d``, each value checked against its field's type."""
    return cls(**checked_fields(cls, d, src, f"{path}."))


def _range(src: str, path: str, key: str, value: dict) -> Range:
    if len(value) != 1 or next(iter(value)) not in RANGE_KINDS:
        raise _err(src, path, f"a range is one of {{{', '.join(k + ': [lo, hi]' for k in RANGE_KINDS)}}}, "
                              f"got {shown(value)}")
    kind, bounds = next(iter(value.items()))
    where = f"{path}.{kind}"
    if not isinstance(bounds, list) or len(bounds) != 2 or not all(
            isinstance(b, int | float) and not isinstance(b, bool) for b in bounds):
        raise _err(src, where, f"expected [lo, hi] numbers, got {shown(bounds)}")
    lo, hi = bounds
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise _err(src, where, f"bounds must be finite, got {shown(bounds)}")
    if lo > hi:
        raise _err(src, where, f"lo > hi ({lo} > {hi})")
    if lo == hi:
        raise _err(src, where, f"empty range [{lo}, {hi}]: use a list [{lo}] for a fixed value")
    if kind == "loguniform" and lo <= 0:
        raise _err(src, where, f"log range needs lo > 0, got {lo}")
    if kind == "int" and not (float(lo).is_integer() and float(hi).is_integer()):
        raise _err(src, where, f"int range needs integer bounds, got {shown(bounds)}")
    ftype = str(FIELDS[key].type)
    if kind != "int" and not ftype.startswith(("float", "int")):
        raise _err(src, path, f"{key} is not numeric ({ftype}); use a list of values")
    if kind != "int" and ftype.startswith("int"):
        raise _err(src, path, f"{key} is an integer field: use {{int: [lo, hi]}}")
    for b in (lo, hi):  # the sampled values must be valid for the field (lr > 0, momentum < 1 ...)
        try:
            run_config({key: int(b) if kind == "int" else float(b)})
        except ConfigError as e:
            raise _err(src, where, f"bound {shown(b)} is invalid: {str(e)}") from None
    return Range(kind, float(lo), float(hi))


def _executor_spec(src: str, d: dict) -> ExecutorSpec:
    """Validate executor fields (from the spec, a profile or the command line)."""
    m = d.get("max_failures")  # an int (a count) or a float (a fraction): not one number type
    if m is not None and (isinstance(m, bool) or not isinstance(m, int | float) or not (
            0 < m < 1 or (m >= 1 and math.isfinite(m) and float(m).is_integer()))):
        raise _err(src, "executor.max_failures", f"expected a count of failed runs (an integer >= 1), a fraction "
                                                 f"of the submitted runs (0 < f < 1) or null, got {shown(m)}")
    executor = _dataclass_from(src, "executor", ExecutorSpec, {k: v for k, v in d.items() if k != "max_failures"})
    executor = dataclasses.replace(executor, max_failures=m if m is None or m < 1 else int(m))
    if executor.kind not in EXECUTORS:
        raise _err(src, "executor.kind", f"unknown executor {shown(executor.kind)} (allowed: {', '.join(EXECUTORS)})")
    for key in ("max_parallel", "array_parallelism", "timeout_min", "nodes", "tasks_per_node"):
        _int(src, f"executor.{key}", getattr(executor, key), 1)
    for key, lo in (("array_size", 1), ("cpus_per_task", 1), ("gpus_per_node", 0), ("gpus_per_task", 0),
                    ("max_num_timeout", 0), ("signal_delay_s", 0)):
        if getattr(executor, key) is not None:
            _int(src, f"executor.{key}", getattr(executor, key), lo)
    mem = executor.mem_gb
    if mem is not None and (isinstance(mem, bool) or not isinstance(mem, int | float) or not 1 / 1024 <= mem < math.inf):
        # sbatch takes whole MiB, and --mem=0 means all of a node's memory
        raise _err(src, "executor.mem_gb", f"expected a number of GiB >= 1/1024 (1 MiB), or null, got {shown(mem)}")
    return executor


def parse_spec(d: Any, src: str) -> GridSpec:
    """Validate a loaded YAML mapping into a ``GridSpec``: its keys and name, the fields of
    ``base`` and ``space``, the space's values, the sampler, seeds, executor, results and the
    plan's size, in that order (the first problem is the one reported)."""
    if d is None:
        raise _err(src, "spec", f"the file is empty (a spec is a mapping of {', '.join(TOP_KEYS)})")
    d = _mapping(src, "spec", d)
    for key in d:
        if key not in TOP_KEYS:
            raise _err(src, key, f"unknown key (allowed: {', '.join(TOP_KEYS)})")
    name = d.get("name")
    if not isinstance(name, str) or not SWEEP_NAME.fullmatch(name):
        raise _err(src, "name", "missing: every spec names its sweep (letters, digits, '_', '.', '-')" if name is None
                   else f"expected a name of letters, digits, '_', '.', '-', got {shown(name)}")
    base = _mapping(src, "base", _given(d, "base"))
    space = _mapping(src, "space", _given(d, "space"))
    _check_fields(src, base, space)
    parsed_space = _parse_space(src, space)
    try:
        run_config(base)
    except ConfigError as e:
        raise _err(src, "base", str(e)) from None
    sampler = _parse_sampler(src, d.get("sampler"), any(isinstance(v, Range) for v in parsed_space.values()))
    seeds = _parse_seeds(src, d.get("seeds", [0]))
    executor = _executor_spec(src, _mapping(src, "executor", _given(d, "executor")))
    results = d.get("results", "results")
    if not isinstance(results, str) or not results:
        raise _err(src, "results", f"expected a folder path, got {shown(results)}")
    spec = GridSpec(name, base, parsed_space, sampler, seeds, executor, results, src)
    cap = _int(src, "max_runs", d.get("max_runs", MAX_RUNS), 1)
    if (n := plan_size(spec)) > cap:
        raise _err(src, "max_runs", f"the plan would hold {n} runs, over the cap of {cap} ("
                                    f"{' x '.join(f'{v} {k}(s)' for k, v in size_factors(spec).items())}); "
                                    f"set max_runs: {n} in the spec to run it on purpose")
    return spec


def _is_bundle(value: Any) -> bool:
    """A list of mappings: one axis whose values set several fields together."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _check_fields(src: str, base: dict[str, Any], space: dict[str, Any]) -> None:
    """Every field named in ``base``, ``space`` and the bundle axes is a RunConfig field, set in
    one place, not reserved for the spec itself, and no execution field varies along an axis."""
    allowed = ", ".join(f for f in FIELDS if f not in RESERVED)
    for key, value in space.items():
        for i, v in enumerate(value if _is_bundle(value) else []):
            for k in v:
                if k in RESERVED or k not in FIELDS:
                    raise _err(src, f"space.{key}[{i}].{k}", f"unknown RunConfig field (allowed: {allowed})")
                if k in base or (k in space and k != key):
                    raise _err(src, f"space.{key}[{i}].{k}", "also set elsewhere: set it in one place")
                if k in RunConfig.EXECUTION_FIELDS and len({shown(b.get(k)) for b in value}) > 1:
                    raise _err(src, f"space.{key}[{i}].{k}", _NOT_AN_AXIS)
    for section, mapping in (("base", base), ("space", space)):
        for key in mapping:
            if section == "space" and _is_bundle(space[key]):
                continue  # a bundle axis: its name is a label, its values set several fields
            if key in RESERVED:
                where = "seeds" if key == "seed" else key
                raise _err(src, f"{section}.{key}", f"set by the spec's top-level '{where}', not per run")
            if key not in FIELDS:
                raise _err(src, f"{section}.{key}", f"unknown RunConfig field (allowed: {allowed})")
            if section == "space" and key in RunConfig.EXECUTION_FIELDS:
                raise _err(src, f"space.{key}", _NOT_AN_AXIS)
    both = sorted(set(base) & set(space))
    if both:
        raise _err(src, f"space.{both[0]}", "also set in base: set it in one place")


def _parse_space(src: str, space: dict[str, Any]) -> dict[str, list[Any] | Range]:
    """Each axis: a list of values (each valid for its field, no duplicates) or a range."""
    parsed: dict[str, list[Any] | Range] = {}
    for key, value in space.items():
        path = f"space.{key}"
        if isinstance(value, list):
            if not value:
                raise _err(src, path, "empty list: give at least one value")
            if len(set(map(repr, value))) != len(value):
                raise _err(src, path, f"duplicate values in {shown(value)}")
            for i, v in enumerate(value):  # each value must be valid for the field
                try:
                    run_config(v if isinstance(v, dict) else {key: v})
                except ConfigError as e:
                    raise _err(src, f"{path}[{i}]", str(e).split(": ", 1)[-1]) from None
            parsed[key] = value
        elif isinstance(value, dict):
            parsed[key] = _range(src, path, key, value)
        else:
            raise _err(src, path, f"expected a list of values or a range {{loguniform|uniform|int: "
                                  f"[lo, hi]}}, got {shown(value)}")
    return parsed


def _parse_sampler(src: str, value: Any, has_ranges: bool) -> SamplerSpec:
    """The ``sampler:`` mapping, checked by the strategy its name picks (``samplers.check_settings``)."""
    sampler = _dataclass_from(src, "sampler", SamplerSpec, _mapping(src, "sampler", {} if value is None else value))
    _int(src, "sampler.n", sampler.n, 1)
    if sampler.wave is not None:
        _int(src, "sampler.wave", sampler.wave, 1)
    try:
        return check_settings(sampler, has_ranges)
    except BadSetting as e:
        raise _err(src, e.field, str(e)) from None


def _parse_seeds(src: str, seeds: Any) -> tuple[int, ...]:
    if not isinstance(seeds, list) or not seeds:
        raise _err(src, "seeds", f"expected a non-empty list of integers, got {shown(seeds)}")
    out = tuple(_int(src, f"seeds[{i}]", s, 0) for i, s in enumerate(seeds))
    if len(set(out)) != len(out):
        raise _err(src, "seeds", f"duplicate seeds in {shown(list(out))}")
    return out


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> GridSpec:
    """Read and validate a grid spec file. ``overrides`` replace top-level keys (e.g. results)."""
    from ..yamlio import load_yaml

    d = load_yaml(path)
    if isinstance(d, dict) and overrides:
        d = {**d, **overrides}
    return parse_spec(d, str(path))


def save_spec_copy(spec: GridSpec) -> None:
    """Keep the spec file a sweep runs with in its record (``_sweeps/<name>/spec.yaml``), atomically."""
    from ..store import sweep_dir, write_text_atomic

    if spec.path and Path(spec.path).is_file():
        write_text_atomic(sweep_dir(spec.results, spec.name) / "spec.yaml", Path(spec.path).read_text())


def saved_spec(results: str | Path, sweep: str) -> GridSpec | None:
    """The spec a sweep under ``results`` was launched with (its ``spec.yaml`` copy), read with
    this results root and sweep name; None when no grid launched it."""
    from ..store import sweep_dir

    saved = sweep_dir(results, sweep) / "spec.yaml"
    if not saved.is_file():
        return None
    return load_spec(saved, {"results": str(results), "name": sweep})


def load_profile(profile: str | None) -> dict[str, Any]:
    """The executor fields of a cluster profile (a name under ``$STABILITY_PROFILES``, else
    ``./slurm/profiles``, else the package's own, ``slurm/profiles`` in a clone; or a path to a YAML file);
    ``{}`` for none."""
    if not profile:
        return {}
    from ..resources import folder
    from ..yamlio import load_yaml

    folders = []
    if Path(profile).suffix in (".yaml", ".yml"):
        path = Path(profile)
    else:  # $STABILITY_PROFILES, else ./slurm/profiles, else the package's own
        folders = [Path(os.environ["STABILITY_PROFILES"])] if "STABILITY_PROFILES" in os.environ else [
            Path("slurm/profiles"), folder("profiles")]
        path = next((f / f"{profile}.yaml" for f in folders if (f / f"{profile}.yaml").is_file()),
                    folders[0] / f"{profile}.yaml")
    if not path.is_file():
        known = sorted({p.stem for f in folders or [path.parent] if f.is_dir() for p in f.glob("*.yaml")})
        where = f"{profile!r} in {', '.join(map(str, folders))}" if folders else repr(str(path))
        raise ConfigError(f"--profile: no profile {where} (known: {', '.join(known) or 'none'})")
    loaded = load_yaml(path)
    if not isinstance(loaded, dict):
        raise ConfigError("expected a mapping of executor fields", str(path))
    return executor_fields(str(path), loaded)


def executor_fields(source: str, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields``, executor fields given apart from a spec (a profile's, a flag's), checked alone:
    a bad one is named as ``source``'s, not as the spec's they are later merged into."""
    _executor_spec(source, fields)
    return fields


def with_executor(spec: GridSpec, **changes: Any) -> GridSpec:
    """A copy of ``spec`` with executor fields replaced (validated like the file)."""
    d = {**dataclasses.asdict(spec.executor), **{k: v for k, v in changes.items() if v is not None}}
    return dataclasses.replace(spec, executor=_executor_spec(spec.path, d))
