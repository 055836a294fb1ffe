"""The spike detector on gradient-norm traces: what the trainer counts with (``n_spikes``) and
``analysis`` re-exports (no analysis import here: the trainer stays below the analysis layer).

A traced point is a spike when its log-norm jumps above the recent *trend*, not above a level:

    r_t      = log v_t − median(log v over the previous ``window`` steps)      (the residual)
    excess_t = r_t − median(previous residuals in the window)
    noise_t  = 1.4826 · median(|r_i − r_{i−1}| over the window) / √2   (robust to drifting r)
    spike    ⇔ excess_t ≥ log(factor)  and  excess_t ≥ z · noise_t

A steadily rising or falling norm has a steady residual, so its excess stays near 0; a jump of
``factor``× above the trend that also stands out of the residuals' own noise is flagged. The
window and the history are in optimizer **steps** (the ``step`` column), so one setting means the
same for ``trace_every`` 1 and 50; a point is judged once ``min_points`` earlier points lie in
its window. Defaults were chosen by measurement on labelled runs (``benchmarks/spike_validation.py``,
figures in ``benchmarks/RESULTS.md`` and ``docs/methodology.md``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SpikeParams:
    window: int = 100  # steps of history behind each point
    factor: float = 2.0  # the jump above the trend, as a ratio of norms
    z: float = 8.0  # ... and in robust standard deviations of the residuals
    min_points: int = 8  # earlier points in the window before a point is judged

    def __post_init__(self) -> None:
        if self.window < 1 or self.min_points < 2 or self.factor <= 1 or self.z <= 0:
            raise ValueError("SpikeParams: window >= 1 step, min_points >= 2, factor > 1, z > 0 "
                             f"(got {self})")


def _rolling_prev(s: pd.Series, window: int, min_points: int, fn: str) -> pd.Series:
    """``fn`` over the points of the previous ``window`` steps (the index is the step)."""
    t = pd.Series(s.to_numpy(), index=pd.to_timedelta(s.index.to_numpy(), unit="s"))
    r = t.rolling(f"{window}s", closed="left", min_periods=min_points)
    return pd.Series(getattr(r, fn)().to_numpy(), index=s.index)


def detect_spikes(values: Iterable[float], params: SpikeParams = SpikeParams(),
                  steps: Iterable[int] | None = None) -> np.ndarray:
    """Where a series spikes.

    Non-finite and non-positive values are never spikes (divergence is recorded separately) and
    are left out of the history.

    Args:
        values: the series (e.g. a layer's gradient norm per traced step).
        params: the detector's window and thresholds.
        steps: the step of each value (default 0, 1, 2 ...).

    Returns:
        A boolean mask: True where ``values[i]`` (at ``steps[i]``) is a spike.
    """
    v = np.asarray(list(values) if not isinstance(values, np.ndarray | pd.Series) else values, dtype=float)
    st = np.arange(len(v)) if steps is None else np.asarray(list(steps) if not isinstance(steps, np.ndarray | pd.Series) else steps)
    ok = np.isfinite(v) & (v > 0)
    if ok.sum() <= params.min_points:
        return np.zeros(len(v), dtype=bool)
    logv = pd.Series(np.log(v[ok]), index=st[ok])
    resid = logv - _rolling_prev(logv, params.window, params.min_points, "median")
    r = resid.dropna()
    med = _rolling_prev(r, params.window, params.min_points, "median")
    # The noise scale from successive differences (MAD of Δr / √2): a drifting trend offset,
    # as in the first window of a run, does not inflate it.
    noise = _rolling_prev(r.diff().abs(), params.window, params.min_points, "median") / np.sqrt(2)
    excess = r - med
    hit = (excess >= np.log(params.factor)) & (excess >= params.z * 1.4826 * noise)
    out = np.zeros(len(v), dtype=bool)
    idx = np.flatnonzero(ok)[resid.notna().to_numpy()]
    out[idx] = hit.fillna(False).to_numpy()
    return out


def count_spikes(steps: Iterable[Mapping] | pd.DataFrame, column: str = "grad_norm",
                 params: SpikeParams = SpikeParams()) -> int:
    """The number of spikes in a run's per-step trace.

    Args:
        steps: rows with ``step`` and ``column``.
        column: the series.
        params: the detector's.

    Returns:
        How many ``detect_spikes`` marks.
    """
    df = steps if isinstance(steps, pd.DataFrame) else pd.DataFrame(list(steps))
    if df.empty or column not in df:
        return 0
    df = df.sort_values("step")
    return int(detect_spikes(df[column].to_numpy(), params, df["step"].to_numpy()).sum())
