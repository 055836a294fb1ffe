"""The dashboard in Streamlit's AppTest on real results, an empty, a missing and a corrupt root:
one state across pages, filters and controls that survive navigation and come back from a URL."""

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from stability import store

APP = str(Path(__file__).parents[1] / "dashboard" / "app.py")
PAGES = ["views/overview.py", "views/edf.py", "views/lr_wd.py", "views/optimizer.py", "views/spikes.py",
         "views/runs.py", "views/hparams.py", "views/sensitivity.py", "views/pruning.py"]


@contextmanager
def _root(root, browse=False):
    """The server's results root, as ``stability dashboard --results`` sets it."""
    old = {k: os.environ.get(k) for k in ("STABILITY_RESULTS", "STABILITY_ALLOW_BROWSE")}
    os.environ["STABILITY_RESULTS"] = str(root)
    os.environ["STABILITY_ALLOW_BROWSE"] = "1" if browse else ""
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _app(root, page=None, query=None):
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    with _root(root):
        at.run()
        if page:
            at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _query(at, key):
    v = at.query_params.get(key)
    return v if isinstance(v, list) else [v]


def _shown(markdown: str) -> str:
    """Markdown source as a reader sees it: the backslash escapes (common.md) taken out."""
    return re.sub(r"\\(.)", r"\1", markdown)


def _charts(at):
    return at.get("plotly_chart")


def test_fixture_has_a_diverged_run(dash_results):
    runs = store.load(dash_results).runs
    assert len(runs) == 12 and runs.status.eq("diverged").sum() >= 2


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_results(dash_results, page):
    at = _app(dash_results, page)
    assert at.title, page
    if page.endswith("overview.py"):  # the findings view flags the fixture's patchify runs: none learned
        assert [w.value for w in at.warning] == [
            "**sweep dash · patchify**: 0 of 6 runs left chance (3 at chance, 3 diverged; median error 96.3%, "
            "chance 89.0%)."], [w.value for w in at.warning]
        lines = " ".join(m.value for m in at.markdown)
        assert "no verdict (both stems sit at chance" not in lines and "n = 6 vs 6" in lines, lines
    else:
        assert not at.warning or page.endswith(("optimizer.py",)), [w.value for w in at.warning]
    if not page.endswith("overview.py"):
        assert len(_charts(at)) >= 1, page
    if page.endswith("edf.py"):
        summary = at.dataframe[0].value
        assert set(summary.stem) == {"patchify", "conv"} and summary.diverged.sum() >= 2
        with _root(dash_results):
            at.radio(key="p_edf_mode").set_value("relative to the best of each group").run()
            assert not at.exception
            summary = at.dataframe[0].value
            assert "within_4" in summary.columns and (summary.best == 0).all()
            for band in ("simultaneous", "dkw"):
                at.radio(key="p_edf_band").set_value(band).run()
                assert not at.exception
    if page.endswith("runs.py"):
        assert len(at.dataframe[0].value) == 12


def test_filters_and_controls_survive_navigation(dash_results):
    """A filter set once holds on every page, page controls come back as they were left, and the
    URL mirrors both."""
    at = _app(dash_results, "views/edf.py")
    with _root(dash_results):
        at.multiselect(key="f_stem").set_value(["conv"]).run()
        at.radio(key="p_edf_mode").set_value("relative to the best of each group").run()
        assert _query(at, "f_stem") == ["conv"]
        for page in PAGES[2:] + PAGES:
            at.switch_page(page).run()
            assert not at.exception, (page, [e.value for e in at.exception])
            assert at.session_state["f_stem"] == ["conv"], page
        at.switch_page("views/runs.py").run()
        assert set(at.dataframe[0].value.stem) == {"conv"}
        at.switch_page("views/edf.py").run()
        assert at.radio(key="p_edf_mode").value.startswith("relative")
        assert set(at.dataframe[0].value.stem) == {"conv"}


