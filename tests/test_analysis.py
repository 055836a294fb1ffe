"""Analysis functions against hand-computed values."""

import json

import numpy as np
import pandas as pd
import pytest

from stability import analysis, store


def _runs(stem, errs, diverged=(), failed=0, **extra):
    rows = [{"run_id": f"{stem}{i}", "stem": stem, "status": "completed", "top1_err": e, **extra}
            for i, e in enumerate(errs)]
    rows += [{"run_id": f"{stem}d{i}", "stem": stem, "status": "diverged", "top1_err": np.nan, **extra}
             for i in range(len(diverged))]
    rows += [{"run_id": f"{stem}f{i}", "stem": stem, "status": "failed", "top1_err": np.nan, **extra}
             for i in range(failed)]
    return rows


def test_edf_points_by_hand():
    runs = pd.DataFrame(_runs("conv", [10, 20, 20], diverged=[1], failed=2))
    e = analysis.edf(runs, n_boot=0)
    # errors 10, 20, 20, 100 (diverged); failed runs are left out
    assert e.x.tolist() == [10, 20, 100]
    assert e.F.tolist() == [0.0, 0.25, 0.75]  # F(e) = fraction strictly below e
    assert e.F_right.tolist() == [0.25, 0.75, 1.0]
    assert set(e.n) == {4} and set(e.n_diverged) == {1}
    assert analysis.edf_at(np.array([10, 20, 20, 100]), np.array([0, 15, 20.5, 101])).tolist() == [0, .25, .75, 1]


def test_edf_relative_weights_and_band():
    runs = pd.DataFrame(_runs("p", [30, 32, 40]) + _runs("c", [25, 26]))
    rel = analysis.edf(runs, relative=True, n_boot=0)
    assert rel[rel.stem == "p"].x.tolist() == [0, 2, 10] and rel[rel.stem == "c"].x.tolist() == [0, 1]
    w = pd.DataFrame(_runs("p", [1, 2])).assign(w=[3.0, 1.0])
    assert analysis.edf(w, weights="w", n_boot=0).F_right.tolist() == [0.75, 1.0]
    band = analysis.edf(pd.DataFrame(_runs("p", list(range(20)))), n_boot=300, seed=1)
    assert (band.F_lo <= band.F_right + 1e-12).all() and (band.F_hi >= band.F_right - 1e-12).all()
    again = analysis.edf(pd.DataFrame(_runs("p", list(range(20)))), n_boot=300, seed=1)
    pd.testing.assert_frame_equal(band, again)  # seeded


def test_compare_ks_area_within():
    runs = pd.DataFrame(_runs("a", [1, 2, 3, 4]) + _runs("b", [3, 4, 5, 6]))
    c = analysis.compare(runs, by="stem").iloc[0]
    assert c.ks == pytest.approx(0.5) and c.ks_better == "a"  # sup |F_a - F_b|; a lies above
    assert 0.2 < c.ks_p <= 1.0  # 4 vs 4 runs: a shift of 2 is not significant
    assert c.area == pytest.approx(2.0)  # the EDFs are 2 points apart everywhere
    # within x of each group's own best (the paper's Δ view); Δ <= x
    assert c.within_1_a == 0.5 and c.within_1_b == 0.5 and c.within_5_b == 1.0
    assert c.within_1_diff == 0.0 and c.median_diff == pytest.approx(2.0)
    assert (c.best_a, c.median_a, c.worst_a) == (1, 2.5, 4)


