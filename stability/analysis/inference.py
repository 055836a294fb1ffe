"""Tests, intervals and power for verdicts over replicated seeds (pure numpy/scipy).

The rules (sources in docs/methodology.md, "Verdicts"):

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
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product

import numpy as np

EXACT_MAX_K = 16  # 2^16 sign patterns enumerated; above, Monte Carlo with N_PERM draws
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
    """(mean, lo, hi): the two-sided ``ci`` t interval of the mean of ``d`` (NaN bounds for k < 2)."""
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
    """Holm (1979) adjusted p-values, in the input order: sorted ascending, p_(i) * (m - i + 1),
    made monotone and capped at 1. Rejecting where adjusted p <= alpha is Holm's step-down rule.
    NaN entries are left out of the family and stay NaN."""
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
    """The smallest one-sided p an exact sign-flip test over k seeds can give: 2^-k."""
    return 2.0 ** -k


def seeds_needed(alpha_first: float) -> int:
    """The fewest seeds k with 2^-k <= ``alpha_first`` (the level the smallest p of a Holm
    family must reach: alpha / m)."""
    return int(np.ceil(-np.log2(alpha_first)))


def mde(sd: float, k: int, alpha: float = 0.025, power: float = 0.8) -> float:
    """Minimum detectable effect of a one-sided paired test over ``k`` seeds with per-seed
    difference SD ``sd``: (t_{1-alpha,k-1} + t_{power,k-1}) * sd / sqrt(k); ``inf`` when the
    exact sign-flip test cannot reach ``alpha`` at all (2^-k > alpha) or k < 2."""
    from scipy import stats

    if k < 2 or min_sign_flip_p(k) > alpha or not np.isfinite(sd):
        return float("inf")
    return float((stats.t.ppf(1 - alpha, k - 1) + stats.t.ppf(power, k - 1)) * sd / np.sqrt(k))


def sign_flip_power(effect: float, sd: float, k: int, alpha: float, n_sim: int = 4000, seed: int = 0) -> float:
    """Power of the one-sided exact sign-flip test at level ``alpha`` over ``k`` seeds when the
    per-seed contrasts are normal with mean ``effect`` and SD ``sd`` (Monte Carlo, seeded)."""
    if k < 1 or min_sign_flip_p(k) > alpha:
        return 0.0
    rng = np.random.default_rng(seed)
    d = effect + sd * rng.standard_normal((n_sim, k))
    signs = _signs(k, rng, N_PERM)
    means = d @ signs.T / k  # (n_sim, patterns)
    p = (means >= d.mean(1, keepdims=True) - 1e-12).mean(1)
    return float((p <= alpha).mean())


def sd_upper(sd: float, k: int, conf: float = 0.8) -> float:
    """The one-sided ``conf`` upper confidence bound of a normal SD from the sample SD of k values:
    sd * sqrt((k - 1) / chi2_{1-conf, k-1}). An MDE from the sample SD alone is optimistic at small
    k (the sample SD of 6 values is below the true one more often than not)."""
    from scipy import stats

    if k < 2 or not np.isfinite(sd):
        return float("nan")
    return float(sd * np.sqrt((k - 1) / stats.chi2.ppf(1 - conf, k - 1)))


def mde_sign_flip(sd: float, k: int, alpha: float = 0.025, power: float = 0.8) -> float:
    """The smallest mean contrast the exact sign-flip test over ``k`` seeds detects with
    ``power`` at one-sided level ``alpha``, for normal contrasts of SD ``sd`` (``sign_flip_power``
    by bisection, in units of sd); ``inf`` when no result can reach ``alpha`` (2^-k > alpha) or
    sd is not finite. (k = 6 at 0.025: only "all six positive" passes, so the MDE is 1.79 sd.)"""
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
            (each point's two errors swapped with probability 1/2).
        seed: of both.
        bounds: the statistic's range, to clip the band to (e.g. (-1, 1) for a difference of
            fractions).

    Returns:
        ``PairedBest`` with the band (descriptive where the statistic is relative to a best:
        the bootstrap of an extreme is inconsistent) and one-sided permutation p per x in each
        direction (the observed labelling included, so p >= 1 / (n_perm + 1)).
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
    perms = np.array([stat(np.where(swap, b, a), np.where(swap, a, b))
                      for swap in (rng.random(n) < 0.5 for _ in range(n_perm))], float).reshape(n_perm, -1)
    hits, low = 1 + (perms >= obs - 1e-12).sum(0), 1 + (perms <= obs + 1e-12).sum(0)
    null_sd = perms.std(0, ddof=1) if n_perm > 1 else np.full_like(obs, np.nan)
    lo, hi = (np.clip(v, *bounds) for v in (obs - half, obs + half)) if bounds else (obs - half, obs + half)
    return PairedBest(np.asarray(x, float), obs, lo, hi, hits / (n_perm + 1), low / (n_perm + 1), null_sd, n, perms)


def smallest_passing(null: np.ndarray, level: float) -> float:
    """The smallest statistic a one-sided permutation test with these null draws calls
    significant at ``level`` ((1 + #(null >= t)) / (len(null) + 1) <= level), ``inf`` when no
    value can (too few distinct label patterns, or too few draws)."""
    null = np.sort(np.asarray(null, float))[::-1]
    allowed = int(np.floor(level * (len(null) + 1))) - 1  # null draws that may lie at or above t
    if allowed < 0:
        return float("inf")
    if allowed >= len(null):
        return float("-inf")
    # t must exceed the (allowed + 1)-th largest draw (ties at t count against it)
    return float(np.nextafter(null[allowed], np.inf))


def correct_of(packed: bytes, n: int) -> np.ndarray:
    """The per-image correctness a run stored (``test_correct``: ``np.packbits``) as n booleans."""
    bits = np.unpackbits(np.frombuffer(bytes(packed), np.uint8))
    if len(bits) < n or len(bits) - n >= 8:
        raise ValueError(f"correct_of: {len(packed)} bytes do not hold {n} images")
    return bits[:n].astype(bool)


def mcnemar_runs(a, b, column: str = "test_correct") -> McNemar:
    """``mcnemar_exact`` of two runs rows (runs table) on their stored test-split correctness."""
    n = int(a["test_images"])
    if int(b["test_images"]) != n:
        raise ValueError(f"mcnemar_runs: {n} vs {int(b['test_images'])} test images (not the same split)")
    return mcnemar_exact(correct_of(a[column], n), correct_of(b[column], n))
