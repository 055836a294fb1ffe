"""Images/s per data worker of the ImageNet-style input pipeline at 224 px, and how many workers
one GPU needs.

Writes ImageNet-like JPEGs (~500x375, smooth random content with grain, so they compress like
photos) to a temp dir, packs them (``stability pack``), then runs the trainer's own training
loader (``stability.data.datasets.batches``: RandomResizedCrop + flip + tensor + normalize, with and
without AutoAugment) over them for 0/1/2 workers, on the ImageFolder and on the packed copy. Also
the random-access read of one image's bytes: a file, a tar shard (pread at the indexed offset),
a parquet row (its row group decoded). Workers needed = a GPU's img/s / img/s per worker.

    python benchmarks/pipeline_workers.py [--images 300] [--reps 2] [--batch 32]
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, spread  # noqa: E402

# A 4GF ViT's measured training step on one H200, bf16, batch 256 (RESULTS.md, "GPU check").
GPU_IMG_S = {"vit_p_4gf eager": 5900.0, "vit_c_4gf eager": 4490.0, "vit_p_4gf compiled": 9500.0,
             "vit_c_4gf compiled": 9290.0}


def write_jpegs(root: Path, n: int, classes: int = 10, size: tuple[int, int] = (500, 375), seed: int = 0) -> float:
    """``n`` JPEGs under ``root/train/<class>/`` and n // 10 under ``root/val``; returns mean KB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = []
    for split, count in (("train", n), ("val", max(n // 10, classes))):
        for i in range(count):
            folder = root / split / f"c{i % classes:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            low = rng.uniform(0, 255, (size[1] // 25 + 1, size[0] // 25 + 1, 3)).astype(np.uint8)
            img = np.asarray(Image.fromarray(low).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
            img += rng.normal(0, 16, img.shape)  # grain: photos are not perfectly smooth
            buf = io.BytesIO()
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
            (folder / f"{i:05d}.jpg").write_bytes(buf.getvalue())
            sizes.append(len(buf.getvalue()))
    return statistics.mean(sizes) / 1024


def loader_rate(dataset: str, root: Path, workers: int, policy: str, batch: int, reps: int) -> list[float]:
    """Images/s of the training loader over whole epochs (an epoch first as warm-up: workers start)."""
    import torch

    from stability.data.datasets import batches, load_dataset
    from stability.trainer.distributed import Dist

    data = load_dataset(dataset, str(root))
    dev, rates = torch.device("cpu"), []
    for epoch in range(reps + 1):
        t, n = time.perf_counter(), 0
        for x, _ in batches(data, batch, 0, workers, epoch, 0, True, dev, Dist(), auto_augment=policy):
            n += len(x)
        if epoch:
            rates.append(n / (time.perf_counter() - t))
    data.loaders.clear()  # shuts the persistent workers down
    return rates


def read_rates(folder: Path, packed: Path, k: int = 200) -> dict[str, float]:
    """Microseconds to read one random image's bytes: file, tar pread, parquet row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stability.data.packed import PackedDataset

    ds = PackedDataset(packed, "train")
    files = sorted((folder / "train").rglob("*.jpg"))
    blobs = [f.read_bytes() for f in files]
    pq_path = packed.parent / "bytes.parquet"
    pq.write_table(pa.table({"jpeg": blobs}), pq_path, row_group_size=256, compression="none")
    pf = pq.ParquetFile(pq_path)
    order = random.Random(0).sample(range(len(files)), min(k, len(files)))
    out = {}
    t = time.perf_counter()
    for i in order:
        files[i].read_bytes()
    out["file"] = (time.perf_counter() - t) / len(order) * 1e6
    t = time.perf_counter()
    for i in order:
        ds.encoded_bytes(i)
    out["tar + index (pread)"] = (time.perf_counter() - t) / len(order) * 1e6
    t = time.perf_counter()
    for i in order:
        pf.read_row_group(i // 256, columns=["jpeg"]).column(0)[i % 256].as_py()
    out["parquet (row group of 256)"] = (time.perf_counter() - t) / len(order) * 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", default="0,1,2")
    args = ap.parse_args()
    from stability.data.packed import pack

    with tempfile.TemporaryDirectory() as tmp:
        folder, packed = Path(tmp) / "folder", Path(tmp) / "packed" / "p"
        t = time.perf_counter()
        kb = write_jpegs(folder, args.images)
        t_write = time.perf_counter() - t
        t = time.perf_counter()
        pack(folder, packed)
        t_pack = time.perf_counter() - t
        reads = read_rates(folder, packed)
        rows, per_worker = [], {}
        for dataset, root in (("imagefolder", folder), ("packed", packed)):
            for policy in ("none", "autoaugment"):
                for w in (int(v) for v in args.workers.split(",")):
                    r = loader_rate(dataset, root, w, policy, args.batch, args.reps)
                    med = statistics.median(r)
                    rows.append((dataset, policy, w, r, med / max(w, 1)))
                    if w == 1:
                        per_worker[(dataset, policy)] = med
                    print(rows[-1][:3], f"{med:.0f} img/s", flush=True)
    base = {(d, p): m for d, p, w, r, m in ((d, p, w, r, statistics.median(r)) for d, p, w, r, _ in rows) if w == 0}
    lines = [f"{args.images} JPEGs of 500x375 (mean {kb:.0f} KB; written in {t_write:.1f} s, packed "
             f"without resizing in {t_pack:.2f} s), 224 px RandomResizedCrop + flip + tensor + normalize, "
             f"batch {args.batch}, the trainer's own loader (persistent workers), {args.reps} epochs after one warm-up", "",
             "| data | policy | workers | img/s | vs 0 workers | img/s per worker |", "|---|---|---|---|---|---|"]
    for d, p, w, r, pw in rows:
        lines.append(f"| {d} | {p} | {w} | {spread(r)} | {statistics.median(r) / base[(d, p)]:.2f} | "
                     f"{pw:.0f} |")
    lines += ["", "Random-access read of one image's bytes (mean of 200, page cache warm):", ""]
    lines += [f"- {k}: {v:.0f} µs" for k, v in reads.items()]
    lines += ["", "Workers one GPU needs with CPU decoding (GPU img/s from the H200 GPU check, batch 256, "
                  "÷ the 1-worker img/s above):", "",
              "| GPU step | img/s | " + " | ".join(f"{d} {p}" for d, p in per_worker) + " |",
              "|---|---|" + "---|" * len(per_worker)]
    for name, rate in GPU_IMG_S.items():
        lines.append(f"| {name} | {rate:.0f} | " + " | ".join(f"{rate / v:.0f}" for v in per_worker.values()) + " |")
    append_results("Input pipeline per worker (benchmarks/pipeline_workers.py)", lines)


if __name__ == "__main__":
    main()