def test_a_shared_url_restores_the_view(dash_results):
    at = _app(dash_results, "views/edf.py",
              query={"f_stem": "patchify", "p_edf_mode": "relative to the best of each group",
                     "p_edf_within": "2.5"})
    assert at.session_state["f_stem"] == ["patchify"]
    assert at.radio(key="p_edf_mode").value.startswith("relative")
    assert at.slider(key="p_edf_within").value == 2.5
    assert set(at.dataframe[0].value.stem) == {"patchify"}
    # values the data does not hold are ignored, not errors
    at = _app(dash_results, "views/edf.py", query={"f_stem": "nonsense", "p_edf_within": "oops"})
    assert set(at.session_state["f_stem"]) == {"patchify", "conv"}


def test_spike_controls_at_their_extremes(dash_results):
    at = _app(dash_results, "views/spikes.py")
    with _root(dash_results):
        for key in ("p_spk_w", "p_spk_m", "p_spk_f", "p_spk_z", "p_spk_k"):
            s = at.slider(key=key)
            for v in (s.min, s.max):
                at.slider(key=key).set_value(v).run()
                assert not at.exception, (key, v, [e.value for e in at.exception])
                assert len(_charts(at)) >= 2
        at.radio(key="p_spk_layout").set_value("overlay in one figure").run()
        assert not at.exception and len(_charts(at)) == 2  # the counts and one overlay
        at.radio(key="p_spk_how").set_value("choose runs").run()
        assert not at.exception


def test_runs_page_overlays_runs_and_diffs_their_configs(dash_results):
    at = _app(dash_results, "views/runs.py")
    runs = store.load(dash_results).runs
    pick = ("dash/" + runs.sort_values("lr").run_id).tolist()[:3]
    with _root(dash_results):
        at.multiselect(key="p_runs_open").set_value(pick).run()
    assert not at.exception
    diff = at.table[0].value  # a static table: whole key names
    assert "lr" in diff.index and len(diff.columns) == 3


def test_root_is_fixed_unless_browsing_is_allowed(tmp_path, dash_results):
    """A visitor cannot point the app elsewhere: a ``root`` query naming another folder is
    ignored; folders under the root that hold runs can be chosen; --allow-browse opens any."""
    base = tmp_path / "base"
    shutil.copytree(dash_results, base / "a")
    shutil.copytree(dash_results, base / "b")
    at = _app(base, "views/runs.py", query={"root": str(dash_results)})
    choices = at.selectbox(key="root").options
    assert set(choices) == {str(base.resolve()), "a", "b"}
    assert at.selectbox(key="root").value == str(base.resolve())
    with _root(base):
        at.selectbox(key="root").set_value("b").run()
    assert len(at.dataframe[0].value) == 12 and _query(at, "root") == ["b"]
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["root"] = str(dash_results)
    with _root(base, browse=True):
        at.run()
        at.switch_page("views/runs.py").run()
    assert at.text_input(key="root").value == str(dash_results)
    assert len(at.dataframe[0].value) == 12


@pytest.mark.parametrize("page", PAGES)
def test_empty_missing_and_corrupt_roots_are_friendly(tmp_path, dash_results, page):
    empty = tmp_path / "empty"
    (empty / "runs").mkdir(parents=True)
    at = _app(empty, page)
    assert "no runs yet" in " ".join(i.value for i in at.info)
    at = _app(tmp_path / "missing", page)
    assert "does not exist" in " ".join(w.value for w in at.warning)
    bare = tmp_path / "bare"
    bare.mkdir()
    at = _app(bare, page)  # exists, but no runs/ folder
    assert "no `runs/` folder" in " ".join(w.value for w in at.warning)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(dash_results, corrupt)
    victim = next((corrupt / "runs" / "sweep=dash").glob("*.parquet"))
    victim.write_bytes(b"PAR1 garbage")
    at = _app(corrupt, page)
    assert "unreadable" in " ".join(e.value for e in at.error)


