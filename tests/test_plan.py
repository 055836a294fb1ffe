import io
import json

import pandas as pd
import pytest

from stability import store
from stability.config import config_json, run_config
from stability.grid.plan import plan_frame, plan_from_frame
from stability.grid.samplers import make_plan
from stability.grid.spec import load_spec
from stability.grid.studies import ask_wave, open_storage, tell

from .conftest import write_spec

SPACE = {"stem": ["patchify", "conv"], "optimizer": ["adamw", "sgd"],
         "lr": {"loguniform": [1e-4, 1e-1]}, "wd": {"loguniform": [1e-5, 1e-1]}}


def _spec(tmp_path, sampler, space=SPACE, seeds=None):
    return load_spec(write_spec(tmp_path / "g.yaml", "p", tmp_path / "res", space=space,
                                sampler=sampler, seeds=seeds))


def _bytes(plan):
    buf = io.BytesIO()
    plan_frame(plan).to_parquet(buf, index=False)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["random", "sobol", "grid"])
def test_plan_is_deterministic_and_seed_dependent(tmp_path, name):
    spec = _spec(tmp_path, {"name": name, "n": 4, "seed": 1})
    assert _bytes(make_plan(spec)) == _bytes(make_plan(_spec(tmp_path, {"name": name, "n": 4, "seed": 1})))
    if name != "grid":  # a grid's points don't depend on the seed, only their order
        assert _bytes(make_plan(spec)) != _bytes(make_plan(_spec(tmp_path, {"name": name, "n": 4, "seed": 2})))


@pytest.mark.parametrize("name", ["random", "sobol", "grid", "tpe"])
def test_no_duplicate_configs_and_paired_points(tmp_path, name):
    spec = _spec(tmp_path, {"name": name, "n": 4, "seed": 0}, seeds=[0, 1])
    plan = make_plan(spec) if name != "tpe" else ask_wave(spec, [], {}, open_storage(spec, in_memory=True))
    ids = [r.run_id for r in plan]
    assert len(ids) == len(set(ids))
    cfgs = [json.dumps(r.config.to_dict(), sort_keys=True) for r in plan]
    assert len(cfgs) == len(set(cfgs))
    per_cell = 16 if name == "grid" else 4  # grid: 4 values per range axis, crossed
    assert len(plan) == 2 * 2 * per_cell * 2  # optimizer x stem x points x seeds
    df = pd.DataFrame([{**r.config.to_dict(), "cell": r.cell} for r in plan])
    for cell, g in df.groupby("cell"):
        pts = {s: sorted(zip(x.lr, x.wd, strict=True)) for s, x in g.groupby("stem")}
        if name == "tpe":  # tpe searches each stem's study on its own: not paired
            continue
        assert pts["patchify"] == pts["conv"], cell  # the same (lr, wd) for both stems
        assert g.lr.between(1e-4, 1e-1).all() and g.wd.between(1e-5, 1e-1).all()
    cells = df.groupby("cell").apply(lambda g: tuple(sorted(g.lr)), include_groups=False)
    if name != "grid":  # a grid is the same grid in every cell
        assert cells.nunique() == 2  # adamw and sgd cells are sampled independently


def test_grid_sampler_values_and_int_ranges(tmp_path):
    spec = _spec(tmp_path, {"name": "grid", "n": 3, "seed": 0},
                 space={"lr": {"loguniform": [1e-3, 1e-1]}, "synthetic_size": {"int": [1, 3]}})
    plan = make_plan(spec)
    lrs = sorted({round(r.config.lr, 9) for r in plan})
    assert lrs == pytest.approx([1e-3, 1e-2, 1e-1])
    assert sorted({r.config.synthetic_size for r in plan}) == [1, 2, 3] and len(plan) == 9


