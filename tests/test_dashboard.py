"""The dashboard in Streamlit's AppTest on real results, an empty, a missing and a corrupt root."""

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from stability import store

APP = str(Path(__file__).parents[1] / "dashboard" / "app.py")
PAGES = ["views/overview.py", "views/edf.py", "views/lr_wd.py", "views/optimizer.py", "views/spikes.py",
         "views/runs.py"]


def _run(root, page=None):
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["results_root"] = str(root)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_fixture_has_a_diverged_run(dash_results):
    runs = store.load(dash_results).runs
    assert len(runs) == 12 and runs.status.eq("diverged").sum() >= 2


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_results(dash_results, page):
    at = _run(dash_results, page)
    assert at.title, page
    assert not at.warning, [w.value for w in at.warning]
    if page.endswith("edf.py"):
        assert len(at.dataframe) == 2  # summary + comparison
        summary = at.dataframe[0].value
        assert set(summary.stem) == {"patchify", "conv"} and summary.diverged.sum() >= 2
        at.radio(key="edf_mode").set_value("relative to the best of each group").run()
        assert not at.exception
    if page.endswith("runs.py"):
        assert len(at.dataframe[0].value) == 12


@pytest.mark.parametrize("page", PAGES)
def test_empty_missing_and_corrupt_roots_are_friendly(tmp_path, dash_results, page):
    empty = tmp_path / "empty"
    (empty / "runs").mkdir(parents=True)
    at = _run(empty, page)
    assert "no runs yet" in " ".join(i.value for i in at.info)
    at = _run(tmp_path / "missing", page)
    assert "does not exist" in " ".join(w.value for w in at.warning)
    at = _run(tmp_path, page)  # exists, but no runs/ folder
    assert "no `runs/` folder" in " ".join(w.value for w in at.warning)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(dash_results, corrupt)
    victim = next((corrupt / "runs" / "sweep=dash").glob("*.parquet"))
    victim.write_bytes(b"PAR1 garbage")
    at = _run(corrupt, page)
    assert "unreadable" in " ".join(e.value for e in at.error)
