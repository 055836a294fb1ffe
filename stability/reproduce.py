"""``stability reproduce``: the paper's four findings, selected on one split, replicated with
shared seeds, judged on another, and written as one verdict report.

A study folder (``grids/cpu`` by default, ``grids/cpu/quick``, or ``grids`` for a cluster) holds
four grid specs:

- ``lr_wd.yaml``: AdamW over shared (lr, wd) points per stem. Its own finding (Figs. 4–5), and the
  pool each stem's AdamW configuration is chosen from (peak, optimizer, training length);
- ``optimizer.yaml``: an SGD lr sweep per stem at the same length: the pool of the SGD arms;
- ``epochs.yaml``: an AdamW lr sweep per stem at a short schedule: the pool of the short arms;
- ``peak.yaml``: the replication study: its ``seeds``, ``executor`` and ``name`` are used, its
  space is replaced by the selected arms (run alone it replicates its own configurations).

Phase 1 runs the selection studies as ``stability grid run`` would. Phase 2 chooses each arm's
configuration on the validation split (``findings.select_arms``) and trains it again with the
replication seeds (fresh seeds: the selected run itself is not reused), plus each long arm at
twice its length on ``REGIME_SEEDS`` seeds (the convergence check). The replication sweeps are
written as grid specs under ``<results>/reproduce/specs/`` (named by a hash of the arms, so a
changed selection is a new sweep) and run like any other. ``analysis.findings`` judges the four
findings on the held-out test split with two Holm families, one per direction (``findings.judge``).
Everything is idempotent: a rerun trains only what is missing. The report is markdown and HTML, with its verdicts as JSON beside them
(``<out>.json``, what the dashboard reads), written atomically.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from . import resources, store
from .analysis import findings as F
from .errors import ConfigError
from .store import RunStatus

STUDIES = ("lr_wd", "optimizer", "epochs", "peak")  # the findings, in report order
SELECTION = ("lr_wd", "optimizer", "epochs")  # the studies whose runs are chosen from
NEEDS = {"lr_wd": ("lr_wd",), "peak": ("lr_wd",), "optimizer": ("lr_wd", "optimizer"),
         "epochs": ("lr_wd", "epochs")}
REGIME_SEEDS = 2  # long arms trained at 2x their length on the first 2 replication seeds
GRIDS = resources.folder("grids")
SCALES = {"cpu": GRIDS / "cpu", "quick": GRIDS / "cpu" / "quick", "paper": GRIDS}
RULE = (f"Each arm's configuration is chosen on the validation split and trained again with {F.SEEDS} "
        "shared seeds; a finding's statistic is the mean per-seed contrast on the held-out test split "
        "(lr/wd: the paired within-x statistic over the shared points of one stratum), tested one-sided in "
        "each direction (exact sign-flip, whose null is per-seed contrasts symmetric about 0: with "
        f"{F.SEEDS} seeds it passes only when all share a sign, so the seeds pointing each way are given "
        "beside the mean; lr/wd: label permutation). Each direction is its own Holm family over the "
        f"findings with a p-value, at {F.ALPHA:g} family-wise: {F.ALPHA:g} for a false \"reproduced\", "
        f"{F.ALPHA:g} for a false \"not reproduced\", up to {2 * F.ALPHA:g} for some directional claim when "
        "no finding holds. reproduced: the paper's sign, the adjusted test passed and the regime checked (long "
        f"arms within {F.CONVERGED_POINTS:g} point of a 2x longer run, most runs off chance, the effect "
        f"within {F.MAGNITUDE:g}x the paper's); same direction (regime differs): the test passed, the regime "
        "did not match or was not checked; not reproduced: the adjusted test passed in the other "
        "direction; inconclusive: neither, with the minimum detectable effect at "
        f"{F.POWER:.0%} power beside the paper's effect.")
CAVEATS = {"quick": "Quick scale: a few minutes of small runs on 2 cores. Most leave chance (not all: "
                    "the one-epoch short arms and some ViT_P runs stay near it), so the numbers are real "
                    "but noisy; they show the machinery, not the paper's effects."}


@dataclass
class StudyResult:
    """One sweep this invocation ran (a selection study, the replicates or the 2x runs)."""

    name: str
    sweep: str
    runs: pd.DataFrame
    wall_s: float  # this invocation (a rerun that trains nothing takes seconds)
    trained: int = 0  # runs this invocation submitted (0: every run had its result already)

    @property
    def counts(self) -> dict[str, int]:
        return self.runs["status"].value_counts().to_dict() if len(self.runs) else {}

    @property
    def train_s(self) -> float:
        """The runs' own training time, summed (``wall_time_s`` of each finished run)."""
        return float(self.runs["wall_time_s"].sum()) if len(self.runs) else 0.0

    @property
    def at_chance(self) -> int:
        """Completed runs stuck at chance (``findings.at_chance`` on the final validation error, as
        ``grid status`` counts them)."""
        return int(F.at_chance(self.runs, "top1_err").sum()) if len(self.runs) else 0

    def first_error(self) -> str | None:
        failed = self.runs[self.runs["status"] == RunStatus.FAILED] if len(self.runs) else self.runs
        return str(failed["error"].iloc[0]) if len(failed) else None


