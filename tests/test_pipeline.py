"""The input pipeline: workers sized to the job, loaders whose workers persist across epochs with
resume-exact batches, the packed format, GPU decoding, and the grid's CPU warning."""

from __future__ import annotations

import io

import pytest
import torch

from stability import store
from stability.config import run_config
from stability.data.datasets import DataError, batches, load_dataset
from stability.data.packed import PackedDataset, pack
from stability.data.workers import job_cpus, resolve_workers
from stability.grid.spec import ExecutorSpec
from stability.trainer.distributed import Dist
from stability.trainer.train import train

from .conftest import run_cli, write_spec

CPU = torch.device("cpu")


def _folder(root, per_class=(8, 2), classes=3, size=(40, 30)):
    """A tiny ImageFolder of JPEGs (a PNG-free, photo-like gradient with noise)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in zip(("train", "val"), per_class, strict=True):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(root / split / f"class{c}" / f"{i:03d}.jpg", quality=85)
    return root


def test_auto_workers_come_from_the_job(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert job_cpus() == 6 and resolve_workers("auto", "cuda") == 5
    assert resolve_workers("auto", "cpu") == 0  # in-memory data on CPU: the measured choice
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert resolve_workers("auto", "cuda") == 0  # never below 0
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    import os

    assert job_cpus() == len(os.sched_getaffinity(0))
    assert resolve_workers("auto", "cuda", {"LOCAL_WORLD_SIZE": "1000000"}) == 0  # shared by the local ranks
    assert resolve_workers(3, "cuda") == 3 and resolve_workers(3, "cpu") == 3


def _collect(data, epoch, start, workers, stop=None, **kw):
    out = []
    for k, (x, y) in enumerate(batches(data, 6, 7, workers, epoch, start, True, CPU, Dist(), **kw)):
        if stop is not None and k == stop:
            break
        out.append((x.clone(), y.clone()))
    return out


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))


def test_workers_persist_across_epochs_and_batches_stay_resume_exact(tmp_path):
    root = _folder(tmp_path / "f", per_class=(10, 2))
    data = load_dataset("imagefolder", str(root), image_size=16)
    e0 = _collect(data, 0, 0, 2)
    loader = next(iter(data.loaders.values())).loader
    pids = [w.pid for w in loader._iterator._workers]
    _collect(data, 1, 0, 2, stop=1)  # an epoch left after one batch (a stop, steps_per_epoch)
    e1_from_2 = _collect(data, 1, 2, 2)  # a resume at batch 2 on the same workers
    assert len(data.loaders) == 1 and [w.pid for w in loader._iterator._workers] == pids  # the same processes
    fresh = load_dataset("imagefolder", str(root), image_size=16)  # a new process: no workers, no history
    assert _same(_collect(fresh, 0, 0, 0), e0)
    assert _same(_collect(fresh, 1, 2, 0), e1_from_2)
    assert _same(_collect(fresh, 1, 0, 0)[2:], e1_from_2)  # resumed == the uninterrupted epoch's tail
    assert not _same(_collect(fresh, 1, 0, 0), _collect(fresh, 2, 0, 0))  # epochs differ
    data.loaders.clear()


def test_auto_augment_changes_the_images_and_is_seeded(tmp_path):
    root = _folder(tmp_path / "f")
    data = load_dataset("imagefolder", str(root), image_size=16)
    plain = _collect(data, 0, 0, 0)
    policy = _collect(data, 0, 0, 0, auto_augment="autoaugment")
    assert [torch.equal(a[1], b[1]) for a, b in zip(plain, policy, strict=True)] == [True] * len(plain)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(plain, policy, strict=True))
    assert _same(_collect(load_dataset("imagefolder", str(root), image_size=16), 0, 0, 0,
                          auto_augment="autoaugment"), policy)
    assert data.train.transform is not None and "AutoAugment" not in repr(data.train.transform)  # bundle untouched
    rand = _collect(data, 0, 0, 0, auto_augment="randaugment")
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(plain, rand, strict=True))


def test_packed_round_trips_an_imagefolder_exactly(tmp_path):
    from torchvision.datasets import ImageFolder

    root = _folder(tmp_path / "f")
    counts = pack(root, tmp_path / "p", shard_mb=0.004)  # tiny shards: several per split
    assert counts == {"train": 24, "val": 6, "skipped": 0}
    assert len(list((tmp_path / "p").glob("train-*.tar"))) > 1
    for split in ("train", "val"):
        folder, packed = ImageFolder(str(root / split)), PackedDataset(tmp_path / "p", split)
        assert packed.classes == folder.classes and packed.class_to_idx == folder.class_to_idx
        assert packed.targets == folder.targets
        for i, (path, _) in enumerate(folder.samples):
            assert packed.encoded_bytes(i) == open(path, "rb").read()  # byte-identical JPEGs
    a, b = load_dataset("packed", str(tmp_path / "p"), image_size=16), load_dataset("imagefolder", str(root), image_size=16)
    assert a.num_classes == b.num_classes == 3
    assert all(torch.equal(a.val[i][0], b.val[i][0]) and a.val[i][1] == b.val[i][1] for i in range(6))
    assert _same(_collect(a, 0, 0, 0), _collect(b, 0, 0, 0))  # the same training batches too
    import tarfile  # and the shards are plain tar files, WebDataset-style

    with tarfile.open(tmp_path / "p" / "train-00000.tar") as t:
        names = t.getnames()
    assert names[:2] == ["00000000.jpg", "00000000.cls"]


def test_pack_resizes_to_a_short_side(tmp_path):
    from PIL import Image

    root = _folder(tmp_path / "f", size=(60, 40))
    pack(root, tmp_path / "p", short_side=20)
    ds = PackedDataset(tmp_path / "p", "train")
    assert Image.open(io.BytesIO(ds.encoded_bytes(0))).size == (30, 20)


def test_pack_command_errors_are_one_line(tmp_path):
    out = run_cli("pack", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert out.returncode == 2 and out.stderr.startswith("error:") and len(out.stderr.strip().splitlines()) == 1
    assert "nope/train is not a folder" in out.stderr
    root = _folder(tmp_path / "f", per_class=(2, 1))
    ok = run_cli("pack", str(root), str(tmp_path / "out"))
    assert ok.returncode == 0 and "packed 6 train and 3 val images" in ok.stdout, ok.stderr
    again = run_cli("pack", str(root), str(tmp_path / "out"))
    assert again.returncode == 2 and "not empty" in again.stderr
    bad = load_dataset  # a folder that is not packed: a one-line DataError
    with pytest.raises(DataError, match="not a packed dataset"):
        bad("packed", str(root))


def test_gpu_decode_on_a_cpu_device_is_a_clear_error(tmp_path):
    data = load_dataset("imagefolder", str(_folder(tmp_path / "f")), image_size=16)
    with pytest.raises(DataError, match="decode: gpu needs a CUDA device"):
        _collect(data, 0, 0, 0, decode="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU JPEG decoding needs CUDA (nvJPEG); this machine has none")
def test_gpu_decode_gives_normalised_seeded_batches(tmp_path):
    data = load_dataset("imagefolder", str(_folder(tmp_path / "f")), image_size=16)
    cuda = torch.device("cuda")

    def run(**kw):
        return [(x.cpu(), y.cpu()) for x, y in batches(data, 6, 7, 2, 0, 0, True, cuda, Dist(), decode="gpu", **kw)]

    got = run()
    cpu = _collect(data, 0, 0, 0)
    assert len(got) == len(cpu) and all(torch.equal(a[1], b[1]) for a, b in zip(got, cpu, strict=True))
    assert got[0][0].shape == (6, 3, 16, 16) and got[0][0].dtype == torch.float32
    assert -3 < got[0][0].mean().item() < 3
    assert _same(run(), got)  # seeded per image
    assert not _same(run(auto_augment="autoaugment"), got)


def _warning(executor, cfgs):
    from stability.grid.cost import feed_warning, study_cost
    from stability.models import throughput

    table = throughput.load()
    groups = [(c, 1) for c in cfgs]
    cost = study_cost("s", groups, executor, table, table.device("h200"))
    return feed_warning(executor, groups, cost), cost


def test_dry_run_warns_when_a_cuda_job_has_too_few_cpus(tmp_path):
    import math

    cfgs = [run_config({"dataset": "imagefolder", "data_root": "/data"})]
    _, cost = _warning(ExecutorSpec(gpus_per_node=8, cpus_per_task=2), cfgs)
    g = cost.groups[0]  # 1 worker: its rate is the measured per-worker rate
    need = math.ceil(g.step.img_s / g.feed.img_s)
    assert need > 10  # a 4GF-scale step outruns a few CPU workers (measured rates)
    assert _warning(ExecutorSpec(gpus_per_node=8, cpus_per_task=need + 1), cfgs)[0] is None
    low = _warning(ExecutorSpec(gpus_per_node=8, cpus_per_task=need), cfgs)[0]
    assert low and f"gives each GPU {need - 1} data workers" in low and f"needs ~{need} workers" in low
    assert _warning(ExecutorSpec(cpus_per_task=2), cfgs)[0] is None  # no GPU: nothing to feed
    assert _warning(ExecutorSpec(gpus_per_node=8, cpus_per_task=2), [run_config({})])[0] is None  # digits
    gpu = [run_config({"dataset": "imagefolder", "decode": "gpu"})]
    assert _warning(ExecutorSpec(gpus_per_node=8, cpus_per_task=2), gpu)[0] is None
    many = [run_config({"dataset": "imagefolder", "num_workers": 12})]
    both = _warning(ExecutorSpec(gpus_per_node=8, cpus_per_task=8), many)[0].splitlines()
    assert "num_workers 12 > cpus_per_task - 1 = 7" in both[0]  # shared CPUs, and still starved: both said
    assert both[1].startswith("warning: num_workers 12 gives each GPU 7 data workers") and "raise cpus_per_task and" in both[1]
    spec = write_spec(tmp_path / "s.yaml", "warn", tmp_path / "r",
                      base={"dataset": "imagefolder", "data_root": "/data", "model": "vit_4gf", "image_size": 224,
                            "batch_size": 2048},
                      executor={"kind": "slurm", "gpus_per_node": 8, "tasks_per_node": 8, "cpus_per_task": 4})
    out = run_cli("grid", "run", str(spec), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "warning: cpus_per_task 4 gives each GPU 3 data workers" in out.stdout + out.stderr


def test_a_tiny_imagefolder_run_with_workers_policy_and_mixing(tmp_path):
    root = _folder(tmp_path / "f", per_class=(8, 2))
    cfg = run_config({"dataset": "imagefolder", "data_root": str(root), "image_size": 32, "model": "vit_c_tiny",
                      "epochs": 2, "batch_size": 8, "num_workers": 2, "auto_augment": "autoaugment",
                      "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "warmup_epochs": 0, "trace_every": 2,
                      "results": str(tmp_path / "r")})
    row = train(cfg)
    assert row["status"] == "completed", row.get("error")
    res = store.load(tmp_path / "r")
    assert len(res.steps) == 2 * 3 and len(res.epochs) == 2


def _smooth_images(sizes):
    g = torch.Generator().manual_seed(1)
    out = []
    for h, w in sizes:  # smooth content, as photos are: interpolation schemes then agree closely
        low = torch.rand(1, 3, 6, 6, generator=g) * 255
        out.append(torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic").clamp(0, 255)[0].to(torch.uint8))
    return out


def test_batched_gpu_crop_matches_a_per_image_resized_crop_and_flip():
    """The decoder's one-kernel crop (roi_align over a padded canvas) against torchvision's own
    per-image RandomResizedCrop draw + antialiased resize + flip, from the same seeds (CPU here;
    the same code runs on CUDA)."""
    from torchvision.transforms import RandomResizedCrop

    from stability.data.augment import seeded
    from stability.data.pipeline import CROP_RATIO, CROP_SCALE, GpuDecoder

    imgs = _smooth_images([(60, 80), (75, 50), (40, 40), (90, 120)])
    seeds = [11, 12, 13, 14]
    dec = GpuDecoder(24, None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), CPU)
    got = dec.crop(imgs, seeds)
    assert got.shape == (4, 3, 24, 24) and got.dtype == torch.float32
    for img, s, x in zip(imgs, seeds, got, strict=True):
        with seeded(s):
            i, j, h, w = RandomResizedCrop.get_params(img, list(CROP_SCALE), list(CROP_RATIO))
            flip = bool(torch.rand(1) < 0.5)
        ref = torch.nn.functional.interpolate(img[None, :, i:i + h, j:j + w].float(), size=(24, 24),
                                              mode="bilinear", antialias=True, align_corners=False)[0]
        ref = ref.flip(-1) if flip else ref
        assert (x - ref).abs().mean() < 2.0, (s, (x - ref).abs().mean())  # of 0..255
        assert (x - ref.flip(-1)).abs().mean() > 2 * (x - ref).abs().mean() or (ref - ref.flip(-1)).abs().mean() < 2
    dec.CANVAS_BYTES = 1  # one image per canvas: the same batch
    assert torch.allclose(dec.crop(imgs, seeds), got)
    x, y = dec(torch.cat([torch.frombuffer(bytearray(_jpeg(im)), dtype=torch.uint8) for im in imgs]),
               [len(_jpeg(im)) for im in imgs], torch.tensor([0, 1, 2, 0]), seeds)
    assert x.shape == (4, 3, 24, 24) and y.tolist() == [0, 1, 2, 0]



def _encoded(imgs):
    """The decoder's input for ``imgs``: their JPEG bytes concatenated, and the lengths."""
    jpegs = [_jpeg(im) for im in imgs]
    return torch.cat([torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]), [len(j) for j in jpegs]


