"""GPU check (run it on a machine with a CUDA GPU): images/s and MFU of the 4GF ViT_C and ViT_P
at 224 px in bf16 autocast, ours vs timm, and the tracing overhead there.

MFU = achieved model FLOP/s / the GPU's peak dense bf16 FLOP/s, with model FLOPs = 3 x forward
(forward + backward) x 2 FLOPs per multiply-add, counted by ``torch.utils.flop_counter``.

    python benchmarks/gpu_check.py [--batch 128 ...] [--reps 5] [--steps 10] [--peak-tflops 989]
    python benchmarks/gpu_check.py --batch 256 512 --compile   # the trainer's CUDA default (+ fused AdamW)
    python benchmarks/gpu_check.py --device cpu --tiny --reps 2 --steps 2   # a dry run of the code on a CPU

AdamW is fused by default (``--optimizer-impl``), as the trainer runs it on CUDA, for both models.
A batch size that does not fit in memory is a row saying so.

``--pipeline``: is the input pipeline what bounds training? For each 4GF ViT at 224 px, bf16:
the training step alone (batch already on the GPU) vs the trainer's loader + step with CPU JPEG
decoding (``num_workers`` auto: the machine's CPUs - 1) vs with GPU decoding (nvJPEG), on
``--images`` ImageNet-like JPEGs it writes to a temp dir. Prints one table (a failed mode is a
row saying so) and appends it to RESULTS.md.

    python benchmarks/gpu_check.py --pipeline [--images 2560] [--steps 30] [--batch 256]
    python benchmarks/gpu_check.py --pipeline --device cpu --tiny   # the same code on a CPU, tiny models
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, gpu_setup, spread  # noqa: E402
from tracing_overhead import run as tracing_run  # noqa: E402
from train_step import measure, timm_twin  # noqa: E402

from stability.models import build_model, count_complexity, model_spec  # noqa: E402
from stability.trainer.execution import compile_net  # noqa: E402

PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}  # dense bf16


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[128], help="one or more batch sizes (--pipeline: the first)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile both (with fused AdamW: the trainer's "
                    "default on CUDA)")
    ap.add_argument("--optimizer-impl", choices=("fused", "foreach", "loop"), default="fused",
                    help="AdamW's implementation for both models (fused: the trainer's default on CUDA)")
    ap.add_argument("--pipeline", action="store_true", help="step alone vs loader + step (CPU / GPU decode)")
    ap.add_argument("--images", type=int, default=2560, help="--pipeline: JPEGs written to a temp dir")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run (with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="vit_{p,c}_tiny at 32 px (a dry run of the code)")
    ap.add_argument("--workers", default="auto", help="--pipeline: num_workers of the CPU-decode mode")
    ap.add_argument("--feeds", nargs="*", default=None,
                    help="--pipeline: only these feeds (default all: 'CPU decode', 'GPU decode, no overlap', "
                         "'GPU decode', 'GPU decode + autoaugment')")
    args = ap.parse_args()
    if args.pipeline:
        from pipeline_check import pipeline_main

        args.batch = args.batch[0]
        pipeline_main(args, PEAKS)
        return
    lines = throughput_lines(args)
    if args.tiny:  # a dry run of the code: nothing worth recording
        print("\n".join(lines))
        return
    append_results(f"GPU check ({torch.cuda.get_device_name(0) if args.device == 'cuda' else args.device})", lines)


def throughput_lines(args) -> list[str]:
    """Ours vs timm per model and batch size (a batch that does not fit is a row saying so), then
    the tracing overhead at the first batch size, then the MFU goal."""
    cuda, name, peak, names, px = gpu_setup(args, PEAKS)
    dtype = torch.bfloat16 if cuda else None
    lines = [f"{name}; peak bf16 {peak / 1e12 if peak else '?'} TFLOP/s; {px} px, "
             f"{'bf16 autocast' if cuda else 'fp32'}, AdamW {args.optimizer_impl}"
             + (", torch.compile" if args.compile else ""), "",
             "| model | batch | ours img/s | timm img/s | ours/timm | ours MFU | timm MFU |", "|---|---|---|---|---|---|---|"]
    mfus = []
    for model_name in names:
        for batch in args.batch:
            row, mfu = _compare(model_name, batch, px, dtype, peak, args)
            lines.append(row)
            mfus += [mfu] if mfu is not None else []
            print(lines[-1], flush=True)
    t, _ = tracing_run(names[1], args.batch[0], px, args.device, args.reps, args.steps)
    base = t["off"]
    for k, v in t.items():
        lines.append(f"tracing {k}: {100 * (statistics.median(a / b for a, b in zip(v, base, strict=True)) - 1):+.1f}%")
    if mfus and not args.tiny:
        lines += ["", f"Goal (>= 45% MFU on an H100 for the 4GF model): {'met' if min(mfus) >= 0.45 else 'not met'} "
                      f"(lowest {100 * min(mfus):.1f}%)."]
    return lines


def _compare(model_name: str, batch: int, px: int, dtype, peak: float | None, args) -> tuple[str, float | None]:
    """One table row of ours vs timm at ``batch``, and ours' MFU (None: out of memory, or no peak)."""
    spec = model_spec(model_name, image_size=px)
    flops_per_img = 3 * 2 * count_complexity(spec).flops
    models = {"ours": build_model(spec), "timm": timm_twin(model_name, px)}
    if args.compile:
        models = {k: compile_net(m, "default") for k, m in models.items()}  # as the trainer compiles
    kw = {"fused": args.optimizer_impl == "fused", "foreach": args.optimizer_impl == "foreach"}
    try:
        r = measure(models, batch, px, args.device, args.reps, args.steps, dtype, opt_kw=kw)
    except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError only from torch 2.5
        return f"| {model_name} | {batch} | out of memory | | | | |", None
    finally:
        del models
        if args.device == "cuda":
            torch.cuda.empty_cache()
    ratio = statistics.median(a / b for a, b in zip(r["ours"], r["timm"], strict=True))
    mfu = {k: statistics.median(v) * flops_per_img / peak if peak else None for k, v in r.items()}
    shown = {k: "n/a" if v is None else f"{100 * v:.1f}%" for k, v in mfu.items()}
    return (f"| {model_name} | {batch} | {spread(r['ours'])} | {spread(r['timm'])} | {ratio:.3f} | "
            f"{shown['ours']} | {shown['timm']} |"), mfu["ours"]


if __name__ == "__main__":
    main()
