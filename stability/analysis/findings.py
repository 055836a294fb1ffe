"""The paper's four findings as statistics with a direction, an interval, n and a verdict.

Each ``finding_*`` takes the runs of one study (DataFrame in) and returns a ``Finding``: the
paper's claim and numbers, this data's effect (signed so that > 0 is the paper's direction),
its percentile-bootstrap interval, a p-value where a test applies, the n behind it, and the
verdict by one rule (``verdict``):

- reproduced: the effect has the paper's sign and its interval excludes 0;
- not reproduced: the interval excludes 0 on the other side;
- inconclusive: the interval contains 0, a group has fewer than ``MIN_RUNS`` (3) runs, or more
  than half of the finished runs collapsed (never left chance: nothing was learned to compare).

Bootstrap intervals resample runs within each group (stem x optimizer x epochs ...) and
recompute the whole statistic, best-of-group included (the minimum is a rough statistic to
bootstrap: with few runs the interval is wide, which the verdict then says).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ..store import DONE
from .compare import compare
from .edf import errors

CI = 0.9
N_BOOT = 2000
MIN_RUNS = 3  # per group: a best-of-2 has only a handful of bootstrap values


@dataclass(frozen=True)
class Finding:
    key: str
    title: str
    claim: str
    paper: str  # the paper's numbers
    statistic: str  # what ``effect`` is, signed so that > 0 is the paper's direction
    unit: str  # of effect, lo and hi: "points" (of top-1 error) or "fraction" (of runs)
    effect: float
    lo: float
    hi: float
    p: float | None
    p_test: str  # what ``p`` tests ("" when there is no test)
    n: str
    details: str
    verdict: str

    def as_row(self) -> dict:
        return asdict(self)


def verdict(effect: float, lo: float, hi: float, enough: bool = True) -> str:
    """The rule stated in the module docstring (and in every report)."""
    if not enough or not np.isfinite([effect, lo, hi]).all():
        return "inconclusive"
    if lo > 0:
        return "reproduced"
    if hi < 0:
        return "not reproduced"
    return "inconclusive"


def _groups(df: pd.DataFrame, keys: list[str]) -> dict[tuple, np.ndarray]:
    return {k if isinstance(k, tuple) else (k,): g["err"].to_numpy(float)
            for k, g in df.groupby(keys, observed=True, sort=True)}


def _bootstrap(groups: dict[tuple, np.ndarray], stat: Callable[[dict[tuple, np.ndarray]], float],
               seed: int = 0, n_boot: int = N_BOOT) -> tuple[float, float, float]:
    """(statistic, lo, hi): every group resampled with replacement, the statistic recomputed."""
    rng = np.random.default_rng(seed)
    point = stat(groups)
    boots = np.array([stat({k: v[rng.integers(0, len(v), len(v))] for k, v in groups.items()})
                      for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    if not len(boots):
        return point, np.nan, np.nan
    lo, hi = np.quantile(boots, [(1 - CI) / 2, (1 + CI) / 2])
    return float(point), float(lo), float(hi)


@dataclass(frozen=True)
class Claim:
    key: str
    title: str
    claim: str
    paper: str
    statistic: str
    unit: str = "points"

    def missing(self, why: str) -> Finding:
        """The finding of a study that lacks the runs it needs: inconclusive, saying why."""
        return Finding(*asdict(self).values(), np.nan, np.nan, np.nan, None, "", "0", why, "inconclusive")

    def measured(self, groups: dict[tuple, np.ndarray], stat: Callable[[dict[tuple, np.ndarray]], float],
                 details: str, names: Callable[[tuple], str], p: float | None = None) -> Finding:
        """Bootstrap ``stat`` over ``groups`` and apply the verdict rule (n >= 2 per group)."""
        eff, lo, hi = (v + 0.0 for v in _bootstrap(groups, stat))  # + 0.0: no "-0.00" bounds
        n = ", ".join(f"{names(k)} {len(v)}" for k, v in groups.items())
        return Finding(*asdict(self).values(), eff, lo, hi, p, "", n, details,
                       verdict(eff, lo, hi, min(len(v) for v in groups.values()) >= MIN_RUNS))


def finding_lr_wd(runs: pd.DataFrame, x: float = 4.0) -> Finding:
    """Fig. 5: ViT_C has more runs within ``x`` points of its best than ViT_P over lr x wd."""
    c = Claim("lr_wd", "Stability over lr and wd (Fig. 5)",
              f"more ViT_C than ViT_P runs lie within {x:g} points of their own best (Δtop-1 EDF)",
              "ViT_C-18GF (SGD): ~60% of runs within 4 points of the best; ViT_P-18GF: < 20%",
              f"fraction of runs within {x:g} points of their stem's best, conv − patchify", "fraction")
    cmp = compare(runs, relative=True, within=[x], n_boot=N_BOOT)
    cmp = cmp[(cmp.a == "conv") & (cmp.b == "patchify")] if len(cmp) else cmp
    if cmp.empty:
        return c.missing("needs finished runs of both stems")
    r = cmp.iloc[0]  # one stratum: the study varies lr and wd only
    eff = -float(r[f"within_{x:g}_diff"])
    lo, hi = -float(r[f"within_{x:g}_diff_hi"]), -float(r[f"within_{x:g}_diff_lo"])
    details = (f"within {x:g}: conv {r[f'within_{x:g}_a']:.0%}, patchify {r[f'within_{x:g}_b']:.0%}; "
               f"best conv {r.best_a:.2f}, patchify {r.best_b:.2f}; KS (Δ) {r.ks:.2f} "
               f"(lower Δ: {r.ks_better}, permutation p {r.ks_p:.3f}); paired over {int(r.n_pairs)} "
               f"(lr, wd) points: Wilcoxon p {r.wilcoxon_p:.3g}, patchify lower in {int(r.n_b_lower)}, "
               f"conv lower in {int(r.n_a_lower)}")
    return Finding(*asdict(c).values(), eff + 0.0, lo + 0.0, hi + 0.0, float(r.ks_p), "KS permutation test on Δ",
                   f"{int(r.n_a)} conv, {int(r.n_b)} patchify", details, verdict(eff, lo, hi, min(r.n_a, r.n_b) >= MIN_RUNS))


def finding_optimizer(runs: pd.DataFrame) -> Finding:
    """Table 3: SGD costs ViT_P more than ViT_C (best over each optimizer's lr sweep)."""
    c = Claim("optimizer", "Optimizer: AdamW vs SGD (Table 3)",
              "the SGD − AdamW gap in best error is larger for ViT_P than for ViT_C",
              "4GF, 50 epochs: SGD − AdamW = 5.3 points for ViT_P, 0.7 for ViT_C (ViT_P up to ~10)",
              "gap_P − gap_C, gap = best SGD − best AdamW (points)")
    every = errors(runs, by=("stem",))
    # The paper's Table 3 numbers are for 50 epochs, its shortest schedule: judge the shortest.
    shortest = every["epochs"].min() if "epochs" in every and len(every) else None
    df = every[every["epochs"] == shortest] if shortest is not None else every
    need = [("patchify", "adamw"), ("patchify", "sgd"), ("conv", "adamw"), ("conv", "sgd")]
    groups = {k: v for k, v in _groups(df, ["stem", "optimizer"]).items() if k in need}
    if len(groups) < len(need):
        return c.missing("needs both stems with both optimizers")

    def gaps(g):
        return {s: g[(s, "sgd")].min() - g[(s, "adamw")].min() for s in ("patchify", "conv")}

    gp, gc = gaps(groups).values()
    details = (f"at {shortest} epoch(s): gap ViT_P {gp:+.2f}, ViT_C {gc:+.2f}; best AdamW P "
               f"{groups[('patchify', 'adamw')].min():.2f} / C {groups[('conv', 'adamw')].min():.2f}, "
               f"best SGD P {groups[('patchify', 'sgd')].min():.2f} / C {groups[('conv', 'sgd')].min():.2f}")
    for ep in sorted(set(every["epochs"]) - {shortest}):
        other = _groups(every[every["epochs"] == ep], ["stem", "optimizer"])
        if all(k in other for k in need):
            gp2, gc2 = gaps(other).values()
            details += f"; at {ep} epochs: gap ViT_P {gp2:+.2f}, ViT_C {gc2:+.2f}"
    return c.measured(groups, lambda g: gaps(g)["patchify"] - gaps(g)["conv"], details,
                      lambda k: f"{k[0][0].upper()}-{k[1]}")


def finding_epochs(runs: pd.DataFrame) -> Finding:
    """Fig. 3: ViT_C converges faster: its lead over ViT_P is largest at the shortest schedule."""
    c = Claim("epochs", "Training length (Fig. 3)",
              "ViT_C converges faster: the ViT_P − ViT_C gap in best error is larger at the shortest "
              "schedule than at the longest",
              "ViT_C's gain is largest at short schedules and shrinks as training lengthens (50 → 400 epochs)",
              "(P − C) at the shortest − (P − C) at the longest schedule (points)")
    df = errors(runs, by=("stem",))
    if "epochs" not in df or df["epochs"].nunique() < 2:
        return c.missing("needs at least two training lengths")
    short, long = df["epochs"].min(), df["epochs"].max()
    need = [("patchify", short), ("conv", short), ("patchify", long), ("conv", long)]
    groups = {k: v for k, v in _groups(df, ["stem", "epochs"]).items() if k in need}
    if len(groups) < len(need):
        return c.missing("needs both stems at both lengths")

    def gap(g, ep):
        return g[("patchify", ep)].min() - g[("conv", ep)].min()

    curve = df.groupby(["epochs", "stem"], observed=True)["err"].min().unstack("stem")
    details = "best error per length (P / C): " + "; ".join(
        f"{ep}: {row.get('patchify', np.nan):.2f} / {row.get('conv', np.nan):.2f}" for ep, row in curve.iterrows())
    return c.measured(groups, lambda g: gap(g, short) - gap(g, long), details, lambda k: f"{k[0][0].upper()}@{k[1]}")


def finding_peak(runs: pd.DataFrame) -> Finding:
    """Sec. 5.4 / Table 4: at its best (lr, wd), ViT_C beats ViT_P by 1–2 points."""
    c = Claim("peak", "Peak performance (Sec. 5.4)",
              "with each model's best (lr, wd), ViT_C's error is lower than ViT_P's",
              "400 epochs: 4GF 18.6% (ViT_C) vs 19.6% (ViT_P); 1GF 24.7% vs 27.7%; RegNetY-4GF 18.7%",
              "best ViT_P − best ViT_C (points)")
    every = _groups(errors(runs, by=("stem",)), ["stem"])
    if ("patchify",) not in every or ("conv",) not in every:
        return c.missing("needs finished runs of both ViTs")
    order = sorted(every, key=lambda k: {"patchify": 0, "conv": 1}.get(k[0], 2))
    details = "best error: " + ", ".join(f"{k[0]} {every[k].min():.2f} (median {np.median(every[k]):.2f}, "
                                         f"n {len(every[k])})" for k in order)
    groups = {k: every[k] for k in (("patchify",), ("conv",))}
    return c.measured(groups, lambda g: g[("patchify",)].min() - g[("conv",)].min(), details, lambda k: k[0])


FINDINGS: dict[str, Callable[[pd.DataFrame], Finding]] = {
    "lr_wd": finding_lr_wd, "optimizer": finding_optimizer, "epochs": finding_epochs, "peak": finding_peak,
}


def assess(study: str, runs: pd.DataFrame) -> Finding:
    """``FINDINGS[study](runs)``, made inconclusive when more than half of the finished runs
    collapsed (a comparison of runs that learned nothing says nothing about stability)."""
    from dataclasses import replace

    f = FINDINGS[study](runs)
    done = runs[runs["status"].isin(DONE)] if len(runs) else runs
    if not len(done) or "collapsed" not in done:
        return f
    n = int(done["collapsed"].fillna(False).astype(bool).sum())
    if n > len(done) / 2:
        return replace(f, verdict="inconclusive",
                       details=f"{f.details}; {n} of {len(done)} finished runs collapsed (never left chance): "
                               "too few learned anything to judge")
    return f