def test_overview_findings_are_the_analysis_numbers_and_reproduce_verdicts(tmp_path, dash_results):
    """The findings table is ``analysis.stem_outcomes`` of the runs (the report prints the same);
    a ``stability reproduce`` record under the root shows its verdicts; a malformed one is skipped."""
    import json

    from stability import analysis

    root = tmp_path / "r"
    shutil.copytree(dash_results, root)
    (root / "reproduce").mkdir()
    (root / "reproduce" / "quick.json").write_text(json.dumps({"scale": "quick", "written_at": "2026-12-05T12:00:00",
        "findings": [{"title": "peak", "verdict": "inconclusive", "effect": 1.5, "lo": None, "hi": 3.0,
                      "unit": "points", "p": 0.2, "p_adj": 0.4, "n_text": "6 seeds", "mde": 4.0,
                      "paper_effect": 1.0, "reason": "Holm 0.4 > 0.10"}]}))
    (root / "reproduce" / "bad.json").write_text("{not json")
    at = _app(root, "views/overview.py")
    shown = at.dataframe[0].value
    want = analysis.stem_outcomes(store.load(root).runs)
    assert shown["stem"].tolist() == want["stem"].tolist()
    for col in ("runs", "diverged", "at_chance", "learned", "median_err"):
        assert shown[col].tolist() == want[col].tolist(), col
    repro = at.dataframe[1].value
    assert repro["verdict"].tolist() == ["inconclusive"] and repro["reason"].tolist() == ["Holm 0.4 > 0.10"]
    assert "n/a" in repro["effect [90% CI]"].iloc[0]  # an undefined bound, not "nan"


def test_edf_pooling_warns_and_the_axis_can_be_fixed(tmp_path, dash_results):
    """Two sweeps: pooling them is said in a warning; the 0-100 toggle fixes the error axis."""
    import json

    root = tmp_path / "r"
    shutil.copytree(dash_results, root)
    for table in store.TABLES:
        shutil.copytree(root / table / "sweep=dash", root / table / "sweep=dash2")
    at = _app(root, "views/edf.py")
    assert not at.warning
    with _root(root):
        at.toggle(key="p_edf_full").set_value(True).run()
    assert not at.exception
    assert json.loads(_charts(at)[0].proto.spec)["layout"]["xaxis"]["range"] == [-2, 102]
    with _root(root):
        at.toggle(key="p_edf_pool").set_value(True).run()
    assert not at.exception
    assert any("Pooled here: sweep" in w.value for w in at.warning), [w.value for w in at.warning]


def test_edf_scores_pruned_runs_as_the_control_says(tmp_path, dash_results):
    """A run rewritten as pruned (stopped early by its pruner): scored as diverged by default, at
    its last error or left out on request; the caption names the choice and the count, the
    summary counts it whatever the choice, and the Overview and Runs pages list it apart."""
    root = tmp_path / "r"
    shutil.copytree(dash_results, root)
    runs = store.read_table(root, "runs", sweep="dash")
    row = runs[runs.status.eq(str(store.RunStatus.COMPLETED)) & runs.stem.eq("conv")].iloc[0]
    rec = row.drop(labels=["sweep"]).to_dict() | {"status": str(store.RunStatus.PRUNED), "pruned_at_step": 5,
                                                  "prune_rule": "loss_ratio", "top1_err": 50.0}
    store.write_run(root, "dash", row.run_id, {"runs": [rec]})
    at = _app(root, "views/edf.py")
    assert at.radio(key="p_edf_pruned").value == "diverged"
    for choice, n_conv, said in (("diverged", 6, "at 100% like diverged runs"), ("last", 6, "at their last "
                                 "validation error"), ("out", 5, "left out of the EDF")):
        with _root(root):
            at.radio(key="p_edf_pruned").set_value(choice).run()
        assert not at.exception, [e.value for e in at.exception]
        caption = " ".join(c.value for c in at.caption)
        assert f"pruned runs (stopped early as doomed by their pruner): 1, scored {said}" in caption, caption
        summary = at.dataframe[0].value.set_index("stem")
        assert summary.loc["conv", "pruned"] == 1 and summary.loc["conv", "runs"] == n_conv, choice
        assert _query(at, "p_edf_pruned") == ([None] if choice == "diverged" else [choice])
    with _root(root):
        at.switch_page("views/overview.py").run()
    assert not at.exception
    assert at.dataframe[0].value.set_index("stem").loc["conv", "pruned"] == 1
    assert any(m.label == "pruned" and m.value == "1" for m in at.metric), [(m.label, m.value) for m in at.metric]
    with _root(root):
        at.switch_page("views/runs.py").run()
    assert not at.exception and (at.dataframe[0].value.status == "pruned").sum() == 1
    with _root(root):  # opened: it says it was pruned, and the command that continues it
        at.multiselect(key="p_runs_open").set_value([f"dash/{row.run_id}"]).run()
    said = _shown(" ".join(i.value for i in at.info))
    assert "pruned at step 5 by loss_ratio" in said and f"stability train --run {row.run_id} results={root} --rerun" in said


