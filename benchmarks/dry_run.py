"""``stability grid run --dry-run`` as a user runs it (the whole process: start-up, spec,
plan, cost, table) for a 100,000-config spec against a 2-config one: the ratio says what the
plan's size costs on top of the command's fixed start-up. Paired (each round runs both, in
turn), median of the rounds.

    python benchmarks/dry_run.py [--n 100000] [--rounds 5] [--before REV]

``--before REV`` also times the command of an earlier commit (checked out into a temp folder),
interleaved with this tree's, so a change is measured against its baseline in the same run.
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


def dry_run_s(spec: Path, tree: Path = ROOT) -> float:
    """Seconds of the whole command, run from ``tree`` (``python -m`` imports that tree's package)."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "stability", "grid", "run", str(spec), "--dry-run"], cwd=tree,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"dry run of {spec} failed:\n{out.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000, help="configs of the big spec (2 stems)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--before", help="a commit to time too (the baseline)")
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="stab-dry-"))
    big = spec_file(d, "big", args.n // 2, {"kind": "local"}, base={})
    text = big.read_text() + f"max_runs: {args.n}\n"
    big.write_text(text)
    small = spec_file(d, "small", 1, {"kind": "local"})
    trees = {"this tree": ROOT}
    if args.before:
        old = d / "before"
        old.mkdir()
        archive = subprocess.run(["git", "archive", args.before, "stability"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        trees[f"commit {args.before}"] = old
    for tree in trees.values():
        dry_run_s(small, tree)  # warm the file cache: the first process pays for reading torch from disk
    times = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            times[name].append((dry_run_s(big, tree), dry_run_s(small, tree)))
    lines = ["| code | 100,000 configs (s) | 2 configs (s) | ratio (paired, median) | rounds (big / small) |",
             "|---|---|---|---|---|"]
    for name, pairs in times.items():
        lines.append(f"| {name} | {statistics.median(p[0] for p in pairs):.2f} | "
                     f"{statistics.median(p[1] for p in pairs):.2f} | "
                     f"{statistics.median(p[0] / p[1] for p in pairs):.2f} | "
                     + "; ".join(f"{p[0]:.2f} / {p[1]:.2f}" for p in pairs) + " |")
    append_results("Dry run, whole command (benchmarks/dry_run.py)", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