def test_sweep_views():
    runs = pd.DataFrame([
        {"run_id": str(i), "stem": s, "optimizer": o, "epochs": ep, "lr": lr, "wd": 0.1,
         "status": "completed", "top1_err": err}
        for i, (s, o, ep, lr, err) in enumerate([
            ("patchify", "adamw", 10, 1e-3, 30), ("patchify", "sgd", 10, 1e-1, 40),
            ("conv", "adamw", 10, 1e-3, 25), ("conv", "sgd", 10, 1e-1, 26),
            ("conv", "adamw", 20, 1e-3, 20), ("patchify", "adamw", 20, 1e-3, 28)])])
    gap = analysis.optimizer_gap(runs).set_index(["stem", "epochs"])
    assert gap.loc[("patchify", 10), "gap_best"] == 10 and gap.loc[("conv", 10), "gap_best"] == 1
    # two image sizes are two strata, never one bar: the 32 px runs' SGD does not meet the 16 px AdamW
    sized = pd.concat([runs.assign(image_size=16), runs.assign(image_size=32, run_id=runs.run_id + "b",
                                                                top1_err=runs.top1_err + 50)])
    sized = sized[~((sized.image_size == 16) & (sized.optimizer == "sgd"))]
    two = analysis.optimizer_gap(sized).set_index(["image_size", "stem", "epochs"])
    assert two.loc[(16, "patchify", 10), "best_adamw"] == 30 and pd.isna(two.loc[(16, "patchify", 10), "best_sgd"])
    assert two.loc[(32, "patchify", 10), "gap_best"] == 10 and len(two) == 8  # 2 sizes x 4 (stem, length)
    tl = analysis.training_length(runs)  # optimizers vary: never pooled
    assert list(tl.columns[:3]) == ["optimizer", "stem", "epochs"]
    tl = tl.set_index(["optimizer", "stem", "epochs"])
    assert tl.loc[("adamw", "conv", 10), "best"] == 25 and tl.loc[("adamw", "conv", 10), "vs_longest"] == 5
    best = analysis.best_configs(runs, by=["stem"]).set_index("stem")
    assert best.loc["conv", "err"] == 20 and best.loc["patchify", "epochs"] == 20
    hm = analysis.lr_wd_heatmap(runs, bins=2)
    assert set(hm.stem) == {"conv", "patchify"} and hm.n.sum() == 6


def test_spikes_planted_and_lead():
    rng = np.random.default_rng(0)
    steps = np.arange(200)
    rows = []
    for layer, depth, planted in (("stem", 0, [60, 140]), ("blocks.0", 1, []), ("head", 2, [63, 145, 190])):
        v = 1 + 0.05 * rng.standard_normal(200)
        v[planted] = 8.0
        rows += [{"run_id": "r", "layer": layer, "depth": depth, "step": s, "grad_norm": x}
                 for s, x in zip(steps, v, strict=True)]
    g = pd.DataFrame(rows)
    marked = analysis.mark_spikes(g)
    found = {lay: sorted(d.step[d.spike]) for lay, d in marked.groupby("layer")}
    assert found == {"stem": [60, 140], "blocks.0": [], "head": [63, 145, 190]}
    counts = analysis.spike_counts(g).set_index("layer").n_spikes.to_dict()
    assert counts == {"stem": 2, "blocks.0": 0, "head": 3}
    lead = analysis.first_layer_lead(g, max_lag=50).iloc[0]
    # head spikes at 63, 145, 190 follow stem spikes at 60, 140 by 3, 5 and 50 steps
    assert (lead.n_first, lead.n_last, lead.led, lead.median_lead) == (2, 3, 1.0, 5.0)
    assert lead.baseline < lead.led and lead.p < 0.05
    assert analysis.first_layer_lead(g, max_lag=10).iloc[0].led == pytest.approx(2 / 3)
    # no history -> no verdict; non-finite values are never spikes
    assert not analysis.detect_spikes([1, 100, np.nan, np.inf]).any()


def test_spike_series_of_two_sweeps_sharing_a_run_id_are_judged_apart():
    rng = np.random.default_rng(1)
    rows = []
    for sweep, planted in (("s1", [80]), ("s2", [])):
        v = 1 + 0.05 * rng.standard_normal(120)
        v[planted] = 9.0
        rows += [{"sweep": sweep, "run_id": "same", "layer": lay, "depth": d, "step": s, "grad_norm": x}
                 for lay, d in (("stem", 0), ("head", 1)) for s, x in enumerate(v)]
    g = pd.DataFrame(rows)
    marked = analysis.mark_spikes(g)
    assert marked.groupby("sweep").spike.sum().to_dict() == {"s1": 2, "s2": 0}
    counts = analysis.spike_counts(g)
    assert len(counts) == 4 and set(counts.n_points) == {120}
    lead = analysis.first_layer_lead(g)
    assert lead.sweep.tolist() == ["s1", "s2"] and lead.n_last.tolist() == [1, 0]


def test_downsample_keeps_every_spike():
    n = 50_000
    v = np.ones(n)
    v[[123, 40_000]] = 50
    df = pd.DataFrame({"run_id": "r", "layer": "stem", "step": np.arange(n), "grad_norm": v,
                       "spike": np.isin(np.arange(n), [123, 40_000])})
    small = analysis.downsample(df, max_points=500)
    assert len(small) <= 600 and {123, 40_000} <= set(small.step)
    assert small.step.is_monotonic_increasing


