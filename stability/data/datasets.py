"""Datasets by name and the seeded, resumable batch order.

- ``digits``: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, offline),
  resized to 32x32x3; a fixed seeded split (1,497 train / 300 val).
- ``synthetic``: generated class-conditional images of any size (speed tests).
- ``synthetic_motifs``: a generated 32 px dataset with structure finer than a patch: each class is
  a 4x4 binary motif, all motifs with the same number of lit pixels, stamped at random off-grid
  positions among distractor motifs on a smooth background (2,000 train / 1,000 val, fixed).
- ``cifar10`` / ``cifar100``: torchvision's python-format batches under ``data_root``.
- ``imagefolder``: ImageNet layout ``data_root/{train,val}/<class>/*.jpg``.
- ``packed``: an imagefolder packed by ``stability pack`` (tar shards of JPEG bytes + an index).

Image datasets (``DECODED``) decode per image with torchvision's transforms; the training transform
can add a per-image policy (``auto_augment``). ``batches`` keeps one loader per split and options
across epochs (its workers persist) and seeds every image's random draws by (seed, epoch, index),
so the batches of a (seed, epoch, start) are the same whatever the workers did before.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .workers import DECODED, IMAGE_FILES  # noqa: F401 (re-exported: per-image transforms; the rest are tensors in memory)

if TYPE_CHECKING:
    from torch.utils.data import Dataset

DATASETS = ("digits", "synthetic", "synthetic_motifs", "cifar10", "cifar100", "imagefolder", "packed")
# Training images and native side per dataset, for cost estimates before anything is loaded
# (None: set by the config, ``synthetic_size``).
SIZES: dict[str, tuple[int | None, int]] = {
    "digits": (1497, 32), "synthetic": (None, 32), "synthetic_motifs": (2000, 32),
    "cifar10": (50000, 32), "cifar100": (50000, 32), "imagefolder": (1281167, 224),
    "packed": (1281167, 224)}  # packed: an estimate (ImageNet); the real count is in its index
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# torchvision's python-format release: folder, then its files (batches, then the class names)
CIFAR_FILES = {"cifar10": ("cifar-10-batches-py", (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                                                   "batches.meta")),
               "cifar100": ("cifar-100-python", ("train", "test", "meta"))}


def _cifar_format(name: str) -> str:
    """The release's batch format, in words, for the messages about files not in it."""
    labels = "labels" if name == "cifar10" else "fine_labels"
    return (f"each a pickled dict with str keys 'data' (N x 3072 uint8) and '{labels}', as in the release; "
            "pass download=true to fetch it")


class DataError(ValueError):
    """A dataset cannot be loaded (missing root, wrong layout) or does not fit the run (a batch
    larger than the training set): the CLI prints it on one line."""


@dataclass(frozen=True)
class DataBundle:
    """``train_transform(policy)``: the training transform with a per-image policy (decoded
    datasets only). ``loaders``: the loaders ``batches`` built, kept for the bundle's life."""

    train: Dataset
    val: Dataset
    num_classes: int
    image_size: int
    train_transform: Callable[[str], Any] | None = None
    loaders: dict = field(default_factory=dict, compare=False, repr=False)
    test: Dataset | None = None  # held out of the training images (``hold_out``)

    def split(self, name: str) -> DataBundle:
        """This bundle with ``name`` (``train``, ``val`` or ``test``) in the validation slot, so that
        ``batches(..., train=False)`` and ``evaluate`` read it (in order, every image once)."""
        ds = {"train": self.train, "val": self.val, "test": self.test}[name]
        if ds is None:
            raise DataError("test_split: this run holds out no test images (set test_split > 0)")
        return self if name == "val" else replace(self, val=ds, loaders={})

    def close(self) -> None:
        """Stop the loaders' prefetch threads (the run is over; their workers end with them)."""
        for loader in self.loaders.values():
            loader.close()


# hold_out splits tensors: CIFAR is in memory too, but as torchvision's dataset of arrays that
# decodes per image (its transforms), which hold_out does not split.
HOLD_OUT_ONLY = (f"a test split is held out of {', '.join(d for d in DATASETS if d not in DECODED)} only "
                 f"(tensors), not of {', '.join(DECODED)} (decoded per image)")
