import pytest

from .conftest import run_cli


def _assert_one_line_error(out, *needles):
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("args,needles", [
    (["model=vit_huge"], ["model", "vit_c_tiny", "allowed"]),
    (["dataset=mnist"], ["dataset", "digits", "allowed"]),
    (["lr=-0.1"], ["lr", "> 0"]),
    (["lr=abc"], ["lr", "number"]),
    (["learning_rate=0.1"], ["unknown key 'learning_rate'", "allowed"]),
    (["optimizer=adam"], ["optimizer", "adamw, sgd"]),
    (["stem=conv", "model=vit_p_tiny"], ["stem", "fixes"]),
    (["epochs"], ["key=value"]),
    (["dataset=cifar10"], ["data_root", "needs"]),
    (["dataset=imagefolder", "data_root=/nonexistent"], ["data_root", "ImageNet layout"]),
])
def test_bad_train_input_exits_2_with_one_line(args, needles, tmp_path):
    out = run_cli("train", f"results={tmp_path}", *args)
    _assert_one_line_error(out, *needles)


def test_bad_config_files(tmp_path):
    _assert_one_line_error(run_cli("train", "--config", str(tmp_path / "missing.yaml")),
                           "file not found", "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\nwd: 0.1\n")
    _assert_one_line_error(run_cli("train", "--config", str(bad)), "bad.yaml", "not valid YAML", "line")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("lr: 1e-3\nbatchsize: 3\n")
    _assert_one_line_error(run_cli("train", "--config", str(wrong)), "wrong.yaml", "batchsize")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    _assert_one_line_error(run_cli("train", "--config", str(listy)), "list.yaml", "mapping")


