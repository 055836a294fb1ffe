"""Is the data loader the bottleneck? Training steps/s fed by the real loader vs the same batches
already in memory (digits, vit_c_tiny, batch 64: the CPU grids' setting).

    python benchmarks/data_pipeline.py [--reps 5] [--dataset digits]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, spread  # noqa: E402

from stability.config import run_config  # noqa: E402
from stability.data.datasets import (
    batches,  # noqa: E402
    load_dataset,  # noqa: E402
)
from stability.models import build_model, model_spec  # noqa: E402
from stability.trainer.distributed import Dist  # noqa: E402


def _batches(data, cfg, epoch: int, dev):
    """The trainer's own training loader for one epoch."""
    return batches(data, cfg.batch_size, cfg.seed, cfg.num_workers, epoch, 0, True, dev, Dist())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    cfg = run_config({"model": "vit_c_tiny", "dataset": args.dataset, "batch_size": 64})
    data = load_dataset(cfg.dataset)
    torch.manual_seed(0)
    model = build_model(model_spec(cfg.model, num_classes=data.num_classes, image_size=data.image_size))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dev = torch.device("cpu")

    def step(x, y):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    in_memory = [b for _, b in zip(range(args.steps), _batches(data, cfg, 0, dev), strict=False)]
    results: dict[str, list[float]] = {"real loader": [], "batches in memory": [], "loader alone": []}
    for rep in range(args.reps + 1):
        t = time.perf_counter()
        for _, (x, y) in zip(range(args.steps), _batches(data, cfg, rep, dev), strict=False):
            step(x, y)
        a = args.steps / (time.perf_counter() - t)
        t = time.perf_counter()
        for x, y in in_memory:
            step(x, y)
        b = args.steps / (time.perf_counter() - t)
        t = time.perf_counter()
        for _, _batch in zip(range(args.steps), _batches(data, cfg, rep, dev), strict=False):
            pass
        c = args.steps / (time.perf_counter() - t)
        if rep:  # the first round is a warm-up
            results["real loader"].append(a)
            results["batches in memory"].append(b)
            results["loader alone"].append(c)
    ratio = statistics.median(a / b for a, b in zip(results["real loader"], results["batches in memory"], strict=True))
    lines = [f"{args.dataset}, vit_c_tiny, batch 64, {args.steps} steps per repetition", "",
             "| feed | steps/s |", "|---|---|"]
    lines += [f"| {k} | {spread(v)} |" for k, v in results.items()]
    lines += ["", f"real / in-memory = {ratio:.3f}. Goal (>= 0.95): {'met' if ratio >= 0.95 else 'not met'}."]
    append_results(f"Data pipeline ({args.dataset})", lines)


if __name__ == "__main__":
    main()