@dataclass
class Outcome:
    """What ``run_studies`` found: the sweeps it ran, the arms it chose, the judged findings."""

    studies: list[StudyResult]
    arms: dict[str, pd.Series] = field(default_factory=dict)  # arm name -> its selected run
    findings: list[F.Finding] = field(default_factory=list)
    mcnemar: list[str] = field(default_factory=list)  # lines for the report
    unused: list[str] = field(default_factory=list)  # replication sweeps of earlier arm choices

    @property
    def wall_s(self) -> float:
        return sum(s.wall_s for s in self.studies)


def study_specs(folder: Path) -> dict[str, Path]:
    """The four spec files of ``folder``; a missing one is a ConfigError naming it."""
    out = {}
    for name in STUDIES:
        path = folder / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"reproduce: no study spec {str(path)!r} (a study folder holds "
                              f"{', '.join(s + '.yaml' for s in STUDIES)})")
        out[name] = path
    return out


def sweep_suffix(base: dict, spec_base: dict | None = None) -> str:
    """``-dataset_cifar10-data_root_cifar`` for ``{"dataset": "cifar10", "data_root": "/x/cifar"}``:
    studies run with changed base fields are sweeps of their own, one per set of changes,
    never mixed with the unchanged ones or with other changes. Fields that only say how a run
    executes (``decode``, ``compile``, ``num_workers``...: not in the run id) name no sweep: the
    same runs, faster or slower; ``data_root`` does (other data may lie there). A field set to
    the value ``spec_base`` (the spec's own base) already has changes nothing. The fields come
    in ``RunConfig``'s order, whatever the order of the ``--set`` options; a value too long to
    show whole keeps its tail and a hash of the whole, so two long paths ending alike differ."""
    from .config import FIELDS, RunConfig, canonical_hash

    def clean(v: object) -> str:
        c = re.sub(r"[^A-Za-z0-9_]+", "_", str(v)).strip("_")
        return c if len(c) <= 24 else f"{c[-24:]}_{canonical_hash(str(v), 6)}"

    how = RunConfig.EXECUTION_FIELDS - {"data_root"}
    own = spec_base if isinstance(spec_base, dict) else {}
    order = {k: i for i, k in enumerate(FIELDS)}
    changed = sorted((k for k in base if k not in how and not (k in own and own[k] == base[k])),
                     key=lambda k: (order.get(k, len(order)), k))
    return "".join(f"-{clean(k)}_{clean(base[k])}" for k in changed)


def _effective_base(raw: dict) -> dict:
    """A study spec's ``base`` as an invocation without ``--set`` runs it: the pruner off (see
    :func:`prepare`), so ``--set pruner=`` its own value is a change and names a sweep."""
    own = raw.get("base") if isinstance(raw.get("base"), dict) else {}
    return {**own, "pruner": None} if own.get("pruner") is not None else own


def unsettable(folder: Path, only: list[str] | None = None) -> dict[str, str]:
    """The run fields ``--set`` refuses for the findings ``only`` names (None: all), each with why:
    the seed (each study's `seeds`), every axis of a needed study's space, and what the findings'
    arms are told apart by: the length while the epochs finding runs, the optimizer while a
    finding with AdamW or SGD arms (peak, optimizer, epochs) does."""
    from .yamlio import load_yaml

    chosen = only or list(STUDIES)
    needed = {s for f in chosen for s in NEEDS[f]} | {"peak"}
    out = {"seed": "each study's seeds are its spec's `seeds`"}
    for name, path in study_specs(folder).items():
        raw = load_yaml(path) if name in needed else None
        for axis in (raw.get("space") or {}) if isinstance(raw, dict) else ():
            out.setdefault(axis, f"study {name} varies it ({path.name}'s space): the studies' axes cannot be fixed")
    if "epochs" in chosen:  # one length for all would make the short and long arms one arm
        out["epochs"] = ("while the epochs finding runs: it compares the lengths its studies fix, short against "
                         "long; leave it out with --only lr_wd,optimizer,peak")
    if arms := [f for f in chosen if f != "lr_wd"]:  # their arms: AdamW, and the optimizer study's SGD
        many = len(arms) > 1
        out["optimizer"] = (f"while the {', '.join(arms)} finding{'s' if many else ''} run{'' if many else 's'}: "
                            f"{'their' if many else 'its'} arms are told apart by the optimizer the studies fix "
                            f"(AdamW; SGD in the optimizer study); --only lr_wd takes it")
    return out