TEST_SPLIT_SEED = 20210614  # fixed for every run and seed: the arXiv date of the paper


def hold_out(data: DataBundle, n: int) -> DataBundle:
    """``data`` with ``n`` training images moved to ``test``: a fixed seeded subset (the same for
    every run), the remaining training images kept in their order. In-memory datasets only."""
    import torch
    from torch.utils.data import TensorDataset

    if n <= 0:
        return data
    if not isinstance(data.train, TensorDataset):
        raise DataError(f"test_split: {HOLD_OUT_ONLY}")
    total = len(data.train)
    if n >= total:
        raise DataError(f"test_split: {n} is not below the {total} training images")
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(TEST_SPLIT_SEED))
    test_idx, keep = perm[:n].sort().values, perm[n:].sort().values
    tensors = data.train.tensors
    return replace(data, train=TensorDataset(*(t[keep] for t in tensors)),
                   test=TensorDataset(*(t[test_idx] for t in tensors)), loaders={})


def load_dataset(
    name: str,
    root: str | None = None,
    *,
    image_size: int | None = None,
    download: bool = False,
    synthetic_size: int = 1024,
    seed: int = 0,
    test_split: int = 0,
) -> DataBundle:
    """Load ``name`` (one of ``DATASETS``), with ``test_split`` training images held out as a
    test split (``hold_out``); raises ``DataError`` with the path on failure."""
    return hold_out(_load(name, root, image_size, download, synthetic_size, seed), test_split)


def _load(name: str, root: str | None, image_size: int | None, download: bool, synthetic_size: int,
          seed: int) -> DataBundle:
    if name == "digits":
        return _digits(image_size or 32)
    if name == "synthetic":
        return _synthetic(image_size or 32, synthetic_size, seed)
    if name == "synthetic_motifs":
        return _motifs(image_size or 32)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, _need_root(name, root), image_size or 32, download)
    if name == "imagefolder":
        return _imagefolder(_need_root(name, root), image_size or 224)
    if name == "packed":
        return _packed(_need_root(name, root), image_size or 224)
    raise DataError(f"dataset: unknown dataset {name!r} (allowed: {', '.join(DATASETS)})")


def check_source(name: str, root: str | None, download: bool = False, here: bool = True) -> None:
    """A cheap plan-time check that ``name`` can be loaded from ``root`` (``DataError`` if not),
    so a sweep fails before its first run, not run by run. Reads no image. ``here`` False (jobs
    that run on other machines, whose filesystems may differ) checks only that a dataset that
    needs ``data_root`` has one."""
    if name not in ("cifar10", "cifar100", "imagefolder", "packed"):
        return
    path = _need_root(name, root)
    if not here or (download and name.startswith("cifar")):
        return
    if name != "imagefolder" and not path.is_dir():  # imagefolder's message names its layout (below)
        raise DataError(f"data_root: {path} is not a folder (dataset {name!r})")
    if name.startswith("cifar"):
        _cifar_files_present(name, path)
    elif name == "imagefolder":
        for split in ("train", "val"):
            if not (path / split).is_dir():
                raise DataError(f"data_root: {path / split} is not a folder (expected ImageNet layout "
                                f"{path}/{{train,val}}/<class>/<image>)")
    else:  # its meta.json, index and shard sizes: a pack cut short fails here, not in every run
        from .packed import PackError, check_pack

        try:
            check_pack(path)
        except PackError as e:
            raise DataError(f"data_root: {e}") from None


def _cifar_files_present(name: str, root: Path) -> None:
    """``DataError`` naming the folder and the files of the release it lacks (reads none)."""
    base, files = CIFAR_FILES[name]
    folder = root / base
    missing = [f for f in files if not (folder / f).is_file()]
    if not folder.is_dir() or missing:
        what = f"no {name} batches under {folder}" if not folder.is_dir() or len(missing) == len(files) else \
            f"{folder} lacks {', '.join(missing)}"
        # data_root named the batches folder itself, not the folder that holds it
        hint = f"; data_root is the folder holding {base}/: pass {root.parent}" if (root / files[0]).is_file() else ""
        raise DataError(f"data_root: {what} (expected python-format files {', '.join(files)}, "
                        f"{_cifar_format(name)}){hint}")