def _ad_hoc_runs() -> pd.DataFrame:
    """One sweep of ad-hoc runs: both stems at 32 px and at 17 px, one patchify run with qk-norm."""
    import json

    rows = []
    for i, (stem, px, qk) in enumerate([("patchify", 32, False), ("conv", 32, False), ("patchify", 17, False),
                                        ("conv", 17, False), ("patchify", 32, True), ("conv", 32, False)]):
        cfg = {"model": f"vit_{stem[0]}_tiny", "stem": stem, "image_size": px, "qk_norm": qk, "lr": 1e-3 * (i + 1),
               "wd": 0.05, "seed": i, "label_smoothing": 0.1, "num_workers": i}  # num_workers: execution, never a stratum
        rows.append({"run_id": f"r{i}", "sweep": "default", "status": "completed", "model": cfg["model"],
                     "stem": stem, "optimizer": "adamw", "dataset": "digits", "epochs": 1, "batch_size": 64,
                     "warmup_epochs": 1.0, "lr": cfg["lr"], "wd": 0.05, "seed": i, "top1_err": 10.0 + 30 * (px == 17),
                     "config_json": json.dumps(cfg)})
    return pd.DataFrame(rows)


def test_runs_of_other_image_sizes_or_fixes_are_strata_never_pooled():
    """Every config field that varies (besides lr, wd, seed and the execution fields) is a
    stratum of the default grouping, as the design axes are; so is the fix."""
    runs = _ad_hoc_runs()
    assert analysis.strata(runs) == ["fix", "image_size"]
    s = analysis.summary(runs)
    assert len(s) == 5 and set(s.image_size) == {17, 32} and (s["pooled"] == "").all(), s
    assert s.loc[s.image_size.eq(17), "median"].eq(40.0).all() and s.loc[s.image_size.eq(32), "median"].eq(10.0).all()
    cmp = analysis.compare(runs)
    assert sorted(zip(cmp.fix, cmp.image_size, strict=True)) == [("none", 17), ("none", 32)]
    assert sorted(cmp.n_a + cmp.n_b) == [2, 3]  # 17 px: one run a stem; 32 px without a fix: three
    # a grouping given explicitly that leaves them out says so
    assert analysis.pooled(runs, ["stem"]) == ["fix", "image_size"]
    plain = [json.loads(c)["image_size"] == 32 and not json.loads(c)["qk_norm"] for c in runs.config_json]
    assert analysis.strata(runs[plain]) == []
    # a field left at None (the dataset's own size) is a stratum of its own, never dropped by a groupby
    unset = runs.assign(config_json=[c.replace('"image_size": 17', '"image_size": null') for c in runs.config_json])
    s = analysis.summary(unset)
    assert s.runs.sum() == len(runs) and set(s.image_size) == {"none", "32"}, s
    # two z-loss coefficients are two strata, not one "z_loss" fix; a tuple default (betas) is
    # its config_json list, not a difference
    z = runs.assign(config_json=[json.dumps({**json.loads(c), "z_loss": v, "betas": [0.9, 0.999]})
                                 for c, v in zip(runs.config_json, [0, 1e-4, 0, 1e-3, 0, 1e-4], strict=True)])
    assert analysis.strata(z) == ["fix", "z_loss", "image_size"]
    by = analysis.default_by(analysis.with_design(runs))
    assert analysis.outcomes(runs, by).shape[0] == 5  # the raw frame: its design columns are found


