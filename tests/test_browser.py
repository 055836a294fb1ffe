"""The dashboard in a real browser: Streamlit server + headless Debian Chromium via Playwright."""

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from stability.distributed import free_port

ROOT = Path(__file__).parents[1]
ART = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(dash_results):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is missing: .ci/run installs it (apt-get install chromium)")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
         "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
         "--", "--results", str(dash_results)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    proc.terminate()
    proc.wait(20)


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield pg
        browser.close()


def _charts(pg, n=1, timeout=90_000):
    pg.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n}",
                         timeout=timeout)


def test_edf_page_draws_stem_legends_and_follows_a_filter(server, page):
    page.goto(f"{server}/edf")
    _charts(page)
    legend = page.locator(".js-plotly-plot .legend").first
    legend.wait_for(timeout=60_000)
    text = legend.text_content()
    assert "patchify" in text and "conv" in text, text
    assert "diverged" in text
    page.screenshot(path=str(ART / "edf.png"), full_page=True)
    page.get_by_text("relative to the best of each group").click()
    page.wait_for_function("[...document.querySelectorAll('.js-plotly-plot .xtitle')]"
                           ".some(e => e.textContent.includes('Δ top-1'))", timeout=60_000)
    page.screenshot(path=str(ART / "edf_relative.png"), full_page=True)
    assert page.locator("text=Traceback").count() == 0


def test_spikes_page_draws_traces(server, page):
    page.goto(f"{server}/spikes")
    _charts(page, n=2)
    page.wait_for_function("[...document.querySelectorAll('.js-plotly-plot .legend')]"
                           ".some(e => e.textContent.includes('(first)') && e.textContent.includes('(last)'))",
                           timeout=60_000)
    # one trace per stem's worst run; they stream in one after the other
    page.wait_for_function("(() => { const t = [...document.querySelectorAll('.js-plotly-plot .gtitle')]"
                           ".map(e => e.textContent).join(' '); return t.includes('patchify') && t.includes('conv'); })()",
                           timeout=90_000)
    titles = " ".join(page.locator(".js-plotly-plot .gtitle").all_text_contents())
    assert "patchify" in titles and "conv" in titles, titles
    ticks = " ".join(page.locator(".js-plotly-plot .xtick").all_text_contents())
    assert "patchify" in ticks and "conv" in ticks
    page.screenshot(path=str(ART / "spikes.png"), full_page=True)