def _check_cifar_split(what: str, data, targets, classes: int, fmt: str) -> None:
    """``DataError`` unless ``data`` is uint8 images and ``targets`` one integer label in
    0..classes-1 per image: else a run would fail mid-training (an image PIL cannot make, an index
    past the head), far from the file at fault."""
    import numpy as np

    t = np.asarray(targets)
    ok = (getattr(data, "dtype", None) == np.uint8 and t.ndim == 1 and t.dtype.kind in "iu" and len(t) == len(data)
          and (not len(t) or (int(t.min()) >= 0 and int(t.max()) < classes)))
    if not ok:
        raise DataError(f"data_root: {what} hold {len(data)} images ({getattr(data, 'dtype', '?')}) and {len(t)} "
                        f"labels ({t.dtype}{f', {t.min()}..{t.max()}' if len(t) and t.dtype.kind in 'iuf' else ''}); "
                        f"expected uint8 images and integer labels 0..{classes - 1} (the meta file names {classes} "
                        f"classes): {fmt}")


def _need_root(name: str, root: str | None) -> Path:
    if not root:
        raise DataError(f"data_root: dataset {name!r} needs data_root (a local folder)")
    return Path(root).expanduser()


def _normalize(x):
    import torch

    mean = torch.tensor(_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def digits_arrays():
    """scikit-learn's digits, ``(images (1797, 8, 8) in 0..16, labels)``, read from the file it
    ships without importing scikit-learn (that import costs a run about a second)."""
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def _digits(image_size: int) -> DataBundle:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import TensorDataset

    images, labels = digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = _normalize(x.expand(-1, 3, -1, -1).contiguous())
    y = torch.tensor(labels, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    val, train = perm[:300], perm[300:]
    return DataBundle(TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]), 10, image_size)


