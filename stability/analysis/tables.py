"""A study's table as data: its rows, the columns that name each row's group, and what it left
out, in words; and the one way groups are named in the report and the dashboard.

The LR-sensitivity and attention-logit studies (``sensitivity``, ``attention``) return a ``Table``
rather than a bare DataFrame: their group axes vary with the runs (every fixed hyper-parameter
that varies is one), so consumers read them from ``Table.by`` instead of guessing them from the
column order, and the note travels as a field (``DataFrame.attrs`` is dropped by many pandas
operations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

SERIES = ("stem", "fix")  # the lines inside a group of runs equal in everything but lr and seed


@dataclass(frozen=True, eq=False)  # eq would compare DataFrames elementwise: identity instead
class Table:
    """A study's result.

    Attributes:
        table: one row per group (and line, seed, threshold ... as the function says).
        by: the columns that name a row's group, in order: the group axes, then any line held
            fixed (what ``row_group`` names).
        note: what was left out, or why ``table`` is empty ("" when nothing).
        pooled: the axes pooled on purpose (``pool=``) that varied.
    """

    table: pd.DataFrame
    by: tuple[str, ...] = ()
    note: str = ""
    pooled: tuple[str, ...] = ()


def noted(table: pd.DataFrame, by: Sequence[str], *notes: str, pooled: Sequence[str] = ()) -> Table:
    """A ``Table`` with its notes.

    Args:
        table: the rows.
        by: the columns naming each row's group.
        notes: what was left out, in words ("" ones are skipped).
        pooled: the axes pooled on purpose that varied.

    Returns:
        The ``Table``, its note the non-empty ``notes`` joined by spaces.
    """
    return Table(table, tuple(by), " ".join(n for n in notes if n), tuple(pooled))


def missing_columns(df: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    """The columns a study needs that results lack.

    Args:
        df: a table.
        cols: the columns needed.

    Returns:
        Those of ``cols`` that ``df`` lacks or holds only nulls in.
    """
    return [c for c in cols if c not in df.columns or df[c].isna().all()]


def older_results(cols: Sequence[str], what: str) -> str:
    """The note of a study whose columns are absent.

    Args:
        cols: the missing columns (``missing_columns``).
        what: the study.

    Returns:
        The sentence: results written before they were recorded; rerun with the current trainer.
    """
    return (f"No {', '.join(cols)} in these results (written before they were recorded, or no "
            f"finished run): {what} needs them; rerun the runs with the current trainer.")


def value_text(v) -> str:
    """A value of a group axis as the report and dashboard print it.

    Args:
        v: the value.

    Returns:
        Floats (lr, wd ...) with 3 significant digits, everywhere the same; "n/a" for a missing one.

    >>> value_text(0.0014142), value_text(None), value_text("conv")
    ('0.00141', 'n/a', 'conv')
    """
    if v is None or (isinstance(v, float | np.floating) and np.isnan(v)):
        return "n/a"
    if isinstance(v, float | np.floating):
        return f"{float(v):.3g}"
    return str(v)


def group_text(values: dict) -> str:
    """A group named by its axes.

    Args:
        values: axis -> value, in order.

    Returns:
        "sweep s, wd 0.00141, stem conv" ("all runs" when there is no axis).

    >>> group_text({"sweep": "s", "wd": 0.0014142})
    'sweep s, wd 0.00141'
    """
    return ", ".join(f"{k} {value_text(v)}" for k, v in values.items()) or "all runs"


BARE_AXES = ("sweep", "optimizer", "stem", "dataset")  # their values say what they are: no name needed


def stratum_text(values: dict) -> str:
    """A stratum as a figure's panel title names it: short, every number with its axis (a
    sentence or bullet names it with ``group_text``).

    Args:
        values: axis -> value, in order.

    Returns:
        "smoke · adamw · 5 ep · warmup_epochs 0.5": the sweep, optimizer, stem and dataset bare,
        epochs as "N ep", any other axis by name ("" when there is no axis).

    >>> stratum_text({"sweep": "smoke", "optimizer": "adamw", "epochs": 5, "warmup_epochs": 0.5})
    'smoke · adamw · 5 ep · warmup_epochs 0.5'
    """
    return " · ".join(value_text(v) if k in BARE_AXES else f"{_count(v)} ep" if k == "epochs"
                      else f"{k} {value_text(v)}" for k, v in values.items())


def telling_axes(keys: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """The axes that tell groups apart, for a short name: an axis whose value the axes before
    it already fix (two sweeps that differ in batch size and warm-up too) adds nothing to it.

    Args:
        keys: one row per group, its values of ``axes``.
        axes: the group axes, in order (the first that tells groups apart is kept).

    Returns:
        The axes kept, in order.

    >>> telling_axes(pd.DataFrame({"sweep": ["a", "a", "b"], "batch": [8, 8, 16], "epochs": [1, 2, 1]}),
    ...              ["sweep", "batch", "epochs"])
    ['sweep', 'epochs']
    """
    kept: list[str] = []
    seen = 1
    for a in axes:
        n = len(keys[[*kept, a]].drop_duplicates())
        if n > seen:
            kept, seen = [*kept, a], n
    return kept


NAMED_AXES = ("sweep", "optimizer", "epochs")  # a group is named by these wherever they vary


def named_axes(rows: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """The axes a group of ``rows`` is named by: the sweep, optimizer and length where they vary,
    then the axes that still tell groups apart (``telling_axes``: not every setting of two sweeps).

    Args:
        rows: a table holding the axes (one row per group, or the runs themselves).
        axes: the group axes, in order (those ``rows`` lacks are skipped).

    Returns:
        The axes kept, in order.

    >>> named_axes(pd.DataFrame({"sweep": ["a", "b"], "batch": [8, 16], "epochs": [1, 2]}),
    ...            ["sweep", "batch", "epochs"])
    ['sweep', 'epochs']
    """
    axes = [a for a in axes if a in rows.columns]
    telling = telling_axes(rows, axes)
    return [a for a in axes if a in telling or (a in NAMED_AXES and rows[a].nunique(dropna=False) > 1)]


def _count(v) -> str:
    """A count as an integer where it is one (1600.0 epochs: "1600", not "1.6e+03")."""
    return str(int(v)) if isinstance(v, float | np.floating) and float(v).is_integer() else value_text(v)


def groups_of(df: pd.DataFrame, cols: Sequence[str], limit: int = 6) -> str:
    """The groups the rows of a table fall in, for a note.

    Args:
        df: the rows (runs left out, say).
        cols: the columns naming a group (``naming_columns``).
        limit: groups named before "… (n groups in all)".

    Returns:
        "group: count" items joined by "; " ("" for no row).
    """
    if df.empty:
        return ""
    if not cols:
        return f"all runs: {len(df)}"
    counts = df.groupby(list(cols), observed=True, dropna=False, sort=True).size()
    items = [f"{group_text(dict(zip(cols, k if isinstance(k, tuple) else (k,), strict=True)))}: {n}"
             for k, n in counts.items()]
    more = f" … ({len(items)} groups in all)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def naming_columns(df: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """The columns that name a run's group and line.

    Args:
        df: the runs.
        axes: the group axes.

    Returns:
        The sweep (even when it does not vary), the group axes, stem and fix (those present).
    """
    return [*[c for c in ("sweep",) if c in df.columns and c not in axes], *axes,
            *[c for c in SERIES if c in df.columns]]


def row_group(row: pd.Series | dict, by: Sequence[str]) -> str:
    """The group of a row of a ``Table``.

    Args:
        row: a row of ``Table.table`` (a Series or a dict).
        by: ``Table.by``.

    Returns:
        Its ``by`` values named by ``group_text``, then what it pools (its ``pooled`` column).

    >>> row_group({"sweep": "s", "fix": "none", "a": "conv", "pooled": "wd"}, ("sweep", "fix"))
    'sweep s, fix none (pooled over wd)'
    """
    text = group_text({c: row[c] for c in by if c != "run_id"})
    pooled = row.get("pooled", "") if hasattr(row, "get") else ""
    if isinstance(pooled, str) and pooled:
        text += f" (pooled over {pooled.replace(',', ', ')})"
    return text


def interval_text(lo: float, hi: float, fmt: str = "+.3g") -> str:
    """An interval as the report and dashboard print it.

    Args:
        lo, hi: the bounds.
        fmt: their format.

    Returns:
        "[lo, hi]", or "[n/a]" where the interval is undefined (as ``stems.verdict_line``).

    >>> interval_text(-0.1234, 0.5), interval_text(float("nan"), 1.0)
    ('[-0.123, +0.5]', '[n/a]')
    """
    if pd.isna(lo) or pd.isna(hi):
        return "[n/a]"
    return f"[{lo:{fmt}}, {hi:{fmt}}]"


def group_columns(df: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """A study's ``Table.by`` for rows of runs.

    Args:
        df: the runs.
        axes: the group axes (``grouping.fixed_axes``).

    Returns:
        The sweep first (where the runs have one, even when it does not vary: every group is
        named with it), then the other group ``axes``.
    """
    return [*(["sweep"] if "sweep" in df.columns else []), *[a for a in axes if a != "sweep"]]
