"""One builder per results table: the only place a row's dict is spelt (trainer, tracer and
provenance all call these). Each builder's keywords are its table's columns in ``store.SCHEMAS``
(checked at import: a column added to a schema without its builder fails loudly here)."""

from __future__ import annotations

import inspect
from typing import Any

from ..store import SCHEMAS


def run_row(**columns: Any) -> dict[str, Any]:
    """A (partial) runs row: the runs table has ~50 columns, filled in pieces (identity before
    training, status and results after), so it takes any of them, and only them, by name."""
    unknown = sorted(set(columns) - set(SCHEMAS["runs"].names))
    if unknown:
        raise ValueError(f"runs: unknown column(s) {', '.join(unknown)}")
    return columns


def epoch_row(*, run_id: str, epoch: int, train_loss: float, train_top1_err: float, val_top1_err: float,
              val_top5_err: float, val_ema_top1_err: float | None, val_ema_top5_err: float | None,
              val_loss: float | None, lr: float | None, time_s: float) -> dict[str, Any]:
    """One epoch's validation and training summary."""
    return dict(locals())


def step_row(*, run_id: str, step: int, epoch: int, loss: float, lr: float, grad_norm: float,
             log_z: float | None) -> dict[str, Any]:
    """One optimizer step: loss, lr, total grad norm, mean log Z."""
    return dict(locals())


def grad_row(*, run_id: str, step: int, layer: str, depth: int, grad_norm: float,
             param_norm: float | None = None, update_ratio: float | None = None, grad_rms: float | None = None,
             update_rms: float | None = None, attn_logit_max: float | None = None,
             attn_entropy: float | None = None) -> dict[str, Any]:
    """One layer at one traced step (a diverged step's untraced layers: grad norms only)."""
    return dict(locals())


def _check_builders() -> None:
    """Each builder covers its schema exactly (``schema_version`` is the store's to set)."""
    for table, fn in (("epochs", epoch_row), ("steps", step_row), ("grad_norms", grad_row)):
        want = [c for c in SCHEMAS[table].names if c != "schema_version"]
        have = list(inspect.signature(fn).parameters)
        if have != want:
            raise AssertionError(f"rows.{fn.__name__} takes {have}, but SCHEMAS[{table!r}] has {want}")


_check_builders()
