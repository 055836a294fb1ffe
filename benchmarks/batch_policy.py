"""The GPU decode path's policy step: torchvision's AutoAugment / RandAugment called per image
(the loop ``GpuDecoder`` had: one policy call per image under its seed) against
``stability.data.batch_policy.apply_policy`` (each image's own draws, the images that drew the
same op transformed as one sub-batch), on uint8 batches of random images.

Both variants run interleaved on the same batches (a fresh batch and seeds per repetition, after
one warm-up of each) and must give identical tensors (checked every repetition). Also timed: the
draws alone (``policy_draws``: the per-image CPU work left), and the op calls per batch (each a
few kernels on a GPU, where the loop made ~10 per image).

    python benchmarks/batch_policy.py [--batch 256] [--px 224 32] [--reps 3] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results  # noqa: E402

from stability.data.augment import seeded  # noqa: E402
from stability.data.batch_policy import apply_policy, policy_draws  # noqa: E402
from stability.data.datasets import policy  # noqa: E402
from stability.data.pipeline import sample_seed  # noqa: E402


def per_image(p, x: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    parts = []
    for k, s in enumerate(seeds):
        with seeded(s):
            parts.append(p(x[k:k + 1]))
    return torch.cat(parts)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_rate(fn, p, x: torch.Tensor, seeds: list[int]) -> tuple[float, torch.Tensor]:
    """Images/s of ``fn(p, x, seeds)``, and its output."""
    _sync(x.device)
    t = time.perf_counter()
    out = fn(p, x, seeds)
    _sync(x.device)
    return x.shape[0] / (time.perf_counter() - t), out


def op_calls(p, x: torch.Tensor, seeds: list[int]) -> int:
    """How many op calls ``apply_policy`` makes for this batch (the instance's op, wrapped)."""
    calls = []
    op = p._apply_image_or_video_transform
    p._apply_image_or_video_transform = lambda *a, **kw: calls.append(1) or op(*a, **kw)
    try:
        apply_policy(p, x, seeds)
    finally:
        del p._apply_image_or_video_transform
    return len(calls)


def run(name: str, batch: int, px: int, reps: int, device: torch.device) -> dict:
    p = policy(name)
    rates: dict[str, list[float]] = {"per image": [], "batched": []}
    draws_us, calls = [], []
    for rep in range(reps + 1):  # rep 0: warm-up, not counted
        x = torch.randint(0, 256, (batch, 3, px, px), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(rep)).to(device)
        seeds = [sample_seed(0, rep, k) + 1 for k in range(batch)]
        r_loop, ref = timed_rate(per_image, p, x, seeds)
        r_batch, got = timed_rate(apply_policy, p, x, seeds)
        if device.type == "cpu" and not torch.equal(ref, got):
            raise SystemExit(f"{name}: batched result differs from the per-image policy (repetition {rep})")
        t = time.perf_counter()
        policy_draws(p, seeds, px, px)
        if rep:
            rates["per image"].append(r_loop)
            rates["batched"].append(r_batch)
            draws_us.append((time.perf_counter() - t) / batch * 1e6)
            calls.append(op_calls(p, x, seeds))
        print(f"{name} rep {rep}: per image {r_loop:.0f} img/s, batched {r_batch:.0f} img/s", flush=True)
    return {"rates": rates, "draws_us": draws_us, "calls": calls}


def _rate(xs: list[float]) -> str:
    return f"{statistics.median(xs):.0f} ({min(xs):.0f}-{max(xs):.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--px", type=int, nargs="+", default=[224, 32],
                    help="image sizes: 224 (ImageNet; compute-bound on a CPU), 32 (per-call overhead-bound)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on a shared, loaded machine 2 threads wait on each other)")
    ap.add_argument("--no-write", action="store_true", help="print only; RESULTS.md untouched")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    rows = ["| policy | px | per-image loop img/s, median (min-max) | batched img/s | ratio (medians) "
            "| draws µs/img | op calls/batch |", "|---|---|---|---|---|---|---|"]
    for px, name in ((px, name) for px in args.px for name in ("autoaugment", "randaugment")):
        r = run(name, args.batch, px, args.reps, device)
        loop, batched = r["rates"]["per image"], r["rates"]["batched"]
        rows.append(f"| {name} | {px} | {_rate(loop)} | {_rate(batched)} | "
                    f"{statistics.median(batched) / statistics.median(loop):.2f}x | "
                    f"{statistics.median(r['draws_us']):.0f} | {statistics.median(r['calls']):.0f} |")
    lines = [f"batch {args.batch}, uint8 random images on {device}, torch threads "
             f"{torch.get_num_threads()}; {args.reps} repetitions after a warm-up, interleaved; "
             "outputs identical every repetition (checked on CPU).", "", *rows]
    if args.no_write:
        print("\n".join(lines))
    else:
        append_results(f"Batched per-image policy on the GPU decode path ({device})", lines)


if __name__ == "__main__":
    main()
