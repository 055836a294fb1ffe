"""What a training run writes to the store as it goes: its runs row (rewritten at each change of
status) and its other rows, buffered and streamed as chunks (``store.append_rows``) at every epoch
end and before every checkpoint, so whatever a checkpoint covers is in the store already."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .. import store
from ..config import RunConfig
from ..store import RunStatus
from .checkpoint import RunState
from .distributed import Dist
from .provenance import timestamp
from .rows import run_row


@dataclass
class Record:
    """The runs row so far (identity, then set-up facts) and the state it is written from."""

    cfg: RunConfig
    d: Dist
    base: dict[str, Any]
    st: RunState
    t0: float  # when this process started the run: checkpoints carry the wall time so far

    def write(self, status: RunStatus, **extra: Any) -> dict[str, Any]:
        st = self.st
        row = run_row(**{**self.base, "status": str(status), "started_at": timestamp(st.started_at),
                         "init_val_loss": st.init_val_loss, "init_top1_err": st.init_top1_err,
                         "wall_time_s": st.wall_time_s + time.monotonic() - self.t0, **extra})
        if self.d.is_main:  # one writer per run, whatever the number of processes
            store.write_run(self.cfg.results, self.cfg.sweep, self.cfg.run_id, {"runs": [row]})
        return row


@dataclass
class Rows:
    """A run's rows not yet streamed to the store (every rank builds them, the main one writes)."""

    epochs: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    grads: list[dict] = field(default_factory=list)

    def stream(self, cfg: RunConfig, d: Dist, to_step: int) -> None:
        """Append the buffered rows (all before ``to_step``) to the store, and empty the buffer."""
        if d.is_main:
            store.append_rows(cfg.results, cfg.sweep, cfg.run_id, to_step,
                              {"epochs": self.epochs, "steps": self.steps, "grad_norms": self.grads})
        self.epochs, self.steps, self.grads = [], [], []