def prepare(folder: Path, results: str | None = None, executor: dict | None = None,
            only: list[str] | None = None, base: dict | None = None) -> dict:
    """Every needed study's spec with the overrides applied, each checked by planning it (no
    runs, no files): a bad spec or override fails before any study trains. ``peak`` (the
    replication spec) is always prepared: its seeds and executor run the replicates."""
    from .grid.samplers import sampler_for
    from .grid.spec import load_spec, with_executor
    from .grid.studies import open_storage
    from .yamlio import load_yaml

    needed = {s for f in (only or STUDIES) for s in NEEDS[f]} | {"peak"}
    fixed = unsettable(folder, only)
    if clash := sorted(set(base or ()) & set(fixed)):
        why = fixed[clash[0]]
        raise ConfigError(f"--set: {clash[0]} cannot be set {why if why.startswith('while ') else f'({why})'}")
    specs = {}
    for name, path in study_specs(folder).items():
        if name not in needed:
            continue
        overrides: dict = {"results": results} if results else {}
        raw = load_yaml(path)
        if base and isinstance(raw, dict):
            overrides |= {"base": {**(raw.get("base") or {}), **base},
                          "name": f"{raw.get('name')}{sweep_suffix(base, _effective_base(raw))}"}
        if isinstance(raw, dict) and (raw.get("base") or {}).get("pruner") is not None and "pruner" not in (base or {}):
            # A pruner changes the EDF the findings judge: off unless asked (--set pruner=...).
            overrides["base"] = {**overrides.get("base", raw.get("base")), "pruner": None}
        spec = load_spec(path, overrides or None)
        if executor:
            spec = with_executor(spec, **executor)
        sampler_for(spec).plan_of_record(open_storage(spec, in_memory=True))  # the check grid run makes, no files
        specs[name] = spec
    reused = sorted(set(specs["peak"].seeds) & {s for k, v in specs.items() if k != "peak" for s in v.seeds})
    if reused and (only is None or set(only) - {"lr_wd"}):
        raise ConfigError(f"seeds: the replication spec {specs['peak'].path} reuses seed(s) {reused} of the "
                          "selection studies; replicates need fresh seeds (a selected run was chosen for its luck)")
    if len(specs["peak"].seeds) < F.SEEDS and (only is None or set(only) - {"lr_wd"}):
        raise ConfigError(f"seeds: the replication spec {specs['peak'].path} has {len(specs['peak'].seeds)} "
                          f"seeds; an exact sign-flip test needs {F.SEEDS} to pass Holm's first level "
                          f"({F.ALPHA:g} / {F.N_FINDINGS})")
    return specs


@dataclass
class Invocation:
    """One ``stability reproduce``: its scale, prepared specs (checked, nothing written yet),
    results root, report path, the findings to judge and those ``--only`` leaves out."""

    scale: str
    specs: dict
    root: str
    out: Path
    chosen: list[str]
    left_out: list[str]

    @classmethod
    def from_options(cls, quick: bool = False, paper: bool = False, grids: str | None = None,
                     only: str | None = None, sets: list[str] = (), results: str | None = None,
                     profile: str | None = None, out: str | None = None) -> Invocation:
        """The command line's options, validated (ConfigError naming the option on bad input)."""
        from .config import RunConfig, run_config
        from .grid.spec import load_profile
        from .yamlio import load_yaml, parse_overrides

        if quick and paper:
            raise ConfigError("reproduce: --quick and --paper exclude each other (allowed: one of them, or neither)")
        scale = "quick" if quick else "paper" if paper else "cpu"
        folder = Path(grids) if grids else SCALES[scale]
        if grids:
            scale = f"grids {folder.name or folder}"
        study_specs(folder)  # every spec present before anything runs
        chosen = None
        if only is not None:
            chosen = [s.strip() for s in only.split(",")]
            if bad := sorted(s for s in chosen if s not in STUDIES):
                raise ConfigError(f"--only: unknown study {bad[0]!r} (allowed: {', '.join(STUDIES)})")
        base = parse_overrides(list(sets), "--set")
        fixed = unsettable(folder, chosen)
        fields = [f.name for f in dataclasses.fields(RunConfig) if f.name not in ("results", "sweep")]
        if unknown := [k for k in base if k not in fields and k not in ("results", "sweep")]:
            settable = [k for k in fields if k not in fixed]
            raise ConfigError(f"--set: unknown key {unknown[0]!r} (allowed: {', '.join(settable)})")
        if where := sorted(set(base) & {"results", "sweep"}):
            raise ConfigError(f"--set: {where[0]} is not a study field (use --results; sweeps are named by the specs)")
        if base:  # checked on the studies' data first (decode: gpu needs their JPEGs): the error names --set
            first = load_yaml(study_specs(folder)[STUDIES[0]])
            data = {k: v for k, v in ((first.get("base") or {}) if isinstance(first, dict) else {}).items()
                    if k in ("dataset", "data_root", "device")}
            run_config(data | base, "--set")
        specs = prepare(folder, results, load_profile(profile) or None, chosen, base)  # no files yet
        root = results or "results"
        name = scale.replace(" ", "-") + sweep_suffix(base) + (f"-only-{'-'.join(chosen)}" if chosen else "")
        return cls(scale, specs, root, Path(out) if out else Path(root) / "reproduce" / name,
                   [s for s in STUDIES if not chosen or s in chosen],
                   [s for s in STUDIES if chosen and s not in chosen])


