"""Do ``torch.compile``, ``channels_last`` and the optimizer's implementation pay for a training
step here?

Same model, batch and data; variants interleaved in each repetition: eager (the default),
``channels_last`` (memory format of the model and input: only convolutions care, i.e. ViT_C's
stem and RegNetY), and ``torch.compile`` (default mode; its one-off compile time is reported
apart). Ratio = best repetition of the variant / best repetition of eager (images/s).

``--optimizers``: instead, AdamW's implementations (the trainer's ``optimizer_impl``): the
per-parameter loop (torch's own default on a CPU), foreach (multi-tensor; ours on CPU) and fused
(one kernel; ours on CUDA; torch >= 2.4 has CPU kernels too), each over the whole step (img/s, vs
loop) and over ``opt.step()`` alone (ms, best of the repetitions).

    python benchmarks/step_options.py [--reps 7] [--steps 3] [--device cpu]
    python benchmarks/step_options.py --optimizers [--reps 7] [--steps 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, spread  # noqa: E402
from train_step import step_fn, time_steps  # noqa: E402

from stability.models import build_model, model_spec  # noqa: E402
from stability.trainer.execution import compile_net  # noqa: E402

CASES = [("vit_c_tiny", 32, 64), ("vit_p_tiny", 32, 64), ("regnety_tiny", 32, 64)]


def variants(name: str, px: int, batch: int, device: str, with_compile: bool):
    """``{variant: step function}`` and the compile time (s) of the compiled one."""
    out = {}
    torch.manual_seed(0)
    out["eager"] = step_fn(build_model(model_spec(name, image_size=px)).to(device), batch, px, device, None)
    torch.manual_seed(0)
    cl = build_model(model_spec(name, image_size=px)).to(device, memory_format=torch.channels_last)
    out["channels_last"] = step_fn(cl, batch, px, device, None, channels_last=True)
    compile_s = None
    if with_compile:
        torch.manual_seed(0)
        compiled = compile_net(build_model(model_spec(name, image_size=px)).to(device), "default")
        fn = step_fn(compiled, batch, px, device, None)
        t = time.perf_counter()
        fn()  # the compile
        compile_s = time.perf_counter() - t
        out["torch.compile"] = fn
    return out, compile_s


IMPLS = {"loop": {"foreach": False, "fused": False}, "foreach": {"foreach": True, "fused": False},
         "fused": {"foreach": False, "fused": True}}


def optimizer_ms(model: nn.Module, impl: dict, reps: int, n: int = 20) -> float:
    """Best-of-``reps`` milliseconds of one AdamW ``step()`` on ``model``'s parameters (random
    gradients, state already initialised): the update alone, which the whole step dilutes."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **impl)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    best = float("inf")
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        for _ in range(n):
            opt.step()
        sync()
        best = min(best, (time.perf_counter() - t) / n)
    return 1e3 * best


def optimizer_lines(args) -> list[str]:
    """The optimizer comparison's table (fused only where torch has the kernel for the device)."""
    lines = ["| model | AdamW | step img/s | step vs loop (best / best) | opt.step() ms | vs loop |",
             "|---|---|---|---|---|---|"]
    for name, px, batch in CASES:
        fns, models = {}, {}
        for impl, kw in IMPLS.items():
            torch.manual_seed(0)
            models[impl] = build_model(model_spec(name, image_size=px)).to(args.device)
            fns[impl] = step_fn(models[impl], batch, px, args.device, None, opt_kw=kw)
        ips = time_steps(fns, batch, args.device, args.reps, args.steps)
        ms = {impl: optimizer_ms(models[impl], kw, args.reps) for impl, kw in IMPLS.items()}
        for impl, xs in ips.items():
            lines.append(f"| {name} {px}px b{batch} | {impl} | {spread(xs)} | {max(xs) / max(ips['loop']):.3f} | "
                         f"{ms[impl]:.2f} | {ms[impl] / ms['loop']:.3f} |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--optimizers", action="store_true", help="AdamW loop vs foreach vs fused instead")
    args = ap.parse_args()
    if args.optimizers:
        append_results(f"Step options: optimizer implementation ({args.device})", optimizer_lines(args))
        return
    lines = ["| model | variant | img/s | vs eager (best / best) |", "|---|---|---|---|"]
    notes = []
    for name, px, batch in CASES:
        fns, compile_s = variants(name, px, batch, args.device, not args.no_compile)
        ips = time_steps(fns, batch, args.device, args.reps, args.steps)
        for k, xs in ips.items():
            lines.append(f"| {name} {px}px b{batch} | {k} | {spread(xs)} | {max(xs) / max(ips['eager']):.3f} |")
            print(lines[-1], flush=True)
        if compile_s is not None:
            notes.append(f"{name}: first compiled step {compile_s:.1f} s")
    lines += ["", "One-off compile cost: " + "; ".join(notes) + "." if notes else ""]
    append_results(f"Step options: channels_last, torch.compile ({args.device})", lines)


if __name__ == "__main__":
    main()
