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


# The end of every message about a pack that ``stability pack`` did not finish or that changed
# since: nothing in it can be repaired in place, and a new pack is one command.
DAMAGED = "the pack is incomplete or damaged: re-pack it with `stability pack`"
META_FIELDS = ("format", "version", "classes", "counts")  # what every reader of meta.json needs


def _encode(path: str, short_side: int | None) -> tuple[bytes | None, str | None]:
    """The bytes to store for one image, decoded in full once to verify it: ``(None, why)`` for
    a file that is not a whole image (truncated, garbage, text named ``.jpg``)."""
    from PIL import Image

    try:
        data = Path(path).read_bytes()
        img = Image.open(io.BytesIO(data))
        img.load()  # the whole image: a truncated file fails here, not at training time
        if short_side is None:
            return data, None
        if min(img.size) <= short_side and img.format == "JPEG" and img.mode == "RGB":
            return data, None  # already small enough: its bytes as they are
        img = img.convert("RGB")
        if min(img.size) > short_side:
            scale = short_side / min(img.size)
            img = img.resize((max(round(img.width * scale), 1), max(round(img.height * scale), 1)),
                             Image.Resampling.BICUBIC, reducing_gap=3.0)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=JPEG_QUALITY)
        return out.getvalue(), None
    except Image.UnidentifiedImageError:
        return None, "not an image format PIL can read"
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def _encode_star(job: tuple[str, int | None]) -> tuple[bytes | None, str | None]:
    return _encode(*job)


