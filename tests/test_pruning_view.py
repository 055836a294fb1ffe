"""Pruning by replay on screen: the figure of doomed steps saved vs good runs stopped
(``plots.pruning_pareto``), the dashboard's Pruning page in Streamlit's AppTest, and the report's
section, on hand-made recorded runs written as real results (and on the dashboard fixture)."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from stability import plots, replay, store

from .test_dashboard import (
    _root,  # the server's results root, as `stability dashboard --results` sets it
)

APP = str(Path(__file__).parents[1] / "dashboard" / "app.py")
SPE, EPOCHS = 10, 2
KINDS = ["good"] * 3 + ["bump", "chance", "chance", "chance", "diverge", "diverge", "diverge", "pruned"]


def synthetic(sweep: str = "syn", seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Recorded tables of 11 runs of 2 epochs x 10 steps, traced at every step: 3 that learn, one
    that learns after an early loss bump, 3 flat at ln 10 ending at chance, 3 whose loss explodes
    (diverged), one recorded pruned."""
    rng = np.random.default_rng(seed)
    total = SPE * EPOCHS
    t = np.arange(total)
    runs, steps, traces = [], [], []
    for i, kind in enumerate(KINDS):
        rid = f"{sweep}{i:02d}"
        loss = {"good": 2.3 - 1.8 * t / total, "pruned": 2.3 - 1.8 * t / total,
                "bump": 2.3 - 1.8 * t / total + 2.5 * np.exp(-((t - 6) / 2.0) ** 2),
                "chance": np.full(total, 2.3), "diverge": 2.3 * np.exp(t / 5.0)}[kind] + rng.normal(0, 0.02, total)
        used = 12 + i % 3 if kind == "diverge" else total
        if kind == "diverge":
            loss[used - 1] = math.nan
        runs.append({"sweep": sweep, "run_id": rid, "status": {"diverge": "diverged", "pruned": "pruned"}.get(kind, "completed"),
                     "model": "vit_tiny", "stem": "conv" if i % 2 else "patchify", "optimizer": "adamw",
                     "lr": 1e-3 * (i + 1), "wd": 0.05, "epochs": EPOCHS, "seed": 0, "dataset": "digits",
                     "top1_err": {"good": 12.0 + i, "bump": 14.0, "chance": 90.0, "diverge": 100.0, "pruned": 60.0}[kind],
                     "init_top1_err": 90.0, "init_val_loss": math.log(10), "wall_time_s": 0.1 * used,
                     "diverged_at_step": used - 1 if kind == "diverge" else None,
                     "config_json": json.dumps({"steps_per_epoch": SPE, "trace_every": 1}),
                     "started_at": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(seconds=i)})
        steps += [{"sweep": sweep, "run_id": rid, "step": s, "epoch": s // SPE, "loss": loss[s], "grad_norm": 1.0,
                   "log_z": 0.1} for s in range(used)]
        traces += [{"sweep": sweep, "run_id": rid, "step": s, "layer": "blocks.0", "attn_logit_max": 5.0,
                    "update_ratio": 1e-3} for s in range(used)]
    return pd.DataFrame(runs), pd.DataFrame(steps), pd.DataFrame(traces)


def write(root: Path, sweep: str = "syn", seed: int = 0, with_steps: bool = True) -> Path:
    """``synthetic`` written as real results, run by run (``store.write_run``)."""
    runs, steps, traces = synthetic(sweep, seed)
    for rid, row in runs.set_index("run_id").iterrows():
        tables = {"runs": [{**row.drop("sweep").to_dict(), "run_id": rid}]}
        if with_steps:
            for name, t in (("steps", steps), ("grad_norms", traces)):
                tables[name] = t[t.run_id == rid].drop(columns="sweep")
        store.write_run(root, sweep, rid, tables)
    return root


