"""Values read from files under a results root (a runs row's config_json, a checkpoint's loop
state) and from user files (deeply nested YAML), each hostile in content only: the file itself
passes every integrity check. Each is unknown, refused in one line, or set aside; never a crash."""

import json
import shutil
import threading

import pytest

from stability import store
from stability.cli import main
from stability.config import run_config

from .conftest import TINY

FAST = dict(TINY, epochs=1, steps_per_epoch=2, batch_size=16)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """One real tiny run, stopped after its first step: its config, its results root and its
    genuine checkpoint's payload (the file stays in the root)."""
    import torch

    from stability.trainer.checkpoint import checkpoint_path
    from stability.trainer.stopping import Preempted
    from stability.trainer.train import train

    root = tmp_path_factory.mktemp("real_run")
    cfg = run_config({**FAST, "results": str(root), "sweep": "u"})
    stop = threading.Event()
    stop.set()
    with pytest.raises(Preempted):
        train(cfg, stop=stop)
    return cfg, root, torch.load(checkpoint_path(cfg), weights_only=True)


def _copy(real_run, tmp_path):
    cfg, root, payload = real_run
    shutil.copytree(root, tmp_path / "r")
    return run_config({**cfg.to_dict(), "results": str(tmp_path / "r")}), payload


def _forge(cfg, **changes):
    """Rewrite the run's runs row with the toolkit's own writer: a valid file, hostile values."""
    row = store.read_table(cfg.results, "runs", sweep=cfg.sweep).drop(columns="sweep").iloc[-1].to_dict()
    store.write_run(cfg.results, cfg.sweep, cfg.run_id, {"runs": [{**row, **changes}]})


def _done(real_run, tmp_path, **changes):
    """A copy of the run, its row made a result (completed at 50 %) with ``changes``."""
    cfg, _ = _copy(real_run, tmp_path)
    _forge(cfg, status="completed", top1_err=50.0, best_top1_err=50.0, **changes)
    return cfg


def _one_line_exit_2(code, capsys, *needles):
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    line = err.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in err, err[-2000:]
    for n in needles:
        assert n in line, (n, line)
    return line


# --- a runs row's config_json -----------------------------------------------------------------

@pytest.mark.parametrize("bad", [{"z_loss": "x"}, {"z_loss": [1]}, {"z_loss": 10**400}, {"qk_norm": "no"},
                                 {"trace_every": "x", "steps_per_epoch": -3}])
def test_a_config_value_of_another_type_is_unknown_in_every_analysis(real_run, tmp_path, bad):
    """Bug: z_loss "x" crashed fix_of/_z_losses (ValueError), so the report, store.load-based
    analyses and every dashboard page. A value not of its field's type reads as unknown (None),
    as a whole config that is not JSON reads as {}."""
    from stability import analysis, replay
    from stability.analysis.grouping import fix_of
    from stability.analysis.grouping import run_config as row_config
    from stability.report import build_report

    good = json.loads(store.read_table(real_run[1], "runs", sweep="u").config_json.iloc[-1])
    cfg = _done(real_run, tmp_path, config_json=json.dumps({**good, **bad}))
    runs = store.load(cfg.results).runs
    read = row_config(runs.config_json.iloc[-1])
    assert [k for k in bad if read[k] is None] == [k for k in bad if k != "steps_per_epoch"]  # -3: an int
    assert fix_of(bad) == "none"
    assert analysis.edf(runs, n_boot=10).shape[0] > 0
    for f in (analysis.with_design, analysis.with_fix, lambda r: analysis.fixed_axes(r)[0], replay.outcomes):
        assert len(f(runs)) == 1
    if bad == {"z_loss": "x"}:  # the report reads every view's grouping: once is enough
        assert "<h1>Sweep u</h1>" in build_report(cfg.results, cfg.sweep)


def test_train_run_with_a_config_json_nested_past_the_recursion_limit_is_one_line(real_run, tmp_path, capsys):
    """Bug: `stability train --run ID` on a row whose config_json is '{"a":' * 100000 raised
    RecursionError with a traceback."""
    cfg, _ = _copy(real_run, tmp_path)
    _forge(cfg, config_json='{"a":' * 100_000)
    code = main(["train", "--run", cfg.run_id, f"results={cfg.results}"])
    _one_line_exit_2(code, capsys, "no readable config_json", cfg.run_id)


def test_a_row_with_epochs_0_is_left_out_of_the_reports_pruning_replay(real_run, tmp_path):
    """Bug: a runs row with epochs=0 crashed `stability report` (Optuna: step=-1 must be
    non-negative) in the pruning replay; it is left out and counted."""
    from stability import replay
    from stability.report import build_report

    cfg = _done(real_run, tmp_path)
    twin = "0" * 12  # a second run, its rows the first's: the one replayed beside the row left out
    tables = {t: store.read_table(cfg.results, t, sweep=cfg.sweep).drop(columns="sweep").assign(run_id=twin)
              for t in ("steps", "grad_norms", "runs")}
    store.write_run(cfg.results, cfg.sweep, twin, tables)
    _forge(cfg, epochs=0)
    html = build_report(cfg.results, cfg.sweep)
    assert "replayed over the recorded steps of 1 runs" in html
    assert f"1 completed or diverged run(s) whose row records no step to replay (epochs 0, or a diverged step " \
           f"below 0: {cfg.run_id}) are left out" in html
    assert [r.run_id for r in replay.load(cfg.results, [cfg.sweep])] == [twin]


