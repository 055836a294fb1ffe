"""The cost planner (grid/cost.py) on hand-made tables and groups, the shipped table against
benchmarks/RESULTS.md, and the dry runs that print it."""

import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stability.config import run_config
from stability.grid.cost import MFU, cpu_worker_rate, group_cost, study_cost
from stability.grid.spec import ExecutorSpec
from stability.models import throughput
from stability.models.throughput import DecodeRate, Device, StepRate, Throughput

from .conftest import ROOT, run_cli

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
    assert g.gpu_hours == 3 * 2 * 2560 / 5120 / 3600
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
    assert g.img_s == 800.0 and g.gpu_hours == g.images / 800 / 3600
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
    assert s.gpu_hours == pytest.approx(2 * 5120 / 5120 / 3600 + 2 * 5120 / 4000 / 3600)
    assert s.img_s == pytest.approx(s.images / s.gpu_hours / 3600) and s.feed_img_s is None
    assert s.as_dict()["gpu_hours"] == s.gpu_hours and s.bound == "none"


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
    assert a.gpu_hours >= a.images / a.step.img_s / 3600 * (1 - 1e-12)


def test_the_shipped_table_holds_only_figures_results_md_shows():
    """Each figure is found, as printed, in the RESULTS.md section its source names."""
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()

    def section(source: str) -> str:  # from the section's first heading on
        return text[text.index("## " + re.search(r"RESULTS.md '([^']+)'", source).group(1)):]

    t = throughput.load()
    assert t.default_device in t.devices and {r.device for r in t.step} == {d.name for d in t.devices.values()}
    for r in t.step:
        body = section(r.source)
        assert f"| {r.model} | {r.img_s:.3g} (" in body and r.image_size == 224 and r.dtype == "bf16"
    for r in t.cpu_decode + t.gpu_decode:
        body = section(r.source)
        row = (f"| {r.dataset} | {r.policy} | {r.workers} | {r.img_s:g} (" if r.device is None else
               f"| loader alone, {'GPU' if r.workers == 0 else 'CPU'} decode | {r.img_s:g} |")
        assert row in body, row
    assert {(r.model, r.batch, r.compile) for r in t.step} == {
        (m, b, c) for m in ("vit_p_4gf", "vit_c_4gf") for b, c in ((128, False), (256, False), (256, True))}


def test_the_dry_run_of_a_paper_grid_prints_the_cost_table():
    from stability.grid.controller import dry_run
    from stability.grid.spec import load_spec

    out = run_cli("grid", "run", "grids/lr_wd.yaml", "--dry-run", "--gpu", "h200")
    assert out.returncode == 0, out.stderr
    cost = dry_run(load_spec(ROOT / "grids" / "lr_wd.yaml"), "h200").cost
    text = " ".join(out.stdout.split())
    assert "cost on NVIDIA H200" in text and "15 CPU workers" in text and "lr_wd: step measured" in text
    assert f"│ lr_wd │ 128 │ {cost.images:.3g} │" in text and f"{cost.gpu_hours:,.4g} │" in text
    assert f"{cost.gpu_hours:.3g} GPU-hours on NVIDIA H200" in text
    # 2048 / 8 GPUs = 256 per GPU, compiled (compile: auto on CUDA): the measured rows; the feed (15 workers) is the lower
    assert cost.step_img_s == pytest.approx(2 / (1 / 9500 + 1 / 9290)) and cost.img_s == cost.feed_img_s
    assert math.isclose(cost.gpu_hours, cost.images / cost.feed_img_s / 3600)
    # planned from a machine without the spec's ImageNet: said, not refused (the jobs may find it)
    if not Path("/datasets/imagenet/train").is_dir():
        err = " ".join(out.stderr.split())
        assert "warning: data_root: /datasets/imagenet/train is not a folder" in err and "Slurm jobs must find it on their nodes" in err, err


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
