"""Spikes over many runs: per-layer marks and counts, and the first-layer lead (MoCo v3). The
detector itself (and its rule) lives in :mod:`stability.detector`, which the trainer uses too."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..detector import SpikeParams, count_spikes, detect_spikes
from .grouping import require

__all__ = ["SpikeParams", "count_spikes", "detect_spikes", "downsample", "first_layer_lead", "mark_spikes",
           "spike_counts"]


def mark_spikes(trace: pd.DataFrame, value: str = "grad_norm", keys: Sequence[str] = ("sweep", "run_id", "layer"),
                params: SpikeParams = SpikeParams()) -> pd.DataFrame:
    """Spikes marked in every series of a trace.

    Args:
        trace: rows of run_id, layer, step and ``value``.
        value: the series column.
        keys: the columns of one series (the same config run in two sweeps has one run id and
            two series).
        params: the detector's.

    Returns:
        ``trace`` with a boolean ``spike`` column, each series judged on its own, in step order.
    """
    require(trace, ["step", value], "grad_norms" if value == "grad_norm" else "steps")
    keys = [k for k in keys if k in trace.columns]
    out = trace.sort_values([*keys, "step"]).reset_index(drop=True)
    mask = np.zeros(len(out), dtype=bool)
    if len(out):
        groups = out.groupby(keys, observed=True, sort=False).indices if keys else {None: np.arange(len(out))}
        values, steps = out[value].to_numpy(), out["step"].to_numpy()
        for idx in groups.values():
            mask[idx] = detect_spikes(values[idx], params, steps[idx])
    out["spike"] = mask
    return out


def spike_counts(grad_norms: pd.DataFrame, params: SpikeParams = SpikeParams()) -> pd.DataFrame:
    """Spikes per run and layer.

    Args:
        grad_norms: the grad_norms table.
        params: the detector's.

    Returns:
        (sweep,) run_id, layer, depth, ``n_spikes``, ``n_points``.
    """
    marked = mark_spikes(grad_norms, params=params)
    cols = [c for c in ("sweep", "run_id", "layer", "depth") if c in marked.columns]
    g = marked.groupby(cols, observed=True)["spike"]
    return g.agg(n_spikes="sum", n_points="size").reset_index()


def first_layer_lead(grad_norms: pd.DataFrame, params: SpikeParams = SpikeParams(),
                     max_lag: int = 50, n_shuffle: int = 200, seed: int = 0) -> pd.DataFrame:
    """Do first-layer spikes come shortly before last-layer ones, more often than chance?

    MoCo v3 saw the patch projection spike some iterations first. For each last-layer (max depth)
    spike: the nearest first-layer (min depth) spike strictly before it, at most ``max_lag``
    steps earlier (a lead of 0, the same step, is not a lead).

    Args:
        grad_norms: the grad_norms table.
        params: the detector's.
        max_lag: steps.
        n_shuffle: random placements of the first-layer spikes for the baseline.
        seed: of the placements.

    Returns:
        One row per run: ``led``, the fraction of last-layer spikes so led; ``baseline``, the same
        fraction with the first-layer spike steps placed at random among the traced steps (mean
        over ``n_shuffle``); ``p``, the share of shuffles that reach the observed fraction. Runs
        whose last layer has no spike are listed with ``n_last`` 0 so an empty verdict is visible,
        not silent.
    """
    marked = mark_spikes(grad_norms, params=params)
    rng = np.random.default_rng(seed)
    keys = [c for c in ("sweep", "run_id") if c in marked.columns]
    rows = []
    for key, g in marked.groupby(keys, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        first, last = g["depth"].min(), g["depth"].max()
        traced = np.sort(g.loc[g["depth"] == first, "step"].unique())
        fs = np.sort(g.loc[(g["depth"] == first) & g["spike"], "step"].to_numpy())
        ls = np.sort(g.loc[(g["depth"] == last) & g["spike"], "step"].to_numpy())
        row = dict(zip(keys, key, strict=True)) | {"n_first": len(fs), "n_last": len(ls), "led": np.nan,
                                                   "median_lead": np.nan, "baseline": np.nan, "p": np.nan}
        if len(ls):
            leads = _leads(fs, ls, max_lag)
            row["led"] = float(np.isfinite(leads).mean())
            row["median_lead"] = float(np.nanmedian(leads)) if np.isfinite(leads).any() else np.nan
            if len(fs) and len(traced) > len(fs):
                shuffled = np.array([np.isfinite(_leads(np.sort(rng.choice(traced, len(fs), replace=False)),
                                                        ls, max_lag)).mean() for _ in range(n_shuffle)])
                row["baseline"] = float(shuffled.mean())
                row["p"] = float((1 + (shuffled >= row["led"]).sum()) / (1 + n_shuffle))
        rows.append(row)
    return pd.DataFrame(rows, columns=[*keys, "n_first", "n_last", "led", "median_lead", "baseline", "p"])


def _leads(first_steps: np.ndarray, last_steps: np.ndarray, max_lag: int) -> np.ndarray:
    """For each last-layer step: steps since the nearest earlier first-layer step (NaN if none
    within ``max_lag``)."""
    i = np.searchsorted(first_steps, last_steps, side="left") - 1
    prev = np.where(i >= 0, first_steps[np.clip(i, 0, None)] if len(first_steps) else 0, -np.inf)
    lead = last_steps - prev
    return np.where((lead >= 1) & (lead <= max_lag), lead, np.nan).astype(float)


def downsample(trace: pd.DataFrame, max_points: int = 2000, keys: Sequence[str] = ("sweep", "run_id", "layer"),
               value: str = "grad_norm") -> pd.DataFrame:
    """A trace thinned for plotting, no spike lost.

    Args:
        trace: rows of a series (``keys``), step and ``value``.
        max_points: about this many rows per series.
        keys: the columns of one series.
        value: the series column.

    Returns:
        Per bucket of steps the rows with the min and max value, and every row marked ``spike``.
    """
    keys = [k for k in keys if k in trace.columns]
    parts = []
    for _, g in (trace.groupby(keys, observed=True, sort=False) if keys else [(None, trace)]):
        g = g.sort_values("step")
        if len(g) <= max_points:
            parts.append(g)
            continue
        bucket = np.arange(len(g)) * (max_points // 2) // len(g)
        v = g[value].to_numpy()
        s = pd.Series(v, index=g.index)
        keep = set(s.groupby(bucket).idxmin()) | set(s.groupby(bucket).idxmax())
        if "spike" in g.columns:
            keep |= set(g.index[g["spike"].to_numpy()])
        parts.append(g.loc[sorted(keep, key=g.index.get_loc)])
    return pd.concat(parts) if parts else trace.iloc[:0]