def dry_run(inv: Invocation, gpu: str | None = None) -> tuple[list, list[str]]:
    """The cost (``grid.cost.StudyCost``) of every sweep :func:`run_studies` would launch, nothing
    written: the selection studies as planned, then the replicates (each arm x the replication
    seeds) and the 2x-length runs; and the selection studies' dry-run warnings (data workers, no
    GPU), each once, after the total split into training and evaluation; for local jobs without a
    GPU, each study's time on this machine (``grid.local_time``: steps timed here) and their sum.
    An arm's configuration is its pool's first planned run of its stem, optimizer and length:
    which lr/wd the selection picks does not change its cost."""
    from .config import run_config
    from .grid.controller import dry_run as grid_dry_run
    from .grid.cost import study_cost, total_note
    from .grid.kinds import resolve_kind
    from .grid.local_time import is_local_cpu, local_time, total_text
    from .models import throughput

    table = throughput.load()
    device = table.device(table.default_device if gpu is None else gpu)
    costs, pools, warnings, times, timed = [], {}, {}, [], {}
    for name in SELECTION:
        if name in inv.specs:
            dry = grid_dry_run(inv.specs[name], gpu, timed)
            warnings |= dict.fromkeys(dry.warnings)
            # a tpe study's later trials follow results: only the ones it asks first are costed (and timed)
            costs.append(dataclasses.replace(dry.cost, name=f"{dry.cost.name} (first trials only)") if dry.note
                         else dry.cost)
            if dry.local is not None:
                times.append((costs[-1].name, dry.local))
            pools[name] = pd.DataFrame({"stem": [r.stem for r in dry.plan], "run": dry.plan,
                                        "optimizer": [r.optimizer for r in dry.plan],
                                        "epochs": [r.epochs for r in dry.plan]})
    arms, arm_pools, long, _ = arm_fields(inv.chosen, pools["lr_wd"], pools.get("optimizer"), pools.get("epochs"))
    configs = []
    for arm, fields in arms.items():
        pool = arm_pools[arm]
        hit = pool[(pool["stem"] == fields["stem"]) & (pool["optimizer"] == fields["optimizer"])
                   & (pool["epochs"] == fields["epochs"])]
        if len(hit):  # replicates repeat what a run computes, where the replication study says
            row = pd.Series({"config_json": hit["run"].iloc[0].config_json})
            configs.append(run_config(_identity(row) | _execution(inv.specs["peak"])))
    if configs:
        template = inv.specs["peak"]
        seeds = len(template.seeds)
        local = is_local_cpu(template.executor, resolve_kind(template.executor.kind))
        replicates = [(c, seeds) for c in configs]
        costs.append(study_cost(f"{template.name}-… (replicates)", replicates, template.executor, table, device))
        longer = [(dataclasses.replace(c, epochs=2 * c.epochs), min(REGIME_SEEDS, seeds))
                  for c in configs if c.epochs == long]
        if longer:
            costs.append(study_cost(f"{template.name}-2x-… (2x length)", longer, template.executor, table, device))
        if local:
            times += [(costs[-1 - bool(longer)].name, local_time(replicates, template.executor, timed))]
            times += [(costs[-1].name, local_time(longer, template.executor, timed))] if longer else []
    lines = [t.text(name, detail=False) for name, t in times]
    return costs, [total_note(costs), *warnings, *lines, *filter(None, [total_text(times)])]


def _run(spec, name: str, show_progress: bool, console) -> StudyResult:
    from .grid.controller import Controller, RunOptions

    t0 = time.monotonic()
    if not show_progress and console is not None:  # --quiet: no tables, but a line as each study starts and ends
        console.print(f"{name}: sweep {spec.name} ...", markup=False, highlight=False, soft_wrap=True)
    done = Controller(spec, RunOptions(show_progress=show_progress), console).run()
    runs = store.read_table(spec.results, "runs", sweep=spec.name)
    out = StudyResult(name, spec.name, runs, time.monotonic() - t0, len(done.submitted))
    if not show_progress and console is not None:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(out.counts.items()))
        console.print(f"{name}: sweep {spec.name}: {len(runs)} runs ({counts or 'none'}) in {out.wall_s / 60:.1f} min",
                      markup=False, highlight=False, soft_wrap=True)
    return out


