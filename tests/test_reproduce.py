"""`stability reproduce`: selection studies, replicates, four judged findings, one report (the verdict
rules themselves are calibrated in test_verdicts.py)."""

import re

from .conftest import run_cli

VERDICT = r"(reproduced|not reproduced|inconclusive|same direction \(regime differs\))"


def test_reproduce_quick_writes_a_report_with_four_verdicts(tmp_path):
    out = run_cli("reproduce", "--quick", "--quiet", "--results", str(tmp_path / "res"), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    md = (tmp_path / "res/reproduce/quick.md").read_text()
    page = (tmp_path / "res/reproduce/quick.html").read_text()
    verdicts = re.findall(rf"^## .+: {VERDICT}$", md, flags=re.M)
    assert len(verdicts) == 4, md
    assert md.count("**Verdict rule.**") == 1 and "Holm" in md and "sign-flip" in md
    for title in ("Figs. 4–5", "Table 3", "Fig. 2", "Table 2"):
        assert title in md and title in page
    assert page.startswith("<!doctype html>") and page.count("<h2>") == 4 + 2  # + arms, sweeps
    assert len(re.findall(rf"^(Stability|Optimizer|Training|Peak).*: {VERDICT} \(", out.stdout, flags=re.M)) == 4
    # selection studies, the replicates (6 seeds per arm) and the 2x-length runs: sweeps of their own
    sweeps = sorted(p.name for p in (tmp_path / "res/runs").iterdir())
    assert sweeps[:3] == ["sweep=quick_epochs", "sweep=quick_lr_wd", "sweep=quick_optimizer"]
    assert re.fullmatch(r"sweep=quick_peak-2x-[0-9a-f]{8}", sweeps[3]) and re.fullmatch(r"sweep=quick_peak-[0-9a-f]{8}", sweeps[4])
    from stability import store

    reps = store.read_table(tmp_path / "res", "runs", sweep=sweeps[4][len("sweep="):])
    assert sorted(set(reps.seed)) == [1, 2, 3, 4, 5, 6] and len(reps) == 6 * 6  # 6 arms
    # every arm's replicate is the selected config with another seed, evaluated on the test split
    assert reps.test_ema_top1_err.notna().all() and (reps.test_images == 300).all()
    # --quick learns: ViT_C's long AdamW arm leaves chance on every seed
    conv = reps[(reps.stem == "conv") & (reps.optimizer == "adamw") & (reps.epochs == reps.epochs.max())]
    assert len(conv) == 6 and (conv.test_ema_top1_err < 50).all(), conv.test_ema_top1_err.tolist()
    assert "exact McNemar" in md and "(selection)" in md
    # the generated replication spec is a grid spec the user can rerun
    specs = list((tmp_path / "res/reproduce/specs").glob("quick_peak-*.yaml"))
    assert len(specs) == 2
    # idempotent: a second call trains nothing new and gives the same verdicts
    n_runs = len(store.read_table(tmp_path / "res", "runs"))
    again = run_cli("reproduce", "--quick", "--quiet", "--results", str(tmp_path / "res"), timeout=600)
    assert again.returncode == 0
    md2 = (tmp_path / "res/reproduce/quick.md").read_text()
    assert re.findall(r"^## .+$", md2, flags=re.M) == re.findall(r"^## .+$", md, flags=re.M)
    assert len(store.read_table(tmp_path / "res", "runs")) == n_runs


def test_reproduce_bad_input_is_one_line_exit_2(tmp_path):
    for args, needle in ((["--quick", "--paper"], "exclude each other"),
                         (["--grids", str(tmp_path)], "no study spec"),
                         (["--quick", "--only", "lr_wd,bogus"], "unknown study 'bogus'"),
                         (["--quick", "--only", ""], "unknown study ''"),
                         (["--quick", "--set", "results=x"], "not a study field"),
                         # lr is an axis of the studies: found before any study trains
                         (["--quick", "--set", "lr=0.1"], "space.lr"),
                         # decoded datasets hold out no test split: refused at plan time
                         (["--quick", "--set", "dataset=cifar10", "--set", "data_root=/x"], "test_split")):
        out = run_cli("reproduce", *args, "--results", str(tmp_path / "res"))
        assert out.returncode == 2 and needle in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "res").exists()  # nothing written


def test_reproduce_on_cifar_set_from_the_command_line_is_a_sweep_of_its_own(tmp_path):
    from .test_data import _write_cifar

    _write_cifar(tmp_path / "cifar", n_train=160, n_test=40)
    out = run_cli("reproduce", "--quick", "--quiet", "--only", "lr_wd", "--results", str(tmp_path / "res"),
                  "--set", "dataset=cifar10", "--set", f"data_root={tmp_path / 'cifar'}", "--set", "test_split=0",
                  timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "res/runs").iterdir())
    assert len(runs) == 1 and runs[0].startswith("sweep=quick_lr_wd-dataset_cifar10-data_root_")
    from stability import store

    got = store.read_table(tmp_path / "res", "runs")
    assert set(got.dataset) == {"cifar10"} and len(got) == 12
    reports = list((tmp_path / "res/reproduce").glob("quick-dataset_cifar10-*-only-lr_wd.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    assert "Figs. 4–5" in text and "not run in this invocation (`--only`): optimizer, epochs, peak" in text
    # a missing data root: refused when the studies are planned, before any run (issue 23)
    bad = run_cli("reproduce", "--quick", "--quiet", "--only", "lr_wd", "--results", str(tmp_path / "res"),
                  "--set", "dataset=cifar10", "--set", f"data_root={tmp_path / 'nowhere'}", "--set", "test_split=0",
                  timeout=600)
    assert bad.returncode == 2 and "data_root" in bad.stderr and str(tmp_path / "nowhere") in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