def _synthetic(image_size: int, n: int, seed: int, num_classes: int = 10) -> DataBundle:
    import torch
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(1000 + seed)
    protos = torch.randn(num_classes, 3, image_size, image_size, generator=g)

    def make(count: int) -> Any:
        y = torch.randint(0, num_classes, (count,), generator=g)
        return TensorDataset(protos[y] + 2.0 * torch.randn(count, 3, image_size, image_size, generator=g), y)

    return DataBundle(make(n), make(max(n // 5, num_classes)), num_classes, image_size)


MOTIF_SPLIT = (2000, 1000)  # train, val: val large enough for ~0.7-point sampling error at 5%


def motif_bank(count: int, size: int = 4):
    """``count`` distinct ``size`` x ``size`` binary motifs, each lighting half its pixels, none a
    rotation of another (fixed: seed 0). The first ``num_classes`` are the classes, the rest distractors."""
    import numpy as np

    rng = np.random.default_rng(0)
    pool: list = []
    while len(pool) < count:
        cand = np.zeros(size * size, np.float32)
        cand[rng.choice(size * size, size * size // 2, replace=False)] = 1.0
        cand = cand.reshape(size, size)
        if all(not np.array_equal(np.rot90(cand, k), p) for p in pool for k in range(4)):
            pool.append(cand)
    return np.stack(pool)


def motif_arrays(n: int, *, seed: int, size: int = 32, num_classes: int = 10, copies: int = 4,
                 distractors: int = 1, noise: float = 0.2):
    """``(images (n, 3, size, size) float32, labels)`` of the synthetic motifs task.

    Why it is built this way: a class can be told only from a 4x4 pattern (the patch size of the
    tiny ViTs), stamped at positions uniform over the image, so a motif straddles patch borders
    at 15 of 16 offsets; every motif lights 8 of its 16 pixels, so patch means carry no label;
    distractor motifs (a pool of their own) and a smooth random background make the pattern, not
    the presence of ink, the cue (``motif_bank``).
    """
    import numpy as np

    m = 4
    motifs = motif_bank(num_classes + 5)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    fx, fy, ph = (rng.uniform(0.5, 2.0, (n, 1, 1)) for _ in range(3))
    background = 0.3 * np.sin(2 * np.pi * (fx * xx + fy * yy) + 6.3 * ph)
    x = np.repeat(background[:, None], 3, axis=1).astype(np.float32)
    x += noise * rng.standard_normal(x.shape).astype(np.float32)
    for i in range(n):
        kinds = [labels[i]] * copies + list(rng.integers(num_classes, len(motifs), distractors))
        for k in kinds:
            r, c = rng.integers(0, size - m + 1, 2)
            colour = rng.uniform(0.6, 1.4, 3).astype(np.float32) * rng.choice([-1.0, 1.0])
            x[i, :, r:r + m, c:c + m] += colour[:, None, None] * motifs[k]
    return x, labels.astype(np.int64)


def _motifs(image_size: int) -> DataBundle:
    import torch
    from torch.utils.data import TensorDataset

    n_train, n_val = MOTIF_SPLIT
    x, y = motif_arrays(n_train + n_val, seed=1, size=image_size)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    return DataBundle(TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:]),
                      10, image_size)


def policy(name: str):
    """torchvision's per-image policy ``name`` (``config.AUTO_AUGMENTS``), or None for ``none``."""
    from torchvision.transforms import v2

    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)  # the paper's (via DeiT/pycls)
    if name == "randaugment":
        return v2.RandAugment()  # torchvision's defaults: 2 ops, magnitude 9
    return None


def _transforms(train: bool, image_size: int, small: bool, auto_augment: str = "none"):
    import torch
    from torchvision.transforms import v2

    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(_MEAN, _STD)]
    if small:  # CIFAR-style 32 px
        head = [v2.RandomCrop(image_size, padding=4), v2.RandomHorizontalFlip()] if train else []
        if image_size != 32:
            head.insert(0, v2.Resize(image_size, antialias=True))
    elif train:
        head = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        head = [v2.Resize(round(image_size * 256 / 224), antialias=True), v2.CenterCrop(image_size)]
    if train and (p := policy(auto_augment)) is not None:
        head.append(p)  # after crop and flip, on the image (PIL or uint8), as timm and DeiT do
    return v2.Compose(head + tail)


def _train_transform(image_size: int, small: bool) -> Callable[[str], Any]:
    return lambda auto_augment: _transforms(True, image_size, small, auto_augment)


def _cifar(name: str, root: Path, image_size: int, download: bool) -> DataBundle:
    from torchvision.datasets import CIFAR10, CIFAR100

    base = CIFAR10 if name == "cifar10" else CIFAR100

    class _Cifar(base):  # type: ignore[misc, valid-type]
        # Accept any files with the right names: torchvision insists on the md5s of the release,
        # which rules out re-packed copies and the small fixtures our tests write.
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / f).is_file() for f in CIFAR_FILES[name][1])

        def _load_meta(self) -> None:
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    train_tf, val_tf = _transforms(True, image_size, True), _transforms(False, image_size, True)  # not in the try: our errors are no data's
    if not download:
        _cifar_files_present(name, root)
    fmt = _cifar_format(name)
    try:
        train = _Cifar(str(root), train=True, download=download, transform=train_tf)
        val = _Cifar(str(root), train=False, transform=val_tf)
    except (RuntimeError, OSError) as e:  # torchvision's "not found or corrupted", a download or a read that failed
        raise DataError(f"data_root: {name} under {root}: {'the download failed: ' if download else ''}"
                        f"{(str(e).splitlines() or [''])[0][:300]}") from e
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, EOFError, ImportError, OverflowError,
            pickle.UnpicklingError) as e:  # files of the right names in another format: say so, not a traceback
        bad = _unreadable_cifar_file(name, root / base.base_folder)
        raise DataError(f"data_root: the {name} files under {root / base.base_folder} are not python-format "
                        f"batches ({f'{bad}: ' if bad else ''}{type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:200]}; expected {fmt})") from e
    for split, d in (("train", train), ("test", val)):
        _check_cifar_split(f"the {name} {split} files under {root / base.base_folder}", d.data, d.targets,
                           len(d.classes), fmt)
    return DataBundle(train, val, len(train.classes), image_size, _train_transform(image_size, True))


def _unreadable_cifar_file(name: str, folder: Path) -> str | None:
    """The first of the release's files under ``folder`` that does not unpickle to a dict (a
    truncated or foreign file), for the message; None when each does. Read only after loading
    failed."""
    for f in CIFAR_FILES[name][1]:
        try:
            with open(folder / f, "rb") as fh:
                if not isinstance(pickle.load(fh, encoding="latin1"), dict):
                    return f
        except Exception:  # noqa: BLE001 - whatever unpickling a damaged file raises: that file is the one
            return f
    return None


