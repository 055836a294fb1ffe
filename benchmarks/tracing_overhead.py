"""Cost of per-layer gradient-norm tracing in the training step.

Three variants of the same step (vit_c_tiny, batch 64, 32 px, AdamW) interleaved: no tracing;
tracing every step (per-parameter norms, per-layer sums, parameter norms and update ratios);
and the default (the total grad norm every step, the per-layer trace every k=10 steps).
Buffers stay on the device as in ``stability.train`` (read once per 10 steps).

    python benchmarks/tracing_overhead.py [--reps 7] [--steps 20] [--model vit_c_tiny]
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

from stability.models import build_model, model_spec  # noqa: E402
from stability.train import GradTracer  # noqa: E402


def loop(model, opt, tracer, x, y, steps: int, every: int | None) -> float:
    """Seconds for ``steps`` steps; ``every=None`` means no tracing at all."""
    buf = []
    t = time.perf_counter()
    for s in range(steps):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):  # as train.py
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        trace = every is not None and s % every == 0
        if every is not None:
            norms = tracer.grad_norms()
            buf.append(norms.square().sum().sqrt())
        if trace:
            tracer.before_step()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if trace:
            buf.extend(tracer.after_step())
        buf.append(loss.detach())
        if len(buf) >= 30:
            torch.cat([b.reshape(-1) for b in buf]).tolist()  # the flush: one host sync
            buf.clear()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def run(model_name: str, batch: int, px: int, device: str, reps: int, steps: int, k: int = 10):
    torch.manual_seed(0)
    model = build_model(model_spec(model_name, image_size=px)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tracer = GradTracer(model, torch.device(device))
    x = torch.randn(batch, 3, px, px, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    variants = {"off": None, "every step": 1, f"every {k} steps (default)": k}
    for every in variants.values():
        loop(model, opt, tracer, x, y, 3, every)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(reps):
        for name, every in variants.items():
            times[name].append(loop(model, opt, tracer, x, y, steps, every))
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--model", default="vit_c_tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--px", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    times = run(args.model, args.batch, args.px, args.device, args.reps, args.steps)
    base = times["off"]
    lines = [f"{args.model}, batch {args.batch}, {args.px} px, {args.device}, {args.steps} steps per repetition",
             "", "| tracing | s per step | overhead vs off (median of paired ratios) |", "|---|---|---|"]
    overhead = {}
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base, strict=True)) - 1
        overhead[name] = ratio
        lines.append(f"| {name} | {spread([t / args.steps for t in ts])} | {100 * ratio:+.1f}% |")
    default = overhead["every 10 steps (default)"]
    lines += ["", f"Goal (<= 3% at the default): {'met' if default <= 0.03 else 'not met'} "
                  f"({100 * default:+.1f}%); every step costs {100 * overhead['every step']:+.1f}%."]
    append_results(f"Gradient-tracing overhead ({args.device})", lines)


if __name__ == "__main__":
    main()
