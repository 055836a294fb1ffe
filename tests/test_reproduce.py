"""`stability reproduce`: four studies, four findings, one report; the verdict rule on known data."""

import re

import numpy as np
import pandas as pd

from stability.analysis import findings

from .conftest import run_cli


def test_reproduce_quick_writes_a_report_with_four_verdicts(tmp_path):
    out = run_cli("reproduce", "--quick", "--quiet", "--results", str(tmp_path / "res"), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    md = (tmp_path / "res/reproduce/quick.md").read_text()
    page = (tmp_path / "res/reproduce/quick.html").read_text()
    verdicts = re.findall(r"^## .+: (reproduced|not reproduced|inconclusive)$", md, flags=re.M)
    assert len(verdicts) == 4, md
    assert md.count("**Verdict rule.**") == 1 and "bootstrap interval excludes 0" in md
    for title in ("Fig. 5", "Table 3", "Fig. 3", "Sec. 5.4"):
        assert title in md and title in page
    assert page.startswith("<!doctype html>") and page.count("<h2>") == 4
    assert len(re.findall(r"^(Stability|Optimizer|Training|Peak).*: (reproduced|not reproduced|inconclusive) \(",
                          out.stdout, flags=re.M)) == 4
    # every study ran as a sweep of its own (nothing pooled across studies)
    sweeps = sorted(p.name for p in (tmp_path / "res/runs").iterdir())
    assert sweeps == ["sweep=quick_epochs", "sweep=quick_lr_wd", "sweep=quick_optimizer", "sweep=quick_peak"]
    # idempotent: a second call trains nothing new and gives the same verdicts
    again = run_cli("reproduce", "--quick", "--quiet", "--results", str(tmp_path / "res"), timeout=600)
    assert again.returncode == 0
    md2 = (tmp_path / "res/reproduce/quick.md").read_text()
    assert re.findall(r"^## .+$", md2, flags=re.M) == re.findall(r"^## .+$", md, flags=re.M)


def test_reproduce_bad_input_is_one_line_exit_2(tmp_path):
    for args, needle in ((["--quick", "--paper"], "exclude each other"),
                         (["--grids", str(tmp_path)], "no study spec"),
                         (["--quick", "--only", "lr_wd,bogus"], "unknown study 'bogus'"),
                         (["--quick", "--only", ""], "unknown study ''"),
                         (["--quick", "--set", "results=x"], "not a study field"),
                         # epochs is an axis of the epochs study: found before any study trains
                         (["--quick", "--set", "epochs=2"], "space.epochs")):
        out = run_cli("reproduce", *args, "--results", str(tmp_path / "res"))
        assert out.returncode == 2 and needle in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "res").exists()  # nothing written


def _runs(rows):
    return pd.DataFrame([{"status": "completed", "run_id": str(i), **r} for i, r in enumerate(rows)])


def test_findings_say_reproduced_not_reproduced_or_inconclusive_by_the_rule():
    rng = np.random.default_rng(0)
    # peak: ViT_C clearly lower over 12 runs each -> reproduced; reversed -> not reproduced
    lo, hi = rng.normal(20, 0.3, 12), rng.normal(25, 0.3, 12)
    good = _runs([{"stem": "conv", "top1_err": e} for e in lo] + [{"stem": "patchify", "top1_err": e} for e in hi])
    bad = _runs([{"stem": "conv", "top1_err": e} for e in hi] + [{"stem": "patchify", "top1_err": e} for e in lo])
    assert findings.finding_peak(good).verdict == "reproduced"
    assert findings.finding_peak(good).effect > 0
    assert findings.finding_peak(bad).verdict == "not reproduced"
    two = good.groupby("stem").head(2)  # best-of-2: too few runs to bootstrap a minimum
    assert findings.finding_peak(two).verdict == "inconclusive"
    collapsed = good.assign(collapsed=[True] * 13 + [False] * 11)
    f = findings.assess("peak", collapsed)
    assert f.verdict == "inconclusive" and "13 of 24 finished runs collapsed" in f.details
    one = _runs([{"stem": "conv", "top1_err": 20.0}, {"stem": "patchify", "top1_err": 25.0}])
    assert findings.finding_peak(one).verdict == "inconclusive"  # n = 1 per group
    # optimizer: SGD costs patchify 10 points, conv nothing
    rows = []
    for stem, sgd_cost in (("patchify", 10.0), ("conv", 0.0)):
        for opt in ("adamw", "sgd"):
            rows += [{"stem": stem, "optimizer": opt, "epochs": 10, "lr": lr,
                      "top1_err": 20 + (sgd_cost if opt == "sgd" else 0) + rng.normal(0, 0.2) + i}
                     for i, lr in enumerate((1e-3, 2e-3, 4e-3))]
    f = findings.finding_optimizer(_runs(rows))
    assert f.verdict == "reproduced" and 9 < f.effect < 11 and f.unit == "points"
    assert findings.verdict(1.0, -0.5, 2.0) == "inconclusive" and findings.verdict(-1, -2, -0.1) == "not reproduced"
    # a study without the runs a finding needs says so instead of failing
    assert findings.finding_epochs(good).verdict == "inconclusive"
    assert "two training lengths" in findings.finding_epochs(good).details


def test_reproduce_on_cifar_set_from_the_command_line_is_a_sweep_of_its_own(tmp_path):
    from .test_data import _write_cifar

    _write_cifar(tmp_path / "cifar", n_train=160, n_test=40)
    out = run_cli("reproduce", "--quick", "--quiet", "--only", "lr_wd", "--results", str(tmp_path / "res"),
                  "--set", "dataset=cifar10", "--set", f"data_root={tmp_path / 'cifar'}", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "res/runs").iterdir())
    assert len(runs) == 1 and runs[0].startswith("sweep=quick_lr_wd-dataset_cifar10-data_root_")
    from stability import store

    got = store.read_table(tmp_path / "res", "runs")
    assert set(got.dataset) == {"cifar10"} and len(got) == 8
    reports = list((tmp_path / "res/reproduce").glob("quick-dataset_cifar10-*-only-lr_wd.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    assert "Fig. 5" in text and "not run in this invocation (`--only`): optimizer, epochs, peak" in text
    # a missing data root: every run fails, the command says so and exits 1
    bad = run_cli("reproduce", "--quick", "--quiet", "--only", "lr_wd", "--results", str(tmp_path / "res"),
                  "--set", "dataset=cifar10", "--set", f"data_root={tmp_path / 'nowhere'}", timeout=600)
    assert bad.returncode == 1 and "8 run(s) of sweep" in bad.stdout and "DataError" in bad.stdout, bad.stdout
