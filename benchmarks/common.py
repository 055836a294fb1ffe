"""Helpers shared by the benchmark scripts: timing, the GPU check's device set-up, appending to RESULTS.md."""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def gpu_setup(args, peaks: dict[str, float]) -> tuple[bool, str, float | None, tuple[str, str], int]:
    """``gpu_check.py``'s device (TF32 on for CUDA) from its ``args``: (cuda, the device's name,
    its peak dense bf16 FLOP/s or None, the two models and their px: the 4GF ViTs at 224, or
    with ``--tiny`` the tiny ones at 32)."""
    import torch

    cuda = torch.device(args.device).type == "cuda"  # cuda:1 too
    assert not cuda or torch.cuda.is_available(), "needs a CUDA GPU (or --device cpu --tiny for a dry run)"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in peaks.items() if k in name), None)
    names, px = (("vit_p_tiny", "vit_c_tiny"), 32) if args.tiny else (("vit_p_4gf", "vit_c_4gf"), 224)
    return cuda, name, peak, names, px


def spread(xs: list[float]) -> str:
    med = statistics.median(xs)
    return f"{med:.3g} (min {min(xs):.3g}, max {max(xs):.3g}, n={len(xs)})"


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    try:
        import torch

        dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        tv = torch.__version__
    except ImportError:
        dev, tv = "torch missing", "-"
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {dev}, Python {platform.python_version()}, torch {tv}"


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "-"
    except OSError:
        return "-"


def append_results(title: str, lines: list[str]) -> None:
    """Append a section (the exact command, date, machine, then ``lines``) to RESULTS.md."""
    cmd = "python " + " ".join(sys.argv)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = [f"\n## {title}\n", f"- command: `{cmd}`", f"- date: {stamp}, commit {git_sha()}",
             f"- machine: {machine()}", "", *lines, ""]
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEvery figure is measured by the script named in its "
                           "section; ratios are taken side by side in the same run.\n")
    with open(RESULTS, "a") as f:
        f.write("\n".join(block))
    print("\n".join(block))
