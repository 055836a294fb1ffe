import math
import os
import signal
import subprocess
import sys
import time

import duckdb
import pandas as pd
import pytest
import torch

from stability import store
from stability.config import run_config
from stability.models import build_model, model_spec
from stability.trainer.checkpoint import checkpoint_path
from stability.trainer.optim import lr_at
from stability.trainer.tracing import GradTracer
from stability.trainer.train import train

from .conftest import ROOT, TINY, comparable


def test_tiny_run_lowers_loss_and_writes_four_tables(tiny_run):
    cfg, row = tiny_run
    assert row["status"] == "completed" and 0 <= row["top1_err"] <= 100
    res = store.load(cfg.results)
    assert res.runs.run_id.tolist() == [cfg.run_id]
    steps = res.steps.sort_values("step")
    assert len(steps) == 12 and steps.step.tolist() == list(range(12))
    first, last = steps.loss.iloc[:3].mean(), steps.loss.iloc[-3:].mean()
    assert last < first, (first, last)
    assert len(res.epochs) == 2 and res.epochs.val_top1_err.between(0, 100).all()
    layers = res.grad_norms[res.grad_norms.step == 0].sort_values("depth")
    assert layers.layer.tolist() == ["stem", "embed"] + [f"blocks.{i}" for i in range(5)] + ["head"]
    assert sorted(res.grad_norms.step.unique()) == list(range(0, 12, 2))
    # the zero-initialised head blocks every gradient below it at step 0 (pycls init)
    assert (layers.grad_norm[layers.layer != "head"] == 0).all() and layers.grad_norm.iloc[-1] > 0
    later = res.grad_norms[res.grad_norms.step > 0]
    assert (later.grad_norm > 0).all() and (later.update_ratio > 0).all()
    n = duckdb.sql(f"select count(*) from read_parquet('{cfg.results}/grad_norms/*/*.parquet', "
                   "hive_partitioning=true) where sweep = 'unit'").fetchall()[0][0]
    assert n == len(res.grad_norms)
    assert not checkpoint_path(cfg).exists()  # removed once the results are written
    assert not store.progress_path(cfg.results, cfg.sweep, cfg.run_id).exists()  # and the progress note


def test_tiny_run_records_how_its_step_executed(tiny_run):
    """On a CPU ``compile: auto`` is off and ``optimizer_impl: auto`` is foreach; fp32, no autocast."""
    cfg, row = tiny_run
    runs = store.load(cfg.results).runs
    assert cfg.compile == "auto" and cfg.optimizer_impl == "auto"
    assert runs.compiled.tolist() == [False] and runs.optimizer_impl.tolist() == ["foreach"]
    assert runs.compile_mode.isna().all() and runs.amp_dtype.isna().all()
    assert row["optimizer_impl"] == "foreach"
    assert runs.threads.tolist() == [torch.get_num_threads()]  # CPU sums split by it: bit-identity needs the same


def test_per_layer_norms_match_autograd():
    torch.manual_seed(0)
    model = build_model(model_spec("vit_c_tiny"))
    model(torch.randn(4, 3, 32, 32)).logsumexp(1).sum().backward()
    tracer = GradTracer(model, torch.device("cpu"))
    got = tracer.grad_norms()
    from stability.models import layer_groups
    for (name, ps), g in zip(layer_groups(model), got, strict=True):
        want = torch.sqrt(sum(p.grad.pow(2).sum() for p in ps))
        assert torch.allclose(g, want, rtol=1e-5), name


def test_schedule_warmup_then_cosine():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert lr_at(99, 1.0, 10, 100) < 0.001


def test_divergence_is_recorded_not_raised(tmp_path):
    cfg = run_config({**TINY, "optimizer": "sgd", "lr": 1e3, "results": str(tmp_path)})
    row = train(cfg)
    assert row["status"] == "diverged" and row["top1_err"] == 100.0
    step = row["diverged_at_step"]
    res = store.load(tmp_path)
    assert res.runs.status.tolist() == ["diverged"] and res.runs.top1_err.tolist() == [100.0]
    assert res.steps.step.max() == step
    bad = res.steps.set_index("step").loss[step]
    assert not math.isfinite(bad) or bad > 10 * math.log(10)
    # the per-layer norms of the step that diverged are kept, traced or not
    at = res.grad_norms[res.grad_norms.step == step]
    assert set(at.layer) == set(res.grad_norms.layer) and len(at) == at.layer.nunique()


def test_divergence_between_trace_steps_keeps_that_steps_layer_norms(tmp_path):
    cfg = run_config({**TINY, "optimizer": "sgd", "lr": 1e3, "trace_every": 7, "results": str(tmp_path)})
    row = train(cfg)
    res = store.load(tmp_path)
    step = row["diverged_at_step"]
    assert step % 7 != 0, step  # the case under test: a step the tracer does not sample
    at = res.grad_norms[res.grad_norms.step == step]
    assert len(at) == res.grad_norms.layer.nunique() and at.param_norm.isna().all()
    assert res.grad_norms.step.max() == step