def _cpu_crop_and_flip(img, size):
    """Draw ``img``'s crop and flip from torch's global generator as the CPU training transform
    does (``datasets._transforms``: RandomResizedCrop, then the flip, then the policy)."""
    from torchvision.transforms import v2

    v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])(img)


@pytest.mark.parametrize("name", ["autoaugment", "randaugment"])
def test_gpu_decoder_policy_is_the_per_image_policy_batched(name):
    """The decoder's batched policy gives what torchvision's policy called image by image gives
    where the CPU path calls it: under the image's seed, after its crop and flip draws (CPU here)."""
    from stability.data.augment import seeded
    from stability.data.datasets import policy
    from stability.data.pipeline import GpuDecoder

    imgs = _smooth_images([(60, 80), (75, 50), (40, 40), (90, 120)] * 3)
    (data, lengths), labels, seeds = _encoded(imgs), torch.zeros(len(imgs), dtype=torch.long), list(range(12))
    dec = GpuDecoder(24, policy(name), (0.5, 0.4, 0.3), (0.2, 0.3, 0.25), CPU)
    got, _ = dec(data, lengths, labels, seeds)
    decoded = dec.decode(list(data.split(lengths)))
    u8 = dec.crop(decoded, seeds).round().clamp(0, 255).to(torch.uint8)
    ref = []
    for k, s in enumerate(seeds):
        with seeded(s):
            _cpu_crop_and_flip(decoded[k], 24)
            ref.append(dec.policy(u8[k:k + 1]))
    ref = torch.cat(ref)
    assert not torch.equal(ref, u8) and torch.equal(got, (ref.float() - dec.mean) / dec.std)