def arm_fields(chosen: list[str], lr_wd: pd.DataFrame, optimizer: pd.DataFrame | None,
               epochs: pd.DataFrame | None) -> tuple[dict[str, dict], dict[str, pd.DataFrame], int, int | None]:
    """The arms the chosen findings need, the pool each is chosen from, the long length
    (the lr/wd study's) and the short one (the epochs study's shortest)."""
    long = int(lr_wd["epochs"].max()) if len(lr_wd) else 0
    arms, pools = {}, {}
    if set(chosen) & {"peak", "optimizer", "epochs"}:
        for k, v in F.arms_peak(long).items():
            arms[k], pools[k] = v, lr_wd
    if "optimizer" in chosen and optimizer is not None:
        for k, v in F.arms_optimizer(long).items():
            if v["optimizer"] == "sgd":
                arms[k], pools[k] = v, optimizer
    short = int(epochs["epochs"].min()) if "epochs" in chosen and epochs is not None and len(epochs) else None
    if short is not None:
        for k, v in F.arms_epochs(short, long).items():
            if v["epochs"] == short:
                arms[k], pools[k] = v, epochs
    return arms, pools, long, short


def _identity(row: pd.Series) -> dict:
    """The selected run's config without seed, sweep and execution fields: what a replicate repeats."""
    from .config import RunConfig, config_from_json

    cfg = config_from_json(row["config_json"]).to_dict()
    return {k: v for k, v in cfg.items() if k not in RunConfig.EXECUTION_FIELDS and k not in ("seed", "sweep")}


def _execution(template) -> dict:
    """Where and how the replication study's runs execute: the execution fields of its spec's
    ``base`` (``data_root``, ``decode``, ``compile``, ...; ``--set`` included), never part of
    what the replicates repeat, so the replicates run where the invocation says, on its data."""
    from .config import RunConfig

    return {k: v for k, v in sorted(template.base.items()) if k in RunConfig.EXECUTION_FIELDS - {"results", "sweep"}}


def replication_spec(template, configs: list[dict], name: str, seeds: tuple[int, ...], root: str) -> Path:
    """A grid spec file under ``<root>/reproduce/specs/`` that runs ``configs`` with ``seeds``:
    the fields they share in ``base`` (with the template's execution fields: :func:`_execution`),
    the rest as one bundle axis; the template's executor."""
    import dataclasses

    import yaml

    common = {k: v for k, v in configs[0].items() if all(c.get(k) == v for c in configs)} | _execution(template)
    common = {k: list(v) if isinstance(v, tuple) else v for k, v in common.items()}
    arms = [{k: v for k, v in c.items() if k not in common} for c in configs]
    space = {"arm": arms} if arms and arms[0] else {}
    spec = {"name": name, "base": common, "space": space, "sampler": {"name": "grid", "n": 1, "seed": 0},
            "seeds": list(seeds), "executor": dataclasses.asdict(template.executor), "results": root}
    path = Path(root) / "reproduce" / "specs" / f"{name}.yaml"
    text = ("# Written by `stability reproduce`: each arm's configuration as chosen on the validation split,\n"
            "# replicated with the seeds below (rerun it with `stability grid run` on this file).\n"
            + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=110))
    store.write_text_atomic(path, text)
    return path


def _canonical(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True, default=list)


def _existing_tag(root: str, name: str, configs: list[dict], seeds: tuple[int, ...]) -> str | None:
    """The tag of a replication spec under ``root`` that runs exactly ``configs`` with ``seeds``
    (whatever order or arm names wrote it), so a rerun never trains the same replicates twice."""
    from .config import RunConfig, run_config
    from .yamlio import load_yaml

    def repeats(cfg: dict) -> str:  # the run's identity without its seed: a field added later at its
        ident = run_config(cfg).identity()  # default, or a model alias, matches the spec written before
        ident.pop("seed", None)
        return _canonical(ident)

    want = {repeats(c) for c in configs}
    for path in sorted((Path(root) / "reproduce" / "specs").glob(f"{name}-*.yaml")):
        tag = path.stem[len(name) + 1:]
        if not re.fullmatch(r"[0-9a-f]{8}", tag):  # a 2x spec, or another invocation's (peak-data_root_x-<tag>)
            continue
        try:
            d = load_yaml(path)
            arms = (d.get("space") or {}).get("arm") or [{}]
            got = {repeats({k: v for k, v in {**d["base"], **a}.items() if k not in RunConfig.EXECUTION_FIELDS})
                   for a in arms}
        except (ConfigError, AttributeError, KeyError, TypeError, ValueError):
            continue  # not ours, or damaged: ignored, never trusted
        if got == want and tuple(d.get("seeds") or ()) == tuple(seeds):
            return tag
    return None