def test_bad_input_writes_nothing(tmp_path):
    run_cli("train", f"results={tmp_path / 'r'}", "lr=-1")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args,needle", [
    (["device=cuda"], "device"),  # this machine has no GPU
    (["dataset=cifar100"], "data_root"),
    (["dataset=imagefolder", "data_root=/nonexistent"], "data_root"),
    (["batch_size=100000"], "batch_size"),  # refused once the data is loaded, under the run's lock
])
def test_a_refused_train_command_writes_no_run(args, needle, tmp_path):
    """A command refused at set-up leaves no failed run for the analyses to count (a grid job's
    refusal is a failed run: its controller reads it), and its error is the first line on stderr."""
    import torch

    if args == ["device=cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = run_cli("train", f"results={tmp_path / 'r'}", "epochs=1", *args)
    _assert_one_line_error(out, needle)
    assert out.stderr.startswith("error:"), repr(out.stderr[:80])
    assert not (tmp_path / "r" / "runs").exists()


def test_train_cli_end_to_end(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: vit_tiny\nstem: conv\nepochs: 1\nsteps_per_epoch: 3\nbatch_size: 16\nlr: 1e-3\n")
    out = run_cli("train", "--config", str(cfg), f"results={tmp_path / 'res'}", "sweep=cli")
    assert out.returncode == 0, out.stderr
    assert "completed" in out.stdout and str(tmp_path / "res" / "runs" / "sweep=cli") in out.stdout
    from stability import store
    runs = store.load(tmp_path / "res").runs
    assert runs.stem.tolist() == ["conv"] and runs.model.tolist() == ["vit_c_tiny"]


def test_dashboard_refuses_a_bad_port_in_one_line(tmp_path):
    r = run_cli("dashboard", "--results", str(tmp_path), "--port", "70000", timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--port 70000" in r.stderr and "1..65535" in r.stderr


def test_a_finished_run_is_answered_without_its_data(tmp_path):
    """Repeating a finished run's command where its data is gone says it is done (exit 0), as
    before the data check moved ahead of the lock; --rerun needs the data and says so."""
    import numpy as np
    from PIL import Image

    data = tmp_path / "img"
    for split in ("train", "val"):
        for c in range(2):
            (data / split / f"c{c}").mkdir(parents=True)
            for i in range(8):
                Image.fromarray((np.random.default_rng(i).random((20, 20, 3)) * 255).astype("uint8")).save(
                    data / split / f"c{c}" / f"{i}.jpg")
    args = ["train", "model=vit_c_tiny", "epochs=1", "steps_per_epoch=2", "batch_size=4", "dataset=imagefolder",
            f"data_root={data}", "image_size=32", f"results={tmp_path / 'r'}"]
    assert run_cli(*args).returncode == 0
    data.rename(tmp_path / "moved")
    again = run_cli(*args)
    assert again.returncode == 0 and "already completed" in again.stdout, again.stderr
    _assert_one_line_error(run_cli(*args, "--rerun"), "data_root", "ImageNet layout")


def test_grid_clean_of_a_sweep_never_run_says_so(tmp_path):
    """Like `grid collect`: a results root without the sweep (a typo in --results) is named, not
    answered with "removed 0 log files" and exit 0."""
    out = run_cli("grid", "clean", "smoke", "--results", str(tmp_path / "nowhere"))
    _assert_one_line_error(out, "no record of sweep 'smoke'", str(tmp_path / "nowhere"), "no job logs to clean")
    assert not (tmp_path / "nowhere").exists()


def test_an_unwritable_results_root_is_blamed_on_where_it_came_from(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"epochs: 1\nresults: {tmp_path / 'file'}\n")
    (tmp_path / "file").write_text("in the way")
    _assert_one_line_error(run_cli("train", "--config", str(cfg)), "run.yaml", "cannot take files")
    out = run_cli("train", "--config", str(cfg), f"results={tmp_path / 'file' / 'x'}")
    _assert_one_line_error(out, "command line", "cannot take files")
    assert "run.yaml" not in out.stderr
    (tmp_path / "results").write_text("in the way of the default root")  # set by neither: said so
    out = run_cli("train", "epochs=1", cwd=tmp_path)
    _assert_one_line_error(out, "the default results root", "results=ROOT")
    assert "command line" not in out.stderr


def test_key_value_after_a_flag_is_still_an_override():
    """`train --rerun lr=...` (a flag appended to a command from the shell history): the
    key=value is read as the override it is, not refused as an unrecognized argument."""
    _assert_one_line_error(run_cli("train", "--no-resume", "lr=-1"), "lr", "> 0")
    _assert_one_line_error(run_cli("train", "--no-resume", "--bogus"), "unrecognized arguments: --bogus")


def test_the_mixed_data_warning_names_each_groups_runs_and_prints_nothing_hostile():
    """Two sweeps, each on two data (dataset and sweep names come from results files): each run
    line says which sweep it is, a long list is cut with the command that lists it all, and an
    escape sequence planted in a name reaches the terminal as text, not as a control code."""
    from stability.cli import _print_data

    ids = [f"r{i:02d}" for i in range(10)]
    data = [{"sweep": "a\x1b[31mX", "dataset": "cifar10", "data": "10 classes, 40 train / 10 val", "runs": 10,
             "run_ids": ids},
            {"sweep": "b", "dataset": "cifar10", "data": "10 classes, 60 train / 10 val", "runs": 1, "run_ids": ["q"]}]
    lines: list[str] = []
    _print_data(data, lines.append, "/res", "mixed", "stability grid status g.yaml --json")
    assert not any("\x1b" in line for line in lines), lines
    assert lines[0].startswith("warning: sweep mixed: runs trained on different data: sweep a"), lines
    assert lines[1] == "  sweep a?[31mX: 10 classes, 40 train / 10 val: " + ", ".join(ids[:8]) + " and 2 more", lines
    assert lines[2] == "  sweep b: 10 classes, 60 train / 10 val: q"
    assert lines[3] == "  (stability grid status g.yaml --json lists every run id)"
    assert lines[4].endswith("results=/res sweep=mixed data_root=PATH --rerun --no-resume")
