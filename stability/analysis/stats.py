"""Statistics shared by the analysis modules: intervals, permutation and paired tests, Holm,
power (pure numpy/scipy; arrays in, numbers out).

- **Bootstrap and rank statistics** (``boot_ci``, ``ks_signed``/``ks_permutation_p``,
  ``area_between``, ``paired_tests``, ``median_perm_p``, ``prob_lower``/``bm_perm_p``, ``auc``/``auc_test``):
  the building blocks
  of ``compare``, ``stem_verdicts`` and the attention-logit study.
- **Proportions** (``wilson``, ``newcombe``): score intervals of a fraction and of a difference.

The rules of the verdicts over replicated seeds (sources in docs/methodology.md, "Verdicts"):

- **Paired seeds.** Each arm's chosen configuration is trained again with the same k seeds; the
  statistic is the mean of the k per-seed differences ``d``. Its p-value is the exact sign-flip
  permutation test of that same mean (2^k equally likely sign patterns under the null of a
  distribution symmetric about 0), so the smallest one-sided p is 2^-k; its interval is the
  t interval of the mean (descriptive: the verdict is the test's).
- **Family.** Holm's step-down adjustment over the findings of one report.
- **Power.** The minimum detectable effect of the exact sign-flip test itself at level ``alpha``
  with ``power`` for normal contrasts of the measured SD (``mde_sign_flip``, by simulation: the
  t formula (t_{1-alpha,k-1} + t_{power,k-1}) * sd / sqrt(k), ``mde``, is optimistic for a
  permutation test at small k); infinite when no sign pattern can reach ``alpha`` (2^-k > alpha).
- **Evaluation noise.** The exact McNemar test of two models on the same test images.
- **Best-of-n over a shared design** (``paired_best_of``): points shared by two arms are
  resampled as pairs and each arm's best re-chosen in every resample; its p-value permutes the
  arm labels within pairs and recomputes the same statistic.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations, product
from statistics import NormalDist

import numpy as np

EXACT_MAX_K = 16  # 2^16 sign patterns enumerated; above, Monte Carlo with N_PERM draws
EXACT_MAX_SPLITS = 20_000  # two-sample label tests enumerate every split up to this many (8 vs 8: 12,870)
EXACT_MAX_CELLS = 400_000  # ... and splits x runs up to this many (memory: 8 vs 8 is 205,920)
N_PERM = 20000


def _signs(k: int, rng: np.random.Generator | None, n_perm: int) -> np.ndarray:
    if k <= EXACT_MAX_K:
        return np.array(list(product((1.0, -1.0), repeat=k)))
    rng = rng or np.random.default_rng(0)
    draws = rng.choice((1.0, -1.0), size=(n_perm, k))
    return np.vstack([np.ones(k), draws])  # the observed pattern counts once (Phipson & Smyth)


def sign_flip_p(d: np.ndarray, alternative: str = "greater", n_perm: int = N_PERM,
                seed: int = 0) -> float:
    """The sign-flip permutation p-value of ``mean(d)``.

    Args:
        d: the k paired differences (NaN-free).
        alternative: ``"greater"`` (mean > 0), ``"less"`` or ``"two-sided"`` (|mean|).
        n_perm: Monte Carlo draws when k > ``EXACT_MAX_K``; exact enumeration otherwise.
        seed: of the Monte Carlo draws.

    Returns:
        p in (0, 1]: the share of sign patterns whose mean is at least as extreme as the observed
        one (the observed pattern included), 1.0 for an empty ``d``.
    """
    d = np.asarray(d, float)
    if not len(d):
        return 1.0
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative: {alternative!r} (allowed: greater, less, two-sided)")
    means = _signs(len(d), np.random.default_rng(seed), n_perm) @ d / len(d)
    obs, tol = d.mean(), 1e-12 * max(1.0, float(np.abs(d).max()))
    if alternative == "greater":
        hits = means >= obs - tol
    elif alternative == "less":
        hits = means <= obs + tol
    else:
        hits = np.abs(means) >= abs(obs) - tol
    return float(hits.mean())


def t_interval(d: np.ndarray, ci: float = 0.9) -> tuple[float, float, float]:
    """The t interval of a mean.

    Args:
        d: the values (per-seed contrasts).
        ci: the two-sided coverage.

    Returns:
        (mean, lo, hi); NaN bounds for fewer than 2 values, all NaN for none.
    """
    from scipy import stats

    d = np.asarray(d, float)
    if not len(d):
        return np.nan, np.nan, np.nan
    m = float(d.mean())
    if len(d) < 2:
        return m, np.nan, np.nan
    half = float(stats.t.ppf((1 + ci) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return m, m - half, m + half


def holm(p: list[float] | np.ndarray) -> np.ndarray:
    """Holm (1979) adjusted p-values.

    Args:
        p: the family's p-values; NaN entries are left out of the family and stay NaN.

    Returns:
        The adjusted p-values in the input order: sorted ascending, p_(i) * (m - i + 1), made
        monotone and capped at 1. Rejecting where adjusted p <= alpha is Holm's step-down rule.

    >>> holm([0.01, 0.04, 0.03, 0.5]).tolist()
    [0.04, 0.09, 0.09, 0.5]
    """
    p = np.asarray(p, float)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if not len(ok):
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adj = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adj, 1.0)
    return out


def min_sign_flip_p(k: int) -> float:
    """The smallest one-sided p an exact sign-flip test can give.

    Args:
        k: seeds.

    Returns:
        2^-k.
    """
    return 2.0 ** -k


def seeds_needed(alpha_first: float) -> int:
    """The fewest seeds an exact sign-flip test needs to reach a level.

    Args:
        alpha_first: the level the smallest p of a Holm family must reach (alpha / m).

    Returns:
        The fewest k with 2^-k <= ``alpha_first``.

    >>> seeds_needed(0.1 / 4)
    6
    """
    return int(np.ceil(-np.log2(alpha_first)))


def mde(sd: float, k: int, alpha: float = 0.025, power: float = 0.8) -> float:
    """The t formula's minimum detectable effect of a one-sided paired test.

    Args:
        sd: SD of the per-seed differences.
        k: seeds.
        alpha: one-sided level.
        power: the power asked.

    Returns:
        (t_{1-alpha,k-1} + t_{power,k-1}) * sd / sqrt(k); ``inf`` when the exact sign-flip test
        cannot reach ``alpha`` at all (2^-k > alpha) or k < 2.
    """
    from scipy import stats

    if k < 2 or min_sign_flip_p(k) > alpha or not np.isfinite(sd):
        return float("inf")
    return float((stats.t.ppf(1 - alpha, k - 1) + stats.t.ppf(power, k - 1)) * sd / np.sqrt(k))


def sign_flip_power(effect: float, sd: float, k: int, alpha: float, n_sim: int = 4000, seed: int = 0) -> float:
    """The power of the one-sided exact sign-flip test (Monte Carlo, seeded).

    Args:
        effect: the mean of the normal per-seed contrasts.
        sd: their SD.
        k: seeds.
        alpha: one-sided level.
        n_sim: simulated studies.
        seed: of the simulation.

    Returns:
        The share of simulated studies whose p is at most ``alpha``; 0 when no result can reach it.
    """
    if k < 1 or min_sign_flip_p(k) > alpha:
        return 0.0
    rng = np.random.default_rng(seed)
    d = effect + sd * rng.standard_normal((n_sim, k))
    signs = _signs(k, rng, N_PERM)
    means = d @ signs.T / k  # (n_sim, patterns)
    p = (means >= d.mean(1, keepdims=True) - 1e-12).mean(1)
    return float((p <= alpha).mean())


def sd_upper(sd: float, k: int, conf: float = 0.8) -> float:
    """An upper confidence bound of a normal SD.

    An MDE from the sample SD alone is optimistic at small k (the sample SD of 6 values is below
    the true one more often than not).

    Args:
        sd: the sample SD.
        k: values it was computed from.
        conf: the one-sided confidence.

    Returns:
        sd * sqrt((k - 1) / chi2_{1-conf, k-1}); NaN for k < 2 or a non-finite sd.
    """
    from scipy import stats

    if k < 2 or not np.isfinite(sd):
        return float("nan")
    return float(sd * np.sqrt((k - 1) / stats.chi2.ppf(1 - conf, k - 1)))


def mde_sign_flip(sd: float, k: int, alpha: float = 0.025, power: float = 0.8) -> float:
    """The minimum detectable effect of the exact sign-flip test itself.

    Args:
        sd: SD of the normal per-seed contrasts.
        k: seeds.
        alpha: one-sided level.
        power: the power asked.

    Returns:
        The smallest mean contrast detected with ``power`` (``sign_flip_power`` by bisection, in
        units of sd); ``inf`` when no result can reach ``alpha`` (2^-k > alpha) or sd is not
        finite. (k = 6 at 0.025: only "all six positive" passes, so the MDE is 1.79 sd.)
    """
    if k < 2 or min_sign_flip_p(k) > alpha or not np.isfinite(sd):
        return float("inf")
    return float(sd * _unit_mde(k, alpha, power))


@functools.lru_cache(maxsize=64)
def _unit_mde(k: int, alpha: float, power: float) -> float:
    lo, hi = 0.0, 10.0
    while sign_flip_power(hi, 1.0, k, alpha, n_sim=2000) < power:
        hi *= 2
    for _ in range(16):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sign_flip_power(mid, 1.0, k, alpha, n_sim=2000) < power else (lo, mid)
    return hi


@dataclass(frozen=True)
class McNemar:
    only_a: int  # images A gets right and B wrong
    only_b: int
    n: int  # images compared
    p: float  # exact two-sided: b ~ Binomial(b + c, 1/2)


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> McNemar:
    """The exact McNemar test of two models on the same images.

    Args:
        a_correct, b_correct: boolean per image, the same images in the same order.

    Returns:
        ``McNemar``: the discordant counts and the exact two-sided p (1.0 with no discordant image).
    """
    from scipy import stats

    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar_exact: {a.shape} vs {b.shape} images (the same images are needed)")
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    n = only_a + only_b
    p = 1.0 if not n else float(stats.binomtest(only_a, n, 0.5).pvalue)
    return McNemar(only_a, only_b, len(a), p)


@dataclass(frozen=True)
class PairedBest:
    """A statistic of two arms over shared design points, with its resampling answers."""

    x: np.ndarray  # the statistic's argument (e.g. points within the best)
    effect: np.ndarray  # per x
    lo: np.ndarray  # simultaneous band over x (bootstrap of the sup deviation)
    hi: np.ndarray
    p: np.ndarray  # per x, one-sided (effect > 0), permutation of arm labels within pairs
    p_less: np.ndarray  # per x, one-sided (effect < 0), from the same permutations
    null_sd: np.ndarray  # per x, the statistic's SD over the label permutations (its null spread)
    n_points: int
    perms: np.ndarray | None = None  # (n_perm, len(x)): the statistic under each label permutation


def paired_best_of(a: np.ndarray, b: np.ndarray, stat: Callable[[np.ndarray, np.ndarray], np.ndarray],
                   x: np.ndarray, ci: float = 0.9, n_boot: int = 2000, n_perm: int = 2000,
                   seed: int = 0, bounds: tuple[float, float] | None = None) -> PairedBest:
    """Resampling answers for ``stat(a, b)`` over n shared points (``a[i]``, ``b[i]``: the two
    arms' errors at point i).

    Args:
        a, b: errors per shared point, same length n.
        stat: ``(a, b) -> values over x``; it re-chooses whatever best it needs from its inputs,
            so every resample and every permutation re-chooses it too.
        x: the statistic's arguments (kept in the result).
        ci: of the simultaneous band: the ``ci`` quantile of sup_x |boot(x) - effect(x)|.
        n_boot, n_perm: bootstrap resamples (points drawn as pairs) and label permutations
            (each point's two errors swapped with probability 1/2); where the 2^n - 1 other
            labellings are no more than ``n_perm``, every one of them instead (the exact test).
        seed: of both.
        bounds: the statistic's range, to clip the band to (e.g. (-1, 1) for a difference of
            fractions).

    Returns:
        ``PairedBest`` with the band (descriptive where the statistic is relative to a best:
        the bootstrap of an extreme is inconsistent) and one-sided permutation p per x in each
        direction (the observed labelling included, so p >= 1 / (n_perm + 1), or exactly 2^-n).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("paired_best_of: a and b must be 1-d and of one length (the shared points)")
    rng = np.random.default_rng(seed)
    obs = np.asarray(stat(a, b), float)
    n = len(a)
    half = np.nan
    if n_boot:
        boots = np.array([stat(a[i], b[i]) for i in (rng.integers(0, n, n) for _ in range(n_boot))], float)
        half = float(np.nanquantile(np.nanmax(np.abs(boots - obs), axis=1), ci))
    if 0 < 2 ** n - 1 <= n_perm:
        # every labelling but the observed one: (1 + hits) / 2^n is then the exact p (as
        # smallest_passing counts, given the observed value)
        swaps = ((np.arange(1, 2 ** n)[:, None] >> np.arange(n)) & 1).astype(bool)
    else:
        swaps = rng.random((n_perm, n)) < 0.5
    perms = np.array([stat(np.where(swap, b, a), np.where(swap, a, b)) for swap in swaps],
                     float).reshape(len(swaps), -1)
    hits, low = 1 + (perms >= obs - 1e-12).sum(0), 1 + (perms <= obs + 1e-12).sum(0)
    null_sd = perms.std(0, ddof=1) if len(perms) > 1 else np.full_like(obs, np.nan)
    lo, hi = (np.clip(v, *bounds) for v in (obs - half, obs + half)) if bounds else (obs - half, obs + half)
    return PairedBest(np.asarray(x, float), obs, lo, hi, hits / (len(perms) + 1), low / (len(perms) + 1), null_sd,
                      n, perms)


def smallest_passing(null: np.ndarray, level: float, observed: float | None = None) -> float:
    """The smallest statistic a one-sided permutation test calls significant.

    Args:
        null: the statistic under each label permutation other than the observed one (every
            other labelling when enumerated, or random draws).
        level: the one-sided level.
        observed: the observed statistic, a value it takes too (an enumerated null leaves the
            observed labelling out: a unique maximum is in no other labelling).

    Returns:
        The smallest value the statistic can take (one of the null's, or ``observed``) with
        (1 + #(null >= t)) / (len(null) + 1) <= level; ``inf`` when none can pass (too few
        distinct label patterns, ties at the top, or too few draws).

    >>> smallest_passing(np.array([-1.0, 0.0, 0.0, 1.0] * 10), 0.2)  # p(1) = 11/41 > 0.2: none
    inf
    >>> smallest_passing(np.array([0.0] * 30 + [0.5, 1.0]), 0.1)
    0.5
    """
    null = np.sort(np.asarray(null, float))[::-1]
    allowed = int(np.floor(level * (len(null) + 1))) - 1  # null draws that may lie at or above t
    if allowed < 0:
        return float("inf")
    if allowed >= len(null):
        return float("-inf")
    # t must exceed the (allowed + 1)-th largest draw (ties at t count against it), and be a value
    # the statistic takes: a t between two of its values, or past its largest, is never observed
    values = null if observed is None else np.append(null, observed)
    above = values[values > null[allowed]]
    return float(above.min()) if len(above) else float("inf")


def correct_of(packed: bytes, n: int) -> np.ndarray:
    """A run's stored per-image correctness.

    Args:
        packed: ``test_correct`` (``np.packbits`` of the booleans).
        n: images.

    Returns:
        n booleans.

    >>> correct_of(np.packbits([True, False, True]).tobytes(), 3).tolist()
    [True, False, True]
    """
    bits = np.unpackbits(np.frombuffer(bytes(packed), np.uint8))
    if len(bits) < n or len(bits) - n >= 8:
        raise ValueError(f"correct_of: {len(packed)} bytes do not hold {n} images")
    return bits[:n].astype(bool)


def mcnemar_runs(a, b, column: str = "test_correct") -> McNemar:
    """The exact McNemar test of two runs on their stored test-split correctness.

    Args:
        a, b: runs rows (runs table) with ``test_images`` and ``column``.
        column: the packed correctness.

    Returns:
        ``mcnemar_exact`` of the two.
    """
    n = int(a["test_images"])
    if int(b["test_images"]) != n:
        raise ValueError(f"mcnemar_runs: {n} vs {int(b['test_images'])} test images (not the same split)")
    return mcnemar_exact(correct_of(a[column], n), correct_of(b[column], n))


# ---- bootstrap, rank and permutation statistics (compare, stems, the attention-logit study) ----

MIN_AUC_RUNS = 3  # runs with and without the outcome an AUC interval needs, each


def boot_ci(stat: np.ndarray, ci: float) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates.

    Args:
        stat: the statistic over the resamples (non-finite replicates are left out).
        ci: the coverage, e.g. 0.9 for the 5 % and 95 % quantiles.

    Returns:
        (lo, hi); (NaN, NaN) without a finite replicate.

    >>> [round(v, 9) for v in boot_ci(np.arange(101.0), 0.9)]
    [5.0, 95.0]
    >>> boot_ci(np.array([np.nan]), 0.9)
    (nan, nan)
    """
    stat = stat[np.isfinite(stat)]
    if not len(stat):
        return np.nan, np.nan
    lo, hi = np.quantile(stat, [(1 - ci) / 2, (1 + ci) / 2])
    return float(lo), float(hi)


def ks_signed(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The two one-sided Kolmogorov-Smirnov distances of two samples, ties exact (evaluated on
    the pooled distinct values).

    Args:
        a, b: the two samples.

    Returns:
        (max of F_a − F_b, max of F_b − F_a) over every value, F(e) = the fraction at or below e.

    >>> ks_signed(np.array([1.0, 2.0]), np.array([2.0, 3.0]))
    (0.5, 0.0)
    """
    xs = np.unique(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), xs, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), xs, side="right") / len(b)
    return float(max(0.0, (fa - fb).max())), float(max(0.0, (fb - fa).max()))