def run_studies(inv: Invocation, show_progress: bool = True, console=None) -> Outcome:
    """Phase 1 (the selection studies), phase 2 (replicates and 2x runs), then the judged findings."""
    from .config import config_hash
    from .grid.spec import load_spec

    specs = inv.specs
    out = Outcome([])
    done = {}
    for name in SELECTION:
        if name in specs:
            done[name] = _run(specs[name], name, show_progress, console)
            out.studies.append(done[name])
    lr_wd = done["lr_wd"].runs
    arms, pools, long, short = arm_fields(inv.chosen, lr_wd, *(done[k].runs if k in done else None
                                                               for k in ("optimizer", "epochs")))
    for arm, fields in arms.items():
        pool = pools[arm]
        picked = F.select_arms(pool, {arm: fields}, F.judged_value(pool, (F.SELECT_BY, "top1_err")))
        out.arms.update(picked)
    reps = longer = None
    if out.arms:
        template = specs["peak"]
        ordered = sorted((_identity(row) for row in out.arms.values()), key=_canonical)
        tag = _existing_tag(inv.root, template.name, ordered, template.seeds) or config_hash({"arms": ordered}, 8)
        rep_spec = load_spec(replication_spec(template, ordered, f"{template.name}-{tag}", template.seeds, inv.root))
        r = _run(rep_spec, "replicates", show_progress, console)
        out.studies.append(r)
        reps = r.runs
        long_cfgs = [{**c, "epochs": 2 * c["epochs"]} for c in ordered if c["epochs"] == long]
        if long_cfgs:
            seeds = template.seeds[:REGIME_SEEDS]
            x2 = load_spec(replication_spec(template, long_cfgs, f"{template.name}-2x-{tag}", seeds, inv.root))
            r2 = _run(x2, "2x length", show_progress, console)
            out.studies.append(r2)
            longer = r2.runs
    out.findings = F.judge([_finding(key, lr_wd, reps, longer, long, short) for key in inv.chosen])
    used = {r.sweep for r in out.studies}
    prefix = f"{specs['peak'].name}-"
    out.unused = [s for s in store.sweeps(inv.root) if s.startswith(prefix) and s not in used
                  and s[len(prefix):].removeprefix("2x-").isalnum()]
    if reps is not None:
        out.mcnemar = mcnemar_lines(reps, long)
    return out


def _finding(key: str, lr_wd: pd.DataFrame, reps, longer, long: int, short: int | None) -> F.Finding:
    if key == "lr_wd":
        return F.finding_lr_wd(lr_wd, value=F.judged_value(lr_wd))
    if reps is None or not len(reps):
        return {"peak": F.PEAK, "optimizer": F.OPTIMIZER, "epochs": F.EPOCHS}[key].missing(
            "no replicate runs (no arm could be chosen: the selection studies have no finished runs)")
    value = F.judged_value(reps)
    if key == "peak":
        return F.finding_peak(reps, long, longer, value)
    if key == "optimizer":
        return F.finding_optimizer(reps, long, longer, value)
    if short is None:
        return F.EPOCHS.missing("the epochs study has no finished runs")
    return F.finding_epochs(reps, short, long, longer, value)


def mcnemar_lines(reps: pd.DataFrame, long: int) -> list[str]:
    """Per seed, ViT_P vs ViT_C (the AdamW arms) on the same test images: the exact McNemar test
    of evaluation noise beside the seed test."""
    from .analysis.stats import mcnemar_runs

    col = "test_ema_correct" if "test_ema_correct" in reps and reps["test_ema_correct"].notna().any() else "test_correct"
    if col not in reps:
        return []
    sel = reps[(reps["optimizer"] == "adamw") & (reps["epochs"] == long) & reps[col].notna()]
    lines = []
    for seed, g in sel.groupby("seed"):
        p, c = g[g["stem"] == "patchify"], g[g["stem"] == "conv"]
        if len(p) and len(c):
            m = mcnemar_runs(c.iloc[0], p.iloc[0], col)
            lines.append(f"seed {seed}: ViT_C right where ViT_P is wrong on {m.only_a} images, the reverse on "
                         f"{m.only_b} (of {m.n}); exact McNemar p = {m.p:.3g}")
    return lines


def plain(f: F.Finding) -> str:
    """One sentence a reader can take away: the effect, how many seeds agree, the verdict."""
    if not np.isfinite(f.effect):
        return f"{f.title}: no result ({f.details})."
    agree = f", {f.seed_signs}" if f.seed_signs else ""
    return (f"{f.title}: {f.statistic} = {f.effect:+.2f} {f.unit} ({f.n_text}{agree}): **{f.verdict}**"
            + (f" — {f.regime}" if f.verdict.startswith("same direction") else "") + ".")


def _fmt(v: float | None, spec: str = "+.2f") -> str:
    return "–" if v is None or pd.isna(v) else "inf" if np.isinf(v) else format(v + 0.0, spec)


