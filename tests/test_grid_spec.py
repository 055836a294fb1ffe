import os

import pytest
import yaml

from stability.grid.spec import load_spec

from .conftest import run_cli, write_spec


def _case(tmp_path, mutate):
    p = write_spec(tmp_path / "g.yaml", "g", tmp_path / "results")
    d = yaml.safe_load(p.read_text())
    mutate(d)
    p.write_text(yaml.safe_dump(d))
    return p


CASES = [
    ("unknown top key", lambda d: d.update(sampler_name="x"), ["sampler_name", "unknown key", "allowed"]),
    ("unknown base key", lambda d: d["base"].update(learning_rate=1), ["base.learning_rate", "allowed"]),
    ("unknown space key", lambda d: d["space"].update(foo=[1]), ["space.foo", "allowed"]),
    ("wrong type in base", lambda d: d["base"].update(epochs="many"), ["base", "epochs", "integer"]),
    ("lo > hi", lambda d: d["space"].update(lr={"loguniform": [1e-2, 1e-4]}), ["space.lr.loguniform", "lo > hi"]),
    ("log range <= 0", lambda d: d["space"].update(lr={"loguniform": [0, 1e-2]}), ["space.lr.loguniform", "lo > 0"]),
    ("unknown range kind", lambda d: d["space"].update(lr={"normal": [0, 1]}), ["space.lr", "loguniform"]),
    ("empty list", lambda d: d["space"].update(stem=[]), ["space.stem", "empty"]),
    ("bad list value", lambda d: d["space"].update(stem=["patchify", "convy"]), ["space.stem[1]", "patchify, conv"]),
    ("unknown model", lambda d: d["base"].update(model="vit_giant"), ["base", "model", "allowed"]),
    ("unknown dataset", lambda d: (d["base"].pop("dataset"), d["space"].update(dataset=["digits", "mnist"])), ["space.dataset[1]", "digits"]),
    ("unknown sampler", lambda d: d["sampler"].update(name="cmaes"), ["sampler.name", "sobol"]),
    ("n <= 0", lambda d: d["sampler"].update(n=0), ["sampler.n", ">= 1"]),
    ("unknown executor", lambda d: d["executor"].update(kind="kubernetes"), ["executor.kind", "slurm"]),
    ("unknown executor key", lambda d: d["executor"].update(gpus=1), ["executor.gpus", "allowed"]),
    ("key in base and space", lambda d: d["base"].update(lr=0.1), ["space.lr", "also set in base"]),
    ("reserved key", lambda d: d["base"].update(seed=3), ["base.seed", "seeds"]),
    ("bad seeds", lambda d: d.update(seeds=[]), ["seeds", "non-empty"]),
    ("bad name", lambda d: d.update(name="a/b"), ["name"]),
    ("range on a string field", lambda d: d["space"].update(optimizer={"uniform": [0, 1]}), ["space.optimizer", "not numeric"]),
]