def ks_permutation_p(a: np.ndarray, b: np.ndarray, n_perm: int = 2000, seed: int = 0) -> float:
    """Two-sided KS p-value by permuting the group labels, exact under ties; every split of the
    pooled values enumerated when there are at most :data:`EXACT_MAX_SPLITS` (8 vs 8: 12,870).

    Args:
        a, b: the two samples.
        n_perm: label permutations, above :data:`EXACT_MAX_SPLITS` splits.
        seed: of the permutations.

    Returns:
        #{D* ≥ D} / #splits (exact), else (1 + #{D* ≥ D}) / (1 + n_perm); D the larger of ``ks_signed``.
    """
    observed = max(ks_signed(a, b))
    pool = np.concatenate([a, b])
    order = np.argsort(pool, kind="stable")
    last = np.r_[np.diff(pool[order]) != 0, True]  # the last of each run of tied values: where ECDFs are read
    na, nb = len(a), len(pool) - len(a)

    def d_of(in_a: np.ndarray) -> np.ndarray:  # (splits, n) membership -> each split's max |ECDF gap|
        ca = in_a[:, order].cumsum(axis=1) / na
        cb = (~in_a[:, order]).cumsum(axis=1) / nb
        return np.abs(ca - cb)[:, last].max(axis=1)

    exact = _splits(len(pool), na)
    if exact is not None:
        return float(np.mean(d_of(exact) >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    in_a = np.zeros((n_perm, len(pool)), bool)
    in_a[np.arange(n_perm)[:, None], np.argsort(rng.random((n_perm, len(pool))), axis=1)[:, :na]] = True
    return float((1 + np.sum(d_of(in_a) >= observed - 1e-12)) / (1 + n_perm))


def area_between(a: np.ndarray, b: np.ndarray) -> float:
    """The area between two EDFs.

    Args:
        a, b: the two samples (errors, in points).

    Returns:
        The integral of |F_a(e) − F_b(e)| de over the errors (in the samples' unit).

    >>> area_between(np.array([0.0, 10.0]), np.array([10.0, 20.0]))
    10.0
    """
    xs = np.unique(np.concatenate([a, b]))
    if len(xs) < 2:
        return 0.0
    fa = np.searchsorted(np.sort(a), xs[:-1], side="right") / len(a)
    fb = np.searchsorted(np.sort(b), xs[:-1], side="right") / len(b)
    return float(np.sum(np.abs(fa - fb) * np.diff(xs)))


def paired_tests(d: np.ndarray) -> dict[str, float]:
    """Wilcoxon signed-rank and sign-test p-values of paired differences (zeros dropped, as
    Wilcoxon's original).

    Args:
        d: the paired differences b − a.

    Returns:
        ``n_pairs``, ``n_b_lower`` (d < 0), ``n_a_lower``, ``n_ties``, ``wilcoxon_p`` and ``sign_p``
        (NaN without a non-zero difference).
    """
    from scipy.stats import binomtest, wilcoxon

    nz = d[d != 0]
    out = {"n_pairs": len(d), "n_b_lower": int((d < 0).sum()), "n_a_lower": int((d > 0).sum()),
           "n_ties": int((d == 0).sum()), "wilcoxon_p": np.nan, "sign_p": np.nan}
    if len(nz):
        out["wilcoxon_p"] = float(wilcoxon(nz, zero_method="wilcox").pvalue)
        out["sign_p"] = float(binomtest(int((nz > 0).sum()), len(nz), 0.5).pvalue)
    return out


def median_perm_p(a: np.ndarray, b: np.ndarray, n_perm: int = 4000, seed: int = 0,
                  center: Callable[..., np.ndarray] = np.median) -> float:
    """Two-sided permutation p-value of center(b) − center(a) (the median by default); every split
    of the pooled values enumerated when there are at most :data:`EXACT_MAX_SPLITS` (4 vs 4: 70, so
    its smallest p is 4/70 exactly, not a Monte Carlo draw around it).

    Args:
        a, b: the two samples.
        n_perm: label permutations, above :data:`EXACT_MAX_SPLITS` splits.
        seed: of the permutations.
        center: ``np.median`` or ``np.mean`` (called with ``axis=1``).

    Returns:
        #{|D*| ≥ |D|} / #splits (exact), else (1 + #{|D*| ≥ |D|}) / (1 + n_perm).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    observed = abs(center(b) - center(a))
    pool = np.concatenate([a, b])
    exact = _splits(len(pool), len(a))
    if exact is not None:
        d = _split_gaps(pool, exact, len(a), center)
        return float(np.mean(d >= observed - 1e-9))
    rng = np.random.default_rng(seed)
    shuffled = pool[np.argsort(rng.random((n_perm, len(pool))), axis=1)]
    d = np.abs(center(shuffled[:, len(a):], axis=1) - center(shuffled[:, :len(a)], axis=1))
    return float((1 + np.sum(d >= observed - 1e-9)) / (1 + n_perm))


def prob_lower(a: np.ndarray, b: np.ndarray) -> float:
    """How often b's value is below a's over all (a, b) pairs, ties counting one half (``auc`` with
    a as the outcome): the relative effect Brunner–Munzel's test is about (0.5: neither tends lower).

    Args:
        a, b: the two samples.

    Returns:
        P(b < a) + P(b = a) / 2; NaN when a sample is empty.

    >>> prob_lower(np.array([3.0, 4.0]), np.array([1.0, 4.0]))
    0.625
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    return auc(np.concatenate([a, b]), np.arange(len(a) + len(b)) < len(a))[0]  # a's larger: b lower


def bm_perm_p(a: np.ndarray, b: np.ndarray, n_perm: int = 4000, seed: int = 0) -> float:
    """Two-sided studentized permutation p-value of Brunner–Munzel's statistic (Neubert &
    Brunner 2007): the null is ``prob_lower(a, b) = 0.5``, not "one distribution", so two
    samples with one centre and different spreads do not pass it (a permutation test of the
    median difference calls a side there in ~45 % of 6 vs 6 draws, spreads 1 vs 10). Every split
    enumerated up to :data:`EXACT_MAX_SPLITS`, else ``n_perm`` random ones; midranks for ties; two
    fully separated samples give an infinite statistic, reached only by the fully separated splits.

    Args:
        a, b: the two samples (at least 2 each).
        n_perm: label permutations, above :data:`EXACT_MAX_SPLITS` splits.
        seed: of the permutations.

    Returns:
        #{|T*| ≥ |T|} / #splits (exact), else (1 + #{|T*| ≥ |T|}) / (1 + n_perm); 4 vs 4 fully
        separated: 2/70.

    >>> round(bm_perm_p(np.arange(4.0), np.arange(4.0, 8.0)), 4)
    0.0286
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    pool = np.concatenate([a, b])
    observed = abs(_bm_stats(pool, np.arange(len(pool))[None, :] < len(a))[0])
    exact = _splits(len(pool), len(a))
    if exact is not None:
        return float(np.mean(_at_least(np.abs(_bm_stats(pool, exact)), observed)))
    rng = np.random.default_rng(seed)
    mask = np.argsort(rng.random((n_perm, len(pool))), axis=1) < len(a)
    return float((1 + np.sum(_at_least(np.abs(_bm_stats(pool, mask)), observed))) / (1 + n_perm))


def min_bm_perm_p(a: np.ndarray, b: np.ndarray, max_splits: int = 20_000) -> float:
    """The smallest p ``bm_perm_p`` can give for these values, whatever their labels: the share of
    the splits whose |statistic| reaches the largest any split has (exact enumeration; NaN above
    ``max_splits`` splits, where it is small anyway).

    Args:
        a, b: the two samples (only their sizes and pooled values matter).
        max_splits: the most splits enumerated.

    Returns:
        2/C(n_a + n_b, n_a) for distinct values (2/20 = 0.1 for 3 vs 3, 2/70 for 4 vs 4); more where
        ties keep the samples from separating.

    >>> round(min_bm_perm_p(np.arange(4.0), np.arange(4.0, 8.0)), 4)
    0.0286
    """
    pool = np.concatenate([np.asarray(a, float), np.asarray(b, float)])
    mask = _splits(len(pool), len(np.asarray(a)), max_splits)
    if mask is None:
        return float("nan")
    t = np.abs(_bm_stats(pool, mask))
    return float(np.mean(_at_least(t, t.max())))


def _at_least(t: np.ndarray, observed: float) -> np.ndarray:
    """|T*| ≥ |T| up to rounding (an infinite T is reached only by infinite ones)."""
    return t >= observed - 1e-9 * max(1.0, abs(observed)) if np.isfinite(observed) else np.isinf(t)


def _bm_stats(pool: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Brunner–Munzel's statistic of each split of ``pool`` (``mask``: (splits, n), True in the
    first group a), positive where b ranks higher; ±inf where both groups' placements have no
    variance (fully separated), 0 where the mean ranks are equal. As ``scipy.stats.brunnermunzel``,
    vectorised over splits: the pooled midranks are the same for every split, each group's own
    midranks come from running counts over the sorted pool."""
    order = np.argsort(pool, kind="stable")
    v, m = pool[order], mask[:, order]
    n = len(v)
    new = np.r_[True, v[1:] != v[:-1]]
    starts = np.flatnonzero(new)
    block = np.cumsum(new) - 1
    ends = np.r_[starts[1:], n]
    pooled = ((starts + 1 + ends) / 2)[block]  # midrank: (first + last position) / 2, 1-based

    def own(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        before = np.concatenate([np.zeros((len(g), 1)), np.cumsum(g, axis=1)], axis=1)
        within = (before[:, starts[block]] + before[:, ends[block]] + 1) / 2  # midrank in its own group
        k = g.sum(axis=1)
        dev = np.where(g, pooled - within, 0.0)
        mean_dev = dev.sum(axis=1) / k
        var = np.where(g, (pooled - within - mean_dev[:, None]) ** 2, 0.0).sum(axis=1) / (k - 1)
        return (np.where(g, pooled, 0.0).sum(axis=1) / k), var * k

    ra, va = own(m)
    rb, vb = own(~m)
    na = m[0].sum()
    num = na * (n - na) * (rb - ra)
    den = n * np.sqrt(va + vb)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.sign(num) * np.inf)


def _splits(n: int, na: int, max_splits: int | None = None) -> np.ndarray | None:
    """Every way to put ``na`` of ``n`` values in the first group, as a (splits, n) membership
    mask; None above ``max_splits`` (default :data:`EXACT_MAX_SPLITS`) splits or
    :data:`EXACT_MAX_CELLS` mask cells (1 vs 4,000 is only 4,000 splits, but 16M cells), or with an
    empty group."""
    if not 0 < na < n:
        return None
    splits = math.comb(n, na)
    if splits > (EXACT_MAX_SPLITS if max_splits is None else max_splits) or splits * n > EXACT_MAX_CELLS:
        return None
    idx = np.array(list(combinations(range(n), na)))
    mask = np.zeros((len(idx), n), bool)
    mask[np.arange(len(idx))[:, None], idx] = True
    return mask


def _split_gaps(pool: np.ndarray, mask: np.ndarray, na: int, center: Callable[..., np.ndarray]) -> np.ndarray:
    """|center(second group) − center(first group)| of each split of ``pool`` (``mask``: first group)."""
    first = pool[np.argsort(~mask, axis=1, kind="stable")]  # each split's first-group values first
    return np.abs(center(first[:, na:], axis=1) - center(first[:, :na], axis=1))


def min_median_perm_p(a: np.ndarray, b: np.ndarray, max_splits: int = 20_000) -> float:
    """The smallest p ``median_perm_p`` can give for these values, whatever their labels: the share
    of the splits of the pooled values whose |median difference| reaches the largest any split
    has (exact enumeration; NaN above ``max_splits`` splits, where it is small anyway).

    Args:
        a, b: the two samples (only their sizes and pooled values matter).
        max_splits: the most splits enumerated.

    Returns:
        4/70 for 4 vs 4 distinct values (not 2/70: swapping a's largest with b's smallest keeps both medians), 4/20
        for 3 vs 3, 12/924 for 6 vs 6.

    >>> round(min_median_perm_p(np.arange(4.0), np.arange(4.0, 8.0)), 4)
    0.0571
    """
    pool = np.concatenate([np.asarray(a, float), np.asarray(b, float)])
    na = len(np.asarray(a))
    mask = _splits(len(pool), na, max_splits)
    if mask is None:
        return float("nan")
    d = _split_gaps(pool, mask, na, np.median)
    return float(np.mean(d >= d.max() - 1e-9))


def wilson(k: int, n: int, ci: float = 0.9) -> tuple[float, float]:
    """Wilson score interval of a proportion.

    Args:
        k: successes.
        n: trials.
        ci: the coverage.

    Returns:
        (lo, hi) of k / n; (NaN, NaN) when n is 0.

    >>> [round(v, 4) for v in wilson(5, 10, 0.95)]
    [0.2366, 0.7634]
    """
    if n == 0:
        return np.nan, np.nan
    z = NormalDist().inv_cdf((1 + ci) / 2)
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, mid - half)), float(min(1.0, mid + half))


