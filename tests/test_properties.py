"""Property-based tests (Hypothesis) for the readers of untrusted input: the grid spec parser, the
job ledger reader and the result-file reader. Random and mutated inputs end in a one-line error
(``ConfigError``) or a correct result, never a traceback."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stability import store
from stability.errors import ConfigError

VALID = {
    "name": "prop", "results": "RESULTS",
    "base": {"dataset": "digits", "model": "vit_tiny", "epochs": 2, "steps_per_epoch": 3, "batch_size": 32},
    "space": {"stem": ["patchify", "conv"], "lr": {"loguniform": [1e-4, 1e-2]}, "wd": [0.0, 0.05]},
    "sampler": {"name": "random", "n": 2, "seed": 0},
    "seeds": [0, 1],
    "executor": {"kind": "local", "max_parallel": 2, "timeout_min": 20},
}
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["tpe", "random", "grid", "loguniform", "uniform", "int", "conv", "patchify",
                                     "adamw", "sgd", "local", "slurm", "debug", "vit_c_tiny", "cifar10", "packed",
                                     "imagefolder", "../x", "*", "waves", "-1", "1e400"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=10) | st.sampled_from(
                                                           ["loguniform", "uniform", "int", "lr", "wd", "n"]),
                                                           inner, max_size=4)), max_leaves=8)
PATHS = st.sampled_from([(k,) for k in VALID] + [(s, k) for s in ("base", "space", "sampler", "executor")
                                                 for k in VALID[s]] + [("base", "lr"), ("space", "epochs"),
                                                                       ("space", "optimizer"), ("sampler", "wave"),
                                                                       ("space", "lr", "loguniform"), ("extra",)])


def _mutate(spec: dict, path: tuple, value, delete: bool) -> dict:
    out = json.loads(json.dumps(spec))
    node = out
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return out


def _parse_and_plan(path: Path):
    from stability.grid.samplers import sampler_for
    from stability.grid.spec import load_spec
    from stability.grid.studies import open_storage

    spec = load_spec(path)
    return sampler_for(spec).plan_of_record(open_storage(spec, in_memory=True))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(PATHS, VALUES, st.booleans()), min_size=1, max_size=3))
def test_a_mutated_spec_is_planned_or_refused_in_one_line(tmp_path, mutations):
    spec = {**VALID, "results": str(tmp_path / "res")}
    for path, value, delete in mutations:
        spec = _mutate(spec, path, value, delete)
    f = tmp_path / "g.yaml"
    f.write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        plan = _parse_and_plan(f)
    except ConfigError as e:
        assert "\n" not in str(e).strip() and len(str(e)) < 2000, str(e)
    else:
        assert plan and all(r.run_id and r.config_json for r in plan)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode),
       st.integers(0, 10**6))
def test_random_bytes_as_a_spec_file_are_refused_in_one_line(tmp_path, junk, at):
    text = yaml.safe_dump({**VALID, "results": str(tmp_path / "res")}).encode()
    f = tmp_path / "g.yaml"
    f.write_bytes(text[:at % (len(text) + 1)] + junk)
    try:
        _parse_and_plan(f)
    except ConfigError as e:
        assert "\n" not in str(e).strip(), str(e)


RECORD = st.fixed_dictionaries({"run_id": st.text(max_size=8), "job_id": st.text(max_size=8) | st.integers(),
                                "kind": st.sampled_from(["local", "slurm"])})
LINES = st.one_of(RECORD.map(json.dumps), VALUES.map(json.dumps), st.text(max_size=40),
                  st.binary(max_size=40).map(lambda b: b.decode("latin1")))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(LINES, st.booleans()), max_size=12))
def test_the_ledger_reader_keeps_the_records_and_names_every_other_line(tmp_path, lines):
    from stability.grid.ledger import ledger_path, read_ledger

    d = tmp_path / "sweep"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    body = "".join(line.replace("\n", " ").replace("\r", " ") + "\n" for line, _ in lines)
    ledger_path(d).write_bytes(body.encode("utf-8", "surrogateescape"))
    problems: list[str] = []
    got = read_ledger(d, problems)
    want: dict[str, str] = {}
    for line, _ in lines:
        try:
            rec = json.loads(line.replace("\n", " ").replace("\r", " "))
        except ValueError:
            continue
        if (isinstance(rec, dict) and isinstance(rec.get("run_id"), str) and isinstance(rec.get("kind"), str)
                and isinstance(rec.get("job_id"), str | int) and not isinstance(rec.get("job_id"), bool)):
            want[rec["run_id"]] = str(rec["job_id"])
    assert {r: v["job_id"] for r, v in got.items()} == want
    assert all(isinstance(v["job_id"], str) for v in got.values())


@pytest.fixture(scope="module")
def good_result(tmp_path_factory):
    """A real finished run's four result files (a tiny run on digits)."""
    from stability.config import run_config
    from stability.trainer.train import train

    from .conftest import TINY

    root = tmp_path_factory.mktemp("good")
    train(run_config({**TINY, "epochs": 1, "steps_per_epoch": 3, "results": str(root), "sweep": "p"}))
    return root


def _frames(root: Path) -> tuple[dict[str, pd.DataFrame], list[str]]:
    errors: list[str] = []
    return {t: store.read_table(root, t, sweep="p", errors=errors) for t in store.TABLES}, errors


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.sampled_from(store.TABLES), how=st.sampled_from(["flip", "cut", "append", "junk"]),
       at=st.floats(0, 1), width=st.integers(1, 16), junk=st.binary(max_size=64))
def test_a_mutated_result_file_is_named_unreadable_or_read_exactly(tmp_path, good_result, table, how, at,
                                                                    width, junk):
    root = tmp_path / "r"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(good_result, root)
    (f,) = store.table_dir(root, table, "p").glob("*.parquet")
    raw = bytearray(f.read_bytes())
    i = int(at * (len(raw) - 1))
    if how == "flip":
        raw[i:i + width] = bytes(b ^ 0xFF for b in raw[i:i + width])
    elif how == "cut":
        raw = raw[:i]
    elif how == "append":
        raw += junk
    else:
        raw = bytearray(junk)
    f.write_bytes(bytes(raw))
    frames, errors = _frames(root)
    bad = [u for u, _ in store.unreadable(root, "p")]
    if bad:  # named as corrupt by the check every controller, status and report makes
        assert bad == [f], bad
        return
    assert not errors, errors  # a file the check passes reads without an error ...
    want, _ = _frames(good_result)
    pd.testing.assert_frame_equal(frames[table], want[table])  # ... and exactly as written


@settings(max_examples=150, deadline=None)
@given(field=st.sampled_from(["lr", "wd", "epochs", "batch_size", "label_smoothing", "grad_clip", "z_loss"]),
       value=st.one_of(st.integers(min_value=-10**500, max_value=10**500), st.floats(allow_nan=True),
                       st.booleans(), st.text(max_size=8)))
def test_any_scalar_for_a_number_field_is_taken_or_refused_in_one_line(field, value):
    """Every number a YAML file can hold (ints past a float's or int64's range, inf, NaN) for a
    numeric RunConfig field: a config, or a ConfigError naming the field; nothing else raised."""
    from stability.config import run_config

    try:
        cfg = run_config({field: value}, "f.yaml")
    except ConfigError as e:
        assert field in str(e) and "\n" not in str(e)
    else:  # a float field holds the nearest float (an int past 2**53 rounds)
        assert getattr(cfg, field) == (value if field in ("epochs", "batch_size") else float(value))