def _cpu_policy_draws(name, imgs, seeds, size):
    """The (op, magnitude) pairs the CPU path's policy applies to each image (its own transform,
    under the image's seed as ``pipeline.Seeded`` sets it), recorded instead of applied."""
    from stability.data.augment import seeded
    from stability.data.datasets import _transforms

    tf = _transforms(True, size, False, name)
    p = next(t for t in tf.transforms if type(t).__name__ in ("AutoAugment", "RandAugment"))
    seen: list = []
    p._apply_image_or_video_transform = lambda img, t, m, **kw: seen.append((t, m)) or img  # this instance only
    out = []
    for img, s in zip(imgs, seeds, strict=True):
        seen.clear()
        with seeded(s):
            tf(img)
        out.append(list(seen))
    return out


@pytest.mark.parametrize("name", ["autoaugment", "randaugment"])
def test_gpu_policy_draws_equal_the_cpu_paths_per_seed(name, monkeypatch):
    """For 200 images of 4 shapes, the ops and magnitudes the decoder's policy draws (read from
    what it hands ``apply_policy``) are those the CPU transform's policy applies under the same
    seeds. The policy seeded with seed + 1 matched 19 (AutoAugment) and 1 (RandAugment) of 200."""
    from stability.data import pipeline
    from stability.data.batch_policy import policy_draws
    from stability.data.datasets import policy

    def snapshot(s):  # a copy, so that reading the draws leaves the decoder's generators alone
        return torch.Generator().set_state(s.get_state()) if isinstance(s, torch.Generator) else s

    got, real = [], pipeline.apply_policy

    def spy(p, u8, seeds):
        got.extend(policy_draws(p, [snapshot(s) for s in seeds], *u8.shape[-2:]))
        return real(p, u8, seeds)

    monkeypatch.setattr(pipeline, "apply_policy", spy)
    imgs = _smooth_images([(60, 80), (75, 50), (40, 40), (30, 200)] * 50)  # the last: ~half fall back to the centre
    seeds = [pipeline.sample_seed(7, 1, k) for k in range(len(imgs))]
    dec = pipeline.GpuDecoder(24, policy(name), (0.5,) * 3, (0.25,) * 3, CPU)
    data, lengths = _encoded(imgs)
    dec(data, lengths, torch.zeros(len(imgs), dtype=torch.long), seeds)
    decoded = dec.decode(list(data.split(lengths)))  # the shapes the crops are drawn for
    assert got == _cpu_policy_draws(name, decoded, seeds, 24)


