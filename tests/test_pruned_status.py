"""Pruned runs (``RunStatus.PRUNED``: stopped early by the run's pruner as doomed) are counted
apart everywhere: scored as diverged by default, at their last error or left out of an EDF on
request, never dropped silently and never counted as completed."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from stability import analysis, plots, store
from stability.analysis.edf import PRUNED_AS
from stability.grid import state as grid_state

C, D, P, F = (str(s) for s in (store.RunStatus.COMPLETED, store.RunStatus.DIVERGED, store.RunStatus.PRUNED,
                               store.RunStatus.FAILED))


def _runs() -> pd.DataFrame:
    """conv: 20, 30 completed, one diverged, one pruned at a last error of 85; patchify: 25
    completed, two pruned (70, and one without a recorded error), one failed."""
    rows = [("c0", "conv", C, 20.0), ("c1", "conv", C, 30.0), ("c2", "conv", D, None), ("c3", "conv", P, 85.0),
            ("p0", "patchify", C, 25.0), ("p1", "patchify", P, 70.0), ("p2", "patchify", P, None),
            ("p3", "patchify", F, None)]
    return pd.DataFrame([{"run_id": r, "stem": s, "status": st, "top1_err": e, "init_top1_err": 90.0}
                         for r, s, st, e in rows])


def test_the_policies_are_a_module_constant_with_diverged_the_default():
    assert PRUNED_AS == ("diverged", "last", "out") and analysis.PRUNED_AS is PRUNED_AS
    for f in (analysis.errors, analysis.edf, analysis.summary):
        assert f.__defaults__[-1] == "diverged", f


@pytest.mark.parametrize("pruned, conv, patchify", [
    ("diverged", [20.0, 30.0, 100.0, 100.0], [25.0, 100.0, 100.0]),
    ("last", [20.0, 30.0, 100.0, 85.0], [25.0, 70.0, 100.0]),  # no recorded error: 100
    ("out", [20.0, 30.0, 100.0], [25.0]),
])
def test_errors_scores_pruned_runs_by_the_policy(pruned, conv, patchify):
    e = analysis.errors(_runs(), pruned=pruned)
    assert e[e.stem == "conv"]["err"].tolist() == conv and e[e.stem == "patchify"]["err"].tolist() == patchify
    assert e["pruned"].dtype == bool and e.loc[e.status == P, "pruned"].all()
    assert not e["pruned"].any() if pruned == "out" else e["pruned"].sum() == 3
    assert not e.loc[e["pruned"], "diverged"].any()  # counted apart, never as diverged
    assert F not in set(e.status)


def test_relative_mode_puts_pruned_runs_at_delta_100_as_diverged_ones():
    runs = _runs().assign(top1_err=lambda d: d.top1_err.where(d.run_id != "c3", 5.0))  # pruned at 5: not the best
    e = analysis.errors(runs, relative=True).set_index("run_id")
    assert e.loc["c3", "err"] == 100.0 and e.loc["c2", "err"] == 100.0 and e.loc["c0", "err"] == 0.0
    last = analysis.errors(runs, relative=True, pruned="last").set_index("run_id")
    assert last.loc["c3", "err"] == 0.0 and last.loc["c0", "err"] == 15.0  # its error, so it is the best
    row = analysis.compare(runs, relative=True, n_boot=50, n_perm=50).iloc[0]
    assert row.worst_a == 100.0 and row.best_a == 0.0  # compare scores them as the default does
    pts = analysis.edf(runs, relative=True, n_boot=50)
    assert pts[pts.stem == "conv"].x.max() == 100.0


def test_edf_counts_pruned_runs_under_every_policy():
    for pruned, n in (("diverged", {"conv": 4, "patchify": 3}), ("last", {"conv": 4, "patchify": 3}),
                      ("out", {"conv": 3, "patchify": 1})):
        pts = analysis.edf(_runs(), n_boot=20, pruned=pruned)
        per = pts.drop_duplicates("stem").set_index("stem")
        assert per["n"].to_dict() == n, pruned
        assert per["n_pruned"].to_dict() == {"conv": 1, "patchify": 2}, pruned
        assert per["n_diverged"].to_dict() == {"conv": 1, "patchify": 0}, pruned
        assert set(pts.pruned_as) == {pruned}
        top = pts[pts.stem == "conv"].F_right.iloc[-1]
        assert top == 1.0
    last = analysis.edf(_runs(), n_boot=0, pruned="last")
    assert 85.0 in last[last.stem == "conv"].x.tolist()


def test_summary_counts_pruned_runs_whatever_the_policy():
    for pruned, runs_n, median in (("diverged", (4, 3), (65.0, 100.0)), ("last", (4, 3), (57.5, 70.0)),
                                   ("out", (3, 1), (30.0, 25.0))):
        s = analysis.summary(_runs(), pruned=pruned).set_index("stem")
        assert tuple(s["runs"]) == runs_n and tuple(s["median"]) == median, pruned
        assert s["pruned"].to_dict() == {"conv": 1, "patchify": 2}, pruned
        assert s["diverged"].to_dict() == {"conv": 1, "patchify": 0} and s.loc["patchify", "failed"] == 1
        assert list(s.columns[:3]) == ["runs", "diverged", "pruned"]
    # a group whose every finished run was pruned keeps its row (and its count) when they are left out
    only = _runs()[_runs().run_id.isin(["p1", "p2", "c0"])]
    s = analysis.summary(only, pruned="out").set_index("stem")
    assert s.loc["patchify", "runs"] == 0 and s.loc["patchify", "pruned"] == 2


@pytest.mark.parametrize("f", [analysis.errors, analysis.edf, analysis.summary])
def test_an_unknown_policy_is_an_error_naming_the_allowed_ones(f):
    with pytest.raises(ValueError, match="'diverged', 'last', 'out'"):
        f(_runs(), pruned="drop")


def test_stem_outcomes_count_pruned_runs_apart():
    o = analysis.stem_outcomes(_runs()).set_index("stem")
    assert o.loc["conv", ["runs", "diverged", "pruned", "at_chance", "learned"]].tolist() == [4, 1, 1, 0, 2]
    assert o.loc["patchify", ["runs", "diverged", "pruned", "learned", "left_out"]].tolist() == [3, 0, 2, 1, 1]
    assert o.loc["patchify", "pruned_pct"] == pytest.approx(200 / 3)
    assert o.loc["conv", "median_err"] == 65.0  # the pruned run at 100, as the EDF's default
    gone = analysis.stem_outcomes(_runs()[_runs().status.isin([D, P])]).set_index("stem")
    assert gone["never_left_chance"].all() and (gone["learned"] == 0).all()


def test_grid_state_counts_pruned_runs_apart():
    runs = _runs()
    plan = [SimpleNamespace(run_id=r, stem=s, optimizer="adamw", epochs=2, cell="") for r, s in zip(
        runs.run_id, runs.stem, strict=True)] + [SimpleNamespace(run_id="p4", stem="patchify", optimizer="adamw",
                                                                 epochs=2, cell="")]
    state = grid_state.sweep_state(plan, runs, alive={"c3": "PENDING"}, submitted={"p4"})
    by_id = state.set_index("run_id").status
    assert by_id["c3"] == P and by_id["p1"] == P and by_id["p4"] == "missing"  # a live job never supersedes a result
    assert grid_state.done_ids(runs) == {"c0", "c1", "c2", "c3", "p0", "p1", "p2"}
    assert not grid_state.to_submit(state, retry_failed=True)[state.status.eq(P)].any()
    total = grid_state.counts(state).iloc[0]
    assert (total[C], total[D], total[P], total[F], total["total"]) == (3, 1, 3, 1, 9)
    assert list(grid_state.counts(state).columns[:3]) == [C, D, P]
    conv, patchify = grid_state.stem_outcomes(state, runs)
    assert (conv["runs"], conv["diverged"], conv["pruned"], conv["completed"]) == (4, 1, 1, 2)
    assert (patchify["completed"], patchify["pruned"], patchify["left_out"]) == (1, 2, 2)
    assert conv["line"] == ("conv: 2 of 4 runs left chance (2 completed: 0 at chance; 1 diverged; 1 pruned); "
                            "median error 65.0 %")
    no_pruner = grid_state.stem_outcomes(state[state.status.ne(P)], runs)[0]
    assert "pruned" not in no_pruner["line"]  # a sweep without a pruner reads as before


def _sens_runs() -> pd.DataFrame:
    cfg = '{"model": "vit_tiny", "optimizer": "adamw", "epochs": 4, "wd": 0.05}'
    rows = [(1e-3, C, 0.5), (1e-2, C, 0.3), (1e-1, P, 0.2)]  # a pruned run's loss is not its outcome
    return pd.DataFrame([{"run_id": f"r{i}", "sweep": "s", "status": st, "stem": "patchify", "lr": lr, "seed": 0,
                          "optimizer": "adamw", "epochs": 4, "final_val_loss": v, "init_val_loss": 2.3,
                          "top1_err": 20.0, "init_top1_err": 90.0, "config_json": cfg}
                         for i, (lr, st, v) in enumerate(rows)])


def test_lr_sensitivity_scores_a_pruned_run_at_the_value_at_init_and_counts_it_apart():
    curves = analysis.lr_curves(_sens_runs()).table.set_index("run_id")
    assert curves.loc["r2", "clipped"] == 2.3 and curves.loc["r2", "pruned"] and not curves.loc["r2", "diverged"]
    per = analysis.lr_sensitivity_per_seed(_sens_runs()).table.iloc[0]
    assert per.sensitivity == pytest.approx((0.2 + 0 + 2.0) / 3)
    assert (per.n_runs, per.n_diverged, per.n_pruned) == (3, 0, 1)
    assert analysis.lr_sensitivity(_sens_runs(), n_boot=100).table.iloc[0].n_pruned == 1
    plots.lr_curve_figure(analysis.lr_curves(_sens_runs()), "loss")  # draws them with the diverged ones


def test_attention_leaves_pruned_runs_out_with_a_count_in_the_note():
    runs = _sens_runs().assign(collapsed=False)
    gn = pd.DataFrame([{"run_id": r, "sweep": "s", "step": step, "layer": "blocks.0", "depth": 1, "grad_norm": 1.0,
                        "attn_logit_max": v} for r, v in (("r0", 3.0), ("r1", 5.0), ("r2", 50.0))
                       for step in (0, 10, 20)])
    at = analysis.attn_logit_at(runs, gn, step=10)
    assert sorted(at.table.run_id) == ["r0", "r1"]
    assert "1 pruned run(s) left out" in at.note
    for outcome in ("diverged", "unstable"):
        auc = analysis.attn_logit_auc(runs, gn, step=10, outcome=outcome, n_boot=100)
        assert "1 pruned run(s) left out" in auc.note
        assert auc.table.empty or int(auc.table["n"].sum()) == 2


def test_findings_keep_a_pruned_run_without_a_test_error_at_100():
    from stability.analysis import findings

    runs = pd.DataFrame([{"run_id": f"{s}{i}", "stem": s, "status": st, "lr": 0.1 * (i + 1), "wd": 0.05, "seed": 0,
                          "test_ema_top1_err": e}
                         for s in ("conv", "patchify") for i, (st, e) in enumerate(((C, 20.0), (P, None)))])
    pairs = findings.lr_wd_pairs(runs, "test_ema_top1_err")
    assert pairs.set_index("lr").loc[0.2, ["conv", "patchify"]].tolist() == [100.0, 100.0]


def test_sweeps_flag_pruned_runs():
    hp = analysis.error_vs_hparams(_runs().assign(lr=0.1, wd=0.05, optimizer="adamw", epochs=2))
    assert hp["pruned"].sum() == 3 and not hp.loc[hp["pruned"], "diverged"].any()
    best = analysis.best_configs(_runs().assign(lr=0.1, wd=0.05), by=["stem"])
    assert "pruned" in best and not best["pruned"].any()
    fig = plots.lr_wd_figure(hp.assign(lr=[0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3]))
    assert {t.name for t in fig.data} >= {"conv (pruned)", "conv (diverged)", "patchify (pruned)"}


def test_plots_colour_every_status_and_count_pruned_runs_in_edf_titles():
    assert set(plots.STATUS_COLORS) == set(store.RunStatus)
    for pruned, words in (("diverged", "1 pruned)"), ("last", "1 pruned at last error"), ("out", "1 pruned left out")):
        fig = plots.edf_figure(analysis.edf(_runs(), n_boot=0, pruned=pruned))
        titles = " ".join(a.text for a in fig.layout.annotations)
        assert words in titles, (pruned, titles)
    marks = [t.hovertemplate for t in plots.edf_figure(analysis.edf(_runs(), n_boot=0)).data
             if t.hovertemplate and "counted at 100%" in t.hovertemplate]
    assert any("1 diverged and 1 pruned" in m for m in marks) and any("0 diverged and 2 pruned" in m for m in marks)


def test_edf_panels_label_their_chance_and_within_lines_once_never_with_plotlys_placeholder():
    """Two panels (two sweeps): the first labels the line, the others carry none at all (an
    annotation without text is drawn as plotly's "new text")."""
    two = pd.concat([_runs().assign(sweep="a"), _runs().assign(sweep="b", run_id=lambda d: d.run_id + "b")],
                    ignore_index=True)
    for relative, kw, label in ((False, {"chance": 90.0}, "chance"), (True, {"within": 4.0}, "within 4")):
        fig = plots.edf_figure(analysis.edf(two, n_boot=0, relative=relative), relative=relative, **kw)
        texts = [a.text for a in fig.layout.annotations]
        assert sum(bool(t) and t.startswith(("a<br>", "b<br>")) for t in texts) == 2, texts  # two panels
        assert None not in texts and texts.count(label) == 1, texts


def test_report_findings_show_pruned_beside_diverged():
    from stability.report import findings_section

    page = findings_section(_runs().assign(sweep="s"), pd.DataFrame(), "s")
    assert "<th>pruned</th>" in page and "<b>Pruned</b>" in page and "<td>2 (66.7 %)</td>" in page
    plain = findings_section(_runs()[_runs().status.ne(P)].assign(sweep="s"), pd.DataFrame(), "s")
    assert "<th>pruned</th>" not in plain and "<b>Pruned</b>" not in plain


def test_spike_figures_say_once_what_their_open_circles_are():
    """A zero grad norm has no place on a log axis: drawn as an open circle below the data, and
    one legend entry says so (a hollow circle nobody explained, in the trial of a new user)."""
    trace = pd.DataFrame({"step": [0, 1, 2] * 3, "layer": ["stem"] * 3 + ["blocks.0"] * 3 + ["head"] * 3,
                          "depth": [0] * 3 + [1] * 3 + [2] * 3,
                          "grad_norm": [0.0, 0.5, 0.4, 0.0, 0.2, 0.3, 0.0, 1.0, 1.1], "spike": False})
    steps = pd.DataFrame({"step": [0, 1, 2], "loss": [2.3, 2.2, 2.1]})
    for fig in (plots.spike_figure(trace, steps), plots.spike_overlay_figure([("a", trace, steps), ("b", trace, steps)])):
        circles = [t for t in fig.data if t.marker.symbol == "circle-open"]
        (note,) = [t for t in circles if t.name == plots.ZERO_NORM]  # one entry, which toggles no layer or run
        assert note.legendgroup == plots.ZERO_NORM and list(note.x) == [None]
        drawn = [t for t in circles if t is not note]
        assert len(drawn) >= 2 and not any(t.showlegend for t in drawn)
        assert all(t.legendgroup not in (None, plots.ZERO_NORM) for t in drawn)  # each in its layer's or run's group
    plain = plots.spike_figure(trace.assign(grad_norm=trace.grad_norm + 0.1), steps)
    assert not any(t.name == plots.ZERO_NORM for t in plain.data)


def test_a_preempted_run_whose_job_is_gone_is_preempted_everywhere_and_resubmitted():
    """A stale preempted row (its job scancel'd after the checkpoint) is counted as preempted, not
    missing, and a grid run resubmits it to resume; a stale running row is missing; a latest job
    that failed without writing its row makes either failed."""
    import pandas as pd

    runs = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "status": ["preempted", "running", "preempted", "preempted"],
                         "stem": "conv", "error": None, "wall_time_s": 1.0})
    plan = [SimpleNamespace(run_id=r, stem="conv", optimizer="adamw", epochs=2, cell="") for r in runs.run_id]
    state = grid_state.sweep_state(plan, runs, alive={"d": "RUNNING"}, submitted={"a", "b", "c", "d"},
                                   failed={"c": "disk full"})
    by_id = state.set_index("run_id").status
    assert by_id.to_dict() == {"a": "preempted", "b": "missing", "c": "failed", "d": "running"}
    assert sorted(state.run_id[grid_state.to_submit(state)]) == ["a", "b"]
    assert grid_state.counts(state).iloc[0]["preempted"] == 1


def test_the_live_table_counts_preempted_runs_so_its_columns_add_up(tmp_path):
    import pandas as pd
    from rich.console import Console

    from stability.grid.controller import Controller
    from stability.grid.spec import load_spec

    from .conftest import write_spec

    runs = pd.DataFrame({"run_id": ["a", "b"], "status": ["preempted", "completed"], "stem": "conv", "error": None,
                         "wall_time_s": 1.0})
    plan = [SimpleNamespace(run_id=r, stem="conv", optimizer="adamw", epochs=2, cell="") for r in runs.run_id]
    state = grid_state.sweep_state(plan, runs, alive={}, submitted={"a", "b"})
    spec = load_spec(write_spec(tmp_path / "g.yaml", "lt", tmp_path / "res"))
    table = Controller(spec)._render(state, SimpleNamespace(name="local", parallelism=lambda: 2))
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    header = next(line for line in text.splitlines() if "stem" in line)
    assert "preempted" in header and "total" in header, text
    all_row = next(line for line in text.splitlines() if line.strip("│ ").startswith("all"))
    cells = [c.strip() for c in all_row.strip().strip("│").split("│")]
    assert int(cells[-1]) == sum(int(c) for c in cells[1:-1]) == 2, text