@pytest.mark.parametrize("name", ["random", "sobol", "grid", "tpe"])
def test_templated_plan_equals_validated_configs(tmp_path, name):
    """The fast path (string substitution into canonical JSON) gives exactly the run ids and
    plan JSON that validating each config would, for float, log and int ranges and aliases."""
    space = {"stem": ["patchify", "conv"], "optimizer": ["adamw", "sgd"], "lr": {"loguniform": [1e-4, 1e-1]},
             "label_smoothing": {"uniform": [0.0, 0.3]}, "warmup_epochs": {"uniform": [0, 1]},
             "batch_size": {"int": [8, 64]}}
    spec = _spec(tmp_path, {"name": name, "n": 3, "seed": 0}, space=space, seeds=[0, 7])
    plan = make_plan(spec) if name != "tpe" else ask_wave(spec, [], {}, open_storage(spec, in_memory=True))
    assert len(plan) >= 2 * 2 * 3 * 2
    for r in plan:
        cfg = run_config(json.loads(r.config_json))  # full validation, no shortcut
        assert (r.run_id, r.config_json) == (cfg.run_id, config_json(cfg))
        assert (r.optimizer, r.epochs, r.seed) == (cfg.optimizer, cfg.epochs, cfg.seed)
        assert r.config == cfg
    again = plan_from_frame(pd.read_parquet(io.BytesIO(_bytes(plan))))
    assert again == plan


def test_tpe_waves_use_told_results(tmp_path):
    space = {"stem": ["conv"], "lr": {"loguniform": [1e-4, 1e-1]}}
    sampler = {"name": "tpe", "n": 24, "wave": 12, "seed": 0}

    def second_wave(best_high: bool):
        d = tmp_path / str(best_high)
        d.mkdir()
        spec = _spec(d, sampler, space=space)
        storage = open_storage(spec, in_memory=True)
        first = ask_wave(spec, [], {}, storage)
        assert len(first) == 12 and not ask_wave(spec, first, {}, storage)  # wave still open
        for r in first:  # error falls (or rises) with lr: tpe should follow it
            err = 100 * (1 - r.config.lr / 0.1) if best_high else 100 * r.config.lr / 0.1
            store.write_run(spec.results, spec.name, r.run_id, {"runs": [{
                "run_id": r.run_id, "status": "completed", "top1_err": err}]})
        runs = store.read_table(spec.results, "runs", spec.name)
        assert tell(spec, first, runs, storage) == 12
        assert tell(spec, first, runs, storage) == 0  # idempotent
        statuses = dict(zip(runs.run_id, runs.status, strict=True))
        second = ask_wave(spec, first, statuses, storage)
        assert len(second) == 12 and {r.wave for r in second} == {1}
        assert not {r.run_id for r in second} & {r.run_id for r in first}
        return sorted(r.config.lr for r in second)

    high, low = second_wave(True), second_wave(False)
    import statistics
    assert statistics.median(high) > statistics.median(low)  # it went where the results pointed


@pytest.mark.parametrize("name", ["random", "sobol"])
def test_vectorised_draws_equal_optunas_samplers(name):
    from stability.grid.plan import optuna_points, points_from_unit
    from stability.grid.samplers import SAMPLERS
    from stability.grid.spec import Range

    ranges = {"lr": Range("loguniform", 1e-4, 1e-2), "wd": Range("loguniform", 1e-3, 1.0),
              "momentum": Range("uniform", 0.5, 0.95)}
    fast = points_from_unit(ranges, SAMPLERS[name].unit_draws(17, len(ranges), 5))
    slow = optuna_points(ranges, *SAMPLERS[name].optuna_sampler(ranges, 17, 5))
    assert [p.keys() for p in fast] == [p.keys() for p in slow]
    for a, b in zip(fast, slow, strict=True):
        assert a == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("space", [None, {"stem": ["patchify", "conv"], "batch_size": {"int": [64, 4096]}}])
def test_a_batch_larger_than_the_training_set_is_refused_when_the_plan_is_made(tmp_path, space):
    """Each run would start and fail alone (the trainer's "no full batch"): the plan refuses the
    sweep, naming the spec and batch_size, before any run starts — a fixed batch or a sampled one."""
    from stability.errors import ConfigError
    from stability.grid.plan import check_data

    spec = load_spec(write_spec(tmp_path / "g.yaml", "p", tmp_path / "res", base={"batch_size": 4096},
                                space=space, sampler={"name": "grid"} if space is None else None))
    with pytest.raises(ConfigError, match=r"g\.yaml: batch_size [\d,]+ exceeds the 1,497 training images of digits"):
        check_data(spec, make_plan(spec))  # what plan_of_record does before anything is submitted
    ok = load_spec(write_spec(tmp_path / "h.yaml", "q", tmp_path / "res", base={"batch_size": 1497}))
    check_data(ok, make_plan(ok))