def test_the_figure_draws_every_family_with_ours_solid_and_optuna_open():
    scored = replay.recorded(*synthetic())
    assert len(scored) == 10  # the pruned run is not replayable
    res = replay.study(scored, every=(None, 5), n_boot=200)
    fig = plots.pruning_pareto(res.curve)
    points = [t for t in fig.data if t.mode == "markers"]
    assert {t.name for t in points} == set(res.curve.family)
    assert {"loss", "chance", "above", "optuna-median", "optuna-hyperband", "preset default"} <= {t.name for t in points}
    colours = {t.name: t.marker.color for t in points}
    assert len(set(colours.values())) == len(colours), colours  # every family its own colour, presets too
    for t in points:  # every family has a point in both panels (every = recorded, 5), on the axes in %
        assert len(t.x) > 0 and np.isfinite(np.asarray(t.x, float)).all() and 0 <= min(t.x) <= max(t.x) <= 100
        assert t.error_y.array is not None and (np.asarray(t.error_y.array, float) >= 0).all()
        assert t.marker.symbol.endswith("-open") == t.name.startswith("optuna"), t.name
        assert t.hovertemplate.count("customdata") >= 8 and t.customdata.shape == (len(t.x), 11)
    assert {t.xaxis for t in points} == {"x", "x2"}  # one panel per trace interval replayed
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["as recorded", "every 5 steps"]
    assert fig.layout.xaxis.title.text == "good runs wrongly stopped (%)"
    assert fig.layout.yaxis.title.text == "doomed runs' steps saved (%)"
    fronts = [t for t in fig.data if t.name == "Pareto front (ours)"]
    assert len(fronts) == 2 and all(t.line.shape == "hv" for t in fronts)
    for t in fronts:  # the front only rises: more saved only for more good runs stopped
        assert len(t.x) >= 1 and list(t.x) == sorted(t.x) and list(t.y) == sorted(t.y)
    ours = [t for t in points if not t.name.startswith("optuna")]
    assert max(max(t.y) for t in ours) > 0  # the rules do save doomed steps here
    # no Optuna: the same figure of ours alone, in one panel
    fig = plots.pruning_pareto(res.curve[~res.curve.family.str.startswith("optuna") & (res.curve.every == 0)])
    assert not fig.layout.annotations and all(not (t.name or "").startswith("optuna") for t in fig.data)


def test_readable_rows_say_counts_and_intervals():
    res = replay.study(replay.recorded(*synthetic()), baselines=False, n_boot=200)
    shown = replay.readable(res.curve[res.curve.pareto])
    assert len(shown) >= 1 and set(shown["trace interval"]) == {"as recorded"}
    assert shown["runs stopped"].str.fullmatch(r"\d+/10").all() and shown["good stopped"].str.fullmatch(r"\d+/4").all()
    assert shown["its 90% CI"].str.fullmatch(r"\[\d+\.\d, \d+\.\d\]").all()