@pytest.mark.parametrize("label,mutate,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_exits_2_one_line_nothing_written(tmp_path, label, mutate, needles):
    p = _case(tmp_path, mutate)
    for args in (["grid", "run", str(p)], ["grid", "run", str(p), "--dry-run"], ["grid", "status", str(p)]):
        out = run_cli(*args)
        assert out.returncode == 2, (label, out.stderr)
        line = out.stderr.strip()
        assert len(line.splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
        assert line.startswith("error: ") and str(p) in line, line
        for n in needles:
            assert n in line, (n, line)
    assert not (tmp_path / "results").exists()


def test_missing_and_broken_files_and_flags(tmp_path):
    for args, needle in [
        (["grid", "run", str(tmp_path / "nope.yaml")], "file not found"),
        (["grid", "run", str(tmp_path / "g.yaml"), "--retry", "all"], "--retry"),
        (["grid", "run", str(tmp_path / "g.yaml"), "--profile", "nosuch"], "--profile"),
        (["grid", "run", str(tmp_path / "g.yaml"), "--executor", "cloud"], "executor.kind"),
        (["grid", "run", str(tmp_path / "g.yaml"), "--max-parallel", "x"], "max-parallel"),
        (["grid", "run", str(tmp_path / "g.yaml"), "--max-parallel", "0"], "executor.max_parallel"),
        (["grid", "run", str(tmp_path / "g.yaml"), "--profile", str(tmp_path / "p.yaml")], "executor.timeout_min"),
    ]:
        write_spec(tmp_path / "g.yaml", "g", tmp_path / "results")
        (tmp_path / "p.yaml").write_text("kind: slurm\ntimeout_min: -5\n")
        out = run_cli(*args)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (args, out.stderr)
        assert needle in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "bad.yaml").write_text("name: x\nspace: {lr: [1, 2}\n")
    out = run_cli("grid", "run", str(tmp_path / "bad.yaml"))
    assert out.returncode == 2 and "not valid YAML" in out.stderr
    assert not (tmp_path / "results").exists()


def test_shipped_grids_are_valid():
    from pathlib import Path

    grids = sorted(Path(__file__).parents[1].glob("grids/**/*.yaml"))
    assert len(grids) >= 9
    for g in grids:
        spec = load_spec(g)
        assert spec.name and spec.sampler.n >= 1


@pytest.mark.parametrize("field,value,needle", [
    ("cpus_per_task", -4, ">= 1"), ("cpus_per_task", 0, ">= 1"), ("gpus_per_node", -1, ">= 0"),
    ("gpus_per_task", -1, ">= 0"), ("mem_gb", -5, ">= 1/1024"), ("mem_gb", 0.0001, ">= 1/1024"), ("mem_gb", "lots", "expected a number"), ("array_size", 0, ">= 1"),
    ("signal_delay_s", -1, ">= 0")])
def test_executor_resources_are_checked(field, value, needle):
    from stability.errors import ConfigError
    from stability.grid.spec import parse_spec

    with pytest.raises(ConfigError) as e:
        parse_spec({"name": "g", "executor": {field: value}}, "g.yaml")
    assert str(e.value).startswith(f"g.yaml: executor.{field}:") and needle in str(e.value), str(e.value)
    assert parse_spec({"name": "g", "executor": {"gpus_per_node": 0, "mem_gb": 0.5}}, "g.yaml").executor.mem_gb == 0.5


def test_a_bad_profile_field_names_the_profile_not_the_spec(tmp_path):
    p = write_spec(tmp_path / "g.yaml", "g", tmp_path / "results")
    for text, needle in (("partiton: gpu\n", "unknown key 'executor.partiton'"),
                         ("cpus_per_task: -4\n", "executor.cpus_per_task: must be >= 1")):
        (tmp_path / "prof.yaml").write_text(text)
        out = run_cli("grid", "run", str(p), "--dry-run", "--profile", str(tmp_path / "prof.yaml"))
        assert out.returncode == 2 and out.stderr.startswith(f"error: {tmp_path / 'prof.yaml'}: {needle}"), out.stderr
    assert not (tmp_path / "results").exists()


def test_an_empty_spec_or_one_without_a_name_says_what_is_missing():
    from stability.errors import ConfigError
    from stability.grid.spec import parse_spec

    for d, needle in ((None, "spec: the file is empty (a spec is a mapping of name, base"),
                      ({"base": {"epochs": 1}}, "name: missing: every spec names its sweep")):
        with pytest.raises(ConfigError) as e:
            parse_spec(d, "g.yaml")
        assert str(e.value).startswith(f"g.yaml: {needle}"), str(e.value)


@pytest.mark.parametrize("doc", ["README.md", "docs/ARCHITECTURE.md", "stability/grid/spec.py"])
def test_every_whole_spec_the_docs_show_parses(doc, tmp_path):
    """A spec a reader copies from the docs must run: each ```yaml block with a name and a space
    (the whole-spec examples; fragments like ``base: {..., pruner: default}`` are not specs)."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / doc).read_text()
    blocks = [b.split("```")[0] for b in text.split("```yaml\n")[1:]]
    specs = [b for b in blocks if "\nspace:" in b and b.startswith("name:")]
    assert specs, f"{doc} shows no whole grid spec (the test would check nothing)"
    for i, block in enumerate(specs):
        p = tmp_path / f"{i}.yaml"
        p.write_text(block)
        assert load_spec(p).space, f"{doc} spec {i}"


def test_the_dry_run_shows_the_executor_the_spec_and_profile_make(tmp_path):
    p = write_spec(tmp_path / "g.yaml", "g", tmp_path / "results", executor={"kind": "local", "max_parallel": 3})
    out = run_cli("grid", "run", str(p), "--dry-run")
    assert "executor: local: max_parallel=3, timeout_min=240" in out.stdout, out.stdout
    (tmp_path / "prof.yaml").write_text("kind: slurm\npartition: gpu\nmem_gb: 8\nextra: {exclusive: true}\n")
    out = run_cli("grid", "run", str(p), "--dry-run", "--profile", str(tmp_path / "prof.yaml"))
    line = next(x for x in out.stdout.splitlines() if x.startswith("executor:"))
    assert line.startswith("executor: slurm: array_parallelism=64, timeout_min=240, partition=gpu,") and \
        "mem_gb=8.0" in line and "extra={'exclusive': True}" in line and "max_parallel" not in line, line
    assert not (tmp_path / "results").exists()


def test_kind_auto_says_where_it_resolved_and_why(tmp_path, monkeypatch):
    """A copied README spec (kind auto) on a machine with sbatch goes to Slurm: the dry run says
    so and why, and how to run here instead."""
    from stability.grid import kinds
    from stability.grid.spec import executor_text

    p = write_spec(tmp_path / "g.yaml", "g", tmp_path / "results", executor={"kind": "auto"})
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (fake / "sbatch").chmod(0o755)
    out = run_cli("grid", "run", str(p), "--dry-run", env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr
    want = "executor: slurm (kind auto: sbatch is on PATH; kind: local runs here): "
    assert any(x.startswith(want) for x in out.stdout.splitlines()), out.stdout
    monkeypatch.setattr(kinds.shutil, "which", lambda name: None)
    assert executor_text(load_spec(p)).startswith("executor: local (kind auto: no sbatch on PATH): ")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("key,value", [("space", []), ("base", 0), ("executor", ""), ("sampler", []), ("base", False)])
def test_a_section_given_as_an_empty_non_mapping_is_refused_not_taken_as_empty(tmp_path, key, value):
    from stability.errors import ConfigError

    p = write_spec(tmp_path / "g.yaml", "g", tmp_path / "results")
    d = yaml.safe_load(p.read_text())
    d[key] = value
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match=rf"g.yaml: {key}: expected a mapping, got {type(value).__name__}"):
        load_spec(p)
    d[key] = None  # null: the section's defaults
    p.write_text(yaml.safe_dump(d))
    assert load_spec(p).name == "g"
