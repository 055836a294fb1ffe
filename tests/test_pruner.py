"""The pruner (stability/pruner.py) and what uses it: its text, its false-positive rate under the
null, a pruned training run and its rerun, the grid (local backend, tpe's Optuna record) and
``stability replay``. The Slurm grid with a pruner is in test_grid_slurm.py."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import threading

import duckdb
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stability import pruner, replay, store
from stability.cli import main
from stability.config import RunConfig, run_config
from stability.errors import ConfigError
from stability.grid.ledger import read_ledger
from stability.grid.samplers import sampler_for
from stability.grid.spec import load_spec
from stability.grid.studies import open_storage, tell
from stability.pruner import PRESETS, SETTING_NAMES, PrunerSettings, RunPruner, flush_points
from stability.trainer.checkpoint import RunState, checkpoint_path
from stability.trainer.pruning import make_pruner
from stability.trainer.stopping import Preempted
from stability.trainer.train import RunDone, train

from .conftest import run_cli, write_spec

# ---------------------------------------------------------------------------------------------
# 1. The pruner's text: every valid spelling has one canonical text; every invalid one is a
#    ConfigError naming the pruner, and the CLI says so in one line (exit 2).

# From the settings' fields, so a setting added later is drawn too: rules that "none" turns off
# (typed ``float | None``) and the fractions of a run (``*after``, in [0, 1]).
OPTIONAL = tuple(f.name for f in dataclasses.fields(PrunerSettings) if "None" in str(f.type))
UNIT = tuple(k for k in SETTING_NAMES if k.endswith("after"))


def _number(key: str):
    if key in UNIT:
        return st.floats(0, 1)
    if key == "window":
        return st.floats(0, 1, exclude_min=True)
    if key == "stall":
        return st.floats(0, 1e6)
    return st.floats(0, 1e6, exclude_min=True)


def _value(key: str):
    """A valid value of ``key`` as YAML or a command line could give it: a float, an int, a
    number's text in several spellings, or (optional rules) one of the words for off."""
    num = _number(key)
    forms = [num, num.map(repr), num.map(lambda v: f"{v:g}"), num.map(lambda v: f"{v:.3e}"),
             st.integers(0 if key in (*UNIT, "stall") else 1, 1 if key in (*UNIT, "window") else 10**6)]
    if key in OPTIONAL:
        forms.append(st.sampled_from([None, "none", "None", "null", "off", "OFF"]))
    return st.one_of(forms)


def _fits(key: str, v) -> bool:
    """Whether a value's text still parses in bounds (``%.3e`` may round 0.9999999 up to 1.000e+00)."""
    if v is None or (isinstance(v, str) and v.lower() in ("none", "null", "off")):
        return True
    f = float(v)
    if key in UNIT:
        return 0 <= f <= 1
    if key == "window":
        return 0 < f <= 1
    return f > 0 or (key == "stall" and f == 0)


valid_items = st.lists(st.sampled_from(SETTING_NAMES), unique=True, max_size=5).flatmap(
    lambda keys: st.fixed_dictionaries({k: _value(k) for k in keys})).filter(
    lambda d: all(_fits(k, v) for k, v in d.items()))
presets = st.sampled_from(sorted(PRESETS))


def _text(name: str, items: dict, pad: str) -> str:
    """``name:key=value,...`` (padded with spaces, or ``name:`` with nothing after the colon)."""
    parts = [f"{pad}{k}{pad}={pad}{'none' if v is None else v}{pad}" for k, v in items.items()]
    return name + (":" + ",".join(parts) if parts else ":" if pad else "")


