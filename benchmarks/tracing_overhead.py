"""Cost of per-layer gradient-norm tracing in the training step.

Three variants of the same step (vit_c_tiny, batch 64, 32 px, AdamW) interleaved: no tracing;
tracing every step (per-parameter norms, per-layer sums, parameter norms and update ratios, the
attention probe: max logit and entropy per layer from one extra QKᵀ); and the default (the total
grad norm every step, the per-layer trace every k=10 steps). log Z (the output logits'
log-partition) is computed every step in every variant: its cost is timed on its own.
Each variant runs the shipped ``stability.trainer.train.train_step`` and ``stability.trainer.tracing.TraceBuffer``
(read once per 10 steps), so the benchmark times the trainer's own code, not a copy.

A shared 2-core machine's step time wanders by +-15%, more than the effect, so the tracing work
is also timed on its own: the per-step part (per-parameter grad norms, per-layer sums, total)
and the per-trace part (parameter snapshot, update norms), each the minimum of many repetitions
(noise only ever adds time), against the minimum step time. That estimate decides the goal;
the interleaved loops are reported beside it.

    python benchmarks/tracing_overhead.py [--reps 15] [--steps 10] [--model vit_c_tiny]
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

from stability.config import resolve_compile  # noqa: E402
from stability.models import build_model, model_spec  # noqa: E402
from stability.trainer.distributed import autocast_for  # noqa: E402
from stability.trainer.execution import compile_net  # noqa: E402
from stability.trainer.optim import impl_flags, resolve_impl  # noqa: E402
from stability.trainer.tracing import GradTracer, TraceBuffer  # noqa: E402
from stability.trainer.train import Step, train_step  # noqa: E402


def loop(net, opt, tracer, x, y, steps: int, every: int | None) -> float:
    """Seconds for ``steps`` of the shipped ``train_step`` with its ``TraceBuffer`` (flushed every
    10 steps, as ``train``); ``every=None`` means no tracing at all (no grad norms, losses only)."""
    s = Step(net, opt, tracer if every is not None else None, autocast_for(x.device))
    buf = TraceBuffer(tracer, x.device, "bench")
    losses = []
    t = time.perf_counter()
    for i in range(steps):
        out = train_step(s, x, y, 1e-4, trace=every is not None and i % every == 0)
        if every is None:
            losses.append(out.loss)
            if len(losses) >= 10:
                torch.stack(losses).tolist()  # the same one host sync per flush
                losses.clear()
            continue
        buf.add(i, out.loss, out.correct, out.layer_norms, 1e-4, out.traced, out.log_z)
        if len(buf) >= 10:
            buf.flush(i + 1, 0, False)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def run(model_name: str, batch: int, px: int, device: str, reps: int, steps: int, k: int = 10,
        shipped: bool = False):
    """``shipped``: the trainer's own step on ``device`` (``compile: auto`` and ``optimizer_impl:
    auto`` resolved for it: compiled with fused AdamW on CUDA); else eager with foreach AdamW."""
    torch.manual_seed(0)
    model = build_model(model_spec(model_name, image_size=px)).to(device)
    dev = torch.device(device)
    compiled = shipped and resolve_compile("auto", dev.type)
    impl = resolve_impl("auto", dev.type) if shipped else "foreach"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **impl_flags(impl))
    net = compile_net(model, "default") if compiled else model  # as the trainer compiles
    tracer = GradTracer(model, dev)
    x = torch.randn(batch, 3, px, px, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    variants = {"off": None, "every step": 1, f"every {k} steps (default)": k}
    for every in variants.values():
        loop(net, opt, tracer, x, y, 3, every)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(reps):
        for name, every in variants.items():
            times[name].append(loop(net, opt, tracer, x, y, steps, every))
    parts = components(net, opt, tracer, x, y)
    return times, parts


def _min_time(fn, n: int) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def components(model, opt, tracer, x, y, n: int = 50) -> dict[str, float]:
    # ``model``: what the step runs forward (compiled or not)
    """Minimum seconds of: one untraced step; the per-step tracing work (grad norms; log Z); the
    per-trace work (snapshot and update norms; the attention probe's extra forward work)."""
    untraced = Step(model, opt, None, autocast_for(x.device))

    def step():
        train_step(untraced, x, y, 1e-4).loss.item()

    def per_step():
        tracer.grad_norms().square().sum().sqrt().item()

    def per_trace():
        tracer.before_step()
        torch.cat(tracer.after_step()).sum().item()

    def forward(probe: bool):
        tracer.probe(probe)
        with torch.no_grad():
            model(x).sum().item()
        tracer.probe(False)

    t_step = _min_time(step, max(10, n // 3))
    with torch.no_grad():
        logits = model(x).float()
    t_lz = _min_time(lambda: logits.logsumexp(-1).mean().item(), n)
    t_probe = max(0.0, _min_time(lambda: forward(True), n) - _min_time(lambda: forward(False), n))
    F.cross_entropy(model(x).float(), y).backward()  # gradients for the tracer to read
    return {"step": t_step, "per_step": _min_time(per_step, n), "log_z": t_lz,
            "per_trace": _min_time(per_trace, n), "probe": t_probe}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--model", default="vit_c_tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--px", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shipped", action="store_true",
                    help="the trainer's step on --device: compile and optimizer_impl auto (compiled, fused AdamW on CUDA)")
    args = ap.parse_args()
    times, parts = run(args.model, args.batch, args.px, args.device, args.reps, args.steps, shipped=args.shipped)
    k = 10
    base = times["off"]
    lines = [f"{args.model}, batch {args.batch}, {args.px} px, {args.device}"
             + (", the shipped step (compile and optimizer_impl auto)" if args.shipped else ""),
             "", "Tracing work timed on its own (minimum of 50; the step: minimum of 16):", "",
             "| part | ms | share of an untraced step |", "|---|---|---|"]
    t_step, t_ps, t_pt = parts["step"], parts["per_step"] + parts["log_z"], parts["per_trace"] + parts["probe"]
    est_default = (t_ps + t_pt / k) / t_step
    est_every = (t_ps + t_pt) / t_step
    lines += [f"| untraced step | {1000 * t_step:.1f} | 100% |",
              f"| per step: per-layer grad norms + total | {1000 * parts['per_step']:.2f} | "
              f"{100 * parts['per_step'] / t_step:.2f}% |",
              f"| per step: log Z of the logits | {1000 * parts['log_z']:.3f} | {100 * parts['log_z'] / t_step:.2f}% |",
              f"| per trace: param snapshot + update norms | {1000 * parts['per_trace']:.2f} | "
              f"{100 * parts['per_trace'] / t_step:.2f}% |",
              f"| per trace: attention probe (extra QKᵀ, max, entropy) | {1000 * parts['probe']:.2f} | "
              f"{100 * parts['probe'] / t_step:.2f}% |",
              f"| **default (per step + per trace / {k})** | | **{100 * est_default:+.2f}%** |",
              f"| every step (per step + per trace) | | {100 * est_every:+.2f}% |",
              "", f"Interleaved loops ({args.reps} repetitions of {args.steps} steps each):", "",
              "| tracing | s per step | min vs off | median of paired ratios |", "|---|---|---|---|"]
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base, strict=True)) - 1
        lines.append(f"| {name} | {spread([t / args.steps for t in ts])} | {100 * (min(ts) / min(base) - 1):+.1f}% "
                     f"| {100 * ratio:+.1f}% |")
    lines += ["", f"Goal (<= 3% at the default): {'met' if est_default <= 0.03 else 'not met'} "
                  f"({100 * est_default:+.2f}% from the timed parts); every step costs {100 * est_every:+.2f}%."]
    append_results(f"Gradient-tracing overhead ({args.device})", lines)


if __name__ == "__main__":
    main()
