"""GPU check (run it on a machine with a CUDA GPU): images/s and MFU of the 4GF ViT_C and ViT_P
at 224 px in bf16 autocast, ours vs timm, and the tracing overhead there.

MFU = achieved model FLOP/s / the GPU's peak dense bf16 FLOP/s, with model FLOPs = 3 x forward
(forward + backward) x 2 FLOPs per multiply-add, counted by ``torch.utils.flop_counter``.

    python benchmarks/gpu_check.py [--batch 128] [--reps 5] [--steps 10] [--peak-tflops 989]

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
from common import append_results, spread  # noqa: E402
from tracing_overhead import run as tracing_run  # noqa: E402
from train_step import measure, timm_twin  # noqa: E402

from stability.models import build_model, count_complexity, model_spec  # noqa: E402

PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}  # dense bf16


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--pipeline", action="store_true", help="step alone vs loader + step (CPU / GPU decode)")
    ap.add_argument("--images", type=int, default=2560, help="--pipeline: JPEGs written to a temp dir")
    ap.add_argument("--device", default="cuda", help="--pipeline: cuda, or cpu for a dry run")
    ap.add_argument("--tiny", action="store_true", help="--pipeline: vit_{p,c}_tiny at 32 px (a dry run)")
    ap.add_argument("--workers", default="auto", help="--pipeline: num_workers of the CPU-decode mode")
    ap.add_argument("--feeds", nargs="*", default=None,
                    help="--pipeline: only these feeds (default all: 'CPU decode', 'GPU decode, no overlap', "
                         "'GPU decode', 'GPU decode + autoaugment')")
    args = ap.parse_args()
    if args.pipeline:
        from pipeline_check import pipeline_main

        pipeline_main(args, PEAKS)
        return
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAKS.items() if k in name), None)
    lines = [f"GPU: {name}; peak bf16 {peak / 1e12 if peak else '?'} TFLOP/s; batch {args.batch}, 224 px, bf16 autocast"
             + (", torch.compile" if args.compile else ""), "",
             "| model | ours img/s | timm img/s | ours/timm | ours MFU | timm MFU |", "|---|---|---|---|---|---|"]
    mfus = []
    for model_name in ("vit_p_4gf", "vit_c_4gf"):
        spec = model_spec(model_name)
        flops_per_img = 3 * 2 * count_complexity(spec).flops
        models = {"ours": build_model(spec), "timm": timm_twin(model_name, 224)}
        if args.compile:
            models = {k: torch.compile(m) for k, m in models.items()}
        r = measure(models, args.batch, 224, "cuda", args.reps, args.steps, torch.bfloat16)
        ratio = statistics.median(a / b for a, b in zip(r["ours"], r["timm"], strict=True))
        mfu = {k: statistics.median(v) * flops_per_img / peak if peak else float("nan") for k, v in r.items()}
        mfus.append(mfu["ours"])
        lines.append(f"| {model_name} | {spread(r['ours'])} | {spread(r['timm'])} | {ratio:.3f} | "
                     f"{100 * mfu['ours']:.1f}% | {100 * mfu['timm']:.1f}% |")
        print(lines[-1], flush=True)
        del models
        torch.cuda.empty_cache()
    t, _ = tracing_run("vit_c_4gf", args.batch, 224, "cuda", args.reps, args.steps)
    base = t["off"]
    for k, v in t.items():
        lines.append(f"tracing {k}: {100 * (statistics.median(a / b for a, b in zip(v, base, strict=True)) - 1):+.1f}%")
    lines += ["", f"Goal (>= 45% MFU on an H100 for the 4GF model): {'met' if min(mfus) >= 0.45 else 'not met'} "
                  f"(lowest {100 * min(mfus):.1f}%)."]
    append_results(f"GPU check ({name})", lines)


if __name__ == "__main__":
    main()