def image_files(split_dir: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """The image files of one split, found as ``ImageFolder`` finds them: the one walk of an
    image folder, used by ``stability pack`` and by ``dataset: imagefolder`` training alike, so
    both see the same files.

    Symlinks are followed and resolved: a folder reached twice (a link back up, ``loop -> ..``,
    or two links to one folder) is refused, naming it, where ``os.walk`` would follow a loop
    until the path is too long and read every image dozens of times.

    Args:
        split_dir: ``root/train`` or ``root/val``, holding ``<class>/.../<image>``.

    Returns:
        ``(classes, [(path, label)])`` in ImageFolder's order (sorted classes; files sorted by
        folder, then name), so a packed split has ImageFolder's labels and order.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise PackError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image>)")
    samples, seen = [], {}
    for label, name in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(split_dir / name, followlinks=True):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen:
                raise PackError(f"{dirpath} is {seen[(st.st_dev, st.st_ino)]} again (a symlink loop or a second "
                                f"link to one folder): its images would be read twice; remove the link")
            seen[(st.st_dev, st.st_ino)] = dirpath
            dirnames.sort()
            found.append((dirpath, sorted(f for f in filenames if f.lower().endswith(IMG_EXTENSIONS))))
        files = [(os.path.join(d, f), label) for d, fs in sorted(found) for f in fs]
        if not files:
            raise PackError(f"{split_dir / name}: no image files ({', '.join(IMG_EXTENSIONS)})")
        samples += files
    return classes, samples


def check_same_classes(root: Path, train: list[str], val: list[str], shown: int = 5) -> None:
    """Refuse splits whose class folders differ (a label would mean another class in each).

    Args:
        root: the image folder (its ``train`` and ``val`` are named in the message).
        train: the class folders of ``root/train``.
        val: the class folders of ``root/val``.
        shown: how many classes each side names at most.

    Returns:
        None; raises ``PackError`` naming the classes only one split has.
    """
    if train == val:
        return
    parts = []
    for split, only in (("train", sorted(set(train) - set(val))), ("val", sorted(set(val) - set(train)))):
        if only:
            more = f" and {len(only) - shown} more" if len(only) > shown else ""
            parts.append(f"only in {split}: {', '.join(only[:shown])}{more}")
    raise PackError(f"class folders differ between {root / 'train'} and {root / 'val'} ({'; '.join(parts)})")


def pack(root: str | Path, out: str | Path, *, short_side: int | None = None, shard_mb: float = 1024,
         workers: int = 1, bad: str = "refuse", progress: bool = False) -> dict[str, int]:
    """Pack ``root/{train,val}/<class>/<image>`` into ``out``; returns the images per split (and
    ``skipped``). Every image is decoded once (``workers`` processes); files that are not whole
    images are refused (``bad="refuse"``: nothing is left in ``out``, the error names them) or
    left out and counted (``bad="skip"``). ``meta.json`` is written last: a folder without it is
    not a packed dataset, so a pack that stopped halfway is never read as one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if bad not in ("refuse", "skip"):
        raise PackError(f"bad: {bad!r} is not allowed (refuse, skip)")
    root, out = Path(root), Path(out)
    for split in SPLITS:
        if not (root / split).is_dir():
            raise PackError(f"{root / split} is not a folder (expected {root}/{{train,val}}/<class>/<image>)")
    if out.exists() and any(out.iterdir()):
        raise PackError(f"{out} exists and is not empty (pack into a new folder)")
    found = {s: image_files(root / s) for s in SPLITS}
    check_same_classes(root, found["train"][0], found["val"][0])
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        index, failed = _write_shards(found, root, out, short_side, int(shard_mb * 2**20), workers, progress, written)
        if failed and bad == "refuse":
            raise PackError(f"{len(failed)} file(s) are not whole images, nothing packed (--bad skip leaves them "
                            f"out): " + "; ".join(f"{p} ({why})" for p, why in failed[:3])
                            + (f"; and {len(failed) - 3} more" if len(failed) > 3 else ""))
        pq.write_table(pa.table(index), out / "index.parquet")
        written.append(out / "index.parquet")
    except BaseException:
        for p in written:  # only what this call wrote: ``out`` was empty
            p.unlink(missing_ok=True)
        raise
    counts = {s: index["split"].count(s) for s in SPLITS}
    meta = {"format": FORMAT, "version": VERSION, "classes": found["train"][0], "short_side": short_side,
            "counts": counts, "skipped": [p for p, _ in failed]}
    tmp = out / ".meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out / "meta.json")
    return {**counts, "skipped": len(failed)}


def _write_shards(found: dict, root: Path, out: Path, short_side: int | None, limit: int, workers: int,
                  progress: bool, written: list[Path]) -> tuple[dict[str, list], list[tuple[str, str]]]:
    """Decode, encode and append every image to its split's shards; the index, and the bad files."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    index: dict[str, list] = {k: [] for k in ("split", "shard", "offset", "size", "label", "path")}
    failed: list[tuple[str, str]] = []
    total = sum(len(samples) for _, samples in found.values())
    bar = Progress(TextColumn("[bold]pack (decoding every image)"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), disable=not progress)
    with bar, ProcessPoolExecutor(workers) if workers > 1 else _Serial() as pool:
        task = bar.add_task("pack", total=total)
        for split, (_, samples) in found.items():
            shard, tar, size, n = -1, None, limit, 0
            jobs = [(p, short_side) for p, _ in samples]
            for (path, label), (data, why) in zip(samples, pool.map(_encode_star, jobs, chunksize=64), strict=True):
                bar.advance(task)
                if data is None:
                    failed.append((path, why))
                    continue
                if size >= limit:
                    if tar is not None:
                        tar.close()
                    shard, size = shard + 1, 0
                    written.append(shard_path(out, split, shard))
                    tar = tarfile.open(written[-1], "w", format=tarfile.USTAR_FORMAT)
                offset = _add(tar, member(n), data)
                _add(tar, member(n, ".cls"), str(label).encode())
                size, n = tar.offset, n + 1
                for k, v in zip(index, (split, shard, offset, len(data), label,
                                        str(Path(path).relative_to(root / split))), strict=True):
                    index[k].append(v)
            if tar is not None:
                tar.close()
    return index, failed


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


def read_meta(root: str | Path) -> dict[str, Any]:
    """A pack's ``meta.json``, checked to be one ``stability pack`` wrote in full.

    Args:
        root: the packed folder.

    Returns:
        The parsed ``meta.json`` (``format``, ``version``, ``classes``, ``counts`` and more);
        raises ``PackError`` naming the file when it is missing, not JSON, of another format or
        lacks a field.
    """
    path = Path(root) / "meta.json"
    if not path.is_file():
        raise PackError(f"{root} is not a packed dataset (no meta.json; make one with `stability pack`)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # a truncated write, another file saved under the name
        raise PackError(f"{path}: not readable JSON ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}): "
                        f"{DAMAGED}") from None
    if not isinstance(meta, dict):
        raise PackError(f"{path}: not a JSON object: {DAMAGED}")
    if "format" in meta and (meta["format"] != FORMAT or meta.get("version") != VERSION):
        raise PackError(f"{path}: not format {FORMAT} version {VERSION} (another tool's, or another version's): "
                        "re-pack it with `stability pack`")
    if missing := [k for k in META_FIELDS if k not in meta]:
        raise PackError(f"{path}: lacks {', '.join(missing)}: {DAMAGED}")
    counts = meta["counts"]
    if (not isinstance(meta["classes"], list) or not all(isinstance(c, str) for c in meta["classes"])
            or not isinstance(counts, dict) or not all(type(counts.get(s)) is int and counts[s] >= 0 for s in SPLITS)):
        raise PackError(f"{path}: classes is not a list of names or counts not {{train, val}} image counts: {DAMAGED}")
    return meta


def read_index(root: str | Path, columns: list[str] | None = None) -> Any:
    """A pack's ``index.parquet`` as a pyarrow table.

    Args:
        root: the packed folder.
        columns: the columns to read (None: all).

    Returns:
        The table; raises ``PackError`` naming the file when it is missing, truncated or lacks
        a column (pyarrow's own error would be a traceback from deep in the reader).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(root) / "index.parquet"
    if not path.is_file():
        raise PackError(f"{path} is missing: {DAMAGED}")
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException, KeyError, ValueError) as e:
        why = (str(e).splitlines() or [""])[0]
        head, _, rest = why.partition(": ")
        why = rest if str(path) in head else why  # pyarrow's "Could not open ... '<path>': why": the path is named
        raise PackError(f"{path}: unreadable ({type(e).__name__}: {why.split('. ')[0][:160]}): {DAMAGED}") from None


def shard_path(root: str | Path, split: str, shard: int) -> Path:
    """Where shard ``shard`` of ``split`` lies.

    Args:
        root: the packed folder.
        split: ``train`` or ``val``.
        shard: the shard's number (the index's ``shard`` column).

    Returns:
        ``root/<split>-<shard, 5 digits>.tar``.
    """
    return Path(root) / f"{split}-{shard:05d}.tar"


def member(i: int, ext: str = ".jpg") -> str:
    """The name of a split's tar member for image ``i``.

    Args:
        i: the image's row in the split's index (images are numbered in the order packed).
        ext: ``.jpg`` (its bytes, whatever their format) or ``.cls`` (its label).

    Returns:
        ``<i, 8 digits><ext>``, WebDataset-style.
    """
    return f"{i:08d}{ext}"


def check_shards(root: str | Path, split: str, table: Any) -> None:
    """Refuse a split whose shards are missing or shorter than its index says: one ``stat`` per
    shard, no image read, so a pack cut short (a copy that stopped, a full disk) is found before
    a run starts, not at the image that falls past the end.

    Args:
        root: the packed folder.
        split: ``train`` or ``val``.
        table: the split's rows of the index, in order (``shard``, ``offset``, ``size``; ``path``
            is named when present).

    Returns:
        None; raises ``PackError`` naming the shard file, the first member past its end and
        that image's path.
    """
    import numpy as np

    if not table.num_rows:
        return
    shard = table["shard"].to_numpy()
    ends = table["offset"].to_numpy() + table["size"].to_numpy()
    for k in np.unique(shard):
        path = shard_path(root, split, int(k))
        try:
            have = path.stat().st_size
        except OSError:
            have = None
        rows = np.flatnonzero((shard == k) & (ends > (have or 0)))
        if have is None or len(rows):
            i = int(rows[0]) if len(rows) else int(np.flatnonzero(shard == k)[0])
            what = "is missing" if have is None else f"is {have} bytes, cut short at member {member(i)}"
            named = f" ({table['path'][i].as_py()})" if "path" in table.column_names else ""
            raise PackError(f"{path} {what}{named}: {DAMAGED}")


def check_pack(root: str | Path) -> None:
    """A pack's plan-time check: its ``meta.json``, its index and its shards' sizes (no image read).

    Args:
        root: the packed folder.

    Returns:
        None; raises ``PackError`` naming the first file at fault.
    """
    import pyarrow.compute as pc

    read_meta(root)
    table = read_index(root, ["split", "shard", "offset", "size"])
    for split in SPLITS:
        check_shards(root, split, table.filter(pc.equal(table["split"], split)))


class PackedDataset:
    """One split of a packed folder as a map-style dataset: ``(transform(PIL image), label)``,
    like ``ImageFolder`` (``classes``, ``class_to_idx``, ``targets``); ``encoded_bytes(i)`` gives
    image i's stored bytes."""

    def __init__(self, root: str | Path, split: str, transform: Any = None):
        import pyarrow.compute as pc

        self.root, self.split, self.transform = Path(root), split, transform
        meta = read_meta(self.root)
        self.classes = list(meta["classes"])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        table = read_index(self.root)
        table = table.filter(pc.equal(table["split"], split))
        check_shards(self.root, split, table)
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
            self._files[shard] = os.open(shard_path(self.root, self.split, shard), os.O_RDONLY)
        return self._files[shard]

    def _where(self, i: int) -> str:
        """Image ``i``'s place in the pack, for messages: its shard file and member."""
        return f"{shard_path(self.root, self.split, int(self.shard[i]))}, member {member(i)}"

    def encoded_bytes(self, i: int) -> bytes:
        """Image ``i``'s stored bytes (one ``pread``); ``OSError`` naming its shard and member
        when the shard ends before them (cut short after the run checked it)."""
        data = os.pread(self._fd(int(self.shard[i])), int(self.size[i]), int(self.offset[i]))
        if len(data) != int(self.size[i]):
            raise OSError(f"{self._where(i)}: {len(data)} of its {int(self.size[i])} bytes in the file: {DAMAGED}")
        return data

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        data = self.encoded_bytes(i)
        try:
            img = Image.open(io.BytesIO(data)).convert("RGB")
        except Image.UnidentifiedImageError:  # its message is the repr of the BytesIO: say what it is
            raise OSError(f"{self._where(i)}: not an image PIL can read: {DAMAGED}") from None
        except (OSError, ValueError, SyntaxError) as e:  # every image was decoded whole when packed
            raise OSError(f"{self._where(i)}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}: "
                          f"{DAMAGED}") from None
        return (self.transform(img) if self.transform is not None else img), self.targets[i]

    def __getstate__(self) -> dict:  # spawned workers reopen the shards
        return {**self.__dict__, "_files": {}, "_pid": -1}
