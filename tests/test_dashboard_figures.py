"""The dashboard's figures and pages after the new-user browser trial: each finding's fix pinned on
hand-made results (two sweeps that differ in many config fields, a run that diverged at its first
step with an inf/NaN norm, more runs than ten colours): panel titles that name only what tells
panels apart, per-row lr ticks, the training-length and optimizer notes, the Overview on empty
filters, the Runs page's curves, lr 1e38 as text, spike overlays, redundant strata last, a link's
unknown run said."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from stability import analysis, plots, store

from .test_dashboard import _app, _charts, _root, _shown

D, C = str(store.RunStatus.DIVERGED), str(store.RunStatus.COMPLETED)
T0 = pd.Timestamp("2026-01-01", tz="UTC")

# Two sweeps as `stability grid run grids/cpu/quick/lr_wd.yaml` and tests/conftest.py's dash grid
# make them: they differ in optimizer and length, and also in batch size, warm-up, image size, EMA
# and test split (the sweep's, never an axis of its own).
SWEEPS = {
    "quick_lr_wd": dict(optimizer="adamw", epochs=3, batch_size=64, warmup_epochs=0.5,
                        cfg=dict(image_size=16, ema_alpha=8.5e-3, ema_period=4, test_split=300),
                        lrs=[1e-3, 2e-3, 4e-3, 8e-3], wds=[0.025, 0.06, 0.2, 0.8]),
    "dash": dict(optimizer="sgd", epochs=2, batch_size=24, warmup_epochs=0.0,
                 cfg=dict(image_size=32, ema_alpha=0.0, ema_period=1, test_split=0),
                 lrs=[0.01, 0.1, 1.0, 1000.0], wds=[1e-5, 3e-5, 1e-4, 1e-3]),
}
NOISY = ("batch_size", "warmup_epochs", "image_size", "ema_alpha", "ema_period", "test_split")


def _rows(sweep: str, s: dict, epochs: int | None = None, tag: str = "") -> list[dict]:
    """One row per stem and lr of ``sweep``; its largest lr diverged at step 1 (before validating)."""
    epochs = epochs or s["epochs"]
    out = []
    for stem in ("patchify", "conv"):
        for i, (lr, wd) in enumerate(zip(s["lrs"], s["wds"], strict=True)):
            blown = lr >= 1000
            cfg = dict(model="vit_tiny", stem=stem, dataset="digits", optimizer=s["optimizer"], epochs=epochs,
                       lr=lr, wd=wd, seed=0, batch_size=s["batch_size"], warmup_epochs=s["warmup_epochs"],
                       steps_per_epoch=4, **s["cfg"])
            err = 100.0 if blown else 10.0 + 3 * i + 20 * (stem == "patchify")
            out.append({"run_id": f"{stem[0]}{tag}{i}", "sweep": sweep, "status": D if blown else C,
                        "model": "vit_tiny", "stem": stem, "optimizer": s["optimizer"], "lr": lr, "wd": wd,
                        "epochs": epochs, "batch_size": s["batch_size"], "warmup_epochs": s["warmup_epochs"],
                        "seed": 0, "dataset": "digits", "top1_err": err, "init_top1_err": 90.0,
                        "init_val_loss": 2.3, "final_val_loss": None if blown else 0.5 + 0.1 * i,
                        "collapsed": False, "diverged_at_step": 1 if blown else None,
                        "config_json": json.dumps(cfg, sort_keys=True), "started_at": T0,
                        "finished_at": T0 + pd.Timedelta(minutes=1)})
    return out


def _write(root, rows: list[dict]):
    """``rows`` as real results: steps (a diverged run: step 0, then NaN loss and inf norm), epochs
    (none for a run that diverged before validating) and a two-layer trace."""
    for r in rows:
        r = dict(r)
        rid, sweep = r.pop("run_id"), r.pop("sweep")
        blown = r["status"] == D
        n = 2 if blown else 4 * r["epochs"]
        loss = [2.3, np.nan] if blown else list(np.linspace(2.3, 0.5, n))
        norm = [1.0, np.inf] if blown else list(np.linspace(1.0, 0.5, n))
        steps = [{"run_id": rid, "step": k, "epoch": k // 4, "loss": loss[k], "lr": r["lr"], "grad_norm": norm[k],
                  "log_z": 0.1} for k in range(n)]
        epochs = [] if blown else [{"run_id": rid, "epoch": e, "val_loss": 1.0,
                                    "val_top1_err": r["top1_err"] + 5 * (r["epochs"] - 1 - e)} for e in range(r["epochs"])]
        trace = [{"run_id": rid, "step": k, "layer": layer, "depth": d, "grad_norm": norm[k] * (d + 1),
                  "attn_logit_max": 3.0} for k in range(n) for d, layer in enumerate(("patch_embed", "blocks.0"))]
        tables = {"runs": [{**r, "run_id": rid}], "steps": steps, "grad_norms": trace}
        if epochs:
            tables["epochs"] = epochs
        store.write_run(root, sweep, rid, tables)
    return root


def _two_sweep_rows() -> list[dict]:
    return [row for name, s in SWEEPS.items() for row in _rows(name, s)]


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    """A results root with the two sweeps, one epoch budget each."""
    return _write(tmp_path_factory.mktemp("two_sweeps") / "results", _two_sweep_rows())


def _spec(chart) -> dict:
    return json.loads(chart.proto.spec)


def _lines(title: str) -> list[str]:
    return title.split("<br>")


# 1. EDF panel titles --------------------------------------------------------------------------

def test_edf_panel_titles_name_only_what_tells_panels_apart_wrapped():
    runs = analysis.with_design(pd.DataFrame(_two_sweep_rows()))
    assert set(NOISY[:4]) <= set(analysis.strata(runs))  # the sweeps do differ in all of them
    fig = plots.edf_figure(analysis.edf(runs, by=analysis.default_by(runs)))
    titles = [a.text for a in fig.layout.annotations if a.yref == "paper" and a.text and " n=" in a.text]
    assert len(titles) == 2, titles
    for t, sweep, opt, ep in zip(sorted(titles), ("dash", "quick_lr_wd"), ("sgd", "adamw"), ("2 ep", "3 ep"),
                                 strict=True):
        head = _lines(t)[0]
        assert sweep in head and opt in head and ep in head, t  # what varies and is named always
        assert not any(k in t for k in NOISY), t  # the sweep's batch size, warm-up ... are the sweep's
    # an axis that does tell panels apart stays, and a long name is broken into lines of ~60 characters
    long = {"quick_lr_wd": "quick_lr_wd_rerun_for_the_browser_trial_on_a_shared_host",
            "dash": "dash_rerun_for_the_browser_trial_on_a_shared_host"}
    many = pd.DataFrame([{**r, "sweep": long[r["sweep"]], "run_id": f"{r['run_id']}{px}",
                          "config_json": json.dumps({**json.loads(r["config_json"]), "image_size": px})}
                         for r in _two_sweep_rows() for px in (16, 24) if r["lr"] in (1e-3, 8e-3, 0.01, 1000.0)])
    many = analysis.with_design(many)
    fig = plots.edf_figure(analysis.edf(many, by=analysis.default_by(many)))
    titles = [a.text for a in fig.layout.annotations if a.text and " n=" in a.text]
    assert len(titles) == 4
    assert all("image_size" in t and not any(k in t for k in NOISY if k != "image_size") for t in titles), titles
    assert all(len(_lines(t)) >= 3 and max(map(len, _lines(t))) <= 62 for t in titles), titles


# 2. lr x wd ticks per row -----------------------------------------------------------------------

def test_lr_wd_rows_tick_their_own_range():
    runs = pd.DataFrame(_two_sweep_rows())
    fig = plots.lr_wd_figure(analysis.error_vs_hparams(runs))
    values: dict[str, list[float]] = {}
    for t in fig.data:  # customdata[2]: the knob's true value (x may be nudged sideways per stem)
        values.setdefault(t.xaxis or "x", []).extend(float(v) for v in np.asarray(t.customdata)[:, 2])
    assert len(values) == 4  # two rows (one per sweep) x lr, wd
    ranges = {tuple(sorted(v)) for v in values.values()}
    assert len(ranges) == 4
    for ax, v in values.items():
        lo, hi = min(v), max(v)
        ticks = fig.layout["xaxis" + ax[1:]].tickvals
        assert ticks and len(ticks) >= 2, (ax, ticks)
        assert all(lo / 1.01 <= t <= hi * 1.01 for t in ticks), (ax, lo, hi, ticks)


# 3. Optimizer and training length --------------------------------------------------------------

def test_training_length_leaves_out_single_length_groups_and_says_when_no_group_ran_both(two_sweeps, tmp_path):
    at = _app(two_sweeps, "views/optimizer.py")
    infos = _shown(" ".join(i.value for i in at.info))
    assert "ran one epoch budget only" in infos, infos  # 3 vs 2 epochs, but of two sweeps: no curve
    assert "No sweep, stem and length of the selection ran both optimizers" in infos, infos
    assert len(_charts(at)) == 1  # the bars only; no training-length chart
    # a third sweep with two lengths: its curves drawn, the two single-length sweeps named as left out
    lengths = {**SWEEPS["quick_lr_wd"], "lrs": [1e-3, 3e-3], "wds": [0.05, 0.05]}
    root = _write(tmp_path / "r", [*_two_sweep_rows(),
                                   *(r for ep in (2, 4) for r in _rows("epochs", lengths, epochs=ep, tag=f"e{ep}"))])
    at = _app(root, "views/optimizer.py")
    caption = " ".join(c.value for c in at.caption)
    assert "Left out, one epoch budget only: 4 group(s) (dash, quick_lr_wd)" in _shown(caption), caption
    length = _spec(_charts(at)[-1])
    assert length["layout"]["title"]["text"] == "Training length"
    names = [t["name"] for t in length["data"]]
    assert sorted(names) == ["conv", "patchify"], names  # only the epochs sweep; its own settings unsaid


def test_length_figure_names_the_groups_short():
    """Two sweeps with two lengths each: a line is named by its sweep, optimizer and stem, not by
    every setting in which the sweeps differ ("quick_lr_wd / adamw / 64 / 0.5 / 0.0085 / ...")."""
    rows = [r for name, eps in (("quick_lr_wd", (2, 4)), ("dash", (1, 2))) for ep in eps
            for r in _rows(name, SWEEPS[name], epochs=ep, tag=f"{name[0]}{ep}")]
    runs = analysis.with_design(pd.DataFrame(rows))
    fig = plots.length_figure(analysis.training_length(runs))
    assert sorted(t.name for t in fig.data) == ["dash · sgd · conv", "dash · sgd · patchify",
                                                "quick_lr_wd · adamw · conv", "quick_lr_wd · adamw · patchify"]


# 4. Overview with filters that leave nothing ---------------------------------------------------

def test_overview_says_the_filters_leave_no_run(two_sweeps):
    at = _app(two_sweeps, "views/overview.py")
    with _root(two_sweeps):
        at.multiselect(key="f_stem").set_value([]).run()
    assert not at.exception, [e.value for e in at.exception]
    infos = " ".join(i.value for i in at.info)
    assert "The sidebar's filters leave none of the 16 runs" in infos, infos
    assert "No finished run yet" not in infos


# 5. Runs page curves ---------------------------------------------------------------------------

def test_runs_page_draws_a_run_that_diverged_at_its_first_step(two_sweeps):
    at = _app(two_sweeps, "views/runs.py")
    conv, blown, patch = "dash/c0", "dash/p3", "dash/p1"  # p3: lr 1000, NaN at step 1, no epoch
    with _root(two_sweeps):
        at.multiselect(key="p_runs_open").set_value([conv, blown, patch]).run()
    assert not at.exception, [e.value for e in at.exception]
    fig = _spec(_charts(at)[0])
    note = [a for a in fig["layout"]["annotations"] if a["text"].startswith("no validation epoch")]
    assert len(note) == 1 and "diverged at step 1" in note[0]["text"]
    # on the validation-error panel (row 2, col 1: x3, y3), in its top-left corner, clear of the curves' middle
    assert (note[0]["xref"], note[0]["yref"]) == ("x3 domain", "y3 domain")
    assert note[0]["x"] <= 0.1 and note[0]["y"] >= 0.9 and note[0].get("xanchor") == "left", note[0]
    data = fig["data"]
    lone = [t for t in data if t.get("legendgroup") == blown and t.get("xaxis", "x") in ("x", "x4")]
    assert len(lone) == 2 and all("markers" in t["mode"] for t in lone), lone  # one finite point: a marker
    others = [t for t in data if t.get("legendgroup") in (conv, patch) and t.get("xaxis", "x") == "x"]
    assert len(others) == 2 and all(t["mode"] == "lines" for t in others), others
    crosses = [t for t in data if t.get("marker", {}).get("symbol") == "x"]
    assert {t.get("xaxis", "x") for t in crosses} == {"x", "x4"}, crosses  # loss and grad norm panels
    assert all(t["x"] == [1] and "diverged at step 1" in t["hovertemplate"] for t in crosses)
    assert [c["y"][0] for c in crosses if c.get("xaxis", "x") == "x"] == [2.3]  # its last finite loss
    colors = {}
    for t in data:
        if t.get("legendgroup") and "line" in t:
            colors.setdefault(t["legendgroup"], set()).add(t["line"]["color"])
    assert colors[conv] == {plots.STEM_COLORS["conv"]}, colors  # chosen first, still blue
    assert colors[blown] == {plots.STEM_COLORS["patchify"]}
    assert len(colors[patch]) == 1 and colors[patch] != colors[blown]  # a shade of the stem's red
    r, g, b = (int(next(iter(colors[patch])).lstrip("#")[i:i + 2], 16) for i in (0, 2, 4))
    assert r > g and r > b, colors[patch]


def test_runs_page_note_lands_on_the_error_panel_when_no_run_validated(two_sweeps):
    """Only runs that diverged before validating: the error panel holds no trace. In the browser
    (plotly.js) an annotation that refers to an axis no trace uses is drawn on the first panel,
    over the loss curve: the panel needs a trace (an empty one will do), or the note paper coordinates."""
    at = _app(two_sweeps, "views/runs.py", query={"p_runs_open": ["dash/p3", "dash/c3"]})
    fig = _spec(_charts(at)[0])
    note = next(a for a in fig["layout"]["annotations"] if a["text"].startswith("no validation epoch"))
    assert note["xref"] == "paper" or any(t.get("xaxis") == "x3" for t in fig["data"]), note


# 7. LR sensitivity: the pooling hint ------------------------------------------------------------

def test_sensitivity_page_suggests_pooling_wd(tmp_path):
    from .test_sensitivity import _lr_wd_runs
    from .test_sensitivity import _write as write_sens

    root = write_sens(tmp_path / "lrwd", _lr_wd_runs())
    at = _app(root, "views/sensitivity.py")
    infos = _shown(" ".join(i.value for i in at.info))
    assert "pooled over wd they do" in infos and "pool on purpose" in infos, infos
    with _root(root):
        at.multiselect(key="p_sens_pool_axes").set_value(["wd"]).run()
    assert not at.exception
    assert "pooled over wd they do" not in _shown(" ".join(i.value for i in at.info))


# 8. lr 1e38 ---------------------------------------------------------------------------------------

def test_run_labels_write_a_huge_lr_short():
    from stability.dashboard.common import run_labels

    runs = pd.DataFrame({"sweep": "s", "stem": ["conv", "patchify", "conv"], "optimizer": "adamw",
                         "lr": [1e38, 1000.0, 2.5e-3], "wd": [0.05, 300.0, 1e12], "epochs": 2, "model": "vit_tiny",
                         "seed": 0})
    labels = run_labels(runs).tolist()
    assert labels[0] == "s · conv · adamw · lr 1e+38 · wd 0.05 · 2 ep", labels
    assert "lr 1000 · wd 300" in labels[1] and "lr 0.0025 · wd 1e+12" in labels[2], labels
    assert not any(re.search(r"\d{8}", lab) for lab in labels), labels


# 9, 10. Spike figures ----------------------------------------------------------------------------

def _trace(scale: float, n: int = 12, zero_at: int | None = None, bad: dict | None = None) -> pd.DataFrame:
    rows = []
    for d, layer in enumerate(("patch_embed", "blocks.0", "blocks.1")):
        for k in range(n):
            v = scale * (1 + 0.1 * k) * (d + 1)
            if d == 0 and k == zero_at:
                v = 0.0
            if d == 0 and bad and k in bad:
                v = bad[k]
            rows.append({"run_id": "r", "step": k, "layer": layer, "depth": d, "grad_norm": v})
    return analysis.mark_spikes(pd.DataFrame(rows))


def _marks(fig, symbol: str) -> list:
    """The traces of ``fig`` drawn as ``symbol`` markers at real points (not a legend entry's None)."""
    return [t for t in fig.data if t.marker and isinstance(t.marker.symbol, str) and t.marker.symbol == symbol
            and t.x is not None and len(t.x) and t.x[0] is not None]


def _steps(n: int = 12) -> pd.DataFrame:
    return pd.DataFrame({"run_id": "r", "step": range(n), "loss": np.linspace(2.3, 1.0, n)})


def test_spike_overlay_tells_many_runs_apart_and_marks_zeros_at_one_height():
    runs = [(f"run {i}", _trace(10.0 ** (i / 3), zero_at=3 if i in (0, 11) else None), _steps()) for i in range(12)]
    fig = plots.spike_overlay_figure(runs)
    legend = {t.name: t.line.color for t in fig.data
              if t.showlegend is not False and t.name and t.name.startswith("run ")}
    assert len(legend) == 12 and len(set(legend.values())) == 12, legend  # past LINE_COLORS' 10
    circles = _marks(fig, "circle-open")
    assert {t.legendgroup for t in circles} == {"run 0", "run 11"}
    assert len({y for t in circles for y in t.y}) == 1, [t.y for t in circles]  # one floor for every run
    finite = min(t.grad_norm[t.grad_norm > 0].min() for _, t, _ in runs)
    assert circles[0].y[0] < finite  # below all data
    small = plots.spike_overlay_figure(runs[:3])
    big = plots.spike_overlay_figure([(f"run {i}", _trace(1.0 + i), _steps()) for i in range(40)])
    assert big.layout.height > small.layout.height and big.layout.height >= 20 * 40, big.layout.height


@pytest.mark.parametrize("overlay", [False, True])
def test_spike_figures_mark_inf_and_nan_norms_above_the_data(overlay):
    trace = _trace(1.0, bad={7: np.inf, 9: np.nan})
    fig = (plots.spike_overlay_figure([("run a", trace, _steps()), ("run b", _trace(2.0), _steps())]) if overlay
           else plots.spike_figure(trace, _steps(), "a run"))
    finite = trace.grad_norm[np.isfinite(trace.grad_norm)].max()
    crosses = _marks(fig, "x-thin-open")
    assert len(crosses) == 1, [(t.name, t.marker.symbol) for t in fig.data]
    assert list(crosses[0].x) == [7, 9] and all(y > finite for y in crosses[0].y), crosses[0]
    assert "not finite" in crosses[0].hovertemplate
    bad_name = getattr(plots, "BAD_NORM", "grad norm inf/NaN")
    assert any(t.name == bad_name and t.showlegend is not False for t in fig.data), [t.name for t in fig.data]
    ticks = fig.layout.yaxis.tickvals
    # the axis is labelled up to the crosses' height (within one 1-2-5 step), not only the finite data's
    assert max(ticks) >= max(crosses[0].y) / 2.5, (ticks, crosses[0].y)
    clean = plots.spike_figure(_trace(1.0), _steps(), "a run")
    assert not any(t.name == bad_name for t in clean.data)  # no legend entry for what is not drawn


# 11. Redundant strata after the answers ----------------------------------------------------------

def test_tables_put_the_sweeps_own_settings_after_the_answers(two_sweeps):
    at = _app(two_sweeps, "views/edf.py")
    summary = list(at.dataframe[0].value.columns)
    answer = summary.index("median")
    assert summary.index("sweep") < summary.index("stem") < answer, summary
    for c in ("batch_size", "warmup_epochs", "image_size"):
        assert summary.index(c) > answer, summary  # still there, after what the table answers
    # the EDF chart's panels are named by what tells them apart (finding 1, on the page)
    titles = [a["text"] for a in _spec(_charts(at)[0])["layout"]["annotations"] if " n=" in a["text"]]
    assert len(titles) == 2 and not any(k in t for t in titles for k in NOISY), titles
    # the verdict bullets name a stratum by what tells it apart, not every setting of its sweep
    bullets = [m.value for m in at.markdown if m.value.startswith("- **")]
    assert bullets and all(b.startswith("- **sweep ") and not any(k in _shown(b) for k in NOISY) for b in bullets), bullets
    at = _app(two_sweeps, "views/overview.py")
    findings = list(at.dataframe[0].value.columns)
    assert findings.index("batch_size") > findings.index("median_err") > findings.index("stem"), findings
    from stability.dashboard.common import answers_first

    df = pd.DataFrame({"sweep": ["a", "b"], "batch_size": [8, 16], "epochs": [1, 1], "err": [1.0, 2.0]})
    assert list(answers_first(df, ["sweep", "batch_size", "epochs"]).columns) == ["sweep", "err", "batch_size",
                                                                                  "epochs"]


# 12. A link's run that is not there ---------------------------------------------------------------

def test_a_shared_links_unknown_run_is_said(two_sweeps):
    at = _app(two_sweeps, "views/runs.py", query={"p_runs_open": ["dash/doesnotexist", "dash/c0"]})
    infos = _shown(" ".join(i.value for i in at.info))
    assert "open runs (overlaid): 1 value(s) not offered here" in infos and "dash/doesnotexist" in infos, infos
    assert at.multiselect(key="p_runs_open").value == ["dash/c0"]