# --- deeply nested YAML -----------------------------------------------------------------------

@pytest.mark.parametrize("command", [["train", "--config"], ["grid", "run"]])
@pytest.mark.parametrize("text", ["[" * 100_000, "lr: " + "[" * 2000 + "]" * 2000], ids=["open", "closed"])
def test_a_yaml_file_nested_past_the_recursion_limit_is_one_line(tmp_path, capsys, command, text):
    """Bug: `grid run deep.yaml` and `train --config deep.yaml` gave a RecursionError traceback
    and exit 1."""
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    code = main([*command, str(path), *(["--results", str(tmp_path / "res")] if command[0] == "grid" else [])])
    _one_line_exit_2(code, capsys, str(path), "nested too deep")
    assert not (tmp_path / "res").exists()


def test_a_command_line_value_nested_past_the_recursion_limit_is_refused_as_text(capsys):
    code = main(["train", "lr=" + "[" * 50_000])
    _one_line_exit_2(code, capsys, "lr: expected a number")


# --- a checkpoint's loop state ----------------------------------------------------------------

BAD_STATES = [("epoch", 99), ("epoch", "x"), ("epoch", -1), ("step", -1000), ("step", 10**6), ("batch", 10**9),
              ("batch", True), ("wall_time_s", float("nan")), ("best_top1_err", "abc"), ("best_top1_err", 250.0),
              ("started_at", 12), ("started_at", "yesterday"), ("started_at", "2025-01-01T00:00:00"),
              ("epoch_seen", -5), ("epoch_correct", 10**6), ("data", [1, 2]), ("data", {"classes": "10"}),
              ("pruned", {"rule": 1}), ("nonsense", 1)]


@pytest.mark.parametrize(("field", "value"), BAD_STATES)
def test_a_loop_state_this_run_cannot_have_reached_is_refused(real_run, field, value):
    """Bug: ``RunState(**payload["state"])`` took any values. Each field is checked for its type
    and the range the run can reach (steps per epoch from the data fingerprint and the cap)."""
    from stability.trainer.checkpoint import BadState, checked_state

    cfg, _, payload = real_run
    state = payload["state"]
    assert checked_state(state, cfg, state["data"]).step == 1  # the genuine one passes
    with pytest.raises(BadState, match=f"invalid: its loop state's (unknown key '?)?{field}"):
        checked_state({**state, field: value}, cfg, state["data"])


def _plant(cfg, payload, **state):
    import torch

    from stability.trainer.checkpoint import checkpoint_path

    path = checkpoint_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**payload, "state": {**payload["state"], **state}}, path)
    return path


def test_a_checkpoint_with_a_hostile_loop_state_is_set_aside_and_the_run_starts_afresh(real_run, tmp_path, capsys):
    """Bug: started_at=12 failed the run with ArrowInvalid and left no runs row; epoch=99 failed
    every retry. Such a checkpoint is quarantined like an unreadable one, and the run starts
    afresh, its rows complete; with bad_checkpoint=fail, one line, exit 2, the file kept."""
    from stability.trainer.train import train

    cfg, payload = _copy(real_run, tmp_path)
    path = _plant(cfg, payload, started_at=12)
    capsys.readouterr()
    row = train(cfg)
    err = " ".join(capsys.readouterr().err.split())
    assert row["status"] == "completed", row
    assert f"checkpoint {path} is invalid: its loop state's started_at: expected a string, got 12" in err and "starts afresh" in err, err
    assert not path.exists() and len(list((tmp_path / "r/_sweeps/u/quarantine").rglob("*.pt.*"))) == 1
    epochs = store.read_table(cfg.results, "epochs", sweep=cfg.sweep)
    assert epochs.epoch.tolist() == [0]
    runs = store.read_table(cfg.results, "runs", sweep=cfg.sweep)
    assert runs.status.tolist() == ["completed"]

    path = _plant(cfg, payload, epoch=99)
    code = main(["train", *(f"{k}={v}" for k, v in FAST.items()), f"results={cfg.results}", "sweep=u",
                 "bad_checkpoint=fail", "--rerun"])  # --rerun: its result is replaced, the checkpoint resumed
    _one_line_exit_2(code, capsys, f"checkpoint {path} is invalid: its loop state's epoch 99 is out of range "
                                   "(allowed: 0 to 0: epochs=1)", "left in place")
    assert path.exists()


def test_an_integer_past_pythons_digit_limit_is_one_line(tmp_path, capsys):
    """PyYAML's int() of a 5,000-digit integer raises ValueError (Python's 4,300-digit limit)."""
    path = tmp_path / "huge.yaml"
    path.write_text("lr: 1" + "0" * 5000 + "\n")
    _one_line_exit_2(main(["train", "--config", str(path)]), capsys, str(path), "not valid YAML")
    _one_line_exit_2(main(["train", "lr=1" + "0" * 5000]), capsys, "lr: expected a number")  # kept as text