def test_runs_of_one_sweep_on_other_data_are_strata_never_pooled():
    """data_root is not in the run id: a sweep rerun with another dataset's data_root mixes two
    datasets under one sweep name. The rows record what the data held, and runs that should share
    their data (same sweep, dataset, test split) but recorded other data are the ``data`` stratum;
    data that differs on purpose (sweeps, datasets, test splits) is a stratum already, and rows
    older than the record (null) split nothing by themselves."""
    G = analysis.grouping
    A, B = "10 classes, 1497 train / 300 val", "10 classes, 60 train / 10 val"
    plain = _ad_hoc_runs()
    plain = plain[[json.loads(c)["image_size"] == 32 and not json.loads(c)["qk_norm"] for c in plain.config_json]]
    plain = pd.concat([plain, plain.assign(run_id=plain.run_id + "b", seed=plain.seed + 10)], ignore_index=True)

    def on(frame, shapes):
        return frame.assign(**dict(zip(G.DATA_COLUMNS, zip(*shapes, strict=True), strict=True)))

    runs = on(plain, [(10, 1497, 300)] * 3 + [(10, 60, 10)] * 3)
    assert analysis.strata(runs) == ["data"]
    assert sorted(set(analysis.with_design(runs)["data"])) == [A, B]
    s = analysis.summary(runs)
    assert len(s) == 4 and (s["pooled"] == "").all(), s  # each stem on each data
    assert analysis.pooled(runs, ["stem"]) == ["data"]
    assert set(analysis.compare(runs)["data"]) == {A, B}  # pairs on the same data only
    mix = G.data_mix(runs)
    assert mix[["data", "runs"]].values.tolist() == [[A, 3], [B, 3]]
    assert mix[list(store.DATA_COLUMNS)].astype(int).values.tolist() == [[10, 1497, 300], [10, 60, 10]]
    assert G.mixed_data_note(mix).startswith(f"runs trained on different data: {A} (3 runs); {B} (3 runs)")
    # the same shapes in two sweeps: the sweep is the stratum, no "data" column, nothing to say
    two = runs.assign(sweep=["a"] * 3 + ["b"] * 3)
    assert analysis.strata(two) == ["sweep"] and "data" not in analysis.with_design(two)
    assert G.data_mix(two).empty and G.mixed_data_note(G.data_mix(two)) is None
    # ... nor in one index-duplicated frame (pd.concat without ignore_index)
    assert analysis.strata(pd.concat([two.iloc[:3], two.iloc[3:].set_axis(two.index[:3])])) == ["sweep"]
    # older rows (no record) beside recorded ones of one shape: nothing to split
    old = runs.assign(data_classes=[None] * 3 + [10] * 3, train_images=[None] * 3 + [60] * 3,
                      val_images=[None] * 3 + [10] * 3)
    assert analysis.strata(old) == []
    # ... and they stay whole when another sweep mixes data: only that sweep gets the stratum
    both = pd.concat([old.assign(sweep="a"), runs.assign(sweep="b", run_id=runs.run_id + "x")], ignore_index=True)
    d = analysis.with_design(both)
    assert set(d[d.sweep.eq("a")]["data"]) == {B} and set(d[d.sweep.eq("b")]["data"]) == {A, B}
    assert set(analysis.compare(both)["sweep"]) == {"a", "b"}  # sweep a is still compared
    assert G.data_mix(both)[["sweep", "data", "runs"]].values.tolist() == [["b", A, 3], ["b", B, 3]]
    assert G.data_mix(both[both.sweep.eq("a")]).empty  # a selection of sweep a: nothing to say
    # data that changes with the optimizer is still a stratum (the optimizer does not explain it)
    opt = runs.assign(optimizer=["adamw"] * 3 + ["sgd"] * 3)
    assert analysis.strata(opt) == ["optimizer", "data"]
    # on purpose: another dataset, or a test split held out, is its own stratum, never "data"
    ds = runs.assign(dataset=["digits"] * 3 + ["cifar10"] * 3)
    assert analysis.strata(ds) == ["dataset"] and G.data_mix(ds).empty
    split = runs.assign(config_json=[json.dumps({**json.loads(c), "test_split": t})
                                     for c, t in zip(runs.config_json, [0] * 3 + [300] * 3, strict=True)])
    assert analysis.strata(split) == ["test_split"] and G.data_mix(split).empty
    # a failed run that recorded other data (a data_root it never trained on) splits nothing
    failed = on(plain, [(10, 1497, 300)] * 5 + [(20, 1, 1)]).assign(status=["completed"] * 5 + ["failed"])
    assert analysis.strata(failed) == [] and G.data_mix(failed).empty
    # two sweeps, one mixed, named per sweep in the note; a sweepless frame groups by dataset
    note = G.mixed_data_note(G.data_mix(pd.concat([runs.assign(sweep="x"), runs.assign(sweep="y")], ignore_index=True)))
    assert note.startswith(f"runs trained on different data: sweep x: {A} (3 runs); {B} (3 runs) | sweep y: "), note


