"""``stability grid run --dry-run`` as a user runs it (the whole process: start-up, spec,
plan, cost, table) for a 100,000-config spec against a 2-config one: the ratio says what the
plan's size costs on top of the command's fixed start-up. Paired (each round runs both, in
turn), median of the rounds.

    python benchmarks/dry_run.py [--n 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results  # noqa: E402
from controller import spec_file  # noqa: E402

ROOT = Path(__file__).parents[1]


def dry_run_s(spec: Path) -> float:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "stability", "grid", "run", str(spec), "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"dry run of {spec} failed:\n{out.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000, help="configs of the big spec (2 stems)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="stab-dry-"))
    big = spec_file(d, "big", args.n // 2, {"kind": "local"}, base={})
    text = big.read_text() + f"max_runs: {args.n}\n"
    big.write_text(text)
    small = spec_file(d, "small", 1, {"kind": "local"})
    dry_run_s(small)  # warm the file cache: the first process pays for reading torch from disk
    pairs = []
    for _ in range(args.rounds):
        pairs.append((dry_run_s(big), dry_run_s(small)))
    big_s = statistics.median(p[0] for p in pairs)
    small_s = statistics.median(p[1] for p in pairs)
    ratio = statistics.median(p[0] / p[1] for p in pairs)
    lines = ["| what | seconds (median) | rounds |", "|---|---|---|",
             f"| `grid run --dry-run`, {args.n:,} configs | {big_s:.2f} | {', '.join(f'{p[0]:.2f}' for p in pairs)} |",
             f"| `grid run --dry-run`, 2 configs | {small_s:.2f} | {', '.join(f'{p[1]:.2f}' for p in pairs)} |",
             f"| ratio (paired, median) | {ratio:.2f} | |"]
    append_results("Dry run, whole command (benchmarks/dry_run.py)", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
