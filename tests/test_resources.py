"""Shipped files (grid specs, the dashboard, Slurm profiles) are found through the package, from
any folder; a name that ships nothing is a one-line error listing what does ship. The wheel
itself is built, installed and run by .ci/installed_wheel.py."""

import re

import pytest

from stability import resources
from stability.errors import ConfigError
from stability.grid.spec import load_profile, load_spec

from .conftest import ROOT, run_cli

ANYWHERE = {"PYTHONPATH": str(ROOT)}  # this tree's package, run from a folder that is not a clone


def test_the_package_links_are_the_repository_folders():
    """The folders users edit are the ones the wheel copies (one copy of each file in git)."""
    for name, top in (("grids", "grids"), ("dashboard", "dashboard"), ("profiles", "slurm/profiles")):
        assert (ROOT / "stability" / name).is_symlink()
        assert resources.folder(name) == (ROOT / top).resolve()


def test_each_kind_is_found():
    assert resources.spec_path("smoke") == ROOT / "grids" / "smoke.yaml"
    assert load_spec(resources.spec_path("smoke")).name == "smoke"
    assert load_spec(resources.spec_path("cpu/quick/lr_wd")).name == "quick_lr_wd"
    assert resources.dashboard_app() == ROOT / "dashboard" / "app.py"
    assert resources.shipped("local", "profiles") == ROOT / "slurm" / "profiles" / "local.yaml"
    assert load_profile("local")["kind"] == "slurm"


def test_a_path_is_a_path_not_a_name(tmp_path):
    spec = tmp_path / "smoke"  # an existing file without a suffix is still the user's file
    spec.write_text((ROOT / "grids" / "smoke.yaml").read_text().replace("name: smoke", "name: mine"))
    assert resources.spec_path(str(spec)) == spec
    assert resources.spec_path(str(tmp_path / "missing.yaml")) == tmp_path / "missing.yaml"


@pytest.mark.parametrize("kind, name, field", [("grids", "nosuch", "spec"), ("grids", "cpu/nosuch", "spec"),
                                               ("profiles", "nosuch", "--profile")])
def test_a_bad_name_lists_the_shipped_ones(kind, name, field):
    with pytest.raises(ConfigError) as e:
        resources.shipped(name, kind)
    msg = str(e.value)
    assert msg.startswith(f"{field}: {name!r} is not") and "\n" not in msg
    assert ("smoke" in msg and "cpu/quick/lr_wd" in msg) if kind == "grids" else "example-gpu, local" in msg


def test_named_spec_and_profile_from_another_folder(tmp_path):
    p = run_cli("grid", "run", "smoke", "--profile", "local", "--dry-run", "--results", str(tmp_path / "r"),
                cwd=tmp_path, env=ANYWHERE)
    assert p.returncode == 0, p.stderr
    assert "8 runs" in p.stdout and "Nothing launched" in p.stdout
    p = run_cli("grid", "run", "nosuch", cwd=tmp_path, env=ANYWHERE)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("error: spec: 'nosuch' is not a grid spec YAML") and "smoke" in p.stderr
    p = run_cli("grid", "run", "smoke", "--profile", "nosuch", cwd=tmp_path, env=ANYWHERE)
    assert p.returncode == 2 and "known: example-gpu, local" in p.stderr, p.stderr
    # reproduce reads its studies from the package before it checks --only
    p = run_cli("reproduce", "--quick", "--only", "nosuch", cwd=tmp_path, env=ANYWHERE)
    assert p.returncode == 2 and "--only: unknown study 'nosuch'" in p.stderr, p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == []  # a dry run and errors write nothing


def test_nothing_finds_shipped_files_by_repository_path():
    """Only resources.py knows where shipped files live; the dashboard leaves sys.path alone."""
    pattern = re.compile(r"""(parent|parents\[\d\]).*["'](grids|dashboard|slurm|profiles)["']""")
    files = [*(ROOT / "stability").rglob("*.py"), *(ROOT / "dashboard").rglob("*.py")]
    assert len(files) > 40
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
           if pattern.search(line) or (p.is_relative_to(ROOT / "dashboard") and "sys.path" in line)]
    assert bad == []
