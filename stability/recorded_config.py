"""A recorded run's config, read back for ``stability train --run RUN_ID``: continue a pruned,
failed or preempted run of a grid (or repeat one) without writing its config out by hand.

The runs table is not trusted: its ``config_json`` is parsed as JSON (never unpickled) and
validated as any config is; ``results`` and ``sweep`` are where the run was found, never what its
row says; a recorded ``data_root`` is a path from the file, so it is shown, not used (the command
line gives it); and the config must hash to the run's own id, so a row altered to train something
else is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, shown

RUN_ID = re.compile(r"[0-9a-f]{12}")
# Recorded fields never taken from the row: where it lives (from where it was found) and paths.
NOT_TAKEN = ("results", "sweep", "data_root")


@dataclass(frozen=True)
class RecordedConfig:
    """A run's recorded config, as ``train --run`` takes it."""

    values: dict[str, Any]  # its fields less ``NOT_TAKEN``, with ``results``/``sweep`` of where it was found
    source: str  # names the row in errors
    data_root: str | None  # what the row says it read (shown in a message, never read from)


def recorded_config(root: str | Path, run_id: str, sweep: str | None = None) -> RecordedConfig:
    """The config a run was trained with, for ``train --run``.

    Args:
        root: the results root the run is under.
        run_id: the run's id (12 hex digits).
        sweep: its sweep, when the id is in several.

    Returns:
        The ``RecordedConfig``. ``ConfigError`` when the id is malformed, not found, in several
        sweeps, or its row holds no readable config.
    """
    from . import store

    if not RUN_ID.fullmatch(run_id):
        raise ConfigError(f"--run: {shown(run_id)} is not a run id (allowed: 12 lowercase hex digits, as `stability "
                          "report`, `grid status` and the dashboard's Runs page show them)")
    store.check_root(root)
    if not Path(root).is_dir():
        raise ConfigError(f"--run: no results root {root} (results=ROOT names the one the run is under)")
    rows = store.read_table(root, "runs", sweep=sweep, columns=["config_json"], run_ids=[run_id])
    if rows.empty:
        elsewhere = sorted(set(store.read_table(root, "runs", columns=[], run_ids=[run_id])["sweep"])) if sweep else []
        raise ConfigError(f"--run: no run {run_id} under {root}"
                          + (f" in sweep {sweep} (it is in: {', '.join(elsewhere)})" if elsewhere else
                             f"{f' in sweep {sweep}' if sweep else ''} (a run has a row once it ends, fails or "
                             "is preempted; a run still training has none; results=ROOT names another root)"))
    if rows["sweep"].nunique() > 1:
        names = ", ".join(sorted(rows["sweep"].unique()))
        raise ConfigError(f"--run: run {run_id} is in several sweeps ({names}): add sweep=NAME")
    found = str(rows["sweep"].iloc[-1])
    source = f"run {run_id}'s recorded config ({store.table_dir(root, 'runs', found)})"
    try:
        cfg = json.loads(rows["config_json"].iloc[-1])
    except (TypeError, ValueError, RecursionError):  # RecursionError: '{"a":' * 10**5 in a planted row
        cfg = None
    if not isinstance(cfg, dict):
        raise ConfigError("no readable config_json (written by an older version, or damaged)", source)
    values = {k: v for k, v in cfg.items() if k not in NOT_TAKEN}
    data_root = cfg.get("data_root")
    return RecordedConfig({**values, "results": str(root), "sweep": found}, source,
                    data_root if isinstance(data_root, str) else None)
