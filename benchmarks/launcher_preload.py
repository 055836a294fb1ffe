"""What the local launcher's preloaded imports save per run: a forked run's time from fork to
exit with the launcher's ``PRELOAD`` against the same list without ``torch._dynamo`` (which a
run then imports itself, with sympy, to count its FLOPs on meta tensors).

    python benchmarks/launcher_preload.py [--runs 6] [--rounds 2]

Each variant is a fresh Python that imports its list once, then forks the runs one after the
other (as the launcher does, one slot); the variants alternate, round by round, so that drift of
the machine falls on both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results  # noqa: E402

from stability.grid.local import PRELOAD  # noqa: E402

# One run of `reproduce --quick`'s replicate study (grids/cpu/quick/peak.yaml), a few seconds here.
RUN = dict(dataset="digits", model="vit_tiny", stem="conv", optimizer="adamw", lr=2e-3, wd=0.2, epochs=3,
           warmup_epochs=0.5, image_size=16, batch_size=64, trace_every=10, ema_alpha=8.5e-3, ema_period=4,
           test_split=300)

CHILD = r"""
import importlib, json, os, sys, time
for name in {preload!r}:
    importlib.import_module(name)
times = []
for seed in range({runs}):
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        from stability.config import run_config
        from stability.trainer.train import train
        train(run_config(dict({run!r}, seed=seed, results={results!r}, sweep={sweep!r}), "benchmark"))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


def forked_runs(preload: tuple[str, ...], runs: int, results: str, sweep: str) -> list[float]:
    code = CHILD.format(preload=preload, runs=runs, run=RUN, results=results, sweep=sweep)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=6, help="runs forked per variant and round")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    without = tuple(m for m in PRELOAD if m != "torch._dynamo")
    variants = {"without torch._dynamo": without, "PRELOAD (shipped)": PRELOAD}
    got: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory(prefix="stab-preload-") as d:
        for r in range(args.rounds):
            for k, mods in variants.items():  # each round its own sweep: no run is "already completed"
                got[k] += forked_runs(mods, args.runs, d, f"r{r}_{len(mods)}")
    med = {k: statistics.median(v) for k, v in got.items()}
    a, b = med["without torch._dynamo"], med["PRELOAD (shipped)"]
    lines = ["| launcher preloads | runs | fork to exit per run (median) | min | max |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {len(v)} | {med[k]:.2f} s | {min(v):.2f} s | {max(v):.2f} s |" for k, v in got.items()]
    lines += ["", f"Shipped / without: **{b / a:.2f}** ({a - b:+.2f} s per run saved). One run of "
              f"`reproduce --quick`'s replicate study (vit_tiny, 16 px digits, 3 epochs), forked one at a time."]
    print("\n".join(lines))
    append_results("Local launcher: what preloading torch._dynamo saves per run (benchmarks/launcher_preload.py)",
                   lines)


if __name__ == "__main__":
    main()