def test_every_runs_reader_takes_an_empty_runs_table_and_names_a_wrong_one():
    """Every public analysis function of a runs (or grad_norms) table returns on that table with
    no rows (a root with no runs yet), and refuses a frame that is not one in words (a notebook
    passing ``res.epochs`` or ``pd.DataFrame()``), not with a bare KeyError."""
    import inspect

    # they add or name columns of any frame (their doctests pass a few columns): nothing to refuse
    COLUMN_HELPERS = {"default_by", "fixed_axes", "strata", "with_design", "with_fix", "with_size", "chance_error"}
    empty = {t: store.SCHEMAS[t].empty_table().to_pandas() for t in ("runs", "grad_norms")}
    checked = []
    for name in analysis.__all__:
        f = getattr(analysis, name)
        if not inspect.isfunction(f):
            continue
        params = inspect.signature(f).parameters
        first = next(iter(params), None)
        table = {"runs": "runs", "grad_norms": "grad_norms"}.get(first)
        required = [p for p in params.values() if p.default is p.empty and p.kind == p.POSITIONAL_OR_KEYWORD]
        if table is None or len(required) > 1 or name in COLUMN_HELPERS:
            continue
        f(empty[table])
        with pytest.raises(ValueError, match=rf"not a {table} table: no column"):
            f(pd.DataFrame({"epoch": [1], "run_id": ["r"]}))
        checked.append(name)
    assert {"compare", "edf", "stem_verdicts", "summary", "first_layer_lead", "spike_counts"} <= set(checked), checked


def test_a_completed_run_without_the_measurement_is_left_out_not_scored_at_100():
    """A completed run with no value in the chosen column (no test split, no EMA) did not measure
    it: it is no 100 % run; a column no completed run filled, or no column at all, is an error
    in words (it read as every run at 100 and 'more runs per stem could tell')."""
    runs = pd.DataFrame(_runs("conv", [20, 30], diverged=[1]) + _runs("patchify", [25, 35], diverged=[1]))
    runs["test_top1_err"] = np.nan
    with pytest.raises(ValueError, match=r"value='test_top1_err' is empty in every completed run \(4\)"):
        analysis.edf(runs, value="test_top1_err")
    with pytest.raises(ValueError, match=r"value='nope': not a column of the runs table; its error columns: "
                                         r"top1_err, test_top1_err"):
        analysis.compare(runs, value="nope")
    runs.loc[0, "top1_err"] = np.nan  # one completed conv run that did not measure it
    e = analysis.errors(runs)
    assert "conv0" not in set(e.run_id) and len(e) == len(runs) - 1
    assert e.set_index("run_id").loc["convd0", "err"] == 100.0  # the diverged run stays, at 100


def test_importance_of_a_group_whose_errors_are_all_equal_is_none_not_a_crash():
    """Every run diverged (a normal outcome of a stability study): fANOVA has no variance to split
    (optuna raised 'zero total variance'); that group gets no rows, the others theirs."""
    rows = [{"run_id": f"{s}{i}", "stem": s, "status": "diverged" if s == "patchify" else "completed",
             "top1_err": None if s == "patchify" else 10.0 + 5 * i, "lr": 10.0 ** -i, "wd": 0.05} for s in
            ("patchify", "conv") for i in range(6)]
    imp = analysis.hparam_importance(pd.DataFrame(rows))
    assert set(imp.stem) == {"conv"} and imp.importance.sum() == pytest.approx(1.0)


def test_odd_but_plausible_notebook_inputs_get_words_or_the_columns():
    """One stem, no runs, a wrong metric, a Table where the runs are meant: each answered in words
    or with an empty frame that still has the columns a notebook indexes."""
    one = pd.DataFrame(_runs("conv", [10, 20, 30]))
    cmp = analysis.compare(one)
    assert cmp.empty and {"a", "b", "median_diff", "ks_p"} <= set(cmp.columns)
    assert analysis.stem_verdicts(one).empty
    empty = store.SCHEMAS["runs"].empty_table().to_pandas()
    assert analysis.lr_sensitivity(empty).note == "No runs."  # not "written before they were recorded"
    assert analysis.attn_logit_auc(empty, store.SCHEMAS["grad_norms"].empty_table().to_pandas()).note == "No runs."
    with pytest.raises(ValueError, match="metric='err': allowed 'loss', 'top1_err'"):
        analysis.lr_sensitivity(one, metric="err")
    with pytest.raises(ValueError, match="not a runs table: a Table; pass store.load"):
        analysis.sensitivity_diff(analysis.lr_sensitivity(empty))


def test_a_stratum_label_names_every_number_by_its_axis():
    """Panel titles, Overview lines and verdict bullets name a stratum the one way: the sweep,
    optimizer, stem and dataset bare, epochs as a count, any other axis by name."""
    text = analysis.stratum_text({"sweep": "smoke", "optimizer": "adamw", "epochs": 5.0, "warmup_epochs": 0.5,
                                  "trace_every": 2})
    assert text == "smoke · adamw · 5 ep · warmup_epochs 0.5 · trace_every 2"
    assert analysis.stratum_text({"epochs": 1600.0}) == "1600 ep" and analysis.stratum_text({}) == ""