class ImageFiles:
    """One split of an image folder as torchvision's ``ImageFolder`` presents it (``classes``,
    ``class_to_idx``, ``samples``, ``targets``; ``ds[i]`` is ``(transform(RGB image), label)``
    read by torchvision's loader), its files found by ``packed.image_files``: the walk
    ``stability pack`` uses, so training and a pack of the folder see the same files in the same
    order, and a symlink loop is refused (``ImageFolder``'s ``os.walk`` followed it until the path
    was too long: 36 files trained as 1,476). A class of its own (not built inside a function) so
    that spawned loader workers can unpickle it.

    Args:
        split_dir: ``root/train`` or ``root/val``.
        transform: applied to each PIL image (None: the image itself).
    """

    def __init__(self, split_dir: Path, transform: Any = None):
        from .packed import image_files

        self.root, self.transform = str(split_dir), transform
        self.classes, self.samples = image_files(Path(split_dir))
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[i]
        img = default_loader(path)
        return (self.transform(img) if self.transform is not None else img), label


def _imagefolder(root: Path, image_size: int) -> DataBundle:
    from .packed import PackError, check_same_classes

    check_source("imagefolder", str(root))  # the layout, as a sweep's plan checks it
    try:  # a split with no class folder, a class with no image, a symlink loop: named by the walk
        train = ImageFiles(root / "train", _transforms(True, image_size, False))
        val = ImageFiles(root / "val", _transforms(False, image_size, False))
        check_same_classes(root, train.classes, val.classes)
    except PackError as e:
        raise DataError(f"data_root: {e}") from None
    return DataBundle(train, val, len(train.classes), image_size, _train_transform(image_size, False))


def _packed(root: Path, image_size: int) -> DataBundle:
    from .packed import PackedDataset, PackError

    try:
        train = PackedDataset(root, "train", _transforms(True, image_size, False))
        val = PackedDataset(root, "val", _transforms(False, image_size, False))
    except PackError as e:
        raise DataError(f"data_root: {e}") from None
    return DataBundle(train, val, len(train.classes), image_size, _train_transform(image_size, False))


class EpochSampler:
    """Seeded permutation per epoch, sliced per rank, starting at a batch offset (for resume).

    The order depends only on (seed, epoch), so a run resumed mid-epoch sees the same batches.
    Ranks take strided slices (as ``DistributedSampler``), so step i's batches over all ranks are
    exactly the single-process batch i of the global batch size; the tail is dropped so ranks stay
    in step.
    """

    def __init__(self, n: int, *, seed: int, epoch: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, start: int = 0):
        self.n, self.seed, self.epoch, self.shuffle = n, seed, epoch, shuffle
        self.rank, self.world_size, self.start = rank, world_size, start

    def _indices(self) -> list[int]:
        import torch

        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        usable = self.n - self.n % self.world_size
        return order[:usable][self.rank::self.world_size][self.start:]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