def report_markdown(res: Outcome, scale: str, root: str, left_out: list[str] = ()) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    wall = res.wall_s
    train = sum(r.train_s for r in res.studies)
    lines = [f"# Reproduction of Xiao et al. 2021 (scale: {scale})", "",
             f"Results root `{Path(root).resolve()}`; made {stamp}. This invocation took {wall / 60:.1f} min; the runs' "
             f"own training time adds up to {train / 60:.1f} min (summed over runs, which run in parallel).", ""]
    if scale in CAVEATS:
        lines += [f"**{CAVEATS[scale]}**", ""]
    if left_out:
        lines += [f"Studies not run in this invocation (`--only`): {', '.join(left_out)}.", ""]
    lines += ["**In short.**", ""] + [f"- {plain(f)}" for f in res.findings] + [""]
    lines += [f"**Verdict rule.** {RULE}", "",
              "| finding | verdict | effect [90% CI; lr/wd: band]; seeds each way | unit | p, paper's direction: raw → Holm | p, other direction: raw → Holm | n | MDE (≥ 80% power; lr/wd: smallest passing) | the paper |",
              "|---|---|---|---|---|---|---|---|---|"]
    for f in res.findings:
        lines.append(f"| {f.title} | **{f.verdict}** | {_fmt(f.effect)} [{_fmt(f.lo)}, {_fmt(f.hi)}]"
                     + (f"; {f.seed_signs}" if f.seed_signs else "") + f" | {f.unit} | "
                     f"{_fmt(f.p, '.3g')} → {_fmt(f.p_adj, '.3g')} | {_fmt(f.p_other, '.3g')} → {_fmt(f.p_other_adj, '.3g')} | "
                     f"{f.n_text} | {_fmt(f.mde, '.2f')} | {_fmt(f.paper_effect) if f.paper_effect is not None else '–'} |")
    if res.arms:
        lines += ["", "## Arms: chosen on the validation split", "",
                  "| arm | model | optimizer | epochs | lr | wd | validation error (selection) | sweep |",
                  "|---|---|---|---|---|---|---|---|"]
        for arm, row in sorted(res.arms.items()):
            lines.append(f"| {arm} | {row['model']} {row['stem']} | {row['optimizer']} | {int(row['epochs'])} | "
                         f"{row['lr']:.3g} | {row['wd']:.3g} | {row['err']:.2f} | `{row.get('sweep', '')}` |")
    for f in res.findings:
        lines += ["", f"## {f.title}: {f.verdict}", "",
                  f"- The paper's claim: {f.claim}.", f"- The paper's numbers: {f.paper}.",
                  f"- Statistic (> 0 is the paper's direction): {f.statistic} = **{_fmt(f.effect)}** {f.unit}, "
                  f"{F.CI:.0%} {'band' if f.curve else 'CI'} [{_fmt(f.lo)}, {_fmt(f.hi)}]"
                  + (f" ({f.seed_signs})" if f.seed_signs else "") + f"; p = {_fmt(f.p, '.3g')} "
                  f"({f.p_test}), Holm-adjusted {_fmt(f.p_adj, '.3g')}; the other direction {_fmt(f.p_other, '.3g')} → "
                  f"{_fmt(f.p_other_adj, '.3g')} (Holm within that direction's own family). Judged on `{f.value or '–'}`"
                  + ("" if not f.value or f.value.startswith("test") else " (no test split: the validation images that chose the "
                     "configurations; optimistic)") + ".",
                  f"- Why this verdict: {f.reason}.",
                  f"- n: {f.n_text}; "
                  + ("the smallest effect its permutation test can pass (a lower bound on what "
                     f"{F.POWER:.0%} power needs) " if f.key == "lr_wd" else
                     f"minimum detectable effect with at least {F.POWER:.0%} power ")
                  + (f"{_fmt(f.mde, '.2f')} {f.unit}" if np.isfinite(f.mde) else "none: no result could pass"
                     if not pd.isna(f.mde) else f"n/a (no spread) {f.unit}")
                  + (f" (the paper: {_fmt(f.paper_effect)})" if f.paper_effect is not None else "") + ".",
                  f"- Regime: {f.regime or 'checked, matches'}.",
                  f"- Details: {f.details}."]
        if f.curve:
            lines += ["", f"The whole curve (x = 0 … 10 points; band: {F.CI:.0%} over all x at once, from a "
                      "bootstrap that re-chooses each stem's best: descriptive, not a test; p: one-sided, "
                      "uncorrected; only the headline x is judged):", "",
                      "| x (points) | ViT_C within x | ViT_P within x | conv − patchify | band | p |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {r['x']:g} | {r['conv']:.0%} | {r['patchify']:.0%} | {r['diff']:+.2f} | "
                      f"[{_fmt(r['lo'])}, {_fmt(r['hi'])}] | {r['p']:.3g} |" for r in f.curve]
        if f.key == "peak" and res.mcnemar:
            lines += ["- Evaluation noise (same test images): " + "; ".join(res.mcnemar) + "."]
    lines += ["", "## Sweeps", "", "| study | sweep | runs | at chance | training time (min, summed) | "
              "wall this invocation (min) | code (git) |", "|---|---|---|---|---|---|---|"]
    for r in res.studies:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(r.counts.items())) or "no runs"
        shas = ", ".join(sorted({str(v)[:7] for v in r.runs.get("git_sha", pd.Series(dtype=str)).dropna()})) or "–"
        wall = f"{r.wall_s / 60:.1f}" + (f" ({r.trained} trained)" if r.trained else " (nothing left to train)")
        lines.append(f"| {r.name} | `{r.sweep}` | {counts} | {r.at_chance} | {r.train_s / 60:.1f} | {wall} | {shas} |")
    if res.unused:
        lines += ["", "Other replication sweeps under this root (earlier invocations or choices of arms), not used here (their "
                  "specs are in `reproduce/specs/`; delete both to reclaim the space): "
                  + ", ".join(f"`{u}`" for u in res.unused) + "."]
    for r in res.studies:
        if err := r.first_error():
            lines.append(f"\n- A failed run's error ({r.sweep}): `{err[:300]}`.")
    return "\n".join(lines) + "\n"


