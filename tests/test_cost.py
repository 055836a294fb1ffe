"""The cost planner (grid/cost.py) on hand-made tables and groups, the shipped table against
benchmarks/RESULTS.md, and the dry runs that print it."""

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stability.config import run_config
from stability.grid import cost as C
from stability.grid.cost import MFU, EndToEnd, cpu_worker_rate, group_cost, study_cost
from stability.grid.spec import ExecutorSpec
from stability.models import throughput
from stability.models.throughput import DecodeRate, Device, StepRate, Throughput

from .conftest import ROOT, run_cli, write_spec

GPU = Device("t1", "Test GPU", 1000.0)
MACS = {("vit_p_4gf", 224): 4e9, ("vit_c_4gf", 224): 4e9, ("vit_p_18gf", 224): 16e9, ("regnety_4gf", 224): 4e9}


def _step(model: str, batch: int, img_s: float, compile: bool = False) -> StepRate:
    return StepRate("Test GPU", model, 224, batch, compile, "bf16", img_s, "test")


def _decode(host: str, device: str | None, dataset: str, policy: str, workers: int, img_s: float) -> DecodeRate:
    return DecodeRate(host, device, dataset, policy, workers, 224, img_s, "test")


TABLE = Throughput(
    {"t1": GPU}, "t1",
    (_step("vit_p_4gf", 256, 5120.0), _step("vit_c_4gf", 256, 4000.0), _step("vit_p_4gf", 256, 9000.0, True)),
    (_decode("gpu box", "Test GPU", "imagefolder", "none", 15, 1500.0),  # 100 per worker
     _decode("laptop", None, "imagefolder", "none", 2, 400.0),  # 200 per worker
     _decode("laptop", None, "imagefolder", "autoaugment", 2, 300.0)),  # 150: x0.75 of none
    (_decode("gpu box", "Test GPU", "imagefolder", "none", 0, 3000.0),))


def _cost(runs: int = 1, executor: ExecutorSpec | None = None, **fields):
    """An eager run unless ``compile`` is given (the default, auto, is on for the GPU costed)."""
    cfg = run_config({"dataset": "synthetic", "synthetic_size": 2560, "model": "vit_p_4gf", "image_size": 224,
                      "batch_size": 256, "epochs": 2, "compile": False, **fields})
    return group_cost(cfg, runs, executor or ExecutorSpec(), TABLE, GPU, lambda m, px: MACS[m, px])


def test_a_measured_row_gives_images_over_its_img_s():
    g = _cost(runs=3)
    assert g.images == 3 * 2 * 2560 and g.step.source == "measured" and g.step.img_s == 5120.0
    assert (g.feed.img_s, g.bound) == (None, "none")  # in memory: no input bound
    assert g.train_hours == 3 * 2 * 2560 / 5120 / 3600
    # evaluation: 512 validation images (2560 / 5), before training and after each of 2 epochs for
    # the model and its EMA (1 + 2 x 2 passes), forward-only at 3 x 5120 img/s (the estimate)
    assert g.eval_images == 3 * 512 * (1 + 2 * 2)
    assert g.gpu_hours == pytest.approx(3 * 2 * 2560 / 5120 / 3600 + 3 * 512 * 5 / (3 * 5120) / 3600)
    assert g.flops == 6 * 4e9 * g.images
    assert _cost(compile=True).step.img_s == 9000.0
    assert _cost(compile="auto").step.img_s == 9000.0  # the default: compiled on CUDA, as the trainer runs