class EpochBatches:
    """The batch sampler a loader keeps for its life: told the epoch and start batch before each
    pass (``set``), it yields this rank's batches of ``EpochSampler``. Training batches carry each
    image's seed, ``(index, seed)``: an image's random draws depend on (seed, epoch, index) only,
    not on which worker made it or what that worker made before (persistent workers, resumes)."""

    def __init__(self, n: int, size: int, *, seed: int, rank: int, world_size: int, train: bool):
        self.n, self.size, self.seed, self.rank, self.world_size = n, size, seed, rank, world_size
        self.train, self.epoch, self.start = train, 0, 0

    def set(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list]:
        from .pipeline import sample_seed

        if not self.train:  # validation: every example once over all ranks, no drop
            idx = list(range(self.rank, self.n, self.world_size))
            return iter([idx[i:i + self.size] for i in range(0, len(idx), self.size)])
        order = EpochSampler(self.n, seed=self.seed, epoch=self.epoch, rank=self.rank,
                             world_size=self.world_size, start=self.start * self.size)._indices()
        full = len(order) - len(order) % self.size
        pairs = [(i, sample_seed(self.seed, self.epoch, i)) for i in order[:full]]
        return iter([pairs[i:i + self.size] for i in range(0, full, self.size)])

    def __len__(self) -> int:
        if not self.train:
            return -(-len(range(self.rank, self.n, self.world_size)) // self.size)
        return max((self.n // self.world_size - self.start * self.size) // self.size, 0)


def check_decode(decode: str, device) -> None:
    """``DataError`` when ``decode: gpu`` meets a device that is not CUDA."""
    if decode == "gpu" and device.type != "cuda":
        raise DataError(f"decode: gpu needs a CUDA device (this run is on {device}); use decode: cpu")


def eval_batch_size(batch_size: int) -> int:
    """Images per evaluation batch on each rank: twice the training batch (no activations kept
    for a backward pass)."""
    return 2 * batch_size


def batches(data: DataBundle, batch_size: int, seed: int, num_workers: int | str, epoch: int, start: int,
            train: bool, device, d, *, auto_augment: str = "none", decode: str = "cpu",
            prefetch_factor: int = 2, overlap: bool = True) -> Any:
    """The run's batches. Training: this rank's share of each global batch (strided, see
    ``EpochSampler``) from batch ``start`` of the epoch (``d``: this process's
    ``distributed.Dist``). Validation: every example once over all ranks (no drop).

    Decoded datasets get one loader per split and options, kept on ``data`` so its workers
    persist across epochs (``pipeline.Loader``); ``num_workers`` ``auto`` is resolved there, and
    ``auto_augment`` / ``decode`` apply to training batches only (validation decodes on the CPU);
    ``overlap`` (GPU decoding): the next batches decoded in a thread while the step runs."""
    from torch.utils.data import BatchSampler, DataLoader, TensorDataset

    ds = data.train if train else data.val
    per_rank = batch_size // d.world_size
    if isinstance(ds, TensorDataset):  # in memory: one fancy-index per batch, no collate, no workers
        if train:
            sampler = EpochSampler(len(ds), seed=seed, epoch=epoch, rank=d.rank,
                                   world_size=d.world_size, start=start * per_rank)
        else:
            sampler = range(d.rank, len(ds), d.world_size)
        chunks = BatchSampler(sampler, per_rank if train else eval_batch_size(batch_size), drop_last=train)
        return DataLoader(ds, sampler=chunks, batch_size=None)
    from .pipeline import Loader, resolve_workers

    workers = resolve_workers(num_workers, device.type)
    decode = decode if train else "cpu"
    check_decode(decode, device)
    key = (train, batch_size, seed, workers, str(device), d.rank, d.world_size, auto_augment, decode, prefetch_factor,
           overlap)
    if key not in data.loaders:
        if train and auto_augment != "none" and decode == "cpu":
            import copy

            ds = copy.copy(ds)  # the bundle's dataset keeps its transform; this loader's has the policy
            ds.transform = data.train_transform(auto_augment)
        size = per_rank if train else eval_batch_size(batch_size)
        sampler = EpochBatches(len(ds), size, seed=seed, rank=d.rank, world_size=d.world_size, train=train)
        gpu = (data.image_size, policy(auto_augment), _MEAN, _STD) if decode == "gpu" else None
        data.loaders[key] = Loader(ds, sampler, workers, device, prefetch_factor=prefetch_factor, gpu=gpu,
                                   overlap=overlap)
    return data.loaders[key].epoch(epoch, start)


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (the model init and anything else drawn from them)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def steps_per_epoch(data: DataBundle, batch_size: int, cap: int | None, world_size: int, accum: int) -> int:
    """Optimizer steps per epoch (at most ``cap``); ``DataError`` when the global batch cannot be
    cut into world size x accumulation equal parts or is larger than the training set."""
    if batch_size % (world_size * accum):
        raise DataError(f"batch_size {batch_size} is not divisible by world_size x accum_steps "
                        f"= {world_size} x {accum}: the global batch must stay exact")
    n_batches = len(data.train) // batch_size
    if n_batches == 0:
        raise DataError(f"batch_size {batch_size} is larger than the training set ({len(data.train)} images)")
    return min(n_batches, cap or n_batches)
