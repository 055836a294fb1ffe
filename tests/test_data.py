import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from stability.data.datasets import DataError, EpochSampler, digits_arrays, load_dataset


def test_digits_real_images_fixed_split():
    a, b = load_dataset("digits"), load_dataset("digits")
    x, y = a.train.tensors
    assert x.shape == (1497, 3, 32, 32) and len(a.val) == 300 and a.num_classes == 10
    assert torch.equal(y, b.train.tensors[1]) and set(y.tolist()) == set(range(10))
    # train and val are disjoint images
    assert not (a.val.tensors[0][:, None] == x[None, :50]).flatten(2).all(2).any()


def test_digits_file_equals_sklearn_loader():
    from sklearn.datasets import load_digits

    images, labels = digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)


def test_synthetic_any_size():
    d = load_dataset("synthetic", image_size=48, synthetic_size=100)
    assert d.train.tensors[0].shape == (100, 3, 48, 48) and d.image_size == 48


def _write_cifar(root, n_train=20, n_test=10, classes=10, hundred=False):
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    label_key = "fine_labels" if hundred else "labels"

    def batch(n):
        return {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                label_key: rng.integers(0, classes, n).tolist()}

    if hundred:
        files = {"train": batch(n_train), "test": batch(n_test)}
        meta = ("meta", {"fine_label_names": [f"c{i}" for i in range(classes)]})
    else:
        files = {f"data_batch_{i}": batch(n_train // 5) for i in range(1, 6)}
        files["test_batch"] = batch(n_test)
        meta = ("batches.meta", {"label_names": [f"c{i}" for i in range(classes)]})
    files[meta[0]] = meta[1]
    for name, obj in files.items():
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f)


@pytest.mark.parametrize("name,hundred,classes", [("cifar10", False, 10), ("cifar100", True, 100)])
def test_cifar_from_local_root(tmp_path, name, hundred, classes):
    _write_cifar(tmp_path, classes=classes, hundred=hundred)
    d = load_dataset(name, str(tmp_path))
    assert len(d.train) == 20 and len(d.val) == 10 and d.num_classes == classes
    x, y = d.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < classes


def test_cifar_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="cifar10 batches under"):
        load_dataset("cifar10", str(tmp_path))
    with pytest.raises(DataError, match="needs data_root"):
        load_dataset("cifar10")


def test_imagefolder(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                img = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
                Image.fromarray(img).save(tmp_path / split / cls / f"{i}.png")
    d = load_dataset("imagefolder", str(tmp_path), image_size=32)
    assert d.num_classes == 2 and len(d.train) == 6 and len(d.val) == 6
    assert d.train[0][0].shape == (3, 32, 32) and d.val[5][0].shape == (3, 32, 32)
    with pytest.raises(DataError, match="ImageNet layout"):
        load_dataset("imagefolder", str(tmp_path / "nope"))
    # a class folder with no image, then a split with no class folder: named, one line
    for f in (tmp_path / "val" / "dog").iterdir():
        f.unlink()
    (tmp_path / "val" / "dog" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=f"^data_root: {tmp_path / 'val' / 'dog'}: no image files"):
        load_dataset("imagefolder", str(tmp_path), image_size=32)
    for d in (tmp_path / "val").iterdir():
        shutil.rmtree(d)
    with pytest.raises(DataError, match=f"^data_root: {tmp_path / 'val'}: no class folders \\(expected "):
        load_dataset("imagefolder", str(tmp_path), image_size=32)


def _small_folder(root, classes=("cat", "dog"), per_split=(3, 2)):
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_split, strict=True):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def test_imagefolder_finds_the_files_a_pack_would_and_refuses_a_symlink_loop(tmp_path):
    """Training walks an image folder with the pack's walk (``packed.image_files``): the files and
    labels torchvision's ImageFolder finds (nested folders, upper-case extensions, symlinked
    classes, non-images skipped), but a symlink loop is refused in one line naming the link,
    where ImageFolder followed it ~40 times (36 files trained as 1,476)."""
    import os

    from torchvision.datasets import ImageFolder

    root = _small_folder(tmp_path / "f")
    (root / "train/cat/sub").mkdir()
    Image.new("RGB", (20, 20)).save(root / "train/cat/sub/X.PNG")
    (root / "train/dog/notes.txt").write_text("not an image")
    _small_folder(tmp_path / "elsewhere", classes=("bird",))
    for split in ("train", "val"):
        os.symlink(tmp_path / "elsewhere" / split / "bird", root / split / "bird")
    d = load_dataset("imagefolder", str(root), image_size=16)
    for split, ds in (("train", d.train), ("val", d.val)):
        tv = ImageFolder(str(root / split), transform=ds.transform)
        assert ds.samples == tv.samples and ds.classes == tv.classes == ["bird", "cat", "dog"], split
        assert ds.class_to_idx == tv.class_to_idx and ds.targets == tv.targets, split
    assert torch.equal(d.val[3][0], ImageFolder(str(root / "val"), transform=d.val.transform)[3][0])
    assert pickle.loads(pickle.dumps(d.train)).samples == d.train.samples  # spawned workers unpickle it
    assert len(d.train) == 10 and d.num_classes == 3
    os.symlink("..", root / "train/cat/loop")
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", str(root), image_size=16)
    line = str(e.value)
    assert len(line.splitlines()) == 1 and line.startswith("data_root: ") and "train/cat/loop" in line, line
    assert "symlink loop" in line and "remove the link" in line, line


