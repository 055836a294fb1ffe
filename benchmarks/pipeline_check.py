"""``gpu_check.py --pipeline``: the training step alone vs the trainer's loader + step, with CPU
and with GPU JPEG decoding (see gpu_check.py's docstring). Every mode is timed after a warm-up
(workers started, cuDNN/autotune done); a mode that fails is reported as a row, never raised.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, gpu_setup  # noqa: E402
from pipeline_workers import write_jpegs  # noqa: E402

from stability.data.datasets import batches, load_dataset  # noqa: E402
from stability.data.workers import resolve_workers  # noqa: E402
from stability.models import build_model, count_complexity, model_spec  # noqa: E402
from stability.trainer.distributed import Dist, autocast_for  # noqa: E402
from stability.trainer.execution import compile_net  # noqa: E402
from stability.trainer.train import Step, train_step  # noqa: E402

WARMUP = 5


def _write(root: Path, n: int) -> None:
    """``n`` training JPEGs (256 distinct ones, copied: the decode cost is the same) + a val split."""
    unique = min(n, 256)
    write_jpegs(root, unique)
    files = sorted((root / "train").rglob("*.jpg"))
    for k in range(unique, n):
        src = files[k % unique]
        shutil.copyfile(src, src.parent / f"copy{k:06d}.jpg")


def _timed_steps(step: Step, feed, steps: int, device: torch.device) -> float:
    """Images/s of ``steps`` steps fed by ``feed`` (an iterator of (x, y)), after ``WARMUP`` steps."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    n = 0
    for i, (x, y) in enumerate(itertools.islice(feed, WARMUP + steps)):
        if i == WARMUP:
            sync()
            t, n = time.perf_counter(), 0
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        train_step(step, x, y, 1e-4)
        n += len(y)
    sync()
    return n / (time.perf_counter() - t)


def _timed_feed(feed, steps: int, device: torch.device) -> float:
    """Images/s of the loader alone (batches moved to ``device``, nothing trained)."""
    n = 0
    for i, (x, y) in enumerate(itertools.islice(feed, WARMUP + steps)):
        if i == WARMUP:
            t, n = time.perf_counter(), 0
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


# feed -> the loader's options (decode, overlap, auto_augment); "step alone" feeds one batch again
FEEDS = {"CPU decode": ("cpu", True, "none"), "GPU decode, no overlap": ("gpu", False, "none"),
         "GPU decode": ("gpu", True, "none"), "GPU decode + autoaugment": ("gpu", True, "autoaugment")}


def _loader_feed(data, batch: int, workers, device: torch.device, feed: str):
    """The trainer's training batches, epoch after epoch (the loader and its workers persist)."""
    decode, overlap, policy = FEEDS[feed]
    for epoch in itertools.count():
        yield from batches(data, batch, 0, workers, epoch, 0, True, device, Dist(), decode=decode,
                           overlap=overlap, auto_augment=policy)


def pipeline_main(args, peaks: dict[str, float]) -> None:
    device = torch.device(args.device)
    cuda, name, peak, models, px = gpu_setup(args, peaks)
    workers = resolve_workers(args.workers if args.workers == "auto" else int(args.workers), "cuda")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        _write(root, args.images)
        print(f"wrote {args.images} JPEGs in {time.perf_counter() - t:.1f} s; {workers} workers "
              f"({os.cpu_count()} CPUs)", flush=True)
        feeds = [f for f in FEEDS if not args.feeds or f in args.feeds]
        for model_name in models:
            step = _step(model_name, px, args, device)  # one model (compiled once) for every feed
            for mode in ("step alone", *feeds):
                if FEEDS.get(mode, ("cpu",))[0] == "gpu" and not cuda:
                    rows.append((model_name, mode, None, "skipped: GPU decoding needs CUDA"))
                    continue
                try:
                    rate = _measure(step, mode, root, px, args, device, workers)
                    rows.append((model_name, mode, rate, None))
                except Exception as e:  # one table at the end, whatever failed
                    traceback.print_exc()
                    rows.append((model_name, mode, None, f"{type(e).__name__}: {e}".splitlines()[0][:120]))
                print(rows[-1], flush=True)
                if cuda:
                    torch.cuda.empty_cache()
            del step
        for feed in [f for f in feeds if cuda or FEEDS[f][0] == "cpu"]:  # is the loader alone fast enough?
            data = load_dataset("imagefolder", str(root), image_size=px)
            try:
                rate = _timed_feed(_loader_feed(data, args.batch, workers, device, feed), args.steps, device)
                rows.append(("-", f"loader alone, {feed}", rate, None))
            except Exception as e:
                traceback.print_exc()
                rows.append(("-", f"loader alone, {feed}", None, f"{type(e).__name__}: {e}"[:120]))
            finally:
                data.close()
                data.loaders.clear()
            print(rows[-1], flush=True)
    flops = {m: 3 * 2 * count_complexity(model_spec(m)).flops for m in models}
    lines = [f"{name}; {'bf16 autocast' if cuda else 'fp32'}; batch {args.batch}, {px} px; {args.images} JPEGs "
             f"500x375; CPU decode with {workers} workers ({os.cpu_count()} CPUs); {args.steps} steps timed "
             f"after {WARMUP}" + (", torch.compile" if args.compile else ""), "",
             "| model | feed | img/s | MFU | vs step alone |", "|---|---|---|---|---|"]
    alone = {m: r for m, mode, r, _ in rows if mode == "step alone"}
    for m, mode, rate, err in rows:
        if rate is None:
            lines.append(f"| {m} | {mode} | {err if err.startswith('skipped') else 'failed: ' + err} | | |")
            continue
        mfu = f"{100 * rate * flops[m] / peak:.1f}%" if peak and m in flops else "n/a"
        ratio = f"{rate / alone[m]:.2f}" if alone.get(m) else "n/a"
        lines.append(f"| {m} | {mode} | {rate:.0f} | {mfu} | {ratio} |")
    try:
        append_results(f"Input pipeline on the GPU ({name})", lines)
    except OSError as e:  # a read-only checkout: the table is printed all the same
        print("\n".join(lines) + f"\n(not appended to RESULTS.md: {e})")


def _step(model_name: str, px: int, args, device: torch.device) -> Step:
    """The training step the feeds are timed with (no tracing: the input pipeline is what is measured)."""
    torch.manual_seed(0)
    model = build_model(model_spec(model_name, image_size=px)).to(device)
    net = compile_net(model, "default") if args.compile else model  # as the trainer compiles
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    return Step(net, opt, None, autocast_for(device), label_smoothing=0.1)


def _measure(step: Step, mode: str, root: Path, px: int, args, device: torch.device, workers: int) -> float:
    if mode == "step alone":
        x = torch.randn(args.batch, 3, px, px, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)  # the written JPEGs have 10 classes
        return _timed_steps(step, itertools.repeat((x, y)), args.steps, device)
    data = load_dataset("imagefolder", str(root), image_size=px)
    try:
        return _timed_steps(step, _loader_feed(data, args.batch, workers, device, mode), args.steps, device)
    finally:
        data.close()
        data.loaders.clear()  # stop the persistent workers before the next mode