def newcombe(k1: int, n1: int, k2: int, n2: int, ci: float = 0.9) -> tuple[float, float]:
    """Newcombe's hybrid score interval of a difference of proportions, from the two Wilson
    intervals.

    Args:
        k1, n1: successes and trials of the first proportion.
        k2, n2: the same of the second.
        ci: the coverage.

    Returns:
        (lo, hi) of k1 / n1 − k2 / n2; (NaN, NaN) when either n is 0.
    """
    if n1 == 0 or n2 == 0:
        return np.nan, np.nan
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson(k1, n1, ci), wilson(k2, n2, ci)
    d = p1 - p2
    return float(d - np.hypot(p1 - l1, u2 - p2)), float(d + np.hypot(u1 - p1, p2 - l2))


def _cells(strata: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(strata == v) for v in np.unique(strata)]


def _weighted_auc(x: np.ndarray, strata: np.ndarray, w_with: np.ndarray, w_without: np.ndarray):
    """(AUC, weight of the pairs) for each row of the run weights (k, n): the sum over pairs in one
    stratum of w_with_i · w_without_j · ([x_i > x_j] + ½[x_i = x_j]) over the sum of
    w_with_i · w_without_j. One sort per stratum and cumulative sums: O(k·n), no n × n matrix.
    Weights 0/1 give the Mann-Whitney AUC; shuffled outcomes, a permutation's; resample counts
    times the outcome, a bootstrap resample's."""
    u, den = np.zeros(len(w_with)), np.zeros(len(w_with))
    for c in _cells(strata):
        order = c[np.argsort(x[c], kind="stable")]
        xs, wi, wo = x[order], w_with[:, order], w_without[:, order]
        first, past = np.searchsorted(xs, xs, "left"), np.searchsorted(xs, xs, "right")  # each one's ties
        cum = np.concatenate([np.zeros((len(wo), 1)), np.cumsum(wo, axis=1)], axis=1)
        u += (wi * (cum[:, first] + 0.5 * (cum[:, past] - cum[:, first]))).sum(1)
        den += wi.sum(1) * wo.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, u / den, np.nan), den