def _page(root, query=None):
    at = AppTest.from_file(APP, default_timeout=180)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    with _root(root):
        at.run()
        at.switch_page("views/pruning.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _captions(at) -> str:
    return " ".join(c.value for c in at.caption)


def test_the_page_replays_the_selected_runs_and_counts_the_pruned_one(tmp_path):
    root = write(write(tmp_path / "results"), "other", seed=1)
    at = _page(root, {"f_sweep": "syn"})
    text = _captions(at)
    assert "**10 runs** of syn replayed: **6 doomed**" in text and "**4 good**" in text, text
    assert "1 recorded pruned" in text, text
    assert len(at.get("plotly_chart")) == 1
    pareto = at.dataframe[0].value
    assert len(pareto) >= 1 and set(pareto["trace interval"]) == {"as recorded"}
    assert "runs stopped" in pareto and (pareto["runs stopped"].str.endswith("/10")).all()
    assert not at.warning
    # every control to its extremes: the page redraws, nothing fails
    with _root(root):
        for key, values in (("p_prune_workers", (1, 16)), ("p_prune_within", (1, 10))):
            for v in values:
                at.slider(key=key).set_value(v).run()
                assert not at.exception, (key, v, [e.value for e in at.exception])
                assert len(at.get("plotly_chart")) == 1
        assert at.radio(key="p_prune_every").options == ["as recorded", "1", "5", "10"]
        for v in ("10", "1"):
            at.radio(key="p_prune_every").set_value(v).run()
            assert not at.exception
            assert set(at.dataframe[0].value["trace interval"]) == {"every step" if v == "1" else f"every {v} steps"}
        at.checkbox(key="p_prune_optuna").uncheck().run()
        assert not at.exception and not at.dataframe[0].value.family.str.startswith("optuna").any()
        # tuned on the other sweep: the chosen settings, scored on the selected runs
        assert at.multiselect(key="p_prune_tune").options == ["other"]
        at.multiselect(key="p_prune_tune").set_value(["other"]).run()
        assert not at.exception
        assert [s.value for s in at.subheader] == ["Pareto settings", "Chosen on other, scored here"]
        chosen = at.dataframe[1].value
        assert len(chosen) >= 1 and "on the tuning sweeps: doomed steps saved %" in chosen


def test_runs_without_steps_get_a_message_not_an_error(tmp_path):
    at = _page(write(tmp_path / "results", with_steps=False))
    assert not at.get("plotly_chart")
    said = " ".join(i.value for i in at.info)
    assert "None of the 11 selected runs can be replayed" in said and "10 without recorded steps" in said, said
    assert "1 recorded pruned" in said


def test_the_report_has_the_section_for_a_sweep_with_steps(tmp_path):
    from stability.report import build_report

    page = build_report(write(tmp_path / "results"), "syn")
    part = page[page.index("<h2 id='pruning'>Pruning by replay</h2>"):]
    assert "recorded steps of 10 runs" in part and "<b>good</b> (4)" in part and "1 run(s) recorded pruned" in part
    assert part.count('class="plotly-graph-div"') == 1 and "<h3>Pareto settings</h3>" in part
    assert re.search(r"<td>\d+/10</td>", part)  # runs stopped, per Pareto setting
    bare = build_report(write(tmp_path / "bare", with_steps=False), "syn")
    assert "Pruning by replay" not in bare  # nothing to replay: no section


def test_the_report_of_the_dashboard_fixture_has_the_section(dash_results):
    from stability.report import build_report

    page = build_report(dash_results, "dash")
    part = page[page.index("<h2 id='pruning'>Pruning by replay</h2>"):]
    assert "recorded steps of 12 runs" in part and "<h3>Pareto settings</h3>" in part
    assert part.count('class="plotly-graph-div"') == 1


def test_a_large_selection_waits_for_a_click_once(tmp_path):
    """Over REPLAY_RUNS runs the replay waits for its button; once asked, the controls redraw it
    without asking again."""
    root = tmp_path / "results"
    for i in range(7):  # 70 replayable runs
        write(root, f"s{i}", seed=i)
    at = _page(root, {"p_prune_optuna": "False"})
    assert not at.get("plotly_chart") and at.button(key="prune_go").label.startswith("Replay the pruners over 70 runs")
    with _root(root):
        at.button(key="prune_go").click().run()
        assert not at.exception and len(at.get("plotly_chart")) == 1
        at.slider(key="p_prune_within").set_value(8).run()
    assert not at.exception and len(at.get("plotly_chart")) == 1
    assert "**70 runs** of 7 sweeps replayed" in _captions(at), _captions(at)


def test_tuning_on_a_sweep_without_steps_says_so(tmp_path):
    root = write(write(tmp_path / "results"), "bare", with_steps=False)
    at = _page(root, {"f_sweep": "syn", "p_prune_optuna": "False"})
    with _root(root):
        at.multiselect(key="p_prune_tune").set_value(["bare"]).run()
    assert not at.exception and len(at.get("plotly_chart")) == 1
    assert any("bare hold(s) no replayable run" in i.value for i in at.info), [i.value for i in at.info]
    assert len(at.dataframe) == 1  # the Pareto table, no chosen one
