"""The dry run's time on this machine (``grid/local_time.py``) against the real thing: for each
shipped CPU spec, the estimate its ``--dry-run`` prints, then the whole ``grid run`` timed (a
fresh results folder each), and their ratio (real / estimate: above 1, the floor was that much
below; the gap is process start-up, data loading, checkpoints, row writes and parallel runs
sharing the cores). ``--quick`` adds ``stability reproduce --quick``.

    python benchmarks/local_time.py [--specs smoke,cpu/quick/lr_wd] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results  # noqa: E402

from stability.grid.spec import load_spec  # noqa: E402
from stability.resources import spec_path  # noqa: E402


def estimate(spec_name: str, results: Path) -> float:
    import dataclasses

    from stability.grid.controller import dry_run

    spec = dataclasses.replace(load_spec(spec_path(spec_name)), results=str(results))
    return dry_run(spec).local.wall_s


def real(args: list[str]) -> float:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "stability", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return time.perf_counter() - t


def quick_estimate(results: Path) -> float:
    from stability.reproduce import Invocation, dry_run

    _, notes = dry_run(Invocation.from_options(quick=True, results=str(results)))
    (total,) = [n for n in notes if n.startswith("on this machine: ~")]
    value, unit = total.split("~")[1].split(" in all")[0].split()
    return float(value) * {"s": 1, "min": 60, "h": 3600}[unit]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--specs", default="smoke,cpu/quick/lr_wd")
    ap.add_argument("--quick", action="store_true", help="also stability reproduce --quick")
    args = ap.parse_args()
    lines = ["| study | estimate (s) | real (s) | real / estimate |", "|---|---|---|---|"]
    for name in args.specs.split(","):
        with tempfile.TemporaryDirectory(prefix="stab-lt-") as d:
            est = estimate(name, Path(d) / "res")
            wall = real(["grid", "run", name, "--quiet", "--results", str(Path(d) / "res")])
        lines.append(f"| grid run {name} | {est:.0f} | {wall:.0f} | {wall / est:.2f} |")
        print(lines[-1], flush=True)
    if args.quick:
        with tempfile.TemporaryDirectory(prefix="stab-lt-") as d:
            est = quick_estimate(Path(d) / "res")
            wall = real(["reproduce", "--quick", "--quiet", "--results", str(Path(d) / "res")])
        lines.append(f"| reproduce --quick | {est:.0f} | {wall:.0f} | {wall / est:.2f} |")
        print(lines[-1], flush=True)
    append_results("Local time of a CPU spec (benchmarks/local_time.py)", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
