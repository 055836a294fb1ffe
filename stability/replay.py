"""``stability replay``: run pruners over recorded sweeps, without training, and measure what each
saves against what it costs.

Each recorded run is replayed step by step as the trainer would have judged it: at every flush
(every ``every`` steps within an epoch, and at each epoch's end) the pruner sees the run's loss,
gradient norm and log Z of every step so far and the per-layer traces of its trace steps (a run
recorded with ``trace_every`` 1 replays any interval). Our rules (:func:`pruner.decide`) judge
each run alone; Optuna's pruners compare runs, so they are replayed in the order the runs would
start on ``workers`` asynchronous workers (each run's steps last its recorded seconds per step),
one study per group, as Syne Tune's simulator replays a tabulated benchmark.

Outcomes (``outcomes``): *doomed* = diverged, or completed at chance (``analysis.at_chance``: the
error the summaries call at chance); *good* = completed and not at chance; *near best* = good and
within ``within`` points of the best completed run of its group (sweep, stem, optimizer, epochs,
and the fix when the sweep varies one). Per pruner setting (:func:`score`): the share of the sweep's
steps saved, of the doomed runs' steps saved (each with a 90 % bootstrap interval over runs), the
good runs stopped and the near-best runs stopped (counts with a one-sided 90 % Clopper-Pearson
upper bound), and the simulated wall time on ``workers`` workers relative to no pruning.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .analysis.edf import at_chance
from .analysis.grouping import run_config
from .pruner import PrunerSettings, Signals, decide, flush_points
from .store import RunStatus

WITHIN = 4.0  # points: a stopped run this close to its group's best is the costly mistake
CI = 0.9


@dataclass
class Recorded:
    """One recorded run, ready to replay."""

    sweep: str
    run_id: str
    group: tuple
    order: tuple  # when it started (replayed in this order)
    total_steps: int  # what the config would train
    spe: int  # steps per epoch
    used: int  # steps it did train (a diverged run stops at its diverged step)
    every: int  # its recorded trace interval
    n_classes: int
    sec_per_step: float
    doomed: bool
    good: bool
    near_best: bool
    steps: pd.DataFrame  # step, loss, grad_norm, log_z (sorted)
    traces: pd.DataFrame  # step, attn_logit_max, update_ratio (per trace step: largest over layers)
    gap: float = math.nan  # a good run's error minus its group's best (points)


def outcomes(runs: pd.DataFrame, within: float = WITHIN) -> pd.DataFrame:
    """The replayable runs (completed or diverged, latest row each) with ``doomed``, ``good``,
    ``near_best`` and their ``group``. Runs recorded pruned, failed or unfinished are left out."""
    df = runs.drop_duplicates(["sweep", "run_id"], keep="last")
    df = df[df.status.isin([RunStatus.COMPLETED, RunStatus.DIVERGED])].copy()
    chance = at_chance(df, "top1_err").to_numpy(bool)
    df["doomed"] = df.status.eq(RunStatus.DIVERGED).to_numpy() | chance
    df["good"] = df.status.eq(RunStatus.COMPLETED).to_numpy() & ~chance
    cfgs = [run_config(t) for t in df.get("config_json", pd.Series([None] * len(df), index=df.index))]
    fixes = [json.dumps({k: c.get(k) for k in ("qk_norm", "z_loss", "freeze_stem")}, sort_keys=True) for c in cfgs]
    df["group"] = list(zip(df.sweep, df.stem, df.optimizer, df.epochs, fixes, strict=True))
    best = df[df.good].groupby("group").top1_err.min()
    df["gap"] = (df.top1_err - df.group.map(best).astype(float)).where(df.good)
    df["near_best"] = df.good & (df.gap <= within + 1e-9)
    df["config"] = cfgs
    return df


def recorded(runs: pd.DataFrame, steps: pd.DataFrame, grad_norms: pd.DataFrame,
             within: float = WITHIN, left_out: list[tuple[str, str]] | None = None) -> list[Recorded]:
    """The runs of the tables (one or more sweeps), prepared for replay, in start order. A run whose
    row gives it no step to replay (epochs 0, a diverged step below 0) is left out, its
    (sweep, run_id) appended to ``left_out`` where given."""
    df = outcomes(runs, within)
    by_run = {k: g for k, g in steps.groupby(["sweep", "run_id"], observed=True)}
    tr = grad_norms.groupby(["sweep", "run_id", "step"], observed=True).agg(
        attn_logit_max=("attn_logit_max", "max"), update_ratio=("update_ratio", "max")).reset_index()
    tr_by = {k: g for k, g in tr.groupby(["sweep", "run_id"], observed=True)}
    spe_of: dict[str, int] = {}
    for (sweep, _), g in by_run.items():
        if (g.epoch > 0).any():
            spe_of[sweep] = max(spe_of.get(sweep, 0), int((g.epoch == 0).sum()))
    out = []
    for r in df.itertuples():
        key = (r.sweep, r.run_id)
        if key not in by_run:
            continue
        s = by_run[key].sort_values("step")[["step", "loss", "grad_norm", "log_z"]].reset_index(drop=True)
        cfg = r.config
        spe = _count(cfg.get("steps_per_epoch")) or spe_of.get(r.sweep) or len(s)
        total = (_count(r.epochs) or 0) * int(spe)
        if r.status != RunStatus.DIVERGED:
            used = total
        else:  # its diverged step, or (a row without it) its last recorded step
            at = r.diverged_at_step
            used = int(at) + 1 if at is not None and np.isfinite(at) else int(s.step.max()) + 1 if len(s) else 1
        if total < 1 or used < 1:  # no step to replay (epochs 0, a diverged step below 0): no real run's row
            if left_out is not None:
                left_out.append(key)
            continue
        init = getattr(r, "init_val_loss", None)
        n_classes = round(math.exp(init)) if init is not None and np.isfinite(init) and init < 10 else 10
        t = tr_by.get(key)
        t = t.sort_values("step")[["step", "attn_logit_max", "update_ratio"]] if t is not None else tr.iloc[:0]
        out.append(Recorded(r.sweep, r.run_id, r.group, (str(r.started_at), r.run_id), total, int(spe), used,
                            _count(cfg.get("trace_every")) or 1, n_classes,
                            float(r.wall_time_s or 0) / max(used, 1), bool(r.doomed), bool(r.good),
                            bool(r.near_best), s, t.reset_index(drop=True), float(r.gap)))
    return sorted(out, key=lambda x: x.order)


def _count(v: Any) -> int | None:
    """``v`` as a count (a whole number >= 1: epochs, steps per epoch, a trace interval); None
    where it is none (null, NaN, 0, negative, fractional, text)."""
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        return None
    return int(v) if np.isfinite(v) and v >= 1 and float(v).is_integer() else None


def _points(run: Recorded, every: int) -> list[int]:
    """The run's flush steps at interval ``every`` before its last step, then its last step (where
    it completed, or the flush that holds its diverged step: the trainer stops it there as
    diverged, so no pruner saves anything at that point)."""
    return [p for p in flush_points(run.total_steps, run.spe, every) if p < run.used - 1] + [run.used - 1]


def _check_every(runs: Sequence[Recorded], every: int | None) -> None:
    bad = sorted({r.every for r in runs if every is not None and every % r.every})
    if bad:
        raise ValueError(f"every={every}: runs traced every {bad} steps replay only multiples of that")


def stops_ours(settings: PrunerSettings, runs: Sequence[Recorded], every: int | None = None) -> list[int | None]:
    """Per run, the step our pruner stops it after (None: it runs to its recorded end)."""
    _check_every(runs, every)
    out: list[int | None] = []
    for run in runs:
        k = every or run.every
        traces = run.traces[run.traces.step % k == 0]
        sig, i, j, stop = Signals(), 0, 0, None
        st, tt = run.steps.to_dict("records"), traces.to_dict("records")
        for p in _points(run, k):
            first = len(sig.steps)
            while i < len(st) and st[i]["step"] <= p:
                sig.add_steps([st[i]])
                i += 1
            new = []
            while j < len(tt) and tt[j]["step"] <= p:
                new.append(tt[j])
                j += 1
            _add_trace_rows(sig, new)
            if p >= run.used - 1:
                break
            if decide(settings, sig, run.total_steps, run.n_classes, new_from=first) is not None:
                stop = p
                break
        out.append(stop)
    return out


def _add_trace_rows(sig: Signals, rows: list[dict]) -> None:
    for r in rows:  # already the largest over layers
        sig.traced.append(int(r["step"]))
        sig.attn_logit.append(_f(r.get("attn_logit_max")))
        sig.update_ratio.append(_f(r.get("update_ratio")))


def _f(v: Any) -> float:
    return math.nan if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _interval_loss(run: Recorded, lo: int, hi: int) -> float:
    """What a trial reports at a flush: the mean loss of the steps since the last one (NaN
    when any of them is not finite: the report Optuna's pruners get)."""
    v = run.steps.loss.to_numpy(float)[(run.steps.step.to_numpy() > lo) & (run.steps.step.to_numpy() <= hi)]
    return float(v.mean()) if len(v) and np.isfinite(v).all() else math.nan


def stops_optuna(make: Callable[[], Any], runs: Sequence[Recorded], every: int | None = None,
                 workers: int = 2) -> list[int | None]:
    """Per run, the step an Optuna pruner (``make()`` builds a fresh one per study) stops it
    after, replaying the runs on ``workers`` asynchronous workers in start order. Optuna's warnings
    about its own pruners (experimental; Wilcoxon's "contain infinity/NaNs, will not prune", the
    behaviour being replayed) are silenced here only, not in the caller's process."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="WilcoxonPruner is experimental")
        warnings.filterwarnings("ignore", message=r"The intermediate values of the .* contain infinity/NaNs")
        return _stops_optuna(make, runs, every, workers)


def _stops_optuna(make: Callable[[], Any], runs: Sequence[Recorded], every: int | None,
                  workers: int) -> list[int | None]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _check_every(runs, every)
    studies: dict[tuple, Any] = {}
    stop: list[int | None] = [None] * len(runs)
    free = [(0.0, w) for w in range(workers)]
    heapq.heapify(free)
    events: list[tuple[float, int, int]] = []  # (time, run, index of its flush point)
    points = [_points(r, every or r.every) for r in runs]
    trials: dict[int, Any] = {}
    nxt = 0

    def start(t: float) -> None:
        nonlocal nxt
        while nxt < len(runs) and nxt in trials:
            nxt += 1
        if nxt >= len(runs):
            return
        i, run = nxt, runs[nxt]
        nxt += 1
        study = studies.get(run.group)
        if study is None:
            study = studies[run.group] = optuna.create_study(direction="minimize", pruner=make())
        trials[i] = study.ask()
        if points[i]:
            heapq.heappush(events, (t + (points[i][0] + 1) * run.sec_per_step, i, 0))

    for _ in range(min(workers, len(runs))):
        start(0.0)
    while events:
        t, i, j = heapq.heappop(events)
        run, trial, pts = runs[i], trials[i], points[i]
        p = pts[j]
        trial.report(_interval_loss(run, pts[j - 1] if j else -1, p), p)
        ended = j == len(pts) - 1
        if not ended and p < run.used - 1 and trial.should_prune():
            stop[i] = p
            trial.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            start(t)
            continue
        if ended:
            if run.used < run.total_steps:  # diverged: told as the grid tells it
                trial.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                trial.study.tell(trial, float(run.steps.loss.iloc[-1]) if len(run.steps) else math.nan)
            start(t + (run.used - 1 - p) * run.sec_per_step)
            continue
        heapq.heappush(events, (t + (pts[j + 1] - p) * run.sec_per_step, i, j + 1))
    return stop


def wall_time(runs: Sequence[Recorded], stops: Sequence[int | None], workers: int) -> float:
    """Seconds the sweep takes on ``workers`` asynchronous workers, in start order."""
    free = [0.0] * workers
    heapq.heapify(free)
    end = 0.0
    for run, s in zip(runs, stops, strict=True):
        t = heapq.heappop(free) + (run.used if s is None else s + 1) * run.sec_per_step
        end = max(end, t)
        heapq.heappush(free, t)
    return end


def upper_bound(k: int, n: int, conf: float = CI) -> float:
    """One-sided Clopper-Pearson upper bound of a proportion k / n at ``conf``.

    >>> round(upper_bound(0, 229), 4)  # 229 good runs with no wrong stop bound the rate by 1 %
    0.01
    """
    from scipy.stats import beta

    return 1.0 if n == 0 or k >= n else float(beta.ppf(conf, k + 1, n - k))


def _saved_share(used: np.ndarray, saved: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                 n_boot: int) -> tuple[float, float, float]:
    u, s = used[mask], saved[mask]
    if not len(u) or u.sum() == 0:
        return math.nan, math.nan, math.nan
    idx = rng.integers(0, len(u), (n_boot, len(u)))
    boots = s[idx].sum(1) / np.maximum(u[idx].sum(1), 1)
    lo, hi = np.quantile(boots, [(1 - CI) / 2, (1 + CI) / 2])
    return float(s.sum() / u.sum()), float(lo), float(hi)


def score(runs: Sequence[Recorded], stops: Sequence[int | None], workers: int = 2, n_boot: int = 2000,
          seed: int = 0) -> dict[str, Any]:
    """What one pruner setting did to the runs (see the module docstring)."""
    used = np.array([r.used for r in runs], float)
    kept = np.array([r.used if s is None else s + 1 for r, s in zip(runs, stops, strict=True)], float)
    saved = used - kept
    stopped = np.array([s is not None for s in stops])
    doomed, good, near = (np.array([getattr(r, k) for r in runs]) for k in ("doomed", "good", "near_best"))
    rng = np.random.default_rng(seed)
    all_share = _saved_share(used, saved, np.ones(len(runs), bool), rng, n_boot)
    doomed_share = _saved_share(used, saved, doomed, rng, n_boot)
    n_good, k_good, k_near = int(good.sum()), int((stopped & good).sum()), int((stopped & near).sum())
    base = wall_time(runs, [None] * len(runs), workers)
    return {"runs": len(runs), "doomed": int(doomed.sum()), "good": n_good, "near_best": int(near.sum()),
            "stopped": int(stopped.sum()), "doomed_stopped": int((stopped & doomed).sum()),
            "steps_saved": all_share[0], "steps_saved_lo": all_share[1], "steps_saved_hi": all_share[2],
            "doomed_saved": doomed_share[0], "doomed_saved_lo": doomed_share[1], "doomed_saved_hi": doomed_share[2],
            "good_stopped": k_good, "good_stopped_rate": k_good / n_good if n_good else math.nan,
            "good_stopped_hi": upper_bound(k_good, n_good),
            "near_best_stopped": k_near,
            # the costliest wrong stop: how close to its group's best the best good run stopped was
            "closest_stopped_gap": min((r.gap for r, st in zip(runs, stopped, strict=True) if st and r.good),
                                       default=math.nan), "near_best_stopped_hi": upper_bound(k_near, int(near.sum())),
            "wall_time": wall_time(runs, stops, workers) / base if base > 0 else math.nan}


@dataclass(frozen=True)
class Candidate:
    """One pruner setting to replay: ours (``settings``) or Optuna's (``make`` builds one)."""

    family: str
    setting: str
    settings: PrunerSettings | None = None
    make: Callable[[], Any] | None = None


def our_candidates() -> list[Candidate]:
    """The shipped presets, then the rules' threshold grid: each loss rule alone, both (``loss``:
    loss-only pruners), then each other signal added to the loss rules."""
    from .pruner import PRESETS

    out = [Candidate(f"preset {name}", name, s) for name, s in PRESETS.items()]
    for above in (1.2, 1.35, 1.5, 2.0, 3.0):
        for above_after in (0.0, 0.1):
            out.append(_ours("above", above=above, above_after=above_after, chance=None))
    for chance in (0.95, 0.98, 1.0):
        for after in (0.5, 0.6, 0.7, 0.8):
            for stall in (0.01, 0.03):
                out.append(_ours("chance", above=None, chance=chance, after=after, stall=stall))
    for above in (1.35, 1.5, 2.0):
        for after in (0.6, 0.7, 0.8):
            out.append(_ours("loss", above=above, after=after))
    for v in (0.2, 0.3, 0.5):
        out.append(_ours("loss+rise", rise=v))
    for v in (30.0, 50.0, 75.0, 100.0, 150.0, 200.0):
        for after in (0.7, 0.8):
            out.append(_ours("loss+attn_logit", attn_logit=v, after=after))
    for key, values in (("grad_jump", (5.0, 10.0, 30.0)), ("log_z", (5.0, 10.0, 20.0)),
                        ("update_ratio", (0.01, 0.03, 0.1))):
        for v in values:
            out.append(_ours(f"loss+{key}", **{key: v}))
    return out


def _ours(family: str, **changes: Any) -> Candidate:
    s = dataclasses.replace(PrunerSettings(), **changes)
    return Candidate(family, s.text() or "defaults", s)


def optuna_candidates(ln_c: float = math.log(10)) -> list[Candidate]:
    """Optuna's pruners on the loss, each over a few settings."""
    import optuna.pruners as op

    out = []
    for warm in (0, 10):
        out.append(Candidate("optuna-median", f"n_warmup_steps={warm}",
                             make=lambda w=warm: op.MedianPruner(n_startup_trials=5, n_warmup_steps=w)))
    for pct in (10.0, 25.0):
        out.append(Candidate("optuna-percentile", f"percentile={pct:g}",
                             make=lambda p=pct: op.PercentilePruner(p, n_startup_trials=5, n_warmup_steps=10)))
    for p in (0.01, 0.1):
        out.append(Candidate("optuna-wilcoxon", f"p_threshold={p:g}",
                             make=lambda p=p: op.WilcoxonPruner(p_threshold=p, n_startup_steps=5)))
    for f in (1.0, 1.5, 3.0):
        out.append(Candidate("optuna-threshold", f"upper={f:g}xlnC",
                             make=lambda f=f: op.ThresholdPruner(upper=f * ln_c)))
    for r in (3,):
        out.append(Candidate("optuna-hyperband", f"reduction_factor={r}",
                             make=lambda r=r: op.HyperbandPruner(min_resource=5, reduction_factor=r)))
    return out


def replay(runs: Sequence[Recorded], candidates: Sequence[Candidate], every: int | None = None,
           workers: int = 2, n_boot: int = 2000) -> pd.DataFrame:
    """One row per candidate: its ``family``, ``setting``, ``every`` and :func:`score`."""
    rows = []
    for c in candidates:
        stops = (stops_ours(c.settings, runs, every) if c.settings is not None
                 else stops_optuna(c.make, runs, every, workers))
        rows.append({"family": c.family, "setting": c.setting, "every": every or 0,
                     **score(runs, stops, workers, n_boot)})
    return pd.DataFrame(rows)


def pareto(table: pd.DataFrame) -> pd.Series:
    """Which rows no other row beats on both axes (fewer good runs stopped, more doomed steps saved;
    without good runs, or doomed ones, a rate is 0/0: nothing stopped, nothing saved, never NaN,
    which no row would beat)."""
    g, d = table.good_stopped_rate.fillna(0).to_numpy(float), table.doomed_saved.fillna(0).to_numpy(float)
    return pd.Series([not ((g <= gi) & (d >= di) & ((g < gi) | (d > di))).any() for gi, di in zip(g, d, strict=True)],
                     index=table.index)


def choose(table: pd.DataFrame, max_good_stopped: int = 0) -> pd.DataFrame:
    """Per family, the setting chosen on a tuning replay: the most doomed steps saved among those
    that stopped at most ``max_good_stopped`` good runs and no near-best run (ties: the fewest
    good runs stopped, then the first listed)."""
    ok = table[(table.good_stopped <= max_good_stopped) & (table.near_best_stopped == 0)]
    ok = ok.sort_values(["doomed_saved", "good_stopped"], ascending=[False, True], kind="stable")
    return ok.groupby("family", sort=False).head(1).reset_index(drop=True)


def count_left_out(root: str, sweeps: Sequence[str], runs: Sequence[Recorded]) -> int:
    """How many runs of ``sweeps`` are not among the replayable ``runs`` (pruned, failed, unfinished, or
    with no step to replay: epochs 0)."""
    from . import store

    ids = {(s, r) for s in sweeps for r in store.read_table(root, "runs", sweep=s, columns=["run_id"]).run_id}
    return len(ids - {(r.sweep, r.run_id) for r in runs})


def load(root: str, sweeps: Sequence[str], within: float = WITHIN) -> list[Recorded]:
    """The recorded runs of ``sweeps`` under ``root`` (a ``ConfigError`` names a missing sweep)."""
    from . import store
    from .errors import ConfigError

    found = store.sweeps(root)
    missing = [s for s in sweeps if s not in found]
    if missing:
        raise ConfigError(f"replay: no sweep {', '.join(map(repr, missing))} under {root} "
                          f"(found: {', '.join(found) or 'none'})")
    tables = {t: pd.concat([store.read_table(root, t, sweep=s) for s in sweeps], ignore_index=True)
              for t in ("runs", "steps", "grad_norms")}
    return recorded(tables["runs"], tables["steps"], tables["grad_norms"], within)


@dataclass
class Study:
    """A replay's tables: ``curve`` (every candidate on the scored sweeps, ``pareto`` marked),
    ``tuning`` (every candidate on the tuning sweeps) and ``chosen`` (per family, the setting
    chosen on the tuning sweeps, scored on the held-out ones); the last two empty without tuning."""

    curve: pd.DataFrame
    tuning: pd.DataFrame
    chosen: pd.DataFrame


def study(scored: Sequence[Recorded], tuning: Sequence[Recorded] = (), every: Sequence[int | None] = (None,),
          workers: int = 2, baselines: bool = True, n_boot: int = 2000,
          on_candidate: Callable[[str], None] | None = None) -> Study:
    """Replay every candidate (ours, and Optuna's with ``baselines``) at each trace interval in
    ``every`` on ``scored``; with ``tuning`` runs, choose each family's setting there
    (:func:`choose`) and score the choice on ``scored``. Nothing is tuned on the scored runs."""
    cands = our_candidates() + (optuna_candidates() if baselines else [])
    curve, tune, chosen = [], [], []
    for k in every:
        for c in cands:
            if on_candidate:
                on_candidate(f"{c.family} {c.setting} every={k or 'recorded'}")
            row = replay(scored, [c], k, workers, n_boot)
            curve.append(row)
            if tuning:
                tune.append(replay(tuning, [c], k, workers, n_boot).assign(_key=len(tune)))
        if tuning:
            t = pd.concat(tune[-len(cands):], ignore_index=True)
            picked = choose(t)
            held = pd.concat(curve[-len(cands):], ignore_index=True)
            chosen.append(held.loc[picked._key.to_numpy() - t._key.min()].assign(
                tuned_doomed_saved=picked.doomed_saved.to_numpy(), tuned_good_stopped=picked.good_stopped.to_numpy()))
    curve_df = pd.concat(curve, ignore_index=True) if curve else pd.DataFrame()
    curve_df["pareto"] = False
    for _, g in curve_df.groupby("every"):
        curve_df.loc[g.index, "pareto"] = pareto(g).to_numpy()
    tune_df = pd.concat(tune, ignore_index=True).drop(columns="_key") if tune else pd.DataFrame()
    return Study(curve_df, tune_df, pd.concat(chosen, ignore_index=True) if chosen else pd.DataFrame())


def _pct(v: float) -> str:
    return "-" if v != v else f"{100 * v:.0f}"


def table_text(res: Study, scored: Sequence[str], tuned: Sequence[str], workers: int, within: float):
    """The replay as rich tables: the chosen settings (with tuning) and the Pareto settings."""
    from rich.console import Group
    from rich.table import Table

    parts = []

    def table(df: pd.DataFrame, title: str) -> Table:
        t = Table(title=title, title_justify="left")
        for col in ("family", "setting", "every", "stopped", "doomed saved % [90% CI]", "all steps saved %",
                    "good stopped (≤ 90% bound)", f"near-best stopped (≤{within:g} pts)",
                    "closest good stopped (pts from best)", f"wall time vs unpruned ({workers} workers)"):
            t.add_column(col, overflow="fold")
        for r in df.itertuples():
            t.add_row(r.family, r.setting, str(r.every or "recorded"), f"{r.stopped}/{r.runs}",
                      f"{_pct(r.doomed_saved)} [{_pct(r.doomed_saved_lo)}, {_pct(r.doomed_saved_hi)}]",
                      _pct(r.steps_saved), f"{r.good_stopped}/{r.good} (≤ {100 * r.good_stopped_hi:.1f} %)",
                      f"{r.near_best_stopped}/{r.near_best}",
                      "-" if r.closest_stopped_gap != r.closest_stopped_gap else f"{r.closest_stopped_gap:.1f}",
                      f"{r.wall_time:.2f}x")
        return t

    n = res.curve.iloc[0] if len(res.curve) else None
    head = (f"{n.runs} runs of {', '.join(scored)}: {n.doomed} doomed (diverged or at chance), {n.good} good, "
            f"{n.near_best} within {within:g} points of their group's best" if n is not None else "no runs")
    parts.append(head)
    if len(res.chosen):
        parts.append(table(res.chosen, f"Each family's setting chosen on {', '.join(tuned)} at each interval (most "
                                       f"doomed steps saved with no good run stopped there; the presets as shipped), "
                                       f"scored on {', '.join(scored)}"))
    front = res.curve[res.curve.pareto].drop_duplicates(  # settings that did the same: the first named
        ["family", "every", "stopped", "doomed_saved", "good_stopped", "near_best_stopped"])
    parts.append(table(front, f"Pareto settings on {', '.join(scored)} (no other saves more doomed steps with "
                              "fewer good runs stopped; a family's settings that did the same: the first)"))
    return Group(*parts)


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``Study.curve`` or ``Study.chosen`` as the dashboard and the report show them:
    shares in % (one decimal), counts as "k/n", the interval of the doomed steps saved in one cell.

    >>> row = dict(family="loss", setting="defaults", every=0, runs=10, doomed=4, good=6, near_best=2, stopped=3,
    ...            doomed_saved=0.5, doomed_saved_lo=0.25, doomed_saved_hi=0.75, steps_saved=0.2, good_stopped=1,
    ...            good_stopped_hi=0.5, near_best_stopped=0, wall_time=0.8)
    >>> readable(pd.DataFrame([row])).iloc[0].to_dict()  # doctest: +NORMALIZE_WHITESPACE
    {'family': 'loss', 'setting': 'defaults', 'trace interval': 'as recorded', 'runs stopped': '3/10',
     'doomed steps saved %': 50.0, 'its 90% CI': '[25.0, 75.0]', 'all steps saved %': 20.0, 'good stopped': '1/6',
     'good stopped ≤ % (90% bound)': 50.0, 'near-best stopped': '0/2', 'wall time (× unpruned)': 0.8}
    """
    def pct(v: pd.Series) -> pd.Series:
        return (100 * v.astype(float)).round(1)

    out = pd.DataFrame({
        "family": table["family"], "setting": table["setting"],
        "trace interval": ["as recorded" if not k else "every step" if k == 1 else f"every {int(k)} steps"
                           for k in table["every"]],
        "runs stopped": [f"{a}/{b}" for a, b in zip(table["stopped"], table["runs"], strict=True)],
        "doomed steps saved %": pct(table["doomed_saved"]),
        "its 90% CI": ["n/a" if lo != lo or hi != hi else f"[{lo:.1f}, {hi:.1f}]"
                       for lo, hi in zip(pct(table["doomed_saved_lo"]), pct(table["doomed_saved_hi"]), strict=True)],
        "all steps saved %": pct(table["steps_saved"]),
        "good stopped": [f"{a}/{b}" for a, b in zip(table["good_stopped"], table["good"], strict=True)],
        "good stopped ≤ % (90% bound)": pct(table["good_stopped_hi"]),
        "near-best stopped": [f"{a}/{b}" for a, b in zip(table["near_best_stopped"], table["near_best"], strict=True)],
        "wall time (× unpruned)": table["wall_time"].astype(float).round(2),
    }, index=table.index)
    if "tuned_doomed_saved" in table:
        out["on the tuning sweeps: doomed steps saved %"] = pct(table["tuned_doomed_saved"])
        out["on the tuning sweeps: good stopped"] = table["tuned_good_stopped"]
    return out.reset_index(drop=True)
