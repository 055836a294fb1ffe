"""A CPU spec's time on this machine (grid/local_time.py): the arithmetic on a fixed step time,
the real step timed, and the dry runs that print it."""

import math
import os
import re

import torch

from stability.config import run_config
from stability.grid import local_time as L
from stability.grid.cost import EVAL_SPEEDUP, eval_images, images_seen, model_key
from stability.grid.spec import ExecutorSpec

from .conftest import ROOT, run_cli, write_spec

DIGITS = dict(dataset="digits", model="vit_tiny", batch_size=64, epochs=2, trace_every=5)


def test_a_run_is_its_steps_and_its_evaluation_and_runs_share_the_slots(monkeypatch):
    timed = []

    def fake_step(cfg, px, batch, threads, steps=L.TIMED_STEPS):
        timed.append((cfg.stem, cfg.optimizer, batch, threads))
        return 0.1 if cfg.stem == "patchify" else 0.2

    monkeypatch.setattr(L, "time_step", fake_step)
    p, c = (run_config({**DIGITS, "stem": s}) for s in ("patchify", "conv"))
    p_long = run_config({**DIGITS, "stem": "patchify", "epochs": 6, "lr": 0.5})  # the same step, 3x the steps
    ex = ExecutorSpec(kind="local", max_parallel=2)
    shared: dict = {}
    t = L.local_time([(p, 3), (c, 3), (p_long, 1)], ex, shared)
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert timed == [("patchify", "adamw", 64, threads), ("conv", "adamw", 64, threads)]  # p_long: timed once
    steps = images_seen(p) / 64  # digits: 1,497 training images, 23 full batches a epoch
    assert steps == 2 * 23
    evaluated = eval_images(p) / 64 / EVAL_SPEEDUP  # 300 validation images, 1 + 2 epochs x (model, EMA)
    run_p, run_c = (steps + evaluated) * 0.1, (steps + evaluated) * 0.2
    assert [g.run_s for g in t.groups] == [run_p, run_c, (3 * steps + eval_images(p_long) / 64 / EVAL_SPEEDUP) * 0.1]
    assert math.isclose(t.run_s, 3 * run_p + 3 * run_c + t.groups[2].run_s)
    assert math.isclose(t.wall_s, t.run_s / 2) and t.threads == threads and t.timed
    assert L.local_time([(p, 1)], ex, shared).groups[0].step_s == 0.1 and len(timed) == 2  # kept across studies
    one = L.local_time([(c, 1)], ExecutorSpec(kind="local", max_parallel=4))  # one run: at least its own length
    assert one.wall_s == run_c
    text = t.text("smoke")
    assert text.startswith(f"smoke: ~{t.wall_s:.0f} s on this machine (2 at a time, {threads} thread")
    assert "vit_p_tiny adamw batch 64 100 ms, vit_c_tiny adamw batch 64 200 ms" in text
    assert L.total_text([("a", t), ("b", one)]).startswith(f"on this machine: ~{t.wall_s + one.wall_s:.0f} s in all")


def test_a_paper_size_step_is_not_timed_on_a_cpu_and_says_why(monkeypatch):
    monkeypatch.setattr(L, "time_step", lambda *a, **k: (_ for _ in ()).throw(AssertionError("timed")))
    big = run_config({"dataset": "imagefolder", "data_root": "/nowhere", "model": "vit_p_4gf", "batch_size": 256})
    t = L.local_time([(big, 4)], ExecutorSpec(kind="local"))
    assert not t.timed and t.groups[0].why.startswith("a step of ")
    assert re.fullmatch(r"big: not timed on this machine \(vit_p_4gf adamw: a step of .* multiply-adds, over the "
                        r"3e\+10 a dry run times on a CPU\)", t.text("big"))
    assert L.total_text([("big", t)]) is None
    assert L.is_local_cpu(ExecutorSpec(kind="local"), "local")
    assert not L.is_local_cpu(ExecutorSpec(kind="local", gpus_per_node=1), "local")
    assert not L.is_local_cpu(ExecutorSpec(kind="slurm"), "slurm")


def test_the_real_step_is_timed_and_the_threads_are_put_back():
    before = torch.get_num_threads()
    cfg = run_config({**DIGITS, "stem": "conv"})
    s = L.time_step(cfg, px=model_key(cfg)[1], batch=8, threads=1, steps=2)
    assert s > 0 and math.isfinite(s) and torch.get_num_threads() == before


def test_a_local_cpu_dry_run_says_its_time_here_and_a_gpu_spec_does_not(tmp_path):
    spec = write_spec(tmp_path / "g.yaml", "here", tmp_path / "res", executor={"kind": "local", "max_parallel": 2})
    out = run_cli("grid", "run", str(spec), "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (line,) = [x for x in out.stdout.splitlines() if "on this machine" in x]
    assert re.match(r"here: ~\d+ s on this machine \(2 at a time, \d+ threads? each; steps timed here just now: "
                    r"vit_p_tiny adamw batch 32 [\d,]+ ms, vit_c_tiny adamw batch 32 [\d,]+ ms;", line), line
    paper = run_cli("grid", "run", str(ROOT / "grids" / "lr_wd.yaml"), "--dry-run", cwd=tmp_path)
    assert paper.returncode == 0 and " on this machine (" not in paper.stdout, paper.stderr
    assert not (tmp_path / "res").exists()  # a dry run writes nothing


def test_a_tpe_dry_run_says_its_time_is_of_the_runs_it_shows(tmp_path, capsys):
    """A tpe plan's dry run shows its first trials (one per free slot): its time is theirs, and says so."""
    from stability.cli import main

    spec = write_spec(tmp_path / "t.yaml", "tp", tmp_path / "res", executor={"kind": "local", "max_parallel": 2},
                      sampler={"name": "tpe", "n": 20, "seed": 0})
    assert main(["grid", "run", str(spec), "--dry-run"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "on this machine" in x]
    assert line.startswith("tp (the runs shown only): ~"), line


def test_image_file_decoding_is_said_to_be_left_out_and_a_run_of_no_batch_is_refused(monkeypatch, tmp_path):
    """The step is timed on random tensors: a run on image files says its decoding is not in the
    figure (a trial's imagefolder grid said ~7 s and took 50 s); in-memory data says nothing."""
    import pytest

    from stability.errors import ConfigError

    monkeypatch.setattr(L, "time_step", lambda *a, **k: 0.01)
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        for i in range(8):
            (tmp_path / split / "a" / f"{i}.png").write_bytes(b"")
    files = run_config({**DIGITS, "dataset": "imagefolder", "data_root": str(tmp_path), "image_size": 32,
                        "batch_size": 4})
    ex = ExecutorSpec(kind="local")
    t = L.local_time([(files, 2)], ex)
    assert t.groups[0].files == "imagefolder"
    assert ("image decoding not included (imagefolder: every image is read and decoded from its file, "
            "not timed here)") in t.text("f")
    assert "decoding" not in L.local_time([(run_config(DIGITS), 2)], ex).text("d")
    assert "image decoding not included (imagefolder" in L.total_text([("f", t)])
    with pytest.raises(ConfigError, match=r"batch_size 64 exceeds the 8 training images"):  # was 0 steps, 0 s
        L.local_time([(run_config({**DIGITS, "dataset": "imagefolder", "data_root": str(tmp_path), "image_size": 32}),
                       1)], ex)
