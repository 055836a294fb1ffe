"""Controller costs: planning 100,000 configs, ``grid status`` over 10,000 finished runs, the
start-of-run check for unreadable result files over 10,000 uncompacted runs, and the
orchestration overhead of a local grid of 50 very short runs.

    python benchmarks/controller.py [--plan-n 100000] [--status-n 10000] [--grid-n 50]
    python benchmarks/controller.py --grid-only --grid-n 12 --grid-steps 40   # longer runs
    python benchmarks/controller.py --footer-only [--footer-n 10000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, timed  # noqa: E402

from stability import store  # noqa: E402
from stability.grid.controller import status_report  # noqa: E402
from stability.grid.plan import plan_frame  # noqa: E402
from stability.grid.samplers import make_plan  # noqa: E402
from stability.grid.spec import load_spec  # noqa: E402
from stability.grid.state import save_plan  # noqa: E402

ROOT = Path(__file__).parents[1]


def spec_file(d: Path, name: str, n: int, executor: dict, base: dict | None = None) -> Path:
    spec = {"name": name, "base": {"dataset": "digits", "model": "vit_tiny", "epochs": 1, **(base or {})},
            "space": {"stem": ["patchify", "conv"], "lr": {"loguniform": [1e-4, 1e-2]},
                      "wd": {"loguniform": [1e-3, 1.0]}},
            "sampler": {"name": "random", "n": n, "seed": 0}, "executor": executor, "results": str(d / "results")}
    p = d / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan-n", type=int, default=100_000)
    ap.add_argument("--status-n", type=int, default=10_000)
    ap.add_argument("--grid-n", type=int, default=50)
    ap.add_argument("--grid-steps", type=int, default=2, help="steps per run of the local grid")
    ap.add_argument("--grid-only", action="store_true")
    ap.add_argument("--footer-n", type=int, default=10_000, help="uncompacted runs for the unreadable-file check")
    ap.add_argument("--footer-only", action="store_true")
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="stab-ctl-"))
    lines = ["| what | value | goal | met |", "|---|---|---|---|"]
    if args.footer_only:
        footer_check(d, args.footer_n, lines)
        append_results("Controller: unreadable-file check (benchmarks/controller.py --footer-only)", lines)
        return
    t_plan = t_status = None
    if not args.grid_only:
        t_plan, t_status = plan_and_status(d, args, lines)
    grid(d, args, lines, t_plan, t_status)
    append_results("Controller (benchmarks/controller.py)", lines)


def median_time(fn, *args, n: int = 3):
    """Median of ``n`` timings (this machine's speed wanders), and the last result."""
    times, out = [], None
    for _ in range(n):
        t, out = timed(fn, *args)
        times.append(t)
    return sorted(times)[n // 2], out, times


def plan_and_status(d: Path, args, lines: list[str]) -> tuple[float, float]:
    big = load_spec(spec_file(d, "plan", args.plan_n // 2, {"kind": "local"}))
    t_plan, plan, ts = median_time(make_plan, big)
    lines.append(f"| plan {len(plan):,} configs (random sampler, 2 stems; median of {', '.join(f'{t:.2f}' for t in ts)}) "
                 f"| {t_plan:.2f} s | < 2 s | {'yes' if t_plan < 2 else 'no'} |")

    st_spec = load_spec(spec_file(d, "status", args.status_n // 2, {"kind": "local"}))
    st_plan = make_plan(st_spec)
    save_plan(st_spec.sweep_dir, plan_frame(st_plan))
    rows = pd.DataFrame({"run_id": [r.run_id for r in st_plan], "status": "completed", "stem": [r.stem for r in st_plan],
                         "optimizer": "adamw", "epochs": 1, "top1_err": 50.0, "wall_time_s": 10.0})
    (Path(st_spec.results) / "runs" / "sweep=status").mkdir(parents=True)
    store.to_arrow("runs", rows)
    import pyarrow.parquet as pq
    pq.write_table(store.to_arrow("runs", rows), Path(st_spec.results) / "runs/sweep=status/part-0.parquet")
    t_status, rep, ts = median_time(status_report, st_spec)
    assert rep["counts"]["completed"] == len(st_plan)
    lines.append(f"| `grid status` over {len(st_plan):,} finished runs (compacted; median of "
                 f"{', '.join(f'{t:.2f}' for t in ts)}) | {t_status:.2f} s | < 1 s | {'yes' if t_status < 1 else 'no'} |")
    return t_plan, t_status


def footer_check(d: Path, n: int, lines: list[str]) -> None:
    """What a controller start pays to find unreadable result files (``store.unreadable`` reads
    every parquet footer of the sweep): ``n`` runs, each with its own file in all four tables."""
    import shutil

    import pyarrow.parquet as pq

    one = {t: d / f"one-{t}.parquet" for t in store.TABLES}
    for t, p in one.items():
        pq.write_table(store.to_arrow(t, [{"run_id": "x"}]), p)
    for t in store.TABLES:
        folder = store.table_dir(d / "results", t, "footers")
        folder.mkdir(parents=True)
        for i in range(n):
            shutil.copyfile(one[t], folder / f"{i:012x}.parquet")
    root = d / "results"
    record = store.sweep_dir(root, "footers") / store.READABLE
    record.parent.mkdir(parents=True)

    def first_check():  # no record of an earlier check: every footer is read
        record.unlink(missing_ok=True)
        return store.unreadable(root, "footers")

    t_first, bad, ts = median_time(first_check)
    assert bad == []
    t_again, bad, ts_again = median_time(store.unreadable, root, "footers")  # the record of the last one
    assert bad == []
    for t in store.TABLES:  # 1% of the runs written since: their files are new
        for i in range(n // 100):
            shutil.copyfile(one[t], store.table_dir(root, t, "footers") / f"new{i:09x}.parquet")
    t_new, bad = timed(store.unreadable, root, "footers")
    assert bad == []
    for what, t_check, times in (
            (f"first check (no record): {n:,} uncompacted runs x 4 tables = {4 * n:,} footers", t_first, ts),
            ("the next check (record of the last: stat only)", t_again, ts_again),
            (f"a check after {n // 100:,} more runs ({4 * (n // 100):,} new files)", t_new, [t_new])):
        lines.append(f"| {what} (warm page cache; {', '.join(f'{x:.2f}' for x in times)} s) | {t_check:.2f} s "
                     f"({1e6 * t_check / (4 * n):.0f} µs per file) | < 5 s | {'yes' if t_check < 5 else 'no'} |")


def grid(d: Path, args, lines: list[str], t_plan: float | None, t_status: float | None) -> None:
    g = spec_file(d, "short", args.grid_n // 2, {"kind": "local", "max_parallel": 2},
                  base={"steps_per_epoch": args.grid_steps, "batch_size": 16, "trace_every": 1})
    t_launch, t = time.time(), time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "stability", "grid", "run", str(g), "--quiet"],
                         cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    t_end = time.time()
    assert out.returncode == 0, out.stderr
    runs = store.read_table(d / "results", "runs", sweep="short")
    slots = 2
    own = runs.wall_time_s.sum() / slots
    overhead = wall / own - 1
    starts = sorted(ts.timestamp() for ts in runs.started_at)
    ends = sorted(ts.timestamp() for ts in runs.finished_at)
    first = starts[0] - t_launch  # command start -> first run's clock starts
    tail = t_end - ends[-1]  # last run's clock stops -> command exits
    gaps = [starts[k] - ends[k - slots] for k in range(slots, len(starts))]  # a freed slot -> its next run
    lines.append(f"| local grid of {len(runs)} runs of {args.grid_steps} steps ({own * slots / len(runs):.1f} s each): wall {wall:.1f} s "
                 f"vs their own time / {slots} slots {own:.1f} s | {100 * overhead:+.1f}% | < 5% | "
                 f"{'yes' if overhead < 0.05 else 'no'} |")
    lines += ["", f"Where the grid's extra {wall - own:.1f} s went: {first:.1f} s from the command's start to the "
                  f"first run's clock (Python, the controller's imports and, in parallel, the launcher's one "
                  f"torch import), a median {1000 * sorted(gaps)[len(gaps) // 2]:.0f} ms (max "
                  f"{1000 * max(gaps):.0f} ms) between a run's end and the next run's start in its slot "
                  f"({len(gaps)} refills), {tail:.1f} s from the last run's end to the command's exit. A run's own "
                  "time (`wall_time_s`) is its `train()` call: data, model, steps, evaluation, writes.",
              f"raw: {json.dumps({'plan_s': t_plan, 'status_s': t_status, 'grid_wall_s': round(wall, 2), 'runs_own_s_per_slot': round(own, 2), 'first_start_s': round(first, 2), 'tail_s': round(tail, 2), 'median_refill_s': round(sorted(gaps)[len(gaps) // 2], 3)})}"]


if __name__ == "__main__":
    main()