def test_the_dashboard_splits_by_a_varying_config_field_as_the_analyses_do(tmp_path):
    """Runs at two image sizes in one sweep: the Overview's findings have one row per image size
    and stem, the same as ``analysis.stem_outcomes`` of the stored runs (never one pool)."""
    import pandas as pd

    from stability import analysis

    from .test_sensitivity import C, _run, _write

    rows = [_run(f"{stem[0]}{px}{i}", stem, lr, 0, C, 0.5, 2.3, err=10.0 + i + (px == 17) * 50, image_size=px)
            for px in (32, 17) for stem in ("conv", "patchify") for i, lr in enumerate([1e-3, 3e-3, 1e-2])]
    root = _write(tmp_path / "results", pd.DataFrame(rows))
    at = _app(root, "views/overview.py")
    assert not at.exception
    shown = at.dataframe[0].value
    want = analysis.stem_outcomes(store.load(root).runs)
    assert sorted(want["image_size"]) == [17, 17, 32, 32]
    assert shown["image_size"].tolist() == want["image_size"].tolist()
    assert shown["median_err"].tolist() == want["median_err"].tolist()


def test_spikes_says_a_short_runs_recorded_trace_interval_not_the_gap_to_its_divergence(tmp_path):
    """A run traced every 5 steps that diverged at step 4 has traced points 0 and 4 (the divergence
    step is traced off the interval): the note names its recorded interval, 5, not the gap, 4."""
    import json

    import pandas as pd

    from .test_pruning_view import synthetic

    runs, steps, traces = synthetic("short")
    rid = runs.run_id[runs.status.eq("diverged")].iloc[0]
    row = runs.set_index("run_id").loc[rid].drop("sweep").to_dict()
    row.update(diverged_at_step=4, config_json=json.dumps({"steps_per_epoch": 10, "trace_every": 5}))
    gn = pd.DataFrame({"step": [0, 4], "layer": "blocks.0", "grad_norm": [1.0, 9.0], "attn_logit_max": 5.0,
                       "update_ratio": 1e-3, "run_id": rid})
    st = steps[steps.run_id.eq(rid) & steps.step.le(4)].drop(columns="sweep")
    store.write_run(tmp_path, "short", rid, {"runs": [{**row, "run_id": rid}], "steps": st, "grad_norms": gn})
    at = _app(tmp_path, "views/spikes.py")
    notes = [i.value for i in at.info if "too short for the detector" in i.value]
    assert notes and "traced every 5 steps" in notes[0] and "every 4" not in notes[0], [i.value for i in at.info]


