"""The run's pruner in the trainer: built from the config (its history read back from the store
on a resume), judged at each flush, and what a pruned run records.

A pruned run saves a checkpoint and is recorded as ``pruned`` with the rule, step and signal
values that fired. ``--rerun`` continues it from that checkpoint with the pruner off (the user
disagreed); the row it ends with keeps the verdict it overruled, so such runs measure the pruner.
A later ``--rerun`` of it (from scratch: its checkpoint is gone) keeps the pruner off too.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from .. import store
from ..config import RunConfig
from ..pruner import RunPruner, Verdict, parse
from .checkpoint import RunState


class Pruned(Exception):  # noqa: N818 - a stop, like Preempted
    """Raised by the loop when the run's pruner says it is doomed."""

    def __init__(self, verdict: Verdict):
        super().__init__(f"pruned at step {verdict.step} by rule {verdict.rule}")
        self.verdict = verdict


def make_pruner(cfg: RunConfig, st: RunState, total_steps: int, n_classes: int) -> RunPruner | None:
    """The run's pruner, or None (no ``pruner``, or a rerun continuing past its verdict). On a
    resume its signals so far are the store's rows of this run before the checkpoint's step (every
    rank reads them, so the ranks of a distributed run judge the same history)."""
    if cfg.pruner is None or st.pruned is not None:
        return None
    p = RunPruner(replace(parse(cfg.pruner), divergence_factor=cfg.divergence_factor), total_steps, n_classes)
    if st.step:
        for table, add in (("steps", p.signals.add_steps), ("grad_norms", p.signals.add_traces)):
            rows = store.read_table(cfg.results, table, sweep=cfg.sweep, run_ids=[cfg.run_id])
            if rows is not None and len(rows):
                add(rows[rows.step < st.step].sort_values("step").to_dict("records"))
    return p


def overruled_verdict(cfg: RunConfig) -> dict[str, Any] | None:
    """For a ``--rerun`` that starts from scratch: the pruner's verdict the run's row records (it
    was pruned, or continued past one), so the pruner stays off as the user asked and the new row
    keeps that verdict; None when there is none (or no pruner). Read by every rank, as the
    pruner's history is, so all ranks build the same pruner."""
    if cfg.pruner is None:
        return None
    rows = store.read_table(cfg.results, "runs", sweep=cfg.sweep, run_ids=[cfg.run_id],
                            columns=["pruned_at_step", "prune_rule", "prune_signals"])
    if rows is None or rows.empty or rows["pruned_at_step"].isna().iloc[-1]:
        return None
    last = rows.iloc[-1]
    signals = last["prune_signals"]
    return {"step": int(last["pruned_at_step"]), "rule": str(last["prune_rule"]),
            "signals": signals if isinstance(signals, str) else "{}"}


def verdict_columns(st: RunState) -> dict[str, Any]:
    """The runs row's pruner columns: the verdict the run was stopped (or overruled) with."""
    v = st.pruned
    return {} if v is None else {"pruned_at_step": v["step"], "prune_rule": v["rule"], "prune_signals": v["signals"]}


def pruned_result(st: RunState, verdict: Verdict, last_epoch: dict[str, Any] | None,
                  last_loss: float | None) -> dict[str, Any]:
    """A pruned run's runs-row results: its last validation error (the error at init before its
    first epoch ended), its lowest, the last training loss; the verdict in ``st.pruned``."""
    st.pruned = {"rule": verdict.rule, "step": verdict.step, "signals": verdict.signals_json()}
    err = last_epoch["val_top1_err"] if last_epoch else st.init_top1_err
    return {"top1_err": err, "top5_err": last_epoch["val_top5_err"] if last_epoch else None,
            "best_top1_err": st.best_top1_err if st.best_top1_err is not None else err,
            "final_train_loss": last_loss if last_loss is None or math.isfinite(last_loss) else None,
            **verdict_columns(st)}
