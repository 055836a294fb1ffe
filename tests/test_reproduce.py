"""`stability reproduce`: selection studies, replicates, four judged findings, one report (the verdict
rules themselves are calibrated in test_verdicts.py)."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from stability import reproduce
from stability.analysis import findings as F
from stability.errors import ConfigError

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
    assert len(re.findall(rf"^(Stability|Optimizer|Training|Peak).*: {VERDICT} \(.* — why: \S", out.stdout, flags=re.M)) == 4
    # --quiet draws no tables but says each study as it starts and ends (stderr), the replicates included
    for study in ("lr_wd", "optimizer", "epochs", "replicates", "2x length"):
        assert re.search(rf"^{study}: sweep quick_\S+ \.\.\.$", out.stderr, flags=re.M), out.stderr[-2000:]
        assert re.search(rf"^{study}: sweep quick_\S+: \d+ runs \(\d+ [a-z]+.*\) in [\d.]+ min$", out.stderr,
                         flags=re.M), out.stderr[-2000:]
    data = json.loads((tmp_path / "res/reproduce/quick.json").read_text())  # what the dashboard reads
    assert data["scale"] == "quick" and data["root"] == str(tmp_path / "res") and data["written_at"].endswith("+00:00")
    assert [f["key"] for f in data["findings"]] == ["lr_wd", "optimizer", "epochs", "peak"]
    for f in data["findings"]:
        assert f["reason"] and f"## {f['title']}: {f['verdict']}" in md and f"Why this verdict: {f['reason']}." in md
    # selection studies, the replicates (6 seeds per arm) and the 2x-length runs: sweeps of their own
    sweeps = sorted(p.name for p in (tmp_path / "res/runs").iterdir())
    assert sweeps[:3] == ["sweep=quick_epochs", "sweep=quick_lr_wd", "sweep=quick_optimizer"]
    # by name, not sorted position: a tag such as 260eb27d sorts before "2x-"
    two_x = [s for s in sweeps if re.fullmatch(r"sweep=quick_peak-2x-[0-9a-f]{8}", s)]
    rep = [s for s in sweeps if re.fullmatch(r"sweep=quick_peak-[0-9a-f]{8}", s)]
    assert len(two_x) == 1 and len(rep) == 1, sweeps
    from stability import store

    reps = store.read_table(tmp_path / "res", "runs", sweep=rep[0][len("sweep="):])
    assert sorted(set(reps.seed)) == [1, 2, 3, 4, 5, 6] and len(reps) == 6 * 6  # 6 arms
    # every arm's replicate is the selected config with another seed, evaluated on the test split
    assert reps.test_ema_top1_err.notna().all() and (reps.test_images == 300).all()
    # --quick learns: ViT_C's long AdamW arm leaves chance on every seed
    conv = reps[(reps.stem == "conv") & (reps.optimizer == "adamw") & (reps.epochs == reps.epochs.max())]
    assert len(conv) == 6 and (conv.test_ema_top1_err < 50).all(), conv.test_ema_top1_err.tolist()
    assert "exact McNemar" in md and "(selection)" in md
    # the sweeps table says what this invocation trained, whatever its wall time (25 s had read "nothing")
    assert len(re.findall(r"\| [\d.]+ \(\d+ trained\) \|", md)) == 5 and "nothing left to train" not in md, md
    # the generated replication spec is a grid spec the user can rerun
    specs = list((tmp_path / "res/reproduce/specs").glob("quick_peak-*.yaml"))
    assert len(specs) == 2
    # idempotent: a second call trains nothing new and gives the same verdicts
    n_runs = len(store.read_table(tmp_path / "res", "runs"))
    again = run_cli("reproduce", "--quick", "--quiet", "--results", str(tmp_path / "res"), timeout=600)
    assert again.returncode == 0
    md2 = (tmp_path / "res/reproduce/quick.md").read_text()
    assert re.findall(r"^## .+$", md2, flags=re.M) == re.findall(r"^## .+$", md, flags=re.M)
    assert md2.count("(nothing left to train)") == 5 and " trained) |" not in md2
    assert len(store.read_table(tmp_path / "res", "runs")) == n_runs


def test_reproduce_bad_input_is_one_line_exit_2(tmp_path):
    for args, needle in ((["--quick", "--paper"], "exclude each other"),
                         (["--grids", str(tmp_path)], "no study spec"),
                         (["--quick", "--only", "lr_wd,bogus"], "unknown study 'bogus'"),
                         (["--quick", "--only", ""], "unknown study ''"),
                         (["--quick", "--set", "results=x"], "not a study field"),
                         # lr is an axis of the studies: found before any study trains, named as --set's
                         (["--quick", "--set", "lr=0.1"], "--set: lr cannot be set (study lr_wd varies it"),
                         (["--paper", "--dry-run", "--set", "seed=3"], "--set: seed cannot be set"),
                         # one length for all studies makes the epochs finding's short and long arms one
                         (["--quick", "--dry-run", "--set", "epochs=2"], "--set: epochs cannot be set while the epochs"),
                         # the peak, optimizer and epochs arms are AdamW (and SGD) as the studies fix them
                         (["--quick", "--dry-run", "--set", "optimizer=sgd"],
                          "--set: optimizer cannot be set while the optimizer, epochs, peak findings run"),
                         # decoded datasets hold out no test split: refused at plan time
                         (["--quick", "--set", "dataset=cifar10", "--set", "data_root=/x"], "test_split"),
                         # a dry run's cost is only for a measured GPU
                         (["--paper", "--dry-run", "--gpu", "a100"], "(allowed: h200)")):
        out = run_cli("reproduce", *args, "--results", str(tmp_path / "res"))
        assert out.returncode == 2 and needle in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "res").exists()  # nothing written


def test_set_lists_only_the_keys_it_takes_and_lr_wd_alone_takes_the_optimizer(tmp_path):
    from stability.reproduce import SCALES, Invocation, unsettable

    with pytest.raises(ConfigError, match=r"unknown key 'bogus' \(allowed: ") as e:
        Invocation.from_options(quick=True, sets=["bogus=1"], results=str(tmp_path / "res"))
    allowed = set(str(e.value).split("(allowed: ")[1].rstrip(")").split(", "))
    refused = set(unsettable(SCALES["quick"]))
    assert {"seed", "stem", "lr", "wd", "epochs", "optimizer"} <= refused and not allowed & refused
    assert {"model", "batch_size", "trace_every", "momentum"} <= allowed
    inv = Invocation.from_options(quick=True, only="lr_wd", sets=["optimizer=sgd"], results=str(tmp_path / "res"))
    assert inv.specs["lr_wd"].base["optimizer"] == "sgd" and "optimizer_sgd" in inv.specs["lr_wd"].name
    with pytest.raises(ConfigError, match="optimizer cannot be set while the peak finding runs"):
        Invocation.from_options(quick=True, only="peak", sets=["optimizer=sgd"], results=str(tmp_path / "res"))
    assert not (tmp_path / "res").exists()


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
    assert re.search(r"^lr_wd: sweep quick_lr_wd-dataset_cifar10-\S+: 12 runs \(", out.stderr, flags=re.M), out.stderr
    reports = list((tmp_path / "res/reproduce").glob("quick-dataset_cifar10-*-only-lr_wd.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    assert "Figs. 4–5" in text and "not run in this invocation (`--only`): optimizer, epochs, peak" in text
    data = json.loads(reports[0].with_suffix(".json").read_text())
    assert data["left_out"] == ["optimizer", "epochs", "peak"] and [f["key"] for f in data["findings"]] == ["lr_wd"]
    assert data["findings"][0]["reason"] and f"{data['findings'][0]['title']}: " in out.stdout
    # a missing data root: refused when the studies are planned, before any run (issue 23)
    bad = run_cli("reproduce", "--quick", "--quiet", "--only", "lr_wd", "--results", str(tmp_path / "res"),
                  "--set", "dataset=cifar10", "--set", f"data_root={tmp_path / 'nowhere'}", "--set", "test_split=0",
                  timeout=600)
    assert bad.returncode == 2 and "data_root" in bad.stderr and str(tmp_path / "nowhere") in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_verdicts_print_their_reason_and_land_in_json(tmp_path):
    """An inconclusive verdict beside a t interval that excludes 0 (3 seeds: the sign-flip test
    cannot pass) says why on its line; a finding without data writes nulls, not NaN."""
    d = [1.0, 1.2, 0.9]  # ViT_P - ViT_C on 3 seeds: all positive, too few for the test (p >= 1/8)
    reps = pd.DataFrame([{"stem": s, "optimizer": "adamw", "epochs": 3, "seed": k, "status": "completed",
                          "run_id": f"{s}{k}", F.VALUE: 10.0 + (v if s == "patchify" else 0.0)}
                         for k, v in enumerate(d) for s in ("patchify", "conv")])
    peak, lr_wd = F.judge([F.finding_peak(reps, 3), F.LR_WD.missing("needs >= 2 (lr, wd) points")])
    assert peak.verdict == "inconclusive" and peak.lo > 0 and peak.reason.startswith("Holm-adjusted p")
    line = reproduce.verdict_line(peak)
    assert line.startswith("Peak performance") and f"— why: {peak.reason}" in line and "excludes 0" in line
    assert "why: needs >= 2 (lr, wd) points" in reproduce.verdict_line(lr_wd) and "[–, –]" in reproduce.verdict_line(lr_wd)
    res = reproduce.Outcome([], findings=[lr_wd, peak])
    paths = reproduce.write_report(res, "quick", str(tmp_path), tmp_path / "out" / "quick")
    assert [p.name for p in paths] == ["quick.md", "quick.html", "quick.json"]
    md = paths[0].read_text()  # lr/wd's MDE is its test's smallest passing effect: here none can pass
    assert "the smallest effect its permutation test can pass (a lower bound on what 80% power needs) none: no " \
           "result could pass" in md and "MDE none: no result could pass" in reproduce.verdict_line(lr_wd)
    data = json.loads(paths[2].read_text())  # strict JSON: a NaN would not parse in a browser
    a, b = data["findings"]
    assert (a["key"], a["effect"], a["lo"], a["p"], a["mde"], a["verdict"]) == ("lr_wd", None, None, None, None, "inconclusive")
    assert b["key"] == "peak" and b["effect"] == peak.effect == pytest.approx(np.mean(d)) and b["lo"] > 0 and b["reason"] == peak.reason
    assert b["p_adj"] == peak.p_adj and b["n_text"] == "3 seeds x 2 arms" and b["paper_effect"] == 1.0
    assert set(b) >= {"key", "title", "claim", "verdict", "reason", "statistic", "unit", "effect", "lo", "hi", "p",
                      "p_adj", "n_text", "mde", "paper_effect", "regime"}
    assert not list((tmp_path / "out").glob(".*"))  # written atomically: no temp file left


def test_replicates_run_where_the_replication_study_says_and_a_rerun_finds_only_its_own_spec(tmp_path):
    """A replication spec keeps the replication study's execution fields (its data_root, and a
    --set decode), the tag lookup ignores them, and it never takes another invocation's spec
    (``peak-data_root_x-<tag>``) for its own."""
    import dataclasses

    import pandas as pd

    from stability.config import run_config
    from stability.grid.spec import load_spec
    from stability.reproduce import SCALES, _execution, _existing_tag, _identity, replication_spec

    cfg = run_config({"dataset": "imagefolder", "data_root": "/old", "decode": "cpu", "lr": 1e-3, "seed": 4,
                      "sweep": "sel", "test_split": 0})
    ident = _identity(pd.Series({"config_json": json.dumps(cfg.to_dict())}))
    assert "data_root" not in ident and "decode" not in ident and ident["lr"] == 1e-3
    template = load_spec(SCALES["paper"] / "peak.yaml")
    template = dataclasses.replace(template, base={**template.base, "decode": "gpu"})  # as --set decode=gpu leaves it
    execution = _execution(template)
    assert execution == {"data_root": "/datasets/imagenet", "decode": "gpu"}
    spec = load_spec(replication_spec(template, [ident], "peak-abc12345", (1, 2), str(tmp_path)))
    assert spec.base["data_root"] == "/datasets/imagenet" and spec.base["decode"] == "gpu"
    assert _existing_tag(str(tmp_path), "peak", [ident], (1, 2)) == "abc12345"
    assert _existing_tag(str(tmp_path), "peak", [{**ident, "lr": 2e-3}], (1, 2)) is None
    # a spec written before a field existed (here z_loss and qk_norm, at their defaults) is still
    # the same replicates: the identity compared is the run id's, not the whole config
    older = {k: v for k, v in ident.items() if k not in ("z_loss", "qk_norm")}
    assert older != ident and _existing_tag(str(tmp_path), "peak", [older], (1, 2)) == "abc12345"
    other = replication_spec(template, [ident], "peak-data_root_x-12345678", (1, 2), str(tmp_path))
    (tmp_path / "reproduce/specs/peak-abc12345.yaml").unlink()
    assert other.exists() and _existing_tag(str(tmp_path), "peak", [ident], (1, 2)) is None


def test_an_execution_field_set_on_the_paper_studies_keeps_their_sweeps(tmp_path):
    """``--set decode=gpu`` is checked on the studies' own data (ImageNet JPEGs), names no new
    sweep (the runs compute the same), and reaches the replicates too; on digits it is refused."""
    out = run_cli("reproduce", "--paper", "--dry-run", "--set", "decode=gpu", "--results", str(tmp_path / "res"))
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "decode_gpu" not in text and "│ lr_wd │" in text
    assert text.count("GPU decode │") == 5, text  # the three studies, the replicates and the 2x runs
    bad = run_cli("reproduce", "--quick", "--dry-run", "--set", "decode=gpu", "--results", str(tmp_path / "res"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: --set: decode:"), bad.stderr
    assert not (tmp_path / "res").exists()


def test_a_sweep_is_named_by_what_the_set_options_change_whatever_their_order():
    """The same changes name the same sweep in any ``--set`` order; a field set to the spec's own
    value changes nothing; two long data roots that end alike still name two sweeps."""
    from stability.reproduce import sweep_suffix

    a = sweep_suffix({"data_root": "/x/cifar", "dataset": "cifar10", "test_split": 0})
    assert a == sweep_suffix({"test_split": 0, "dataset": "cifar10", "data_root": "/x/cifar"})
    assert a == "-dataset_cifar10-data_root_x_cifar-test_split_0"
    assert sweep_suffix({"data_root": "/data/imagenet", "lr": 1e-3}, {"data_root": "/data/imagenet"}) == "-lr_0_001"
    assert sweep_suffix({"data_root": "/data/imagenet"}, {"data_root": "/other"}) == "-data_root_data_imagenet"
    long1, long2 = (sweep_suffix({"data_root": f"/{who}/shared/datasets/imagenet-jpeg/train"}) for who in "ab")
    assert long1 != long2 and long1.startswith("-data_root_") and len(long1) < 60
    assert sweep_suffix({"decode": "gpu", "compile": False}) == ""


def test_reproduce_dry_run_costs_the_2x_runs_at_twice_the_length(tmp_path):
    """The convergence check by hand: 4 long arms (2 stems x 2 optimizers, 50 epochs) x 2 seeds
    at 100 epochs of ImageNet-1k, 2048 a batch, fed by 15 CPU workers (RESULTS.md rates)."""
    from stability.reproduce import Invocation, dry_run

    costs, notes = dry_run(Invocation.from_options(paper=True, results=str(tmp_path / "res")))
    x2 = next(c for c in costs if c.name.endswith("(2x length)"))
    images = 8 * 100 * (1281167 // 2048) * 2048
    feed = 1381 * (352 / 2) / (409 / 2)  # the H200 VM's 15 workers, x AutoAugment's 0.86 (EPYC)
    evaluated = 8 * 50000 * (1 + 2 * 100)  # validation before training, model and EMA after each epoch
    assert (x2.runs, x2.images, x2.eval_images) == (8, images, evaluated)
    assert x2.train_hours == pytest.approx(images / feed / 3600)  # 239.3
    assert x2.eval_hours == pytest.approx(evaluated / 1381 / 3600)  # 16.17
    assert notes[0].startswith("total: training ") and "a floor" in notes[0]