valid_specs = st.one_of(
    st.builds(_text, presets, valid_items, st.sampled_from(["", " "])),
    # a mapping as YAML gives it; without "preset" it is the default preset
    st.builds(lambda name, items, named: ({"preset": name} if named else {}) | items, presets, valid_items,
              st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(valid_specs)
def test_any_valid_pruner_has_one_canonical_text(spec):
    text = pruner.canonical(spec)
    assert pruner.canonical(text) == text
    assert pruner.parse(text) == pruner.parse(spec)
    # the run config stores that text, so every spelling of one pruner gives one run id
    cfg = run_config({"pruner": spec})
    assert cfg.pruner == text and cfg.run_id == run_config({"pruner": text}).run_id
    assert "pruner" in cfg.identity()


def test_canonical_known_answers():
    assert pruner.canonical(None) is None
    assert pruner.canonical("default") == "default" == pruner.canonical({}) == pruner.canonical("default:")
    assert pruner.canonical("default: after = 0.3 , chance=none,") == "default:after=0.3,chance=none"
    assert all(pruner.canonical(off) is None for off in (None, False, "off", "none", "False", " null "))
    assert pruner.canonical({"preset": "default", "chance": None, "after": "3e-1"}) == "default:after=0.3,chance=none"
    assert pruner.canonical(f"default:after={PRESETS['default'].after}") == "default"  # the preset's own value
    assert pruner.canonical("nonfinite:above=1.5") == "nonfinite:above=1.5"


def _bad_value(key: str):
    """Values ``key`` refuses: out of its bounds, not a number, not finite, or none where the
    rule cannot be turned off."""
    bad: list = ["abc", "", "nan", "inf", "-inf", "1e999", 10**400, float("nan"), float("inf"), True, [1], {"a": 1}]
    bad += [-1, "-0.5", -1e-9]
    if key in UNIT or key == "window":
        bad += [1.5, "2", 1 + 1e-9]
    if key not in (*UNIT, "stall"):
        bad += [0, "0", 0.0]
    if key not in OPTIONAL:
        bad += [None, "none", "off"]
    return st.sampled_from(bad)


def _text_value(v) -> str | None:
    """A bad value as command-line text, or None when text cannot carry it."""
    if isinstance(v, (list, dict, bool)):
        return None
    return "none" if v is None else str(v)


not_a_name = st.one_of(st.text(max_size=12), st.integers(), st.floats(), st.none(), st.booleans(),
                       st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                    max_size=2)).filter(
    lambda n: not (isinstance(n, str) and n in PRESETS))
not_a_key = st.text(max_size=12).filter(lambda k: k.strip() not in SETTING_NAMES and k != "preset")


@st.composite
def invalid_specs(draw):
    kind = draw(st.sampled_from(["preset", "key", "value", "value_text", "no_eq", "type"]))
    good = draw(valid_items)
    name = draw(presets)
    if kind == "preset":
        bad = draw(not_a_name)
        if isinstance(bad, str) and draw(st.booleans()):
            if ":" in bad:
                bad = bad.replace(":", "")
                if bad in PRESETS:
                    bad += "x"
            return f"{bad}:" + ",".join(f"{k}={_text_value(v)}" for k, v in good.items())
        return {"preset": bad, **good}
    if kind == "key":
        key = draw(not_a_key)
        if draw(st.booleans()) and not set(key) & set(",=:") and key.strip():
            return f"{name}:{key}=1"
        return {"preset": name, key: 1, **good}
    if kind in ("value", "value_text"):
        key = draw(st.sampled_from(SETTING_NAMES))
        v = draw(_bad_value(key))
        items = {k: val for k, val in good.items() if k != key}
        if kind == "value_text" and (t := _text_value(v)) is not None:
            return f"{name}:" + ",".join([f"{k}={_text_value(val)}" for k, val in items.items()] + [f"{key}={t}"])
        return {"preset": name, **items, key: v}
    if kind == "no_eq":
        return f"{name}:after"
    return draw(st.one_of(st.integers(), st.floats(), st.booleans(), st.lists(st.integers(), max_size=2),
                          st.binary(max_size=4)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(invalid_specs().filter(lambda s: not (s is False or isinstance(s, str) and s.strip().lower() in pruner.OFF)))
def test_any_invalid_pruner_is_a_config_error_naming_the_pruner(spec):
    with pytest.raises(ConfigError) as e:
        pruner.canonical(spec)
    assert str(e.value).startswith("pruner"), e.value
    with pytest.raises(ConfigError):
        run_config({"pruner": spec})


def test_known_invalid_pruners_say_what_is_allowed():
    for spec, words in [("bogus", ["'bogus' is not a preset", "default, loss, nonfinite"]),
                        ({"preset": ["default"]}, ["is not a preset"]),  # a YAML list: was a TypeError
                        ({"after": 10**400}, ["pruner.after", "[0, 1]"]),  # was an OverflowError
                        ("default:after=2", ["pruner.after", "[0, 1]"]),
                        ("default:above=0", ["pruner.above", "(0, inf)", "none to turn it off"]),
                        ("default:window=0", ["pruner.window", "(0, 1]"]),
                        ("default:stall=none", ["pruner.stall: must be a number"]),
                        ("default:bogus=1", ["pruner.bogus: not a setting", "preset, window"]),
                        ("default:after", ["is not key=value"])]:
        with pytest.raises(ConfigError) as e:
            pruner.parse(spec)
        assert all(w in str(e.value) for w in words), (spec, str(e.value))


def test_cli_refuses_a_bad_pruner_in_one_line(tmp_path):
    out = run_cli("train", "pruner=bogus", f"results={tmp_path}", timeout=120)
    assert out.returncode == 2 and out.stdout == "", out
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("error: command line: pruner: 'bogus' is not a preset (allowed: default, loss, "
                                 "nonfinite)")


@pytest.mark.parametrize("value, words", [
    ("default:after=2", "pruner.after"), ("{preset: [default]}", "is not a preset"),
    ("{preset: default, windw: 0.2}", "pruner.windw: not a setting"), ("default:chance=-1", "pruner.chance"),
    ("7", "pruner: expected a preset name or a mapping"),
])
def test_cli_in_process_refuses_bad_pruners(tmp_path, capsys, value, words):
    assert main(["train", f"pruner={value}", f"results={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err, err
    assert not (tmp_path / "r").exists()  # refused before anything was written


# ---------------------------------------------------------------------------------------------
# 2. The null: good runs' loss curves (a plateau at ln C for up to 40 % of training, SGD-like
#    early bumps up to 1.3 ln C, then a noisy fall) are almost never stopped by the default
#    preset; doomed ones (rising to >= 2 ln C, or stuck at ln C) are, with a stated power.


def _judge(s: PrunerSettings, loss: np.ndarray, spe: int, every: int, n_classes: int):
    """The verdict a trainer's pruner gives a run with this loss curve, judged at its flushes."""
    p, done = RunPruner(s, len(loss), n_classes), 0
    for q in flush_points(len(loss), spe, every):
        if (v := p.observe([{"step": i, "loss": float(loss[i])} for i in range(done, q + 1)], [])) is not None:
            return v
        done = q + 1
    return None


def _shape(rng: np.random.Generator):
    """A run's length, flush interval and classes: 2-10 epochs of 10-40 steps, traced every 1-10."""
    n_classes = int(rng.choice([10, 100]))
    spe = int(rng.integers(10, 41))
    return int(rng.integers(2, 11)) * spe, spe, int(rng.choice([1, 2, 5, 10])), n_classes


def _noise(rng, n, ln_c):
    return rng.normal(0.0, rng.uniform(0.01, 0.08) * ln_c, n)  # per-step minibatch noise, sd 1-8 % of ln C


def good_curve(rng: np.random.Generator, total: int, ln_c: float) -> np.ndarray:
    t = np.arange(total) / total
    plateau = rng.uniform(0.0, 0.4)  # sits at chance for up to 40 % of training
    final = rng.uniform(0.05, 0.8) * ln_c
    rate = rng.uniform(3.0, 8.0)
    base = np.where(t < plateau, ln_c, final + (ln_c - final) * np.exp(-rate * (t - plateau) / (1 - plateau)))
    if rng.random() < 0.5:  # an SGD-like early bump, up to 1.3 ln C at its top
        top, centre, width = rng.uniform(0.0, 0.3) * ln_c, rng.uniform(0.0, max(plateau, 0.05)), rng.uniform(0.02, 0.1)
        base = base + top * np.exp(-0.5 * ((t - centre) / width) ** 2)
    return np.maximum(base + _noise(rng, total, ln_c), 1e-3)


def doomed_curve(rng: np.random.Generator, total: int, ln_c: float, kind: str) -> np.ndarray:
    t = np.arange(total) / total
    if kind == "stuck":  # at chance to the end
        return np.maximum(ln_c * rng.uniform(0.99, 1.01) + _noise(rng, total, ln_c), 1e-3)
    onset, ramp, top = rng.uniform(0.0, 0.8), rng.uniform(0.01, 0.1), rng.uniform(2.0, 5.0)
    return ln_c * (1 + (top - 1) * np.clip((t - onset) / ramp, 0, 1)) + _noise(rng, total, ln_c)


def test_default_pruner_rarely_stops_a_good_run_and_stops_doomed_ones():
    """The default preset's wrong-stop rate under the null: 2,000 simulated good runs, the 90 %
    one-sided Clopper-Pearson bound of the rate at most 1 % (observed: 0). Power: of 500 runs
    stuck at chance at least 90 % are stopped before their end (short runs traced coarsely have
    too few flushes after ``after``; observed 97-99 %), saving on average at least 3/4 of the
    steps left after ``after`` (the chance rule waits for it); of 500 rising to 2-5 ln C at least
    97 % (observed 100 %), saving at least 30 % of their steps on average (observed 52-54 %)."""
    s = PRESETS["default"]
    rng = np.random.default_rng(20261206)
    wrong: dict[str, int] = {}
    n_good = 2000
    for _ in range(n_good):
        total, spe, every, c = _shape(rng)
        if (v := _judge(s, good_curve(rng, total, math.log(c)), spe, every, c)) is not None:
            wrong[v.rule] = wrong.get(v.rule, 0) + 1
    k = sum(wrong.values())
    assert replay.upper_bound(k, n_good) <= 0.01, f"{k} of {n_good} good runs stopped: {wrong}"
    for kind, power, min_saved, rules in (("stuck", 0.90, 0.75 * (1 - s.after), {"chance"}),
                                          ("rise", 0.97, 0.3, {"above", "chance"})):
        n, stopped, saved = 500, 0, []
        for _ in range(n):
            total, spe, every, c = _shape(rng)
            v = _judge(s, doomed_curve(rng, total, math.log(c), kind), spe, every, c)
            if v is not None and v.step < total - 1:  # stopped at the last step saves nothing
                stopped += 1
                saved.append(1 - (v.step + 1) / total)
                assert v.rule in rules, (kind, v)
        assert stopped >= power * n, f"{kind}: {stopped} of {n} stopped"
        assert np.mean(saved) >= min_saved, (kind, np.mean(saved))


def test_flush_points_are_where_the_trainer_flushes():
    assert flush_points(12, 6, 2) == [1, 3, 5, 7, 9, 11]
    assert flush_points(10, 5, 3) == [2, 4, 7, 9]  # every 3 within an epoch, and each epoch's end
    assert flush_points(7, 7, 10) == [6]


# ---------------------------------------------------------------------------------------------
# 3. Training: a pruned run is recorded with its verdict and checkpoint; --rerun continues it to
#    the same result as a run never pruned; a resumed run rebuilds its pruner's history.

BASE = dict(model="vit_tiny", dataset="synthetic", synthetic_size=256, image_size=16, ema_period=0, epochs=2,
            steps_per_epoch=6, batch_size=32, trace_every=2, lr=3e-3, warmup_epochs=0.5)
BASE_ID = "a87d8f6098cc"  # BASE's run id at e3e9c1a, before the pruner field existed
# chance=0.01,stall=100: the chance rule holds for any loss, so the pruner fires at the first
# flush at or past ``after`` of the 12 steps (flushes at steps 1, 3, 5, 7, 9, 11).
AT = {3: "default:after=0.3,chance=0.01,stall=100",  # mid epoch 0
      5: "default:after=0.45,chance=0.01,stall=100",  # epoch 0's last step
      7: "default:after=0.6,chance=0.01,stall=100,window=0.5"}  # mid epoch 1, windows over 6 steps


def _cfg(root, **extra):
    return run_config({**BASE, "results": str(root), "sweep": "p", **extra})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """BASE trained without a pruner: (runs row, tables)."""
    root = tmp_path_factory.mktemp("reference")
    row = train(_cfg(root))
    assert row["status"] == "completed"
    return row, store.load(root)


@pytest.fixture(scope="module")
def pruned_at_7(tmp_path_factory):
    """BASE with the pruner of AT[7], never interrupted: (runs row, tables)."""
    root = tmp_path_factory.mktemp("pruned7")
    row = train(_cfg(root, pruner=AT[7]))
    return row, store.load(root)


def _same_steps(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """The rows of two runs' steps tables, step by step, value for value (ids and timing aside)."""
    cols = [c for c in a.columns if c not in ("run_id", "sweep", "time_s")]
    pd.testing.assert_frame_equal(a[cols].sort_values("step").reset_index(drop=True),
                                  b[cols].sort_values("step").reset_index(drop=True), check_exact=True,
                                  check_dtype=False)


def test_a_run_without_pruner_keeps_its_id():
    cfg = run_config(BASE)
    assert "pruner" not in cfg.identity() and cfg.run_id == BASE_ID
    assert run_config({**BASE, "pruner": None}).run_id == BASE_ID
    assert "pruner" in RunConfig.LATER_FIELDS
    pruned = run_config({**BASE, "pruner": "default"})
    assert pruned.run_id != BASE_ID and pruned.identity()["pruner"] == "default"


def test_pruned_run_records_its_verdict_and_rerun_continues_it(tmp_path, reference):
    cfg = _cfg(tmp_path, pruner=AT[3])
    row = train(cfg)
    assert (row["status"], row["pruned_at_step"], row["prune_rule"]) == ("pruned", 3, "chance")
    signals = json.loads(row["prune_signals"])
    assert set(signals) == {"loss_window", "loss_before", "ln_c"} and signals["ln_c"] == pytest.approx(math.log(10))
    assert checkpoint_path(cfg).exists()
    assert torch.load(checkpoint_path(cfg), weights_only=True)["state"]["step"] == 4
    # read back as the dashboard and a notebook would: pandas and duckdb
    runs = store.load(tmp_path).runs
    assert runs[["status", "pruned_at_step", "prune_rule"]].values.tolist() == [["pruned", 3, "chance"]]
    assert json.loads(runs.prune_signals.iloc[0]) == signals
    got = duckdb.sql(f"select status, pruned_at_step, prune_rule, prune_signals from "
                     f"read_parquet('{tmp_path}/runs/*/*.parquet', hive_partitioning=true)").fetchall()
    assert got == [("pruned", 3, "chance", row["prune_signals"])]
    steps = store.read_table(tmp_path, "steps")
    assert sorted(steps.step) == [0, 1, 2, 3]
    with pytest.raises(RunDone):  # a result: training it again without --rerun refuses
        train(cfg)
    # --rerun: the user disagrees; the run goes on from the checkpoint with the pruner off
    again = train(cfg, rerun=True)
    assert again["status"] == "completed" and (again["pruned_at_step"], again["prune_rule"]) == (3, "chance")
    assert again["prune_signals"] == row["prune_signals"]
    assert not checkpoint_path(cfg).exists()
    res = store.load(tmp_path)
    assert res.runs[["status", "pruned_at_step", "prune_rule"]].values.tolist() == [["completed", 3, "chance"]]
    assert res.steps.step.tolist() == sorted(res.steps.step) == list(range(12))  # no step twice, no gap
    ref_row, ref = reference
    _same_steps(res.steps, ref.steps)  # it continued where it stopped: the run never pruned, step for step
    assert again["top1_err"] == ref_row["top1_err"] and res.epochs.train_loss.tolist() == ref.epochs.train_loss.tolist()


def test_pruned_at_an_epoch_end_through_the_cli_then_rerun(tmp_path, reference):
    args = [f"{k}={v}" for k, v in BASE.items()] + [f"results={tmp_path}", "sweep=p", f"pruner={AT[5]}"]
    out = run_cli("train", *args)
    assert out.returncode == 0, out.stderr
    cfg = _cfg(tmp_path, pruner=AT[5])
    assert f"run {cfg.run_id}: pruned" in out.stdout and "pruned at step 5 by rule chance" in out.stdout
    assert "--rerun continues it" in out.stdout and checkpoint_path(cfg).exists()
    assert store.load(tmp_path).epochs.empty  # stopped before epoch 0's evaluation
    again = run_cli("train", *args, "--rerun")
    assert again.returncode == 0, again.stderr
    assert "completed" in again.stdout and "continued past the pruner's verdict at step 5, rule chance" in again.stdout
    res = store.load(tmp_path)
    assert res.runs[["status", "pruned_at_step", "prune_rule"]].values.tolist() == [["completed", 5, "chance"]]
    assert res.steps.step.tolist() == list(range(12))
    _same_steps(res.steps, reference[1].steps)
    assert res.epochs.train_loss.tolist() == reference[1].epochs.train_loss.tolist()


def test_a_grid_runs_pruned_run_is_continued_by_its_id_from_the_command_line(tmp_path, reference):
    """`train --run ID --rerun`: the run's recorded config, no YAML written by hand; it continues
    where the pruner stopped it, step for step the run never pruned."""
    cfg = _cfg(tmp_path, pruner=AT[3])
    assert train(cfg)["status"] == "pruned"
    same = run_cli("train", "--run", cfg.run_id, f"results={tmp_path}")
    assert same.returncode == 0 and f"run {cfg.run_id}: already pruned" in same.stdout, same.stdout + same.stderr
    again = run_cli("train", "--run", cfg.run_id, f"results={tmp_path}", "--rerun")
    assert again.returncode == 0, again.stderr
    assert "continued past the pruner's verdict at step 3, rule chance" in again.stdout
    res = store.load(tmp_path)
    assert res.runs[["run_id", "status", "sweep"]].values.tolist() == [[cfg.run_id, "completed", "p"]]
    _same_steps(res.steps, reference[1].steps)
    # the same command again (from shell history): trained anew, from scratch (its checkpoint is
    # gone), and the pruner the user overruled stays off: never flipped back to pruned
    third = run_cli("train", "--run", cfg.run_id, f"results={tmp_path}", "--rerun")
    assert third.returncode == 0 and "continued past the pruner's verdict at step 3" in third.stdout, third.stdout
    res = store.load(tmp_path)
    assert res.runs[["status", "pruned_at_step", "prune_rule"]].values.tolist() == [["completed", 3, "chance"]]
    _same_steps(res.steps, reference[1].steps)


def test_a_pruned_run_is_not_continued_on_other_data(tmp_path):
    """data_root is not part of the run id (data may move), so `--run ID data_root=OTHER` could
    continue a run on another dataset of the same shape: the checkpoint records the data's classes
    and image counts, and a resume on other data is refused (checkpoint and row kept)."""
    from .test_data import _write_cifar

    _write_cifar(tmp_path / "a", n_train=40, n_test=10)
    _write_cifar(tmp_path / "b", n_train=60, n_test=10)  # the same classes: the weights would fit
    cfg = _cfg(tmp_path / "res", pruner=AT[3], dataset="cifar10", data_root=str(tmp_path / "a"))
    assert train(cfg)["status"] == "pruned"
    other = run_cli("train", "--run", cfg.run_id, f"results={tmp_path / 'res'}", f"data_root={tmp_path / 'b'}",
                    "--rerun")
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1, other.stderr
    assert "60 training" in other.stderr and "trained on 10 classes, 40 training" in other.stderr
    assert other.stderr.startswith("error: command line: data_root") and checkpoint_path(cfg).exists()
    assert store.load(tmp_path / "res").runs.status.tolist() == ["pruned"]
    afresh = shlex.split(other.stderr.strip().split("train it afresh on this one: ")[1].removesuffix(")"))
    assert afresh == ["stability", "train", "--run", cfg.run_id, f"results={tmp_path / 'res'}", "sweep=p",
                      f"data_root={tmp_path / 'b'}", "--rerun", "--no-resume"], other.stderr
    same = run_cli("train", "--run", cfg.run_id, f"results={tmp_path / 'res'}", f"data_root={tmp_path / 'a'}",
                   "--rerun")
    assert same.returncode == 0 and "completed" in same.stdout, same.stderr
    # completed, its checkpoint gone: a rerun from scratch on b trains b (what --rerun asks), and
    # says that the result it replaces was trained on a; the new row records b
    assert store.load(tmp_path / "res").runs[["data_classes", "train_images", "val_images"]].values.tolist() == [[10, 40, 10]]
    scratch = run_cli(*afresh[1:])  # the command the refusal named
    assert scratch.returncode == 0, scratch.stderr
    assert "the completed result this rerun replaces was trained on 10 classes, 40 training" in scratch.stderr
    assert "holds 10 classes, 60 training" in scratch.stderr
    after = store.load(tmp_path / "res").runs
    assert after[["status", "data_classes", "train_images", "val_images"]].values.tolist() == [["completed", 10, 60, 10]]


class StopAfter:
    """A reporter that sets the run's stop event once ``step`` steps are flushed (a preemption)."""

    def __init__(self, step: int, event: threading.Event):
        self.step, self.event = step, event

    def on_start(self, total_steps, start_step): ...

    def on_log(self, step, epoch, loss, lr):
        if step >= self.step:
            self.event.set()

    def on_epoch(self, row): ...


def test_a_resumed_run_rebuilds_its_pruner_history_from_the_store(tmp_path, pruned_at_7):
    cfg = _cfg(tmp_path, pruner=AT[7])
    stop = threading.Event()
    with pytest.raises(Preempted):
        train(cfg, StopAfter(4, stop), stop=stop)  # stops at the next step's flush: 5 steps done
    assert store.load(tmp_path).runs.status.tolist() == ["preempted"]
    step = torch.load(checkpoint_path(cfg), weights_only=True)["state"]["step"]
    assert step == 5
    p = make_pruner(cfg, RunState(step=step), 12, 10)
    stored = store.read_table(tmp_path, "steps").sort_values("step")
    assert p.signals.steps == list(range(5)) and p.signals.loss == stored.loss.tolist()[:5]
    assert p.signals.traced == [0, 2, 4] and len(p.signals.attn_logit) == 3
    assert make_pruner(cfg, RunState(step=step, pruned={"rule": "chance", "step": 3, "signals": "{}"}), 12, 10) is None
    assert make_pruner(_cfg(tmp_path), RunState(step=step), 12, 10) is None  # no pruner configured
    row = train(cfg)  # resumes: the verdict at step 7 averages steps 2-7 against 0-1, half before the checkpoint
    ref_row, ref = pruned_at_7
    assert (row["status"], row["pruned_at_step"]) == ("pruned", 7) == (ref_row["status"], ref_row["pruned_at_step"])
    assert row["prune_signals"] == ref_row["prune_signals"]
    _same_steps(store.load(tmp_path).steps, ref.steps)


# ---------------------------------------------------------------------------------------------
# 4. Grid, local backend: the doomed lr ends pruned, is a result (not resubmitted), is counted;
#    tpe tells Optuna a pruned trial at its pruned step.

# On digits at 16 px, vit_tiny with adamw: lr 1e-3 stays near ln C, lr 0.3 jumps to 3-6 ln C
# (pruned by "above" at the first flush), lr 1.0 to 18 ln C at step 1 (diverged: the trainer's
# own bound comes first). chance is off: 6 steps are too few to leave chance.
GRID_BASE = {"model": "vit_tiny", "image_size": 16, "ema_period": 0, "optimizer": "adamw", "epochs": 2,
             "steps_per_epoch": 3, "trace_every": 2, "pruner": {"preset": "default", "chance": None}}


def test_local_grid_prunes_the_doomed_lr_and_keeps_it_as_a_result(tmp_path):
    spec_path = write_spec(tmp_path / "g.yaml", "prune", tmp_path / "res", base=GRID_BASE,
                           space={"lr": [1e-3, 0.3, 1.0]}, sampler={"name": "grid", "n": 1, "seed": 0})
    out = run_cli("grid", "run", str(spec_path), "--quiet")
    assert out.returncode == 0, out.stderr
    runs = store.load(tmp_path / "res").runs.set_index("lr")
    assert runs.status.to_dict() == {1e-3: "completed", 0.3: "pruned", 1.0: "diverged"}, runs.status
    assert (runs.pruned_at_step[0.3], runs.prune_rule[0.3]) == (1, "above")
    assert runs.pruned_at_step.isna()[[1e-3, 1.0]].all()
    assert set(runs.config_json.map(lambda c: json.loads(c)["pruner"])) == {"default:chance=none"}
    spec = load_spec(spec_path)
    assert checkpoint_path(_cfg_of(runs, 0.3)).exists()  # kept: a --rerun of that run continues it
    ledger = read_ledger(spec.sweep_dir)
    again = run_cli("grid", "run", str(spec_path), "--quiet")
    assert again.returncode == 0 and "submitted 0" in again.stdout, again.stdout + again.stderr
    assert read_ledger(spec.sweep_dir) == ledger
    assert store.load(tmp_path / "res").runs.set_index("lr").status.to_dict() == runs.status.to_dict()
    status = json.loads(run_cli("grid", "status", str(spec_path), "--json").stdout)
    counts = status["counts"]
    assert (counts["pruned"], counts["completed"], counts["diverged"], counts["total"]) == (1, 1, 1, 3), counts
    text = run_cli("grid", "status", str(spec_path))
    assert text.returncode == 0 and "pruned 1" in text.stdout, text.stdout
    pruned_id = runs.run_id[0.3]
    assert status["pruned"] == [pruned_id]  # named, with the command that continues it
    assert f"pruned: {pruned_id}; to continue" in text.stdout and "stability train --run RUN_ID" in text.stdout


def _cfg_of(runs: pd.DataFrame, lr: float):
    from stability.config import config_from_json

    return config_from_json(runs.config_json[lr])


def test_tpe_grid_tells_optuna_a_pruned_trial_at_its_pruned_step(tmp_path):
    spec_path = write_spec(tmp_path / "g.yaml", "tpeprune", tmp_path / "res", base=GRID_BASE,
                           space={"lr": {"loguniform": [0.15, 0.3]}}, sampler={"name": "tpe", "n": 2, "seed": 0})
    out = run_cli("grid", "run", str(spec_path), "--quiet")
    assert out.returncode == 0, out.stderr
    runs = store.load(tmp_path / "res").runs.set_index("run_id")
    assert runs.status.tolist() == ["pruned", "pruned"], runs[["lr", "status"]]
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'res/_sweeps/tpeprune/optuna.db'}")
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert len(trials) == 2
    for t in trials:
        (rid,) = t.user_attrs["run_ids"]
        r = runs.loc[rid]
        assert t.state == optuna.trial.TrialState.PRUNED and t.params["lr"] == pytest.approx(r.lr)
        assert t.user_attrs["pruned_at_step"] == r.pruned_at_step and t.user_attrs["prune_rule"] == r.prune_rule
        assert t.intermediate_values == {int(r.pruned_at_step): pytest.approx(r.top1_err)}
        assert "diverged_at_step" not in t.user_attrs and t.user_attrs["statuses"] == ["pruned"]


def test_tell_a_point_with_pruned_runs(tmp_path):
    """studies.tell on hand-made results, two seeds a point: pruned seeds -> PRUNED at the
    earliest pruned step (the mean error of the pruned runs there), with that run's rule; a
    pruned seed beside a completed one still PRUNED; beside a failed one FAIL; beside a diverged
    one told as diverged (step and value 100); a point completed after a --rerun COMPLETE."""
    spec = load_spec(write_spec(tmp_path / "g.yaml", "tell", tmp_path / "res", space={"lr": [1.0, 2.0, 3.0, 4.0, 5.0]},
                                sampler={"name": "grid", "n": 1, "seed": 0}, seeds=[0, 1]))
    storage = open_storage(spec, in_memory=True)
    plan = sampler_for(spec).plan()
    rows = {  # lr -> the two seeds' (status, top1_err, pruned_at_step, prune_rule, diverged_at_step)
        1.0: [("pruned", 80.0, 5, "chance", None), ("pruned", 90.0, 3, "above", None)],
        2.0: [("completed", 40.0, None, None, None), ("pruned", 88.0, 4, "rise", None)],
        3.0: [("failed", None, None, None, None), ("pruned", 88.0, 4, "above", None)],
        4.0: [("diverged", 100.0, None, None, 2), ("pruned", 88.0, 6, "above", None)],
        5.0: [("completed", 30.0, 7, "chance", None), ("completed", 32.0, None, None, None)],
    }
    by_point = {}
    for r in plan:
        by_point.setdefault(r.config.lr, []).append(r)
    records = []
    for lr, members in by_point.items():
        for r, (status, err, at, rule, div) in zip(sorted(members, key=lambda m: m.seed), rows[lr], strict=True):
            records.append({"run_id": r.run_id, "status": status, "top1_err": err, "pruned_at_step": at,
                            "prune_rule": rule, "diverged_at_step": div})
    assert tell(spec, plan, pd.DataFrame(records), storage) == 5
    lr_of = {r.run_id: r.config.lr for r in plan}
    told = {}
    for s in optuna.get_all_study_summaries(storage):  # one study per lr (a list axis: a cell)
        (t,) = optuna.load_study(study_name=s.study_name, storage=storage).trials
        told[lr_of[t.user_attrs["run_ids"][0]]] = t
    P, C, F = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    t = told[1.0]
    assert t.state == P and t.intermediate_values == {3: 85.0}
    assert (t.user_attrs["pruned_at_step"], t.user_attrs["prune_rule"]) == (3, "above")
    t = told[2.0]
    assert t.state == P and t.intermediate_values == {4: 88.0} and t.user_attrs["prune_rule"] == "rise"
    assert told[3.0].state == F and "pruned_at_step" not in told[3.0].user_attrs
    t = told[4.0]
    assert t.state == P and t.intermediate_values == {2: 100.0} and t.user_attrs["diverged_at_step"] == 2
    assert "pruned_at_step" not in t.user_attrs
    assert told[5.0].state == C and told[5.0].value == 31.0 and "pruned_at_step" not in told[5.0].user_attrs
    assert tell(spec, plan, pd.DataFrame(records), storage) == 0  # told once


# ---------------------------------------------------------------------------------------------
# 6. ``stability replay`` on a real tiny recorded sweep, and its parts on hand-made runs.

# synthetic data learns in 16 steps (adamw 3e-3: ~40 % error, 1e-2: ~60 %); sgd 0.3 and adamw
# 0.3 end at chance; sgd 1000 diverges at once. Traced every step: replay may judge any interval.
REPLAY = dict(model="vit_tiny", dataset="synthetic", synthetic_size=512, image_size=16, ema_period=0, epochs=2,
              steps_per_epoch=8, batch_size=32, trace_every=1, warmup_epochs=0.5)
RECORDED = {"tune": [("adamw", 3e-3, 0), ("sgd", 0.3, 0), ("sgd", 1e3, 0)],
            "held": [("adamw", 1e-2, 0), ("adamw", 0.3, 0), ("sgd", 1e3, 1)]}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    for sweep, runs in RECORDED.items():
        for opt, lr, seed in runs:
            train(run_config({**REPLAY, "optimizer": opt, "lr": lr, "seed": seed, "results": str(root), "sweep": sweep}))
    runs = store.load(root).runs
    assert set(runs.status) == {"completed", "diverged"}
    return root


def test_replay_cli_on_a_recorded_sweep(recorded, tmp_path):
    found = replay.outcomes(store.load(recorded, sweep="held").runs)
    assert found.doomed.sum() == 2 and found.good.sum() == 1  # what the fixture means to record
    csv = tmp_path / "out.csv"
    out = run_cli("replay", "held", "--tune", "tune", "--results", str(recorded), "--out", str(csv))
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "3 runs of held: 2 doomed (diverged or at chance), 1 good" in text, out.stdout
    assert "chosen on tune" in text and "scored on held" in text and "Pareto settings on held" in text
    families = {c.family for c in replay.our_candidates() + replay.optuna_candidates()}
    chosen_part, pareto_part = out.stdout.split("chosen on tune")[1].split("Pareto settings on held")
    # tune's good run learns from its first steps: every family has a setting that stops none of it
    assert _first_cells(chosen_part) == families and _first_cells(pareto_part) <= families
    curve = pd.read_csv(csv)
    assert len(curve) == len(replay.our_candidates()) + len(replay.optuna_candidates())
    assert set(curve.family) == families and (curve.runs == 3).all() and curve.scored.eq("held").all()
    assert set(curve.family[curve.pareto]) == _first_cells(pareto_part)
    chosen = pd.read_csv(tmp_path / "out-chosen.csv")
    assert set(chosen.family) == families and len(chosen) == len(families) and (chosen.runs == 3).all()
    assert (chosen.tuned_good_stopped == 0).all()  # chosen on tune: no good run stopped there
    every = run_cli("replay", "held", "tune", "--every", "1,4", "--no-baselines", "--results", str(recorded),
                    "--out", str(tmp_path / "every.csv"))
    assert every.returncode == 0, every.stderr
    table = pd.read_csv(tmp_path / "every.csv")
    assert len(table) == 2 * len(replay.our_candidates()) and sorted(set(table.every)) == [1, 4]
    assert (table.runs == 6).all() and not (tmp_path / "every-chosen.csv").exists()


def _first_cells(table: str) -> set[str]:
    """The first column of a rich table's rows (its family names; a folded cell's continuation
    lines leave it empty)."""
    return {c for line in table.splitlines() if line.startswith("│") and (c := line.split("│")[1].strip())}


@pytest.mark.parametrize("args, words", [
    (["held", "--tune", "held"], "a sweep is both tuned on and scored"),
    (["nosuch"], "no sweep 'nosuch'"),
    (["held", "--every", "0"], "--every and --workers must be >= 1"),
    (["held", "--every", "x"], "is not a comma-separated list"),
])
def test_replay_cli_refuses_in_one_line(recorded, args, words):
    out = run_cli("replay", *args, "--results", str(recorded), timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out
    assert out.stderr.startswith("error: replay: ") and words in out.stderr and "Traceback" not in out.stderr


LN10 = math.log(10)


def _rec(loss, spe, every=1, total=None, *, doomed=False, good=True, near_best=False, sec=1.0, name="r"):
    """A hand-made recorded run of 10 classes: its loss per step (steps 0..len-1, all it trained:
    a run shorter than ``total`` diverged at its last step), traced every ``every``."""
    loss = np.asarray(loss, float)
    steps = pd.DataFrame({"step": np.arange(len(loss)), "loss": loss, "grad_norm": 1.0, "log_z": 0.0})
    traces = pd.DataFrame({"step": np.arange(0, len(loss), every), "attn_logit_max": 1.0, "update_ratio": 1e-3})
    return replay.Recorded("s", name, ("g",), ("0", name), total or len(loss), spe, len(loss), every, 10, sec,
                           doomed, good, near_best, steps, traces)


def test_optuna_replay_keeps_optunas_pruner_warnings_to_itself():
    """Wilcoxon on runs whose loss holds a NaN warns once per trial inside Optuna; a report would
    print them all. The replay silences them, and leaves the caller's warning filters as they were."""
    import warnings

    curve = np.linspace(LN10, 1.0, 20)
    curve[3] = math.nan  # a step whose loss was not finite, in a run that went on
    good = [_rec(curve, 10, name=f"g{i}") for i in range(3)]
    diverged = [_rec([LN10] * 8 + [math.inf], 10, total=20, name=f"d{i}") for i in range(3)]
    runs = [good[0], diverged[0], good[1], diverged[1], good[2], diverged[2]]
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stops = replay.stops_optuna(lambda: optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2),
                                    runs, workers=2)
        filters_inside = list(warnings.filters)
        warnings.warn("the caller's own warning", UserWarning, stacklevel=1)
    assert len(stops) == 6
    assert [str(w.message) for w in caught] == ["the caller's own warning"]
    assert filters_inside[0] == ("always", None, Warning, None, 0)  # no filter left behind
    assert warnings.filters == before


def test_wall_time_on_async_workers():
    a, b = _rec([LN10] * 10, 10), _rec([LN10] * 20, 10)
    assert replay.wall_time([a, b], [None, None], workers=2) == 20.0
    assert replay.wall_time([a, b], [None, 4], workers=2) == 10.0  # stopped after step 4: 5 steps
    assert replay.wall_time([a, b], [None, None], workers=1) == 30.0
    assert replay.wall_time([a, b], [None, 4], workers=1) == 15.0
    c = _rec([LN10] * 4, 4, sec=0.5)
    assert replay.wall_time([a, b, c], [None, None, None], workers=2) == 20.0  # c starts when a ends


def test_score_counts_saved_steps_and_wrong_stops():
    good = _rec([LN10] * 10, 10, good=True, near_best=True, name="a")
    doomed = _rec([3 * LN10] * 20, 10, doomed=True, good=False, name="b")
    s = replay.score([good, doomed], [None, 4], workers=2, n_boot=200)
    assert (s["runs"], s["doomed"], s["good"], s["near_best"], s["stopped"], s["doomed_stopped"]) == (2, 1, 1, 1, 1, 1)
    assert s["steps_saved"] == 15 / 30 and s["doomed_saved"] == 15 / 20 and s["doomed_saved_lo"] == 0.75
    assert (s["good_stopped"], s["good_stopped_rate"], s["near_best_stopped"]) == (0, 0.0, 0)
    assert s["good_stopped_hi"] == pytest.approx(0.9)  # one good run: the bound says little
    assert s["wall_time"] == 0.5
    wrong = replay.score([good, doomed], [2, None], workers=2, n_boot=200)
    assert (wrong["good_stopped"], wrong["near_best_stopped"], wrong["doomed_saved"]) == (1, 1, 0.0)
    assert wrong["wall_time"] == 1.0


def test_upper_bound_known_answers():
    assert replay.upper_bound(0, 229) == pytest.approx(0.01, abs=1e-4)
    assert replay.upper_bound(0, 0) == 1.0 and replay.upper_bound(3, 3) == 1.0
    assert replay.upper_bound(0, 10) == pytest.approx(1 - 0.1 ** (1 / 10))  # (1 - b)^n = 1 - conf
    bounds = [replay.upper_bound(k, 100) for k in range(6)]
    assert bounds == sorted(bounds) and all(b > k / 100 for k, b in enumerate(bounds))


def test_pareto_and_choose():
    front = pd.DataFrame({"good_stopped_rate": [0, 0, 0.1, 0.2, 0.1], "doomed_saved": [0.5, 0.7, 0.9, 0.8, 0.9]})
    assert replay.pareto(front).tolist() == [False, True, True, False, True]  # a tie beats neither
    nan_first = front.assign(doomed_saved=[np.nan, 0.1, 0.2, 0.2, 0.3])  # NaN saved nothing: beaten by row 1
    assert replay.pareto(nan_first).tolist() == [False, True, False, False, True]
    table = pd.DataFrame({"family": ["a", "a", "a", "b", "b", "b"], "good_stopped": [0, 0, 1, 0, 0, 0],
                          "near_best_stopped": [0, 0, 0, 1, 0, 0], "doomed_saved": [0.5, 0.7, 0.9, 0.95, 0.2, np.nan]})
    picked = replay.choose(table)
    assert picked.family.tolist() == ["a", "b"] and picked.doomed_saved.tolist() == [0.7, 0.2]
    assert replay.choose(table, max_good_stopped=1).doomed_saved.tolist() == [0.9, 0.2]
    tie = pd.DataFrame({"family": ["a", "a", "a"], "good_stopped": [1, 0, 0], "near_best_stopped": [0, 0, 0],
                        "doomed_saved": [0.5, 0.5, 0.5], "setting": ["x", "y", "z"]})
    assert replay.choose(tie, max_good_stopped=1).setting.tolist() == ["y"]  # fewer good stopped, then first


def test_stops_ours_on_a_diverged_run_and_a_run_above_chance():
    """A NaN at step k ends the run there as diverged: no pruner saves anything (its last point
    is the trainer's own stop). A loss at 3 ln C from step 2 is stopped at the first flush where
    ``above`` may fire and the window's mean is above 1.5 ln C."""
    k = 13
    nan_run = _rec([LN10] * k + [math.nan], spe=50, every=5, total=100, doomed=True, good=False)
    assert (nan_run.total_steps, nan_run.used) == (100, k + 1)
    assert replay.stops_ours(PRESETS["default"], [nan_run]) == [None]
    s = replay.score([nan_run], [None], n_boot=10)
    assert s["steps_saved"] == 0 and s["stopped"] == 0
    above = _rec([LN10] * 2 + [3 * LN10] * 98, spe=50, every=10, doomed=True, good=False)
    # above_after 0: the first flush (step 9), whose window (steps 0-9) averages 2.6 ln C
    assert replay.stops_ours(PRESETS["default"], [above]) == [9]
    late = PrunerSettings(above_after=0.3)
    assert replay.stops_ours(late, [above]) == [29]  # the first flush with 30 % of the steps done
    every1 = _rec([LN10] * 2 + [3 * LN10] * 98, spe=50, every=1, doomed=True, good=False)
    assert replay.stops_ours(late, [every1], every=5) == [29]
    assert replay.stops_ours(PRESETS["default"], [every1], every=5) == [4]  # steps 0-4: (2 + 9) / 5 = 2.2 ln C
    with pytest.raises(ValueError, match="every=3"):
        replay.stops_ours(late, [above], every=3)


def test_the_pareto_front_without_good_runs_is_the_setting_that_saves_most():
    """No good run: every good-stopped rate is 0/0. Stopping none costs nothing, so the front is
    the most doomed steps saved (a NaN rate had made every setting Pareto: ~90 rows, dominated
    ones included); without doomed runs, the fewest good runs stopped."""
    from stability import replay

    t = pd.DataFrame({"good_stopped_rate": [np.nan] * 3, "doomed_saved": [0.1, 0.6, 0.3]})
    assert replay.pareto(t).tolist() == [False, True, False]
    t = pd.DataFrame({"good_stopped_rate": [0.5, 0.0, 0.25], "doomed_saved": [np.nan] * 3})
    assert replay.pareto(t).tolist() == [False, True, False]
