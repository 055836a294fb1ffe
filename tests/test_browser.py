"""The dashboard in a real browser: ``stability dashboard`` + headless Debian Chromium via
Playwright, clicked through as an analyst would (sidebar twice per entry, every slider to its
extremes, a shared URL). Screenshots of every page land in tests/artifacts/ (ignored by git)."""

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from stability import store
from stability.trainer.distributed import free_port

ROOT = Path(__file__).parents[1]
ART = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NAV = ["Overview", "EDF", "LR × WD", "Optimizer & length", "Spikes", "Runs", "Hyperparameters", "LR sensitivity",
       "Pruning"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def two_sweeps(dash_results, tmp_path_factory):
    """The dashboard fixture's sweep, plus a second sweep with half of its runs (the same real
    rows, file by file), one failed run and one still running (with its progress note)."""
    root = tmp_path_factory.mktemp("browser") / "results"
    shutil.copytree(dash_results, root)
    ids = sorted(p.stem for p in (root / "runs" / "sweep=dash").glob("*.parquet"))[:6]
    for table in store.TABLES:
        dst = root / table / "sweep=dash2"
        dst.mkdir(parents=True)
        for rid in ids:
            src = root / table / "sweep=dash" / f"{rid}.parquet"
            if src.exists():
                shutil.copy(src, dst / src.name)
    template = store.read_table(root, "runs", sweep="dash", run_ids=ids[:1]).drop(columns=["sweep"]).iloc[0]
    for rid, status, extra in (("f00000000001", "failed", {"error": "RuntimeError: CUDA out of memory (test)"}),
                               ("f00000000002", "running", {})):
        row = {**template.to_dict(), "run_id": rid, "status": status, "top1_err": None,
               "finished_at": None, **extra}
        store.write_run(root, "dash2", rid, {"runs": [row]})
    _stream(root, first=0, to=12)  # the running run's first epoch, streamed as it would be
    store.write_text_atomic(store.progress_path(root, "dash2", "f00000000002"), json.dumps(
        {"epoch": 1, "epochs": 2, "step": 12, "total_steps": 24, "val_top1_err": 71.0,
         "train_loss": 2.1, "updated_at": "2026-11-27T12:00:00+00:00"}))
    return root


def _stream(root, first, to, run="f00000000002"):
    """Append the rows of steps ``first``..``to``-1 (and their epochs) of a real run of sweep dash
    to the running run ``run`` of dash2, as ``train`` streams them (``store.append_rows``)."""
    runs = store.read_table(root, "runs", sweep="dash")
    src = runs[runs.status == store.RunStatus.COMPLETED].run_id.min()
    rows = {}
    for table in store.ROW_TABLES:
        t = store.read_table(root, table, sweep="dash", run_ids=[src]).drop(columns=["sweep"])
        t = t[t.epoch.between(first // 12, to // 12 - 1)] if table == "epochs" else t[t.step.between(first, to - 1)]
        rows[table] = t.assign(run_id=run)
    store.append_rows(root, "dash2", run, to, rows)
    return store.run_chunks(root, "steps", "dash2", run)[-1]


@pytest.fixture(scope="module")
def server(two_sweeps):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is missing: .ci/run installs it (apt-get install chromium)")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stability", "dashboard", "--results", str(two_sweeps),
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "streamlit did not come up"
        time.sleep(0.3)
    yield url
    proc.terminate()  # stopping `stability dashboard` stops the Streamlit server it started
    proc.wait(30)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    yield pg
    pg.close()


def _settle(pg, timeout=90_000):
    """Wait until Streamlit has finished the rerun a click or key started."""
    pg.wait_for_timeout(300)
    # Done = no running-man status and no element left over (stale) from the previous run: a
    # rerun that started late on a loaded machine still has its old elements marked stale.
    pg.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')"
                         " && !document.querySelector('[data-stale=\"true\"]')", timeout=timeout)


def _chart_with_data(pg, timeout=90_000):
    pg.wait_for_function("[...document.querySelectorAll('.js-plotly-plot')]"
                         ".some(p => p.data && p.data.length > 0 && p.querySelector('.main-svg'))",
                         timeout=timeout)


def _no_exception(pg):
    assert pg.locator("[data-testid='stException']").count() == 0, pg.locator("[data-testid='stException']").first.text_content()
    assert pg.locator("text=Traceback").count() == 0


def _root_kept(pg, root):
    text = pg.locator("[data-testid='stSidebar']").text_content()
    assert str(root) in text, text[:300]
    assert pg.locator("text=holds no `runs/` folder").count() == 0
    assert pg.locator("text=does not exist").count() == 0


def _checked(pg):
    """The labels of the checked radio options on the page."""
    return pg.evaluate("[...document.querySelectorAll(\"[data-testid='stRadio'] input:checked\")]"
                       ".map(i => i.closest('label').textContent.trim())")


def _chips(pg, label):
    box = pg.locator("[data-testid='stMultiSelect']").filter(
        has=pg.locator("[data-testid='stWidgetLabel']", has_text=re.compile(f"^{re.escape(label)}$"))).first
    return [t.get_attribute("aria-label") for t in box.locator("[data-tag]").all()]


def test_every_sidebar_entry_twice_keeps_root_filters_and_controls(server, page, two_sweeps):
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(server)
    _chart_with_data(page)
    # one filter and one page control, set once
    stem = page.locator("[data-testid='stMultiSelect']").filter(has_text="stem").first
    stem.get_by_role("button", name="Remove patchify").click()
    _settle(page)
    assert _chips(page, "stem") == ["conv"]
    nav = page.locator("[data-testid='stSidebarNav']")
    nav.get_by_text("EDF", exact=True).click()
    _settle(page)
    page.get_by_text("relative to the best of each group").click()
    _settle(page)
    for name in NAV:
        for _ in range(2):
            nav.get_by_text(name, exact=True).click()
            _settle(page)
            _chart_with_data(page)
            _no_exception(page)
            _root_kept(page, two_sweeps)
            assert _chips(page, "stem") == ["conv"], name
            page.wait_for_url("**f_stem=conv**", timeout=30_000)  # the URL mirrors the filter
        page.screenshot(path=str(ART / f"page_{NAV.index(name)}_{name.split()[0].lower()}.png"), full_page=True)
    nav.get_by_text("EDF", exact=True).click()
    _settle(page)
    assert any(t.startswith("relative") for t in _checked(page))
    legend = page.locator(".js-plotly-plot .legend").first.text_content()
    assert "conv" in legend and "patchify" not in legend, legend
    outside = sorted({u for u in requested if not u.startswith((server, "data:", "blob:"))})
    assert not outside, outside  # nothing is fetched from the web (fonts, icons ...)


def test_every_slider_at_its_extremes(server, page):
    for path in ("edf?p_edf_mode=relative+to+the+best+of+each+group", "lr_wd?f_sweep=dash", "spikes",
                 "sensitivity?f_sweep=dash"):
        page.goto(f"{server}/{path}")
        _chart_with_data(page)
        if path == "spikes":
            page.get_by_text("spike detector").click()
            _settle(page)
        if path.startswith("sensitivity"):  # the second outcome: its tables come back
            page.get_by_text("unstable", exact=True).click()
            _settle(page)
            _no_exception(page)
            page.wait_for_url("**p_sens_outcome=unstable**", timeout=30_000)
        sliders = page.locator("[data-testid='stSlider'] input[type='range']")
        # a chart can draw before the page's sliders: count them once the first is there (under
        # load, two test workers, the lr/wd page counted none)
        sliders.first.wait_for(state="attached", timeout=90_000)
        _settle(page)
        n = sliders.count()
        assert n >= (5 if path == "spikes" else 1), (path, n)
        for i in range(n):
            for key, bound in (("Home", "min"), ("End", "max")):
                sliders.nth(i).focus()
                page.keyboard.press(key)
                _settle(page)
                _chart_with_data(page)
                _no_exception(page)
                s = page.locator("[data-testid='stSlider'] input[type='range']").nth(i)
                assert float(s.get_attribute("value") or s.input_value()) == float(s.get_attribute(bound)), (path, i, key)
        page.screenshot(path=str(ART / f"sliders_{path.split('?')[0]}.png"), full_page=True)


def test_a_shared_url_restores_filters_and_controls(server, page):
    page.goto(f"{server}/edf?f_stem=patchify&f_sweep=dash2&p_edf_band=dkw")
    _chart_with_data(page)
    _no_exception(page)
    assert _chips(page, "stem") == ["patchify"] and _chips(page, "sweep") == ["dash2"]
    assert "dkw" in _checked(page)
    legend = page.locator(".js-plotly-plot .legend").first.text_content()
    title = page.locator(".js-plotly-plot .gtitle").first.text_content()
    assert "patchify" in legend and "conv" not in legend and "dash2" in title, (legend, title)
    page.screenshot(path=str(ART / "shared_url.png"), full_page=True)


def test_overview_shows_failures_and_running_progress(server, page):
    page.goto(server)
    _chart_with_data(page)
    body = page.locator("section.main, [data-testid='stMain']").first.text_content()
    assert "CUDA out of memory (test)" in body and "dash2" in body
    page.goto(f"{server}/runs?p_runs_open=dash2/f00000000002")
    _settle(page)
    page.wait_for_selector("text=epoch 1/2, step 12/24", timeout=60_000)
    _no_exception(page)


_MAX_STEP = ("Math.max(-1, ...[...document.querySelectorAll('.js-plotly-plot')].flatMap(p => (p._fullData || [])"
             ".filter(t => t.xaxis === 'x').flatMap(t => Array.from(t.x || []))))")


def test_a_running_runs_streamed_rows_draw_and_grow_without_a_reload(server, page, two_sweeps):
    page.goto(f"{server}/runs?p_runs_open=dash2/f00000000002")
    _settle(page)
    _chart_with_data(page)
    assert page.evaluate(_MAX_STEP) == 11  # the streamed first epoch's loss trace
    added = _stream(two_sweeps, first=12, to=24)  # the run streams its second epoch meanwhile
    try:
        page.wait_for_function(f"{_MAX_STEP} === 23", timeout=60_000)  # redrawn by the page's own refresh
        _no_exception(page)
        page.goto(f"{server}/spikes")
        page.wait_for_selector("text=Running runs (refreshed every 5 s)", timeout=90_000)
        page.wait_for_function("[...document.querySelectorAll('.js-plotly-plot .gtitle')]"
                               ".some(e => e.textContent.includes('running, up to step 23'))", timeout=90_000)
        _no_exception(page)
    finally:
        for table in store.ROW_TABLES:  # the other tests see the fixture as it was
            store.table_dir(two_sweeps, table, "dash2").joinpath(added.name).unlink(missing_ok=True)


def test_clicking_a_point_opens_its_run(server, page):
    page.goto(f"{server}/lr_wd?f_sweep=dash")
    _chart_with_data(page)
    assert page.get_by_role("button", name="Deploy").count() == 0  # no Deploy button
    page.locator(".js-plotly-plot .scatterlayer .point").first.click(force=True)
    page.wait_for_url("**/runs**", timeout=60_000)
    _settle(page)
    _chart_with_data(page)
    _no_exception(page)
    assert "p_runs_open=dash" in page.url, page.url
    chosen = _chips(page, "open runs (overlaid)")
    assert len(chosen) == 1 and chosen[0].startswith("dash ·"), chosen


def test_spikes_page_draws_traces(server, page):
    page.goto(f"{server}/spikes")
    _chart_with_data(page)
    page.wait_for_function("[...document.querySelectorAll('.js-plotly-plot .legend')]"
                           ".some(e => e.textContent.includes('(first)') && e.textContent.includes('(last)'))",
                           timeout=60_000)
    page.wait_for_function("(() => { const t = [...document.querySelectorAll('.js-plotly-plot .gtitle')]"
                           ".map(e => e.textContent).join(' '); return t.includes('patchify') && t.includes('conv'); })()",
                           timeout=90_000)
    ticks = " ".join(page.locator(".js-plotly-plot .xtick").all_text_contents())
    assert "patchify" in ticks and "conv" in ticks
    page.screenshot(path=str(ART / "spikes.png"), full_page=True)


def test_runs_of_the_fixture_are_all_listed(two_sweeps):
    runs = store.load(two_sweeps).runs
    assert isinstance(runs, pd.DataFrame) and set(runs.status) >= {"completed", "diverged", "failed", "running"}
    assert runs.sweep.nunique() == 2


# Per figure: its visible traces, those drawn with WebGL, and the SVG marks drawn (line paths
# with a path, points, boxes, bars, heatmap images): a figure whose traces hold data but drew no
# mark is blank.
FIGURES = """() => [...document.querySelectorAll('.js-plotly-plot')].map((p, i) => {
  const data = (p._fullData || []).filter(t => t.visible === true);
  const gl = data.filter(t => /gl$/.test(t.type) || t.type === 'parcoords');
  let drawn = 0;
  p.querySelectorAll('.scatterlayer .trace path.js-line').forEach(e => {
    if ((e.getAttribute('d') || '').length > 4) drawn++; });
  drawn += p.querySelectorAll('.scatterlayer .trace path.point, .boxlayer .trace path.box, '
    + '.barlayer .trace path, .heatmaplayer image, .parcoords .y-axis').length;
  const t = p.querySelector('.gtitle');
  return {title: t ? t.textContent : 'figure ' + i, traces: data.length, gl: gl.length,
          svg: data.length - gl.length, drawn: drawn};
})"""
MAX_WEBGL_FIGURES = 2  # per page: Chromium keeps 16 WebGL contexts, a plotly WebGL figure takes several


def _every_figure_drawn(pg, where: str, console: list[str]) -> list[dict]:
    _settle(pg)
    pg.wait_for_timeout(1500)  # charts below the fold are drawn after the script run ends
    figs = pg.evaluate(FIGURES)
    assert figs, f"{where}: no figure"
    for f in figs:
        assert f["traces"] > 0, f"{where}: {f['title']!r} has no trace"
        assert f["svg"] == 0 or f["drawn"] > 0, f"{where}: {f['title']!r} drew nothing ({f})"
    gl = [f["title"] for f in figs if f["gl"]]
    assert len(gl) <= MAX_WEBGL_FIGURES, f"{where}: {len(gl)} WebGL figures: {gl}"
    lost = [m for m in console if re.search(r"too many active webgl|context lost|context_lost", m, re.I)]
    assert not lost, f"{where}: {lost[:3]}"
    return figs


def test_every_figure_draws_on_every_page_with_many_runs(server, page):
    """≥ 16 finished runs, diverged ones among them: every figure of every page (Spikes with its
    most runs per stem) draws its traces, and no WebGL context is lost."""
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    page.goto(server)
    _chart_with_data(page)
    nav = page.locator("[data-testid='stSidebarNav']")
    for name in NAV:
        nav.get_by_text(name, exact=True).click()
        _chart_with_data(page)
        _no_exception(page)
        if name == "Spikes":
            k = page.locator("[data-testid='stSlider']").filter(has_text="k (worst runs per stem)")
            k.locator("input[type='range']").focus()
            page.keyboard.press("End")
            _settle(page)
            # The worst 5 per sweep and stem (≥ 12 with the two sweeps) stream in one by one.
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 13", timeout=90_000)
            figs = _every_figure_drawn(page, name, console)
            assert len(figs) >= 13, [f["title"] for f in figs]  # the counts, then one per run
            assert any("diverged" in f["title"] for f in figs), [f["title"] for f in figs]
            page.screenshot(path=str(ART / "spikes_many.png"), full_page=True)
        else:
            _every_figure_drawn(page, name, console)


def _pruning_drawn(pg, where: str) -> None:
    """The Pruning page after a rerun: one figure whose points are drawn, the Pareto table shown."""
    _settle(pg)
    _chart_with_data(pg)
    _no_exception(pg)
    assert pg.locator(".js-plotly-plot").count() == 1, where
    figs = _every_figure_drawn(pg, where, [])
    assert figs[0]["drawn"] >= 5, (where, figs)  # a point per setting (many coincide), the front's line
    assert pg.locator("[data-testid='stDataFrame']").count() >= 1, where
    assert pg.get_by_text("Pareto settings", exact=True).count() == 1, where


def test_pruning_view_with_every_control_at_its_extremes(server, page):
    """Opened from the sidebar with one sweep selected: the replay draws its points and the Pareto
    table at each extreme of each control (trace interval, workers, within, Optuna's pruners), and
    tuned on the other sweep it adds the chosen settings."""
    page.goto(f"{server}/?f_sweep=dash")
    _chart_with_data(page)
    page.locator("[data-testid='stSidebarNav']").get_by_text("Pruning", exact=True).click()
    page.wait_for_url("**/pruning**", timeout=30_000)
    _pruning_drawn(page, "opened")
    caption = page.locator("[data-testid='stMain'] [data-testid='stCaptionContainer']").filter(
        has_text="replayed").first.text_content()
    assert "12 runs of dash replayed" in caption and "doomed" in caption and "near-best" in caption, caption
    radio = page.locator("[data-testid='stRadio']").filter(has_text="trace interval replayed")
    for option in ("10", "1", "as recorded"):
        radio.get_by_text(option, exact=True).click()
        _pruning_drawn(page, f"every {option}")
        assert option in _checked(page)
    sliders = page.locator("[data-testid='stSlider'] input[type='range']")
    assert sliders.count() == 2  # workers, within
    for i in range(2):
        for key, bound in (("Home", "min"), ("End", "max")):
            sliders.nth(i).focus()
            page.keyboard.press(key)
            _pruning_drawn(page, f"slider {i} {key}")
            s = page.locator("[data-testid='stSlider'] input[type='range']").nth(i)
            assert float(s.get_attribute("value") or s.input_value()) == float(s.get_attribute(bound)), (i, key)
    page.wait_for_url("**p_prune_workers=16**", timeout=30_000)
    optuna = page.locator("[data-testid='stCheckbox']").filter(has_text="include Optuna's pruners")
    for _ in range(2):  # off (ours only), then on again
        optuna.locator("label").click()
        _pruning_drawn(page, "optuna toggled")
    legend = page.locator(".js-plotly-plot .legend").first.text_content()
    assert "optuna-median" in legend and "loss" in legend, legend
    tune = page.locator("[data-testid='stMultiSelect']").filter(has_text="tune on (other sweeps)")
    tune.locator("input").click()
    page.get_by_role("option", name="dash2").click()
    page.keyboard.press("Escape")
    _pruning_drawn(page, "tuned on dash2")
    page.get_by_text("Chosen on dash2, scored here").wait_for(timeout=90_000)
    assert page.locator("[data-testid='stDataFrame']").count() == 2
    page.set_viewport_size({"width": 1400, "height": 2200})  # the page scrolls inside: tall enough for the tables
    page.wait_for_timeout(1500)
    page.screenshot(path=str(ART / "pruning.png"), full_page=True)