def auc(x: np.ndarray, bad: np.ndarray, strata: np.ndarray | None = None) -> tuple[float, int]:
    """The Mann-Whitney AUC of ``x`` for an outcome.

    Args:
        x: the predictor per run; NaN (not measured) is left out.
        bad: whether each run had the outcome.
        strata: pairs only inside one stratum when given; over all runs otherwise.

    Returns:
        (AUC, pairs): the probability that a run with the outcome has the larger ``x`` than one
        without (ties count half); NaN without a pair.

    >>> auc(np.array([1.0, 2.0, 3.0, 4.0]), np.array([False, True, False, True]))
    (0.75, 4)
    """
    x, bad = np.asarray(x, float), np.asarray(bad, bool)
    strata = np.zeros(len(x), int) if strata is None else np.asarray(strata)
    keep = ~np.isnan(x)
    a, n = _weighted_auc(x[keep], strata[keep], bad[keep][None].astype(float), (~bad[keep])[None].astype(float))
    return float(a[0]), int(n[0])


def auc_test(x: np.ndarray, bad: np.ndarray, strata: np.ndarray, within: bool, ci: float, n_boot: int,
             rng: np.random.Generator) -> tuple[float, int, float, float, float]:
    """The AUC of ``x`` for an outcome with its interval and test.

    Args:
        x: the predictor per run (NaN left out).
        bad: whether each run had the outcome.
        strata: a label per run; pairs, shuffles and resamples stay inside one stratum when
            ``within``, else run over all runs.
        within: see ``strata``.
        ci: the coverage of the interval.
        n_boot: shuffles and resamples, each.
        rng: draws both.

    Returns:
        (AUC, pairs, lo, hi, p). p: two-sided permutation p-value of AUC = 0.5, the outcomes
        shuffled. (lo, hi): percentile bootstrap over runs; none when the AUC is 0 or 1 (the
        percentile bootstrap cannot leave it), when fewer than ``MIN_AUC_RUNS`` runs stand on
        either side of the pairs, or when most resamples lack a pair.
    """
    keep = ~np.isnan(x)
    x, bad = x[keep], bad[keep]
    strata = strata[keep] if within else np.zeros(len(x), int)
    a, n = auc(x, bad, strata)
    if not n:
        return a, n, np.nan, np.nan, np.nan
    cells = _cells(strata)
    mixed = [c for c in cells if 0 < bad[c].sum() < len(c)]
    shuffled = np.zeros((n_boot, len(x)))
    for c in mixed:
        shuffled[:, c] = bad[c][np.argsort(rng.random((n_boot, len(c))), axis=1)]
    null, _den = _weighted_auc(x, strata, shuffled, 1 - shuffled)
    p = (int(np.sum(np.abs(null - 0.5) >= abs(a - 0.5) - 1e-12)) + 1) / (n_boot + 1)
    used = np.concatenate(mixed)
    if a in (0.0, 1.0) or min(bad[used].sum(), (~bad[used]).sum()) < MIN_AUC_RUNS:
        return a, n, np.nan, np.nan, p
    counts = np.zeros((n_boot, len(x)))
    for c in cells:
        counts[:, c] = rng.multinomial(len(c), np.full(len(c), 1 / len(c)), size=n_boot)
    vals, den = _weighted_auc(x, strata, counts * bad, counts * ~bad)
    vals = vals[den > 0]
    if len(vals) < n_boot / 2:  # most resamples lack a pair: no interval
        return a, n, np.nan, np.nan, p
    return a, n, float(np.quantile(vals, (1 - ci) / 2)), float(np.quantile(vals, (1 + ci) / 2)), p