def report_html(markdown: str, title: str) -> str:
    """The markdown report as a small self-contained HTML page (tables and headings only)."""
    body, table = [], []

    def flush_table():
        if table:
            head, *rows = [[c.strip() for c in line.strip("|").split("|")] for line in table if "---" not in line]
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                        + "</table>")
            table.clear()

    for line in markdown.splitlines():
        if body and body[-1].startswith("<li>") and not line.startswith("- "):
            body.append("</ul>")
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("- "):
            if not body or not body[-1].startswith("<li>"):
                body.append("<ul>")
            body.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush_table()
    if body and body[-1].startswith("<li>"):
        body.append("</ul>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{padding:3px 8px;border-bottom:1px solid #ddd;font-size:13px;text-align:left}</style></head><body>"
            + "\n".join(body) + "</body></html>")


def _inline(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def reason(f: F.Finding) -> str:
    """Why ``f`` got its verdict, never empty (``judge`` gives every finding one; an unjudged
    finding says so)."""
    return f.reason or f.details or "not judged"


def verdict_line(f: F.Finding) -> str:
    """One line of ``stability reproduce``'s output: the finding, its verdict, the numbers and the
    reason beside them (an inconclusive verdict beside an interval that excludes 0 says why)."""
    line = (f"{f.title}: {f.verdict} ({f.statistic} = {_fmt(f.effect)} [{_fmt(f.lo)}, {_fmt(f.hi)}] {f.unit}"
            + (f", {f.seed_signs}" if f.seed_signs else "") + ", "
            f"p {_fmt(f.p, '.3g')} -> Holm {_fmt(f.p_adj, '.3g')}, n {f.n_text}, "
            f"MDE {_fmt(f.mde, '.2f') if not np.isinf(f.mde) else 'none: no result could pass'})"
            f" — why: {reason(f)}")
    if f.verdict == "inconclusive" and np.isfinite(f.lo) and np.isfinite(f.hi) and (f.lo > 0 or f.hi < 0):
        line += (f" (the {F.CI:.0%} {'band' if f.curve else 't interval'} excludes 0, but the verdict rests on "
                 f"the {f.p_test or 'test'}, Holm-adjusted over the findings judged together in each direction)")
    return line


JSON_FIELDS = ("key", "title", "claim", "verdict", "reason", "statistic", "unit", "effect", "lo", "hi", "p",
               "p_adj", "p_other", "p_other_adj", "p_test", "n", "n_text", "seed_signs", "mde", "paper_effect", "regime",
               "value")


def _json_value(v):
    """A finding's value as JSON: numpy scalars as Python ones, NaN and infinities as null."""
    v = v.item() if isinstance(v, np.generic) else v
    return None if isinstance(v, float) and not np.isfinite(v) else v


def report_data(res: Outcome, scale: str, root: str, left_out: list[str] = ()) -> dict:
    """The verdicts as data (``<out>.json``: the dashboard shows the last reproduce run's)."""
    return {"scale": scale, "root": str(root), "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "left_out": list(left_out),
            "findings": [{k: _json_value(reason(f) if k == "reason" else getattr(f, k)) for k in JSON_FIELDS}
                         for f in res.findings]}


def write_report(res: Outcome, scale: str, root: str, out: Path,
                 left_out: list[str] = ()) -> tuple[Path, Path, Path]:
    """``out`` + ``.md``, + ``.html`` and + ``.json`` (``report_data``), each written to a temp
    file, then renamed."""
    md = report_markdown(res, scale, root, left_out)
    data = json.dumps(report_data(res, scale, root, left_out), indent=1, allow_nan=False)
    return (store.write_text_atomic(out.with_name(out.name + ".md"), md),
            store.write_text_atomic(out.with_name(out.name + ".html"), report_html(md, f"stability reproduce ({scale})")),
            store.write_text_atomic(out.with_name(out.name + ".json"), data + "\n"))