def _jpeg(img):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_a_damaged_pack_is_one_line_naming_the_file_at_plan_and_load_time(tmp_path):
    """A pack cut short or altered since ``stability pack`` (a truncated or missing index, a
    meta.json that is not JSON or lacks its fields, a shard shorter than its index says) is a
    ``DataError`` naming the file and saying to re-pack: at plan time (``check_source``, which
    reads no image), so a grid refuses before any run starts, and when a run loads it."""
    import json
    import shutil

    from stability.data.datasets import check_source

    good = tmp_path / "good"
    pack(_folder(tmp_path / "f", per_class=(3, 1)), good)
    check_source("packed", str(good))

    def damaged(name, edit):
        root = tmp_path / name
        shutil.copytree(good, root)
        edit(root)
        return root

    def cut(path, keep=0.5):
        path.write_bytes(path.read_bytes()[:int(path.stat().st_size * keep)])

    meta = json.loads((good / "meta.json").read_text())
    cases = {
        "idx_cut": (lambda r: cut(r / "index.parquet"), "index.parquet: unreadable (ArrowInvalid: "),
        "idx_gone": (lambda r: (r / "index.parquet").unlink(), "index.parquet is missing"),
        "meta_cut": (lambda r: cut(r / "meta.json"), "meta.json: not readable JSON"),
        "meta_fields": (lambda r: (r / "meta.json").write_text(json.dumps({k: meta[k] for k in ("format", "version")})),
                        "meta.json: lacks classes, counts"),
        "meta_list": (lambda r: (r / "meta.json").write_text("[1]"), "meta.json: not a JSON object"),
        "shard_cut": (lambda r: cut(r / "train-00000.tar", 0.3), "train-00000.tar is "),
        "shard_gone": (lambda r: (r / "val-00000.tar").unlink(), "val-00000.tar is missing"),
    }
    for name, (edit, needle) in cases.items():
        root = damaged(name, edit)
        for check in (check_source, load_dataset):
            with pytest.raises(DataError) as e:
                check("packed", str(root))
            line = str(e.value)
            assert len(line.splitlines()) == 1 and line.startswith(f"data_root: {root}") and needle in line, (name, line)
            assert "re-pack it with `stability pack`" in line, (name, line)
    line = str(pytest.raises(DataError, load_dataset, "packed", str(tmp_path / "shard_cut")).value)
    assert "cut short at member 0000000" in line and ".jpg (" in line, line  # the member and its image's path


def test_a_damaged_image_in_a_pack_names_its_shard_and_member(tmp_path):
    """An image whose bytes were altered in place, or a shard cut short after the run checked it,
    names the shard file and the member and says the pack is damaged: never the repr of the
    ``BytesIO`` PIL was handed."""
    pack(_folder(tmp_path / "f", per_class=(3, 1)), tmp_path / "p")
    ds = PackedDataset(tmp_path / "p", "train")
    shard = tmp_path / "p" / "train-00000.tar"
    with open(shard, "r+b") as f:
        f.seek(int(ds.offset[2]))
        f.write(b"\0" * int(ds.size[2]))
    with pytest.raises(OSError) as e:
        ds[2]
    line = str(e.value)
    assert f"{shard}, member 00000002.jpg: not an image PIL can read" in line and "BytesIO" not in line, line
    assert "re-pack it with `stability pack`" in line, line
    shard.write_bytes(shard.read_bytes()[:int(ds.offset[4]) + 10])  # after the check: found at the read
    with pytest.raises(OSError, match=f"{shard}, member 00000004.jpg: 10 of its {int(ds.size[4])} bytes"):
        ds.encoded_bytes(4)
