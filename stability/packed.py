"""The packed dataset: an ImageFolder's images as tar shards of JPEG bytes with an index, made by
``stability pack`` and read as ``dataset: packed``.

Why tar shards with an index and not parquet (benchmarks/RESULTS.md, "Input pipeline per
worker"): training reads images in a random order, and one image out of a tar shard is one
``pread`` at a known offset (the OS page cache is shared by every worker and rank), while a
parquet row is read by decoding its whole row group. The shards are WebDataset-style
(``<n>.jpg`` + ``<n>.cls`` members), so streaming tools can read them too.

Layout of ``out/``: ``meta.json`` (format, version, classes, short_side, counts per split),
``index.parquet`` (split, shard, offset, size, label, path: the image's path under its split
folder), ``<split>-<k>.tar``. Unresized images keep their exact file bytes; ``short_side`` N
re-encodes images whose short side is above N at that size (JPEG quality 90).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

FORMAT, VERSION = "stability-packed", 1
SPLITS = ("train", "val")
JPEG_QUALITY = 90


class PackError(ValueError):
    """A folder that cannot be packed, or a packed folder that cannot be read (one line)."""


def _encode(path: str, short_side: int | None) -> bytes:
    data = Path(path).read_bytes()
    if short_side is None:
        return data
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if min(img.size) <= short_side and img.format == "JPEG" and img.mode == "RGB":
        return data  # already small enough: its bytes as they are
    img = img.convert("RGB")
    if min(img.size) > short_side:
        scale = short_side / min(img.size)
        img = img.resize((max(round(img.width * scale), 1), max(round(img.height * scale), 1)),
                         Image.Resampling.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _encode_star(job: tuple[str, int | None]) -> bytes:
    return _encode(*job)


def pack(root: str | Path, out: str | Path, *, short_side: int | None = None, shard_mb: float = 1024,
         workers: int = 1) -> dict[str, int]:
    """Pack ``root/{train,val}/<class>/<image>`` into ``out``; returns the images per split."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from torchvision.datasets import ImageFolder

    root, out = Path(root), Path(out)
    for split in SPLITS:
        if not (root / split).is_dir():
            raise PackError(f"{root / split} is not a folder (expected {root}/{{train,val}}/<class>/<image>)")
    if out.exists() and any(out.iterdir()):
        raise PackError(f"{out} exists and is not empty (pack into a new folder)")
    try:
        folders = {s: ImageFolder(str(root / s)) for s in SPLITS}
    except (FileNotFoundError, RuntimeError) as e:  # no class folders, or no images in one
        raise PackError(str(e).splitlines()[0]) from None
    if folders["train"].classes != folders["val"].classes:
        raise PackError(f"class folders differ between {root / 'train'} and {root / 'val'}")
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, list] = {k: [] for k in ("split", "shard", "offset", "size", "label", "path")}
    limit = int(shard_mb * 2**20)
    with ProcessPoolExecutor(workers) if workers > 1 else _Serial() as pool:
        for split, folder in folders.items():
            shard, tar, written = -1, None, limit
            jobs = [(p, short_side) for p, _ in folder.samples]
            for n, ((path, label), data) in enumerate(zip(folder.samples, pool.map(_encode_star, jobs, chunksize=64),
                                                          strict=True)):
                if written >= limit:
                    if tar is not None:
                        tar.close()
                    shard, written = shard + 1, 0
                    tar = tarfile.open(out / f"{split}-{shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT)
                offset = _add(tar, f"{n:08d}.jpg", data)
                _add(tar, f"{n:08d}.cls", str(label).encode())
                written = tar.offset
                for k, v in zip(index, (split, shard, offset, len(data), label,
                                        str(Path(path).relative_to(root / split))), strict=True):
                    index[k].append(v)
            if tar is not None:
                tar.close()
    pq.write_table(pa.table(index), out / "index.parquet")
    counts = {s: index["split"].count(s) for s in SPLITS}
    meta = {"format": FORMAT, "version": VERSION, "classes": folders["train"].classes,
            "short_side": short_side, "counts": counts}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return counts


class _Serial:
    """``ProcessPoolExecutor``'s ``map`` in this process (one worker: no pool to start)."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def map(self, fn, items, chunksize: int = 1):
        return map(fn, items)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append a member; returns the offset of its data in the file."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    offset = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))
    tar.addfile(info, io.BytesIO(data))
    return offset


class PackedDataset:
    """One split of a packed folder as a map-style dataset: ``(transform(PIL image), label)``,
    like ``ImageFolder`` (``classes``, ``class_to_idx``, ``targets``); ``encoded_bytes(i)`` gives
    image i's stored bytes."""

    def __init__(self, root: str | Path, split: str, transform: Any = None):
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        self.root, self.split, self.transform = Path(root), split, transform
        try:
            meta = json.loads((self.root / "meta.json").read_text())
        except (OSError, ValueError) as e:
            raise PackError(f"{self.root} is not a packed dataset (no readable meta.json: {e}; "
                            f"make one with `stability pack`)") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise PackError(f"{self.root / 'meta.json'}: not format {FORMAT} version {VERSION}")
        self.classes = list(meta["classes"])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        table = pq.read_table(self.root / "index.parquet")
        table = table.filter(pc.equal(table["split"], split))
        self.shard = table["shard"].to_numpy()
        self.offset = table["offset"].to_numpy()
        self.size = table["size"].to_numpy()
        self.targets = table["label"].to_pylist()
        self.paths = table["path"].to_pylist()
        self._files: dict[int, int] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self.targets)

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a worker process opens its own files
            self._files, self._pid = {}, os.getpid()
        if shard not in self._files:
            self._files[shard] = os.open(self.root / f"{self.split}-{shard:05d}.tar", os.O_RDONLY)
        return self._files[shard]

    def encoded_bytes(self, i: int) -> bytes:
        return os.pread(self._fd(int(self.shard[i])), int(self.size[i]), int(self.offset[i]))

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        img = Image.open(io.BytesIO(self.encoded_bytes(i))).convert("RGB")
        return (self.transform(img) if self.transform is not None else img), self.targets[i]

    def __getstate__(self) -> dict:  # spawned workers reopen the shards
        return {**self.__dict__, "_files": {}, "_pid": -1}
