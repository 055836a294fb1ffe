"""Which columns group runs: the design axes a study varies on purpose (never pooled silently)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

# Axes a study varies on purpose that must never be pooled silently (lr, wd and seeds are the
# distribution itself and are never strata).
DESIGN_AXES = ("sweep", "size", "dataset", "optimizer", "epochs", "batch_size", "warmup_epochs")
# Columns that identify the same point of a paired design across stems.
PAIR_KEYS = ("sweep", "size", "dataset", "optimizer", "epochs", "batch_size", "warmup_epochs",
             "lr", "wd", "seed")


def with_size(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with a ``size`` column: the model without its stem (vit_c_tiny -> vit_tiny)."""
    if "size" in runs.columns or "model" not in runs.columns:
        return runs
    size = runs["model"].astype("string").str.replace(r"^vit_[pc]_", "vit_", regex=True)
    return runs.assign(size=size)


def strata(runs: pd.DataFrame, exclude: Sequence[str] = ("stem",)) -> list[str]:
    """The design axes that vary in ``runs``: the default grouping besides the stem."""
    df = with_size(runs)
    return [c for c in DESIGN_AXES if c in df.columns and c not in exclude
            and df[c].nunique(dropna=False) > 1]


def pooled(runs: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """Design axes that vary in ``runs`` but are not in ``by``: what a grouping pools."""
    return [c for c in strata(runs, exclude=()) if c not in by]