def test_held_out_test_images_are_not_trained_on():
    from stability.grid.cost import images_seen

    cfg = run_config({"dataset": "digits", "batch_size": 64, "epochs": 2, "test_split": 300})
    assert images_seen(cfg) == 2 * ((1497 - 300) // 64) * 64


def test_the_per_gpu_batch_is_the_global_batch_over_the_ranks():
    ex = ExecutorSpec(kind="slurm", nodes=2, tasks_per_node=4, gpus_per_node=4)
    g = _cost(executor=ex, batch_size=2048, synthetic_size=20480)
    assert g.step.source == "measured" and g.step.img_s == 5120.0  # 2048 / 8 ranks = 256 per GPU


def test_cpu_workers_bound_the_feed_and_the_lower_rate_wins():
    ex = ExecutorSpec(kind="slurm", gpus_per_node=8, tasks_per_node=8, cpus_per_task=9)
    g = _cost(executor=ex, dataset="imagefolder", data_root="/x")  # auto: 9 - 1 = 8 workers x 100 (the GPU box)
    assert (g.feed.img_s, g.bound) == (800.0, "8 CPU workers") and "measured (gpu box" in g.feed.source
    assert g.img_s == 800.0 and g.train_hours == g.images / 800 / 3600
    assert _cost(executor=ex, dataset="imagefolder", data_root="/x", num_workers=3).feed.img_s == 300.0
    # more workers than CPUs share them: 12 named, 8 CPUs' worth of decoding
    assert _cost(executor=ex, dataset="imagefolder", data_root="/x", num_workers=12).feed.img_s == 800.0
    one = _cost(dataset="imagefolder", data_root="/x")  # no cpus_per_task: one CPU, decoding in the training process
    assert (one.feed.img_s, one.bound) == (100.0, "decoding in the training process")
    fast = ExecutorSpec(kind="slurm", gpus_per_node=1, cpus_per_task=101)  # 100 workers x 100 > the step
    assert _cost(executor=fast, dataset="imagefolder", data_root="/x").img_s == 5120.0


def test_gpu_decode_is_bounded_by_its_measured_rate():
    g = _cost(dataset="imagefolder", data_root="/x", decode="gpu")
    assert (g.feed.img_s, g.bound, g.img_s) == (3000.0, "GPU decode", 3000.0)


def test_a_gpu_decode_bound_read_by_fewer_workers_than_measured_says_so():
    """The shipped GPU-decode rate was measured with 15 CPU workers reading the JPEG bytes (the
    same call's end-to-end rows); a spec that gives fewer is not that measurement, and says so."""
    t = throughput.load()
    device = t.devices[t.default_device]
    cfg = run_config({"dataset": "imagefolder", "data_root": "/x", "decode": "gpu", "model": "vit_p_4gf",
                      "image_size": 224, "batch_size": 256, "epochs": 1})
    few = group_cost(cfg, 1, ExecutorSpec(kind="slurm", cpus_per_task=3), t, device)
    assert "measured with 15 CPU workers reading the bytes, this spec gives 2: not measured there" in few.feed.source
    enough = group_cost(cfg, 1, ExecutorSpec(kind="slurm", cpus_per_task=16), t, device)
    assert "not measured there" not in enough.feed.source and enough.feed.img_s == few.feed.img_s


def test_gpu_decoding_shares_the_gpu_with_the_step():
    """With the decoder's own GPU rate known, a step and a decode add up on the one GPU."""
    import dataclasses

    row = dataclasses.replace(TABLE.gpu_decode[0], decoder_img_s=6000.0)
    table = dataclasses.replace(TABLE, gpu_decode=(row,))
    cfg = run_config({"dataset": "imagefolder", "data_root": "/x", "decode": "gpu", "model": "vit_p_4gf",
                      "image_size": 224, "batch_size": 256, "epochs": 1, "compile": False})
    g = group_cost(cfg, 1, ExecutorSpec(), table, GPU, lambda m, px: MACS[m, px])
    assert g.step.img_s == pytest.approx(1 / (1 / 5120 + 1 / 6000)) and "GPU decoder's own GPU time" in g.step.source
    assert g.feed.img_s == 3000.0 and g.img_s == g.step.img_s < 3000.0  # the shared GPU, not the loader, is the bound


def test_an_unmeasured_policy_is_scaled_by_a_machine_that_measured_both_and_says_so():
    r = cpu_worker_rate(TABLE, GPU, "imagefolder", "autoaugment")
    assert r.img_s == pytest.approx(100.0 * 0.75)
    assert r.source.startswith("scaled from imagefolder/none measured (gpu box) x 0.75") and "laptop" in r.source
    cifar = _cost(dataset="cifar10", data_root="/x", image_size=224)  # never measured: no bound, said so
    assert cifar.feed.img_s is None and "not measured" in cifar.feed.source


def test_an_unmeasured_model_is_scaled_or_estimated_and_labelled():
    big = _cost(model="vit_p_18gf")  # same device and compile, 4x the FLOPs of the measured vit_p_4gf
    assert big.step.img_s == 5120.0 / 4
    assert big.step.source == "scaled from vit_p_4gf 224 px batch 256 eager measured"  # same batch: no caveat
    other_batch = _cost(model="vit_c_4gf", batch_size=512, synthetic_size=5120)
    assert other_batch.step.img_s == 4000.0 and "vit_c_4gf 224 px batch 256" in other_batch.step.source
    assert "batch 512 unmeasured: taken at batch 256's rate)" in other_batch.step.source
    assert other_batch.step.source.startswith("taken from vit_c_4gf")  # the same FLOPs: not "scaled"
    # a compiled batch 128 is taken at compiled 256's rate, and says what eager rows show across that batch
    table = Throughput(TABLE.devices, "t1", (*TABLE.step, _step("vit_p_4gf", 128, 4096.0)), (), ())
    cfg = run_config({"dataset": "synthetic", "synthetic_size": 2560, "model": "vit_p_4gf", "image_size": 224,
                      "batch_size": 128, "compile": True})
    half = group_cost(cfg, 1, ExecutorSpec(), table, GPU, lambda m, px: MACS[m, px])
    assert half.step.img_s == 9000.0 and half.step.source.endswith(
        "(batch 128 unmeasured: taken at batch 256's rate; eager, vit_p_4gf runs x0.80 as fast at batch 128 as at 256)")
    reg = _cost(model="regnety_4gf", stem=None)  # not a ViT: FLOPs at the stated MFU of the peak
    assert reg.step.img_s == pytest.approx(1000e12 * MFU / (6 * 4e9))
    assert reg.step.source.startswith("flops-estimate at 10% MFU")


def test_a_study_adds_its_groups_and_weights_its_rates_by_images():
    cfgs = [run_config({"dataset": "synthetic", "synthetic_size": 2560, "model": m, "image_size": 224,
                        "batch_size": 256, "epochs": 2, "compile": False}) for m in ("vit_p_4gf", "vit_c_4gf")]
    s = study_cost("s", [(cfgs[0], 2), (cfgs[1], 2)], ExecutorSpec(), TABLE, GPU, lambda m, px: MACS[m, px])
    assert s.runs == 4 and s.images == 4 * 5120
    assert s.train_hours == pytest.approx(2 * 5120 / 5120 / 3600 + 2 * 5120 / 4000 / 3600)
    assert s.img_s == pytest.approx(s.images / s.train_hours / 3600) and s.feed_img_s is None
    assert s.gpu_hours == pytest.approx(s.train_hours + s.eval_hours) and s.eval_hours > 0
    assert s.as_dict()["gpu_hours"] == s.gpu_hours and s.bound == "none"


def test_steps_per_epoch_caps_and_accum_steps_splits_the_per_gpu_batch():
    # 10240 images / 256 = 40 batches an epoch, capped at 3: 2 epochs x 3 x 256 images
    assert _cost(synthetic_size=10240, steps_per_epoch=3).images == 2 * 3 * 256
    assert _cost(synthetic_size=10240).images == 2 * 40 * 256
    # batch 256 in 2 micro-batches on one GPU: the measured batch-128 row, not batch 256's
    table = Throughput(TABLE.devices, "t1", (*TABLE.step, _step("vit_p_4gf", 128, 4096.0)), (), ())
    cfg = run_config({"dataset": "synthetic", "synthetic_size": 2560, "model": "vit_p_4gf", "image_size": 224,
                      "batch_size": 256, "accum_steps": 2, "compile": False})
    g = group_cost(cfg, 1, ExecutorSpec(), table, GPU, lambda m, px: MACS[m, px])
    assert (g.step.img_s, g.step.source) == (4096.0, "measured")


def test_the_per_worker_rate_is_the_widest_measurement():
    """Of a host's rows for one (dataset, policy), the most workers' per-worker rate (at scale)."""
    table = Throughput(TABLE.devices, "t1", TABLE.step,
                       (*TABLE.cpu_decode, _decode("gpu box", "Test GPU", "imagefolder", "none", 1, 150.0)), ())
    assert cpu_worker_rate(table, GPU, "imagefolder", "none").img_s == 1500.0 / 15  # not the 1-worker 150


def test_evaluation_is_costed_on_the_cpu_decode_path_whatever_the_training_decode():
    """ImageNet-1k (assumed: no such folder), 50 epochs at batch 256 on one GPU with 16 CPUs."""
    ex = ExecutorSpec(kind="slurm", gpus_per_node=1, cpus_per_task=16)
    fields = {"dataset": "imagefolder", "data_root": "/nonexistent", "epochs": 50, "auto_augment": "autoaugment"}
    g = _cost(executor=ex, **fields)
    train = 50 * (1281167 // 256) * 256  # 64,051,200
    evaluated = 50000 * (1 + 2 * 50)  # validation before training, then model and EMA after each epoch
    assert (g.images, g.eval_images) == (train, evaluated)
    # training: 15 workers x 100/worker x 0.75 (AutoAugment, scaled); evaluation: no policy, 15 x 100
    assert g.feed.img_s == pytest.approx(1125.0) and g.eval_img_s == 1500.0 and g.eval_bound == "15 CPU workers"
    assert g.train_hours == pytest.approx(train / 1125 / 3600) and g.eval_hours == pytest.approx(evaluated / 1500 / 3600)
    gpu = _cost(executor=ex, decode="gpu", **fields)  # GPU decoding trains faster; validation still decodes on the CPU
    assert gpu.feed.img_s == 3000.0 and gpu.eval_hours == pytest.approx(evaluated / 1500 / 3600)
    assert _cost(executor=ex, ema_period=0, **fields).eval_images == 50000 * (1 + 50)  # no EMA: one pass an epoch
    # in memory: the forward pass alone bounds it, at 3 x the step (the stated estimate)
    mem = _cost(runs=2)
    assert mem.eval_step.img_s == 3 * 5120.0 and "an estimate" in mem.eval_step.source
    assert mem.eval_hours == pytest.approx(2 * 512 * (1 + 2 * 2) / (3 * 5120) / 3600)
    digits = _cost(dataset="digits", test_split=300, image_size=224)  # 300 validation + 300 held-out test images
    assert digits.eval_images == 300 * (1 + 2 * 2) + 300 * 2


def test_the_floor_names_the_measured_end_to_end_gap():
    rows = tuple(EndToEnd("Test GPU", m, 224, 256, False, "imagefolder", "none", "cpu", 15, img_s, 5000.0, 1500.0, "t")
                 for m, img_s in (("vit_p_4gf", 1200.0), ("vit_c_4gf", 1350.0)))  # x0.80 and x0.90 of min(5000, 1500)
    ex = ExecutorSpec(kind="slurm", gpus_per_node=1, cpus_per_task=16)
    cfg = run_config({"dataset": "imagefolder", "data_root": "/nonexistent", "model": "vit_p_4gf", "image_size": 224,
                      "batch_size": 256, "epochs": 2, "compile": False})
    s = study_cost("s", [(cfg, 1)], ex, TABLE, GPU, lambda m, px: MACS[m, px], rows)
    assert (s.groups[0].gap.lo, s.groups[0].gap.hi) == pytest.approx((0.8, 0.9))
    assert s.gapped_hours == pytest.approx((s.train_hours / 0.9 + s.eval_hours, s.train_hours / 0.8 + s.eval_hours))
    assert "a floor: loader and step overlapping perfectly; measured end to end on Test GPU" in s.source
    assert "15 CPU workers: x0.80–0.90 of the modelled rate" in s.source
    gpu = dataclasses.replace(cfg, decode="gpu")  # a feed never measured end to end: the floor, said plainly
    assert "no end-to-end rate measured" in study_cost("s", [(gpu, 1)], ex, TABLE, GPU, lambda m, px: MACS[m, px], rows).source
    assert "total: training" in C.total_note([s]) and "a floor" in C.total_note([s])


def test_a_local_image_folder_is_counted_else_imagenet_is_assumed_and_said(tmp_path):
    for split, n in (("train", 10), ("val", 4)):
        (tmp_path / split / "cls").mkdir(parents=True)
        for i in range(n):
            (tmp_path / split / "cls" / f"{i}.JPEG").write_bytes(b"")
    (tmp_path / "train" / "cls" / "notes.txt").write_text("not an image")
    g = _cost(dataset="imagefolder", data_root=str(tmp_path), batch_size=2, epochs=3)
    assert (g.images, g.eval_images) == (3 * (10 // 2) * 2, 4 * (1 + 3 * 2))
    assert g.sizes.source == f"counted in {tmp_path}/{{train,val}}"
    gone = _cost(dataset="imagefolder", data_root=str(tmp_path / "nope"), batch_size=2048, epochs=1)
    assert gone.images == (1281167 // 2048) * 2048 and gone.sizes.source.startswith("ImageNet-1k size assumed")
    (tmp_path / "pack").mkdir()
    _meta(tmp_path / "pack", 100, 20)
    packed = _cost(dataset="packed", data_root=str(tmp_path / "pack"), batch_size=10, epochs=1)
    assert (packed.images, packed.eval_images) == (100, 20 * (1 + 2))


def _meta(pack: Path, train: int, val: int) -> Path:
    """A pack's meta.json as `stability pack` writes it (no shard: the planner reads only this)."""
    import json

    from stability.data.packed import FORMAT, VERSION

    pack.mkdir(parents=True, exist_ok=True)
    (pack / "meta.json").write_text(json.dumps({"format": FORMAT, "version": VERSION, "classes": ["a", "b"],
                                                "short_side": None, "counts": {"train": train, "val": val}}))
    return pack


def _folder(root: Path, classes: dict[str, int], val: int = 2) -> Path:
    """An image folder of empty ``.jpg`` files (the planner counts names, opens none)."""
    for split in ("train", "val"):
        for c, n in classes.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n if split == "train" else val):
                (root / split / c / f"{i}.jpg").write_bytes(b"")
    return root


def _one_line_exit_2(code: int, err: str, *needles: str) -> None:
    """A command's exit code and stderr: one error line naming ``needles``, exit 2, no traceback."""
    assert code == 2, (code, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert all(n in err for n in needles), err


def _dry_run(capsys, spec: Path) -> tuple[int, str]:
    """``grid run SPEC --dry-run`` in this process (torch is imported once, not per subprocess):
    its exit code and stderr. An exception other than ConfigError (the old ZeroDivisionError)
    propagates and fails the test."""
    from stability.cli import main

    code = main(["grid", "run", str(spec), "--dry-run"])
    return code, capsys.readouterr().err


def test_a_run_that_would_see_no_full_batch_is_one_line_exit_2_not_a_division_by_zero(tmp_path, capsys):
    """Was a ZeroDivisionError traceback (StudyCost._rate over 0 images), exit 1."""
    from stability.cli import main
    from stability.errors import ConfigError
    from stability.grid.controller import dry_run
    from stability.grid.spec import load_spec

    data = _folder(tmp_path / "imf", {"a": 5, "b": 5})
    spec = write_spec(tmp_path / "g.yaml", "big_batch", tmp_path / "res",
                      base={"dataset": "imagefolder", "data_root": str(data), "batch_size": 64, "image_size": 32},
                      executor={"kind": "slurm", "gpus_per_node": 1})
    _one_line_exit_2(*_dry_run(capsys, spec), "batch_size 64 exceeds the 10 training images",
                     f"counted in {data}/{{train,val}}", "allowed: batch_size <= 10")
    # a local spec (also timed here) and the paper's batch 2048 on a small folder: the same error
    local = write_spec(tmp_path / "l.yaml", "local", tmp_path / "res",
                       base={"dataset": "imagefolder", "data_root": str(data), "batch_size": 64, "image_size": 32})
    with pytest.raises(ConfigError, match="batch_size 64 exceeds the 10 training images"):
        dry_run(load_spec(local))
    code = main(["reproduce", "--paper", "--dry-run", "--set", f"data_root={data}", "--results", str(tmp_path / "res")])
    _one_line_exit_2(code, capsys.readouterr().err, "batch_size 2,048 exceeds the 10 training images")
    assert not (tmp_path / "res").exists()
    # every dataset: the count, where it came from and what holds images out
    cases = [({"dataset": "digits", "test_split": 300, "batch_size": 1400},
              "batch_size 1,400 exceeds the 1,197 training images that test_split 300 leaves of the 1,497 of digits"),
             ({"dataset": "synthetic", "synthetic_size": 10, "batch_size": 64},
              "batch_size 64 exceeds the 10 training images (synthetic_size)"),
             ({"dataset": "packed", "data_root": str(_meta(tmp_path / "p", 0, 5)), "batch_size": 8},
              f"batch_size 8 exceeds the 0 training images (from {tmp_path / 'p' / 'meta.json'})")]
    for fields, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            C.images_seen(run_config(fields))
    assert C.images_seen(run_config({"dataset": "synthetic", "synthetic_size": 64, "batch_size": 64})) == 10 * 64


def test_a_group_of_no_runs_has_no_rate_rather_than_dividing_by_zero():
    g = _cost(runs=0)
    s = C.StudyCost("s", GPU, (g,))
    assert (s.images, s.img_s, s.step_img_s, s.gpu_hours) == (0, None, None, 0)


def test_a_symlinked_class_is_counted_as_training_reads_it_and_a_loop_is_refused(tmp_path, capsys):
    """Was os.walk without followlinks: a linked class (or every class linked: 0 images) went uncounted."""
    import os

    outside = _folder(tmp_path / "outside", {"d": 10})
    data = _folder(tmp_path / "imf", {"a": 10, "b": 10, "c": 10})
    for split in ("train", "val"):
        os.symlink(outside / split / "d", data / split / "d")
    g = _cost(dataset="imagefolder", data_root=str(data), batch_size=5, epochs=1)
    assert (g.sizes.train, g.sizes.val) == (40, 8)  # was (30, 6)
    links = tmp_path / "links"  # every class a link
    for split in ("train", "val"):
        (links / split).mkdir(parents=True)
        os.symlink(outside / split / "d", links / split / "d")
    assert _cost(dataset="imagefolder", data_root=str(links), batch_size=5, epochs=1).sizes.train == 10  # was 0
    loop = _folder(tmp_path / "loop", {"cat": 3})
    os.symlink("..", loop / "train" / "cat" / "loop")  # os.walk following links would never end
    spec = write_spec(tmp_path / "g.yaml", "loop", tmp_path / "res",
                      base={"dataset": "imagefolder", "data_root": str(loop), "batch_size": 2, "image_size": 32},
                      executor={"kind": "slurm", "gpus_per_node": 1})
    _one_line_exit_2(*_dry_run(capsys, spec), f"data_root: {loop}/train/cat/loop", "a symlink loop",
                     "remove the link")


@pytest.mark.parametrize("text, says", [
    ("{not json", "not readable JSON (Expecting property name"),
    ('{"format": "stability-packed", "version": 1, "classes": ["a"]}', "lacks counts"),
    ('{"format": "stability-packed", "version": 1, "classes": ["a"], "counts": {"train": true, "val": 1}}',
     "classes is not a list of names or counts not {train, val} image counts"),
    ('{"counts": {"train": 100, "val": 20}}', "lacks format, version, classes"),
    ('{"format": "other", "version": 1, "classes": ["a"], "counts": {"train": 1, "val": 1}}',
     "not format stability-packed version 1"),
    ("[]", "not a JSON object")])
def test_a_pack_whose_meta_json_is_broken_is_named_not_taken_for_a_missing_pack(tmp_path, text, says):
    """Was "ImageNet-1k size assumed (<root> not on this machine)" for a folder that is right there."""
    from stability.errors import ConfigError

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "meta.json").write_text(text)
    with pytest.raises(ConfigError) as e:
        _cost(dataset="packed", data_root=str(tmp_path / "p"), batch_size=8)
    assert str(e.value).startswith(f"data_root: {tmp_path / 'p' / 'meta.json'}: {says}"), e.value
    assert "re-pack it with `stability pack`" in str(e.value) and "\n" not in str(e.value)
    # a folder that is here but holds no meta.json (or no train/) is not said to be elsewhere
    (tmp_path / "p" / "meta.json").unlink()
    for dataset, lacks in (("packed", "meta.json"), ("imagefolder", "train folder")):
        source = _cost(dataset=dataset, data_root=str(tmp_path / "p"), batch_size=8).sizes.source
        assert source == f"ImageNet-1k size assumed ({tmp_path / 'p'} has no {lacks} on this machine)"


def test_a_broken_pack_fails_its_dry_run_in_one_line(tmp_path):
    """The real command (a subprocess: exit code and stderr as a user sees them)."""
    spec = write_spec(tmp_path / "g.yaml", "bad_pack", tmp_path / "res",
                      base={"dataset": "packed", "data_root": str(tmp_path / "p"), "image_size": 32},
                      executor={"kind": "slurm", "gpus_per_node": 1})
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "meta.json").write_text('{"format": "stabil')  # cut short
    out = run_cli("grid", "run", str(spec), "--dry-run")
    _one_line_exit_2(out.returncode, out.stderr, f"data_root: {tmp_path / 'p' / 'meta.json'}: not readable JSON",
                     "re-pack it")
    assert "Traceback" not in out.stderr


def test_cifar_counts_are_said_to_be_the_releases_assumed_not_read():
    """Was no "image counts" line for CIFAR: 50,000 images costed as if counted."""
    cfg = run_config({"dataset": "cifar10", "data_root": "/data/cifar", "batch_size": 64, "epochs": 1})
    g = group_cost(cfg, 1, ExecutorSpec(), TABLE, GPU, lambda m, px: 4e9)
    assert (g.sizes.train, g.sizes.val) == (50000, 10000)
    source = study_cost("c", [(cfg, 1)], ExecutorSpec(), TABLE, GPU, lambda m, px: 4e9).source
    assert ("  image counts: cifar10: its release's 50,000 training and 10,000 validation images, assumed "
            "(the files under /data/cifar are not read to count them)") in source.splitlines()
    assert "image counts" not in study_cost("d", [(run_config({"dataset": "digits"}), 1)], ExecutorSpec(), TABLE,
                                            GPU, lambda m, px: 4e9).source  # digits: its exact size, no note


def test_a_local_spec_without_cpus_per_task_is_fed_by_this_machines_cpus(monkeypatch):
    monkeypatch.setattr(C, "local_cpus", lambda: 4)
    local = ExecutorSpec(kind="local", gpus_per_node=1)
    g = _cost(executor=local, dataset="imagefolder", data_root="/x")  # 4 CPUs - 1 = 3 workers x 100
    assert (g.feed.img_s, g.bound) == (300.0, "3 CPU workers")
    cfg = run_config({"dataset": "imagefolder", "data_root": "/x", "model": "vit_p_4gf", "image_size": 224,
                      "batch_size": 256, "compile": False})
    s = study_cost("s", [(cfg, 1)], local, TABLE, GPU, lambda m, px: MACS[m, px])
    warning = C.feed_warning(local, [(cfg, 1)], s)
    assert "warning: this machine's 4 CPUs (kind local, no cpus_per_task) gives each GPU 3 data workers" in warning
    slurm = ExecutorSpec(kind="slurm", gpus_per_node=1)  # Slurm's default is one CPU a task
    s = study_cost("s", [(cfg, 1)], slurm, TABLE, GPU, lambda m, px: MACS[m, px])
    assert "cpus_per_task unset (Slurm's default, 1 CPU) gives each GPU 0 data workers" in C.feed_warning(slurm, [(cfg, 1)], s)
    assert "None" not in C.feed_warning(slurm, [(cfg, 1)], s)


@settings(max_examples=40, deadline=None)
@given(epochs=st.integers(1, 60), more=st.integers(0, 60), cpus=st.integers(1, 80),
       decode=st.sampled_from(["memory", "cpu", "gpu"]), policy=st.sampled_from(["none", "autoaugment"]),
       model=st.sampled_from(["vit_p_4gf", "vit_c_4gf", "vit_p_18gf"]), compile=st.booleans())
def test_gpu_hours_grow_with_epochs_and_never_beat_the_step_alone(epochs, more, cpus, decode, policy, model, compile):
    ex = ExecutorSpec(kind="slurm", gpus_per_node=1, cpus_per_task=cpus)
    data = ({} if decode == "memory" else {"dataset": "imagefolder", "data_root": "/x", "decode": decode,
                                            "auto_augment": policy})
    a, b = (_cost(executor=ex, model=model, compile=compile, epochs=e, **data) for e in (epochs, epochs + more))
    assert a.gpu_hours <= b.gpu_hours
    assert a.train_hours >= a.images / a.step.img_s / 3600 * (1 - 1e-12)
    assert a.eval_hours >= a.eval_images / (3 * a.step.img_s) / 3600 * (1 - 1e-12) and a.eval_hours > 0


def _results_sections() -> list[tuple[str, str]]:
    """RESULTS.md as (heading, body) per ``## `` section: several share a heading."""
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    return [(part.split("\n", 1)[0], part) for part in text.split("\n## ")[1:]]


def _section_of(source: str, whole: bool = False) -> str:
    """The one RESULTS.md section a source names: its heading, and its command (``--flags``) and
    date where the heading is shared; a "fourth call" is that call's part of its section only
    (``whole``: the section, whose header holds the call's settings)."""
    heading = re.search(r"RESULTS.md '([^']+)'", source).group(1)
    command = re.search(r"benchmarks/\S+\.py[^,]*", source).group(0)
    date = re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", source).group(0)
    hits = [body for head, body in _results_sections() if head.startswith(heading)
            and f"`python {command}`" in body and (date in body or date[-9:-4] in body)]
    assert len(hits) == 1, (source, len(hits))
    body = hits[0]
    if "fourth call" in source and not whole:
        body = body[body.index("**Fourth call"):]
    return body


def test_the_shipped_table_holds_only_figures_results_md_shows():
    """Each figure is found, as printed, in the one RESULTS.md section (and call) its source names,
    with the batch and compile that section measured: a figure moved to another row, or another
    section's figure, fails."""
    t = throughput.load()
    assert t.default_device in t.devices and {r.device for r in t.step} == {d.name for d in t.devices.values()}
    for r in t.step:
        body = _section_of(r.source)
        setting = f"batch {r.batch}, 224 px, bf16 autocast{', torch.compile' if r.compile else ''}\n"
        assert setting in body and f"| {r.model} | {r.img_s:.3g} (" in body, r
        assert r.image_size == 224 and r.dtype == "bf16"
    for r in t.cpu_decode + t.gpu_decode:
        body = _section_of(r.source)
        row = (f"| {r.dataset} | {r.policy} | {r.workers} | {r.img_s:g} (" if r.device is None else
               f"| - | loader alone, {'GPU' if r.workers == 0 else 'CPU'} decode | {r.img_s:g} |")
        assert row in body, row
        if r.decoder_img_s is not None:
            assert f"decode + crop + normalise {r.decoder_img_s:,.0f} img/s" in body, r
    for e in C.end_to_end():
        body = _section_of(e.source)
        feed = "CPU decode" if e.decode == "cpu" else "GPU decode"
        assert f"| {e.model} | {feed} | {e.img_s:g} |" in body and f"| {e.model} | step alone | {e.step_img_s:g} |" in body
        assert f"| - | loader alone, {feed} | {e.loader_img_s:g} |" in body, e
        setting = _section_of(e.source, whole=True)
        assert f"CPU decode with {e.workers} workers" in setting and f"batch {e.batch}, 224 px" in setting
        if e.decoder_img_s is not None:
            assert f"decode + crop + normalise {e.decoder_img_s:,.0f} img/s" in body, e
    assert {(r.model, r.batch, r.compile) for r in t.step} == {
        (m, b, c) for m in ("vit_p_4gf", "vit_c_4gf") for b, c in ((128, False), (256, False), (256, True))}


def test_the_shipped_end_to_end_gaps_are_the_measured_over_the_modelled():
    """The fourth call (RESULTS.md): loader + step vs min(step alone (+ the decoder), loader alone)."""
    got = {(e.model, e.decode): e.ratio for e in C.end_to_end()}
    assert got == pytest.approx({("vit_p_4gf", "cpu"): 1125 / min(5983, 1381),
                                 ("vit_c_4gf", "cpu"): 1216 / min(4546, 1381),
                                 ("vit_p_4gf", "gpu"): 2868 / min(1 / (1 / 5983 + 1 / 7096), 4425),
                                 ("vit_c_4gf", "gpu"): 2641 / min(1 / (1 / 4546 + 1 / 7096), 4425)})


def test_the_dry_run_of_a_paper_grid_prints_the_cost_table():
    """grids/lr_wd.yaml by hand: 64 x 2 stems, 50 epochs of ImageNet-1k (assumed: not here) at
    batch 2048 over 8 GPUs (256 each, compiled), 16 CPUs per GPU."""
    out = run_cli("grid", "run", "grids/lr_wd.yaml", "--dry-run", "--gpu", "h200")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    images = 128 * 50 * (1281167 // 2048) * 2048
    assert images == 8.192e9
    step = 2 / (1 / 9500 + 1 / 9290)  # compiled vit_p_4gf and vit_c_4gf at 256, equal images each
    feed = 15 * (1381 / 15) * (352 / 2) / (409 / 2)  # 15 workers x the H200 VM's 92/worker x AutoAugment's 0.86 (EPYC)
    train_h = images / feed / 3600
    eval_feed = 15 * (1381 / 15)  # validation: no policy; its forward (3 x step) is faster
    eval_h = 128 * 50000 * (1 + 2 * 50) / eval_feed / 3600
    assert (f"{step:,.0f}", f"{feed:,.0f}", f"{train_h:,.4g}", f"{eval_h:,.4g}") == ("9,394", "1,189", "1,915", "130")
    assert f"│ lr_wd │ 128 │ 8.19e+09 │ 9,394 │ 1,189 │ 15 CPU workers │ 1,189 │ {train_h + eval_h:,.4g} │" in text
    assert "cost on NVIDIA H200" in text and "lr_wd: step measured" in text
    assert "training 1,915 + evaluation 130 GPU-hours" in text and "an estimate" in text
    lo, hi = 1216 / 1381, 1125 / 1381  # the measured end-to-end gaps of 15 CPU workers (fourth call)
    assert (f"a floor: loader and step overlapping perfectly; measured end to end on NVIDIA H200 "
            f"(vit_p_4gf and vit_c_4gf eager, batch 256, imagefolder/none, 15 CPU workers: x{hi:.2f}–{lo:.2f}") in text
    assert f"~{train_h / lo + eval_h:,.4g}–{train_h / hi + eval_h:,.4g} GPU-hours at those ratios" in text
    # the headline (1,915 + 130 = 2,045), in the table's format, a floor
    assert "~ 2,045 GPU-hours on NVIDIA H200 (a floor:" in text, text
    # planned from a machine without the spec's ImageNet: said, not refused (the jobs may find it)
    if not Path("/datasets/imagenet/train").is_dir():
        assert "image counts: ImageNet-1k size assumed" in text
        err = " ".join(out.stderr.split())
        assert "warning: data_root: /datasets/imagenet/train is not a folder" in err and "Slurm jobs must find it on their nodes" in err, err


def test_the_headline_says_floor_in_the_tables_format():
    from stability.grid.controller import dry_run
    from stability.grid.spec import load_spec

    cost = dry_run(load_spec(ROOT / "grids" / "lr_wd.yaml"), "h200").cost
    line = cost.headline()
    assert "~ 2,045 GPU-hours on NVIDIA H200 (a floor:" in line and "e+03 GPU" not in line
    assert "8.19e+09 training images and 6.46e+08 evaluation images" in line  # 128 x 50,000 x 101


def test_an_unknown_gpu_is_one_line_exit_2_naming_the_measured_ones(tmp_path):
    assert throughput.load().device("H200").key == "h200"  # as people write the card's name
    out = run_cli("grid", "run", "grids/lr_wd.yaml", "--dry-run", "--gpu", "a100")
    assert out.returncode == 2 and out.stderr == "error: --gpu: no measured throughput for 'a100' (allowed: h200)\n"
    out = run_cli("grid", "run", "grids/lr_wd.yaml", "--gpu", "h200", "--results", str(tmp_path / "r"))
    assert out.returncode == 2 and out.stderr.startswith("error: --gpu: only with --dry-run"), out.stderr
    assert not (tmp_path / "r").exists()


def test_reproduce_paper_dry_run_costs_every_sweep_it_would_launch(tmp_path):
    out = run_cli("reproduce", "--paper", "--dry-run", "--results", str(tmp_path / "res"))
    assert out.returncode == 0, out.stderr
    rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.count("│") > 5}
    assert {"lr_wd", "optimizer", "epochs", "peak-… (replicates)", "peak-2x-… (2x length)", "total"} <= set(rows)
    assert rows["peak-… (replicates)"].split("│")[2].strip() == "36"  # 6 arms x 6 seeds
    assert rows["peak-2x-… (2x length)"].split("│")[2].strip() == "8"  # 4 long arms x 2 seeds
    hours = [float(rows[k].split("│")[8].replace(",", "")) for k in rows]
    assert hours[-1] == pytest.approx(sum(hours[:-1]), rel=1e-3)
    assert "Nothing launched." in out.stdout and list(tmp_path.iterdir()) == []