def test_freeze_stem_traces_no_stem(tmp_path):
    cfg = run_config({**TINY, "epochs": 1, "steps_per_epoch": 2, "freeze_stem": True,
                      "results": str(tmp_path)})
    train(cfg)
    assert "stem" not in set(store.load(tmp_path).grad_norms.layer)


def _spawn(cfg_items: dict) -> subprocess.Popen:
    args = [f"{k}={v}" for k, v in cfg_items.items()]
    return subprocess.Popen([sys.executable, "-m", "stability", "train", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


SLOW = {**TINY, "epochs": 3, "steps_per_epoch": 15, "batch_size": 48, "trace_every": 5}


def _wait_for(path, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    cfg = run_config({**SLOW, "results": str(root)})
    return train(cfg), store.load(root)


KEYS = {"runs": ["run_id"], "epochs": ["epoch"], "steps": ["step"], "grad_norms": ["step", "layer"]}


def assert_same_as_reference(root, reference):
    """All four tables equal the uninterrupted run's, value for value (timing columns aside)."""
    got, ref = store.load(root), reference[1]
    for table, keys in KEYS.items():
        a, b = getattr(got, table), getattr(ref, table)
        assert not a.duplicated(keys).any(), f"{table}: a row twice"
        pd.testing.assert_frame_equal(comparable(a, keys), comparable(b, keys), check_exact=True,
                                      check_dtype=False, obj=table)


def _streamed_once(root, upto):
    """The rows a running run has streamed so far: each once, steps 0..n-1 with n >= ``upto``."""
    steps = store.read_table(root, "steps").step.tolist()
    assert steps == list(range(len(steps))) and len(steps) >= upto, steps


@pytest.mark.slow
def test_sigkill_after_epoch_then_resume_gives_same_result(tmp_path, reference):
    items = {**SLOW, "results": str(tmp_path)}
    cfg = run_config(items)
    proc = _spawn(items)
    _wait_for(checkpoint_path(cfg), proc)
    _wait_for(store.progress_path(cfg.results, cfg.sweep, cfg.run_id), proc)  # written just after
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert store.load(tmp_path).runs.status.tolist() == ["running"]
    state = torch.load(checkpoint_path(cfg), weights_only=True)["state"]
    assert state["epoch"] >= 1 and not {"epochs_rows", "steps_rows", "grad_rows"} & set(state)  # rows live in the store
    _streamed_once(tmp_path, state["step"])  # what the dashboard shows of the running run
    note = store.read_progress(cfg.results, cfg.sweep, cfg.run_id)  # what the dashboard shows meanwhile
    assert note["epoch"] >= 1 and note["epochs"] == cfg.epochs and 0 < note["step"] <= note["total_steps"]
    row = train(cfg)  # resumes
    ref_row, _ = reference
    assert row["status"] == "completed" and row["top1_err"] == ref_row["top1_err"]
    assert_same_as_reference(tmp_path, reference)
    assert not list(tmp_path.glob(f"*/sweep=*/*{store.CHUNK}*"))  # merged into the run's files


@pytest.mark.slow
def test_sigkill_after_rows_streamed_past_the_checkpoint_drops_them_on_resume(tmp_path, reference):
    """Killed after epoch 2's rows were streamed, while the checkpoint on disk is epoch 1's (the
    save that follows the stream had not landed): the resume drops the rows past step 15."""
    items = {**SLOW, "results": str(tmp_path)}
    cfg = run_config(items)
    proc = _spawn(items)
    _wait_for(checkpoint_path(cfg), proc)
    first = checkpoint_path(cfg).read_bytes()  # replaced atomically: a whole file
    _wait_for(store.table_dir(tmp_path, "steps", cfg.sweep) / f"{cfg.run_id}{store.CHUNK}{2 * 15:010d}.parquet", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert torch.load(checkpoint_path(cfg), weights_only=True)["state"]["step"] >= 15
    checkpoint_path(cfg).write_bytes(first)
    assert torch.load(checkpoint_path(cfg), weights_only=True)["state"]["step"] == 15
    _streamed_once(tmp_path, 30)
    assert train(cfg)["status"] == "completed"
    assert_same_as_reference(tmp_path, reference)


class FailAt:
    """A reporter that raises once the run has flushed step ``step`` (a crash mid-epoch)."""

    def __init__(self, step: int):
        self.step = step

    def on_start(self, total_steps, start_step): ...

    def on_log(self, step, epoch, loss, lr):
        if step >= self.step:
            raise RuntimeError(f"crash at step {step} (test)")

    def on_epoch(self, row): ...


@pytest.mark.slow
def test_failure_streams_rows_past_the_checkpoint_and_resume_drops_them(tmp_path, reference):
    cfg = run_config({**SLOW, "results": str(tmp_path)})
    with pytest.raises(RuntimeError, match="crash at step 20"):
        train(cfg, FailAt(20))
    assert store.load(tmp_path).runs.status.tolist() == ["failed"]
    _streamed_once(tmp_path, 20)  # steps 15..19 were streamed by the failure, after the epoch-1 checkpoint
    assert torch.load(checkpoint_path(cfg), weights_only=True)["state"]["step"] == 15
    assert train(cfg)["status"] == "completed"
    assert_same_as_reference(tmp_path, reference)


@pytest.mark.slow
def test_sigterm_checkpoints_mid_epoch_and_resume_matches(tmp_path, reference):
    items = {**SLOW, "results": str(tmp_path)}
    cfg = run_config(items)
    proc = _spawn(items)
    _wait_for(checkpoint_path(cfg), proc)  # past epoch 0; SIGTERM lands mid-epoch 1 or 2
    os.remove(checkpoint_path(cfg))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "preempted (stopped by SIGTERM)" in err and "Traceback" not in err
    assert checkpoint_path(cfg).exists()  # written by the signal handler path
    assert store.load(tmp_path).runs.status.tolist() == ["preempted"]
    step = torch.load(checkpoint_path(cfg), weights_only=True)["state"]["step"]
    _streamed_once(tmp_path, step)
    assert store.read_table(tmp_path, "steps").step.max() == step - 1  # what the checkpoint covers is stored
    row = train(cfg)
    ref_row, _ = reference
    assert row["top1_err"] == ref_row["top1_err"]
    assert_same_as_reference(tmp_path, reference)


def test_regnet_trains_channels_last(tmp_path):
    """RegNetY runs in channels_last (it pays on CPU, benchmarks/step_options.py) and trains."""
    from stability.models import memory_format

    assert memory_format("regnet") == torch.channels_last and memory_format("vit") == torch.contiguous_format
    model = build_model(model_spec("regnety_tiny", image_size=32)).to(memory_format=memory_format("regnet"))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    row = train(run_config({"model": "regnety_tiny", "dataset": "digits", "epochs": 1, "steps_per_epoch": 3,
                            "batch_size": 16, "results": str(tmp_path)}))
    assert row["status"] == "completed" and 0 <= row["top1_err"] <= 100


def test_weight_ema_follows_pycls():
    """pycls update_model_ema: every period-th batch, ema <- (1 - a) ema + a w with
    a = min(1, alpha * batch_size / epochs * period); a plain copy during warmup epochs."""
    from stability.trainer.ema import make_ema

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = make_ema(model, alpha=0.01, period=4, batch_size=64, epochs=8, warmup_epochs=1)
    assert ema.alpha == pytest.approx(0.32) and make_ema(model, 0.01, 0, 64, 8, 1) is None
    assert [ema.due(b) for b in range(6)] == [True, False, False, False, True, False]
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model, epoch=0)  # warmup: copy
    assert torch.equal(ema.model[0].weight, model[0].weight)
    before = ema.model[0].weight.clone()
    with torch.no_grad():
        model[0].weight.mul_(3.0)
        model[1].running_mean.fill_(2.0)
    model[1].num_batches_tracked.fill_(7)
    ema.update(model, epoch=1)
    torch.testing.assert_close(ema.model[0].weight, 0.68 * before + 0.32 * model[0].weight)
    torch.testing.assert_close(ema.model[1].running_mean, torch.full((2,), 0.64))  # buffers too
    assert int(ema.model[1].num_batches_tracked) == 7


def test_ema_errors_and_outcome_are_recorded(tiny_run):
    cfg, row = tiny_run
    res = store.load(cfg.results)
    assert res.epochs.val_ema_top1_err.between(0, 100).all()
    assert row["ema_top1_err"] == res.epochs.sort_values("epoch").val_ema_top1_err.iloc[-1]
    # collapsed: the final epoch's train loss at or above 0.9 ln(10) means it never left chance
    assert row["collapsed"] == (row["final_train_loss"] >= 0.9 * math.log(10))
    assert res.runs.collapsed.dtype == bool


class TearChunksAtLastEpoch:
    """A reporter that, at the last epoch's end, tears every steps chunk the run has streamed
    (a torn write the merge at the end of the run then meets)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def on_start(self, total_steps, start_step): ...

    def on_log(self, step, epoch, loss, lr): ...

    def on_epoch(self, row):
        if row["epoch"] == self.cfg.epochs - 1:
            for c in store.run_chunks(self.cfg.results, "steps", self.cfg.sweep, self.cfg.run_id):
                c.write_bytes(c.read_bytes()[:40])


def test_a_run_whose_rows_cannot_be_merged_at_its_end_is_failed_not_left_running(tmp_path):
    cfg = run_config({**TINY, "epochs": 2, "results": str(tmp_path)})
    with pytest.raises(store.CorruptFiles, match="its streamed rows cannot be merged"):
        train(cfg, TearChunksAtLastEpoch(cfg))
    (row,) = store.read_table(tmp_path, "runs").itertuples()
    assert row.status == "failed" and "cannot be merged" in row.error and ".parquet" in row.error
    assert checkpoint_path(cfg).exists()  # kept: the rerun resumes once the bad chunk is quarantined