def test_runs_page_survives_planted_configs(tmp_path, dash_results):
    """config_json is read from results files, which are not trusted: garbage, a list, and JSON
    nested past the parser's recursion limit open on the Runs page as empty configs, no crash."""
    root = tmp_path / "r"
    shutil.copytree(dash_results, root)
    runs = store.load(root).runs.sort_values("lr")
    planted = {"{not json", "[1, 2]", '{"a":' * 100_000}
    for (_, row), text in zip(runs.head(3).iterrows(), sorted(planted), strict=True):
        rec = row.drop("sweep").to_dict()
        store.write_run(root, "dash", rec["run_id"], {"runs": [{**rec, "config_json": text}]})
    at = _app(root, "views/runs.py")
    pick = ("dash/" + runs.run_id).tolist()[:4]  # the three planted and a sound one
    with _root(root):
        at.multiselect(key="p_runs_open").set_value(pick).run()
    assert not at.exception, [e.value for e in at.exception]
    diff = at.table[0].value
    assert "lr" in diff.index and len(diff.columns) == 4


def test_values_from_result_files_are_shown_as_text_and_build_no_path(tmp_path, dash_results):
    """Markdown in a planted optimizer name or error (an image that loads, a link) is shown as
    text on every page that prints it; a running row's run id of ``../`` reads no note outside."""
    import json

    root = tmp_path / "r"
    shutil.copytree(dash_results, root)
    runs = store.load(root).runs.sort_values("lr")
    evil = "![t](https://evil.example/p.png) [login](https://evil.example)"
    first, second = (r.drop("sweep").to_dict() for _, r in runs.head(2).iterrows())
    store.write_run(root, "dash", first["run_id"], {"runs": [{**first, "status": "failed", "error": evil}]})
    store.write_run(root, "dash", "planted", {"runs": [{**second, "run_id": "../../../../outside", "status": "running",
                                                        "optimizer": evil}]})
    (tmp_path / "outside.json").write_text(json.dumps(  # where that id leads: a valid note, never to be read
        {"epoch": 1, "epochs": 2, "step": 1, "total_steps": 2, "val_top1_err": 1.0, "updated_at": "OUTSIDE"}))
    texts = []
    for page in ("views/overview.py", "views/optimizer.py", "views/sensitivity.py", "views/runs.py"):
        at = _app(root, page)
        if page == "views/runs.py":
            with _root(root):
                at.multiselect(key="p_runs_open").set_value(["dash/../../../../outside"]).run()
            assert not at.exception, [e.value for e in at.exception]
            assert not at.get("progress")  # the note outside the root was not read
        for kind in ("markdown", "caption", "info", "warning", "error", "subheader"):
            texts += [e.value for e in at.get(kind)]
        texts += [e.label for e in at.get("expander")]
    shown = "\n".join(map(str, texts))
    assert "](https://evil" not in shown and "![t]" not in shown and "OUTSIDE" not in shown
    assert "evil\\.example" in shown  # the planted text is on the pages, as text


