"""SVG or WebGL: where does a plotly scatter trace draw faster, in the headless Chromium the
dashboard tests use?

Times ``Plotly.newPlot`` (until the plot is drawn) of one figure of N points, as lines and as
markers, with ``scatter`` (SVG) and ``scattergl`` (WebGL), median of a few runs, each in a fresh
tab (a WebGL context per figure). The dashboard's threshold (``plots.WEBGL_POINTS``,
``plots.WEBGL_MARKERS``) is read off this table: SVG below the point count where WebGL starts to
pay, since a page may hold only a few WebGL figures (Chromium keeps 16 contexts).

    python benchmarks/plot_render.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results  # noqa: E402

SIZES = (1_000, 5_000, 20_000, 100_000)
PAGE = """<!doctype html><html><head><meta charset="utf-8"><script src="plotly.min.js"></script></head>
<body><div id="p" style="width:1200px;height:500px"></div></body></html>"""
DRAW = """async ([n, type, mode]) => {
  const x = Array.from({length: n}, (_, i) => i);
  const y = x.map(i => Math.sin(i / 50) + Math.random() * 0.1);
  const t = performance.now();
  await Plotly.newPlot('p', [{x, y, type, mode}], {width: 1200, height: 500});
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now() - t;
}"""


def main() -> None:
    import plotly
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "plotly.min.js").write_bytes(js.read_bytes())
        (Path(d) / "index.html").write_text(PAGE)
        rows = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                        args=["--headless", "--no-sandbox", "--disable-gpu"])
            for mode in ("lines", "markers"):
                for n in SIZES:
                    ms = {}
                    for kind in ("scatter", "scattergl"):
                        times = []
                        for _ in range(args.repeats + 1):  # the first warms the JIT: dropped
                            page = browser.new_page()
                            page.goto(f"file://{d}/index.html")
                            times.append(page.evaluate(DRAW, [n, kind, mode]))
                            page.close()
                        ms[kind] = float(np.median(times[1:]))
                    rows.append((mode, n, ms["scatter"], ms["scattergl"]))
            browser.close()
    lines = ["One figure of N points drawn by `Plotly.newPlot` in headless Chromium (software WebGL, "
             f"`--disable-gpu`, as in the tests), median of {args.repeats} fresh tabs, milliseconds.", "",
             "| mode | points | SVG (scatter) | WebGL (scattergl) | SVG / WebGL |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {n:,} | {s:.0f} | {g:.0f} | {s / g:.2f} |" for m, n, s, g in rows]
    append_results("SVG or WebGL per point count (benchmarks/plot_render.py)", lines)


if __name__ == "__main__":
    main()