def test_imagefolder_class_mismatch_names_the_classes(tmp_path):
    root = _small_folder(tmp_path / "f", classes=("cat", "dog"))
    _small_folder(root, classes=("bird",), per_split=(0, 2))  # bird only in val
    (root / "train/bird").rmdir()
    (root / "val/cat").rename(root / "val/kitten")
    with pytest.raises(DataError, match=r"class folders differ between .*train and .*val "
                                        r"\(only in train: cat; only in val: bird, kitten\)$"):
        load_dataset("imagefolder", str(root), image_size=16)


def test_epoch_sampler_deterministic_resumable_and_rank_strided():
    full = list(EpochSampler(103, seed=1, epoch=2))
    assert full == list(EpochSampler(103, seed=1, epoch=2)) and sorted(full) == list(range(103))
    assert full != list(EpochSampler(103, seed=1, epoch=3))
    assert list(EpochSampler(103, seed=1, epoch=2, start=40)) == full[40:]
    ranks = [list(EpochSampler(103, seed=1, epoch=2, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 51
    # step i's per-rank batches of 8 together are exactly the single-process batch of 16
    for i in range(3):
        merged = set(ranks[0][8 * i:8 * i + 8]) | set(ranks[1][8 * i:8 * i + 8])
        assert merged == set(full[16 * i:16 * i + 16])


def test_synthetic_motifs_fixed_and_finer_than_a_patch():
    """The label is in a sub-patch pattern: 4x4 patch means do no better than chance (nearest
    class mean), while a matched filter for the class motifs, slid over every offset, reads it."""
    import torch.nn.functional as F

    from stability.data.datasets import motif_arrays, motif_bank

    a, b = load_dataset("synthetic_motifs"), load_dataset("synthetic_motifs")
    assert len(a.train) == 2000 and len(a.val) == 1000 and a.image_size == 32 and a.num_classes == 10
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    bank = motif_bank(15)
    assert (bank.reshape(15, -1).sum(1) == 8).all()
    x, y = motif_arrays(800, seed=5)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    tr, te = slice(0, 500), slice(500, 800)
    pooled = F.avg_pool2d(x, 4).flatten(1)
    means = torch.stack([pooled[tr][y[tr] == c].mean(0) for c in range(10)])
    patch_acc = (torch.cdist(pooled[te], means).argmin(1) == y[te]).float().mean().item()
    w = torch.from_numpy(bank[:10] - 0.5)[:, None].expand(-1, 3, -1, -1)
    response = F.conv2d(x - x.mean((2, 3), keepdim=True), w).abs().flatten(2).amax(2)
    filter_acc = (response[te].argmax(1) == y[te]).float().mean().item()
    assert patch_acc < 0.25 and filter_acc > 0.7, (patch_acc, filter_acc)


def test_dataset_sizes_cover_every_dataset_and_match_what_loads():
    from stability.data.datasets import DATASETS, SIZES

    assert set(SIZES) == set(DATASETS)
    for name in ("digits", "synthetic_motifs"):
        d = load_dataset(name)
        assert SIZES[name] == (len(d.train), d.image_size), name


def test_cifar_files_not_in_the_release_format_are_one_clear_error(tmp_path):
    """Files of the right names but the wrong content (bytes keys, rows not 3072 wide, labels
    past the classes, a truncated pickle), or a missing file, are a ``DataError`` that names
    the folder and what is wrong, at plan time where no file need be read: never a traceback
    from torchvision, never a run that fails mid-training."""
    from stability.data.datasets import check_source

    def broken(case, edit):
        root = tmp_path / case
        _write_cifar(root)
        folder = root / "cifar-10-batches-py"
        edit(folder)
        return root, folder

    def rewrite(folder, fn):
        for f in folder.glob("data_batch_*"):
            with open(f, "rb") as fh:
                d = pickle.load(fh)
            with open(f, "wb") as fh:
                pickle.dump(fn(d), fh)

    cases = {
        "bytes_keys": (lambda f: rewrite(f, lambda d: {k.encode(): v for k, v in d.items()}), ["KeyError", "str keys 'data'"]),
        "narrow": (lambda f: rewrite(f, lambda d: {**d, "data": d["data"][:, :1000]}), ["ValueError", "N x 3072"]),
        "labels": (lambda f: rewrite(f, lambda d: {**d, "labels": [99] * len(d["labels"])}),
                   ["int64, 99..99", "integer labels 0..9"]),
        "float_labels": (lambda f: rewrite(f, lambda d: {**d, "labels": [1.5] * len(d["labels"])}), ["float64"]),
        "str_labels": (lambda f: rewrite(f, lambda d: {**d, "labels": ["cat"] * len(d["labels"])}), ["integer labels"]),
        "float_images": (lambda f: rewrite(f, lambda d: {**d, "data": d["data"].astype("float32")}),
                         ["(float32)", "uint8 images"]),
        "truncated": (lambda f: (f / "data_batch_2").write_bytes((f / "data_batch_2").read_bytes()[:50]),
                      ["not python-format", "(data_batch_2: "]),  # the file at fault, named
    }
    for case, (edit, needles) in cases.items():
        root, folder = broken(case, edit)
        check_source("cifar10", str(root))  # the names are right: the plan cannot tell
        with pytest.raises(DataError) as e:
            load_dataset("cifar10", str(root))
        line = str(e.value)
        assert len(line.splitlines()) == 1 and str(folder) in line and all(n in line for n in needles), (case, line)
    root, folder = broken("no_meta", lambda f: (f / "batches.meta").unlink())
    for check in (lambda: check_source("cifar10", str(root)), lambda: load_dataset("cifar10", str(root))):
        with pytest.raises(DataError, match=f"{folder} lacks batches.meta \\(expected python-format files data_batch_1"):
            check()


def test_cifar_batches_folder_as_data_root_hints_its_parent(tmp_path):
    """``data_root=.../cifar-10-batches-py`` (the batches themselves, not the folder holding
    them) says to pass the parent, at plan time and at load time."""
    from stability.data.datasets import check_source

    _write_cifar(tmp_path)
    inner = tmp_path / "cifar-10-batches-py"
    for check in (lambda: check_source("cifar10", str(inner)), lambda: load_dataset("cifar10", str(inner))):
        with pytest.raises(DataError, match=f"data_root is the folder holding cifar-10-batches-py/: pass {tmp_path}$"):
            check()
    with pytest.raises(DataError) as e:  # an unrelated empty folder gets no such hint
        check_source("cifar10", str(tmp_path / "cifar-10-batches-py" / "nope"))
    assert "pass" not in str(e.value).split("download=true")[-1]


def test_the_test_split_message_says_which_datasets_take_one():
    """CIFAR is held in memory, but not as tensors: the message names the datasets a test split
    is held out of and does not call CIFAR "not in-memory"."""
    from stability.config import run_config
    from stability.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        run_config({"dataset": "cifar10", "data_root": "/x", "test_split": 10})
    line = str(e.value)
    assert "held out of digits, synthetic, synthetic_motifs only" in line and "in-memory" not in line, line
    assert "cifar10, cifar100, imagefolder, packed (decoded per image)" in line, line