def test_no_figure_draws_a_value_from_result_files_as_markup(tmp_path, dash_results):
    """Plotly renders <a href>, <b>, <span style> in trace names, titles, ticks and hover text: a
    planted optimizer or layer name (a link, an image tag) is drawn as text by every figure drawn
    from result files, fed as the pages feed them (``plots.plain_labels``)."""
    import json

    from stability import analysis, plots

    root = tmp_path / "r"
    shutil.copytree(dash_results, root)
    res = store.load(root)
    evil = "<a href='https://evil.example'>x</a><img src=x>"
    for r in res.runs.to_dict("records"):
        rid, new = r["run_id"], r["run_id"] + "x"
        gn = res.grad_norms[res.grad_norms.run_id == rid].assign(run_id=new).drop(columns="sweep")
        gn["layer"] = gn["layer"].astype(str).replace({"blocks.0": evil})
        store.write_run(root, "dash", new, {"runs": [{**{k: v for k, v in r.items() if k != "sweep"}, "run_id": new,
                                                      "optimizer": evil, "stem": evil}], "grad_norms": gn.to_dict("records")})
    res = store.load(root)
    runs, gn, steps = res.runs, res.grad_norms, res.steps
    one = gn[gn.run_id == runs.run_id.iloc[-1]]
    marked = analysis.mark_spikes(one)
    hp = analysis.error_vs_hparams(runs)
    figs = {
        "edf_figure": plots.edf_figure(analysis.edf(runs), title=evil),
        "lr_wd_figure": plots.lr_wd_figure(hp),
        "lr_wd_heatmap_figure": plots.lr_wd_heatmap_figure(analysis.lr_wd_heatmap(runs)),
        "optimizer_figure": plots.optimizer_figure(analysis.optimizer_gap(runs)),
        "length_figure": plots.length_figure(analysis.training_length(runs)),
        "spike_figure": plots.spike_figure(marked, steps[steps.run_id == one.run_id.iloc[0]], evil),
        "spike_overlay_figure": plots.spike_overlay_figure([(evil, marked, steps.iloc[:0])], evil),
        "spike_count_figure": plots.spike_count_figure(analysis.spike_counts(gn).assign(stem=evil), evil),
        "parallel_figure": plots.parallel_figure(hp),
        "importance_figure": plots.importance_figure(analysis.hparam_importance(runs)),
        "status_figure": plots.status_figure(runs.assign(stem=evil).groupby(["sweep", "stem", "status"], observed=True)
                                             .size().rename("n").reset_index()),
        "lr_curve_figure": plots.lr_curve_figure(analysis.lr_curves(runs)),
        "lr_sensitivity_figure": plots.lr_sensitivity_figure(analysis.lr_sensitivity(runs)),
        "attn_logit_figure": plots.attn_logit_figure(analysis.attn_logit_at(runs, gn)),
    }
    every = {n for n in dir(plots) if getattr(getattr(plots, n), "__wrapped__", None) is not None}
    assert every - set(figs) == {"pruning_pareto"}, every  # its labels are the replay's settings, not file values

    def strings(v):
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            for x in v.values():
                yield from strings(x)
        elif isinstance(v, list | tuple):
            for x in v:
                yield from strings(x)

    shown = {}
    for name, fig in figs.items():
        texts = list(strings(json.loads(fig.to_json())))  # every array as a list
        assert not [t for t in texts if "<a href" in t or "<img" in t], name
        shown[name] = any("&lt;img src=x&gt;" in t for t in texts)
    # the two that draw neither: the optimizer figure's arms are adamw and sgd; the sensitivity
    # bars need 3 lrs at one wd, and this grid samples wd per run (no bar at all)
    assert {n for n, v in shown.items() if not v} == {"lr_sensitivity_figure", "optimizer_figure"}, shown


def test_plain_escapes_strings_of_every_kind_and_leaves_the_input_alone():
    """Object, string and categorical columns (pandas' str categories too), plain strings, lists
    and Tables: every markup character escaped, the caller's frame untouched, numbers as they are."""
    import pandas as pd

    from stability import plots
    from stability.analysis.tables import Table

    df = pd.DataFrame({"sweep": pd.Categorical(["<b>x</b>", "ok"]), "o": ["<i>", "a"],
                       "s": pd.array(["a&b", "c"], dtype="string"), "n": [1.5, 2.0]})
    out = plots.plain(df)
    assert out.sweep.tolist() == ["&lt;b&gt;x&lt;/b&gt;", "ok"] and out.o.tolist() == ["&lt;i&gt;", "a"]
    assert out.s.tolist() == ["a&amp;b", "c"] and out.n.tolist() == [1.5, 2.0]
    assert df.sweep.tolist() == ["<b>x</b>", "ok"]  # the caller's frame is not changed
    assert plots.plain(["<a>", ("<b>",)]) == ["&lt;a&gt;", ("&lt;b&gt;",)]
    assert plots.plain(Table(df, ("sweep",))).table.o.tolist() == ["&lt;i&gt;", "a"]
