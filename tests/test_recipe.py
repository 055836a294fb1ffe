"""The paper's recipe: the new RunConfig fields, MixUp/CutMix soft targets through the loss, the
paper preset in the paper-size grids, and a real tiny run with mixing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from stability import store
from stability.config import RunConfig, run_config
from stability.data.mix import augment_and_mix, mix_batch, step_seed
from stability.errors import ConfigError
from stability.recipe import RECIPES
from stability.trainer.train import Step, train, train_step

from .conftest import ROOT, TINY

NEW = {"auto_augment": "none", "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mix_prob": 1.0, "mix_switch_prob": 0.5}


def test_run_ids_of_configs_without_the_new_fields_are_unchanged():
    """Hashes computed with the code before the recipe fields existed (hard-coded on purpose)."""
    assert RunConfig().run_id == "c5ad45169a7f"
    assert run_config({"model": "vit_4gf", "stem": "conv", "dataset": "imagefolder", "epochs": 50, "lr": 1e-3,
                       "wd": 0.24, "batch_size": 2048, "ema_alpha": 1e-5, "label_smoothing": 0.1}).run_id == "e688f4296f07"
    cfg = run_config({"dataset": "digits", "model": "vit_tiny", "stem": "conv", "epochs": 20, "lr": 2e-3, "wd": 0.2,
                      "augment": "shift", "num_workers": 3})
    assert cfg.run_id == "731ae884d963"
    assert run_config({**cfg.to_dict(), **NEW}).run_id == cfg.run_id  # the defaults written out: same id
    assert run_config({**cfg.to_dict(), "mixup_alpha": 0.8}).run_id != cfg.run_id
    # execution fields never enter the id
    assert run_config({**cfg.to_dict(), "num_workers": "auto", "prefetch_factor": 4}).run_id == cfg.run_id


@pytest.mark.parametrize("items,needles", [
    ({"auto_augment": "trivial"}, ["auto_augment", "autoaugment, randaugment"]),
    ({"auto_augment": "autoaugment"}, ["auto_augment", "decoded images"]),  # digits: in memory
    ({"mixup_alpha": -0.1}, ["mixup_alpha", "[0, 100]"]),
    ({"cutmix_alpha": 1000.0}, ["cutmix_alpha", "[0, 100]"]),
    ({"mix_prob": 1.5}, ["mix_prob", "[0, 1]"]),
    ({"mix_switch_prob": -1}, ["mix_switch_prob", "[0, 1]"]),
    ({"num_workers": "many"}, ["num_workers", "auto"]),
    ({"num_workers": -1}, ["num_workers", "auto"]),
    ({"num_workers": 1.5}, ["num_workers", "integer"]),
    ({"decode": "tpu"}, ["decode", "cpu, gpu"]),
    ({"decode": "gpu"}, ["decode", "imagefolder or packed"]),
    ({"decode": "gpu", "dataset": "imagefolder", "device": "cpu"}, ["decode", "CUDA"]),
    ({"prefetch_factor": 0}, ["prefetch_factor", ">= 1"]),
])
def test_bad_recipe_fields_are_one_line_errors(items, needles):
    with pytest.raises(ConfigError) as e:
        run_config(items)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


def test_policies_are_accepted_for_decoded_datasets():
    for ds in ("imagefolder", "packed", "cifar10", "cifar100"):
        assert run_config({"dataset": ds, "auto_augment": "randaugment"}).auto_augment == "randaugment"
    assert run_config({"num_workers": "auto"}).num_workers == "auto"


def _cfg(**kw):
    return run_config({"mixup_alpha": 0.0, "cutmix_alpha": 0.0, **kw})


def _batch(n=8, classes=4):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % classes


def test_mixup_gives_soft_targets_matching_the_mixed_images():
    x, y = _batch()
    xm, t = mix_batch(x, y, _cfg(mixup_alpha=0.8), 4, seed=123)
    assert t.shape == (8, 4) and t.dtype == torch.float32
    assert torch.allclose(t.sum(1), torch.ones(8))
    lam = t[0, y[0]].item()  # y[0] != y[-1]: the own label's weight is lambda
    assert 0 < lam < 1 and torch.allclose(t[0, y[-1]], torch.tensor(1 - lam))
    assert torch.allclose(xm, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)  # torchvision pairs neighbours
    again = mix_batch(x, y, _cfg(mixup_alpha=0.8), 4, seed=123)
    other = mix_batch(x, y, _cfg(mixup_alpha=0.8), 4, seed=124)
    assert torch.equal(again[0], xm) and torch.equal(again[1], t)  # seeded: a resume redraws the same
    assert not torch.equal(other[1], t)


def test_cutmix_pastes_a_box_whose_area_is_the_label_weight():
    x, y = _batch()
    xm, t = mix_batch(x, y, _cfg(cutmix_alpha=1.0), 4, seed=5)
    assert torch.allclose(t.sum(1), torch.ones(8))
    pasted = (xm != x).any(1)[0]  # pixels of image 0 that came from image 7
    assert torch.equal(xm[0][:, pasted], x[-1][:, pasted])
    lam = t[0, y[0]].item()
    assert lam < 1 and pasted.float().mean().item() == pytest.approx(1 - lam, abs=1e-6)


def test_switch_prob_and_mix_prob_pick_as_defined():
    x, y = _batch()
    for seed in range(6):  # switch 1: always CutMix, every pixel from one of the two images
        xm, _ = mix_batch(x, y, _cfg(mixup_alpha=0.8, cutmix_alpha=1.0, mix_switch_prob=1.0), 4, seed)
        assert bool(((xm == x) | (xm == x.roll(1, 0))).all())
    xm, t = mix_batch(x, y, _cfg(mixup_alpha=0.8, cutmix_alpha=1.0, mix_switch_prob=0.0), 4, 0)
    assert not bool(((xm == x) | (xm == x.roll(1, 0))).all())  # MixUp: blended pixels
    xm, t = mix_batch(x, y, _cfg(mixup_alpha=0.8, mix_prob=0.0), 4, 0)
    assert torch.equal(xm, x) and torch.equal(t, F.one_hot(y, 4).float())  # unmixed batch: one-hot
    assert mix_batch(x, y, _cfg(), 4, 0)[1] is y  # mixing off: the labels as they were


def test_augment_and_mix_keeps_the_augment_seed():
    x, y = _batch()
    cfg = _cfg(augment="shift")
    from stability.data.augment import augment_batch

    xa, ya = augment_and_mix(x, y, cfg, 4, step=7, rank=1)
    assert torch.equal(xa, augment_batch(x, "shift", step_seed(cfg.seed, 7, 1))) and ya is y
    assert step_seed(3, 7, 1) == (3 * 1_000_003 + 7) * 64 + 1  # the formula augment always used


def test_soft_targets_and_label_smoothing_through_the_step_equal_a_hand_computation():
    torch.manual_seed(0)
    net = torch.nn.Linear(12, 5)
    x = torch.randn(6, 12)
    t = torch.softmax(torch.randn(6, 5), 1)  # soft targets, rows sum to 1
    s, c = 0.1, 5
    logp = torch.log_softmax(net(x).detach(), 1)
    hand = -(((1 - s) * t + s / c) * logp).sum(1).mean()
    hits = (logp.argmax(1) == t.argmax(1)).sum()
    step = Step(net, torch.optim.SGD(net.parameters(), lr=0.0), None, label_smoothing=s, accum_steps=2)
    out = train_step(step, x, t, lr=0.0)
    assert out.loss.item() == pytest.approx(hand.item(), rel=1e-6)
    assert out.correct.item() == hits.item()


def test_the_paper_grids_carry_the_paper_recipe():
    paper = RECIPES["paper"]
    assert paper["mixup_alpha"] == 0.8 and paper["cutmix_alpha"] == 1.0 and paper["label_smoothing"] == 0.1
    assert paper["auto_augment"] == "autoaugment" and (paper["ema_alpha"], paper["ema_period"]) == (1e-5, 32)
    run_config(paper | {"dataset": "imagefolder"})  # a valid config
    for name in ("lr_wd", "optimizer", "epochs", "peak"):
        base = yaml.safe_load((ROOT / "grids" / f"{name}.yaml").read_text())["base"]
        assert {k: base.get(k) for k in paper} == paper, name
    for path in [ROOT / "grids" / "smoke.yaml", *(ROOT / "grids" / "cpu").rglob("*.yaml")]:
        base = yaml.safe_load(path.read_text()).get("base", {})
        assert not set(base) & set(NEW), path  # the CPU grids keep their measured choices


def test_a_tiny_run_with_mixup_and_cutmix_completes_and_writes_its_rows(tmp_path):
    cfg = run_config({**TINY, "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "results": str(tmp_path)})
    row = train(cfg)
    assert row["status"] == "completed", row.get("error")
    res = store.load(tmp_path)
    assert len(res.steps) == TINY["epochs"] * TINY["steps_per_epoch"]
    assert res.epochs.train_loss.notna().all() and (res.epochs.train_loss < 2 * math.log(10)).all()
    assert res.epochs.train_top1_err.between(0, 100).all()
    assert 0 <= res.runs.top1_err.iloc[0] <= 100
