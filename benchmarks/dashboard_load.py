"""Dashboard at scale: a synthetic results root of 10,000 runs and 20 million grad-norm rows.

Times ``store.load`` (all four tables), the runs table alone (what the pages read), the EDF with
its bootstrap band, and the first paint of every page in headless Chromium against
``stability dashboard`` (navigation until a plotly chart holds data): cold (the first visit of
each page after the server starts) and warm (new tabs afterwards), each as a ratio to a one-chart
Streamlit app timed in the same run (the floor any Streamlit page pays here). Goal: ≤ 1.3x.

    python benchmarks/dashboard_load.py [--runs 10000] [--grad-rows 20000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, timed  # noqa: E402

from stability import analysis, store  # noqa: E402
from stability.trainer.distributed import free_port  # noqa: E402

ROOT = Path(__file__).parents[1]
# "" is the Overview; LR sensitivity pools wd on purpose (every synthetic run has its own wd)
PAGES = ["", "edf", "lr_wd", "optimizer", "spikes", "runs", "hparams", "sensitivity?p_sens_pool_axes=wd"]
GOAL = 1.3  # every page's first paint at most this many times the one-chart baseline's, cold and warm


def make_root(root: Path, n_runs: int, grad_rows: int, seed: int = 0) -> None:
    """Compacted files (one per table), as ``grid collect`` leaves a big sweep."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"{i:012x}" for i in range(n_runs)])
    stems = np.where(np.arange(n_runs) % 2 == 0, "patchify", "conv")
    diverged = rng.random(n_runs) < np.where(stems == "patchify", 0.08, 0.02)
    err = np.where(stems == "patchify", 30, 27) + rng.gamma(2.0, 3.0, n_runs)
    runs = pd.DataFrame({
        "run_id": ids, "status": np.where(diverged, "diverged", "completed"), "model": "vit_4gf",
        "stem": stems, "optimizer": np.where(np.arange(n_runs) % 4 < 2, "adamw", "sgd"),
        "lr": 10 ** rng.choice(np.linspace(-3.6, -2.1, 16), n_runs),  # a 16-point lr grid, wd sampled
        "wd": 10 ** rng.uniform(-1.7, -0.1, n_runs),
        "epochs": 50, "batch_size": 2048, "seed": 0, "dataset": "imagefolder",
        "top1_err": np.where(diverged, 100.0, err), "n_spikes": rng.poisson(3, n_runs),
        "init_top1_err": 99.9, "init_val_loss": np.log(1000), "final_val_loss": np.where(diverged, np.nan, err / 15),
        "diverged_at_step": np.where(diverged, rng.integers(100, 5000, n_runs), None),
    })
    runs["config_json"] = _configs(runs)
    for table in ("runs", "epochs", "steps", "grad_norms"):
        (root / table / "sweep=big").mkdir(parents=True, exist_ok=True)
    pq.write_table(store.to_arrow("runs", runs), root / "runs/sweep=big/part-0.parquet")
    layers = ["stem", "embed"] + [f"blocks.{i}" for i in range(11)] + ["head"]
    per_run_steps = max(1, grad_rows // (n_runs * len(layers)))
    epochs = pd.DataFrame({"run_id": np.repeat(ids, 10), "epoch": np.tile(np.arange(10), n_runs),
                           "val_top1_err": rng.uniform(20, 90, n_runs * 10)})
    pq.write_table(store.to_arrow("epochs", epochs), root / "epochs/sweep=big/part-0.parquet")
    steps = pd.DataFrame({"run_id": np.repeat(ids, per_run_steps),
                          "step": np.tile(np.arange(per_run_steps) * 10, n_runs),
                          "loss": rng.uniform(1, 7, n_runs * per_run_steps)})
    pq.write_table(store.to_arrow("steps", steps), root / "steps/sweep=big/part-0.parquet")
    schema = store.SCHEMAS["grad_norms"]
    chunk = max(1, 1_000_000 // (per_run_steps * len(layers)))
    with pq.ParquetWriter(root / "grad_norms/sweep=big/part-0.parquet", schema) as w:
        for start in range(0, n_runs, chunk):
            sub = ids[start:start + chunk]
            n = len(sub) * per_run_steps * len(layers)
            g = 1 + 0.1 * rng.standard_normal(n)
            g[rng.random(n) < 0.002] *= 20
            t = pd.DataFrame({
                "run_id": np.repeat(sub, per_run_steps * len(layers)),
                "step": np.tile(np.repeat(np.arange(per_run_steps) * 10, len(layers)), len(sub)),
                "layer": np.tile(layers, len(sub) * per_run_steps),
                "depth": np.tile(np.arange(len(layers)), len(sub) * per_run_steps),
                "grad_norm": np.abs(g), "param_norm": 10.0, "update_ratio": 1e-3,
            })
            w.write_table(store.to_arrow("grad_norms", t))


def _configs(runs: pd.DataFrame) -> list[str]:
    """Each run's ``config_json`` as the trainer writes it (every field; the dashboard reads them
    for the design columns)."""
    import json

    from stability.config import run_config

    base = run_config({"dataset": "imagefolder", "data_root": "/data/imagenet", "model": "vit_p_4gf",
                       "epochs": 50, "batch_size": 2048}, "benchmark").to_dict()
    return [json.dumps({**base, "model": f"vit_{s[0]}_4gf", "stem": s, "optimizer": o, "lr": lr, "wd": wd},
                       sort_keys=True)
            for s, o, lr, wd in zip(runs.stem, runs.optimizer, runs.lr, runs.wd, strict=True)]


BASELINE_APP = """import plotly.graph_objects as go
import streamlit as st
st.title("baseline")
st.plotly_chart(go.Figure(go.Scatter(x=[1, 2, 3], y=[1, 3, 2])))
"""


# The same frame as the dashboard's (page menu of 8, sidebar with a selectbox and three filters,
# a title, a caption and one chart) with no data: what Streamlit costs for this layout.
NAV_APP = """import plotly.graph_objects as go
import streamlit as st
st.set_page_config(layout="wide")
def page():
    st.title("page")
    st.caption("caption")
    st.plotly_chart(go.Figure(go.Scatter(x=[1, 2, 3], y=[1, 3, 2])))
pages = [st.Page(page, title=f"page {i}", url_path=f"p{i}", default=i == 0) for i in range(8)]
nav = st.navigation(pages)
st.sidebar.selectbox("Results root", ["results"])
for name in ("stem", "optimizer", "status"):
    st.sidebar.multiselect(name, ["a", "b"], default=["a", "b"])
nav.run()
"""

# Painted: a plotly chart holds data (every page draws one when its data allow).
PAINTED = ("[...document.querySelectorAll('.js-plotly-plot')]"
           ".some(p => p.data && p.data.length > 0 && p.querySelector('.main-svg'))")


def first_paint(root: Path, pages: list[str], repeats: int, baseline: Path | None = None) -> dict[str, list[float]]:
    """Seconds from navigation to a plotly chart with data, per page; each tab is closed only
    after its script run has finished, so no page's leftover work slows the next. ``baseline``:
    time a one-chart Streamlit app instead (the floor any Streamlit page pays here)."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    cmd = ([sys.executable, "-m", "streamlit", "run", str(baseline), "--server.headless", "true",
            "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"]
           if baseline else
           [sys.executable, "-m", "stability", "dashboard", "--results", str(root), "--port", str(port)])
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.3)
        out: dict[str, list[float]] = {p: [] for p in pages}
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=flags)
            for _rep in range(repeats + 1):  # the first round warms the server's caches: reported apart
                for page_name in pages:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    t = time.perf_counter()
                    page.goto(f"{url}/{page_name}")
                    page.wait_for_function(PAINTED, timeout=600_000)
                    out[page_name].append(time.perf_counter() - t)
                    page.wait_for_timeout(300)
                    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')",
                                           timeout=600_000)
                    page.close()
            browser.close()
        return out
    finally:
        proc.terminate()  # `stability dashboard` stops the server it started; bare Streamlit may not
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--grad-rows", type=int, default=20_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="stab-bench-"))
    try:
        t_make, _ = timed(make_root, root, args.runs, args.grad_rows)
        n_grad = pq.ParquetFile(root / "grad_norms/sweep=big/part-0.parquet").metadata.num_rows
        t_load, res = timed(store.load, root)
        t_runs, runs = timed(store.read_table, root, "runs")
        t_edf, pts = timed(analysis.edf, runs, ["stem"], "top1_err", False, None, 200)
        one = runs.run_id.iloc[-1]
        t_one, gn = timed(store.read_table, root, "grad_norms", None, None, None, [one])
        del res
        app = root / "baseline_app.py"
        app.write_text(BASELINE_APP)
        floor = first_paint(root, [""], args.repeats, baseline=app)[""]
        nav_app = root / "baseline_nav.py"
        nav_app.write_text(NAV_APP)
        frame = first_paint(root, [""], args.repeats, baseline=nav_app)[""]
        paint = first_paint(root, PAGES, args.repeats)
        lines = [
            f"synthetic root: {args.runs} runs, {n_grad:,} grad-norm rows (made in {t_make:.1f} s)",
            "",
            "| what | seconds |", "|---|---|",
            f"| `store.load` (all four tables, {n_grad:,} grad rows) | {t_load:.2f} |",
            f"| runs table only (what the pages read) | {t_runs:.3f} |",
            f"| EDF per stem + 200-resample bootstrap band ({len(runs)} runs) | {t_edf:.3f} |",
            f"| one run's grad norms, filtered in parquet ({len(gn)} rows) | {t_one:.3f} |",
        ]
        base_cold, base_warm = floor[0], float(np.median(floor[1:]))
        lines += ["", f"First paint per page (seconds; ratio to a one-chart Streamlit app in the same run: "
                      f"{base_cold:.2f} s cold, {base_warm:.2f} s warm, median of {len(floor) - 1})", "",
                  "| page | cold | cold / baseline | warm (median) | warm / baseline |", "|---|---|---|---|---|"]
        worst = 0.0
        for name, ts in paint.items():
            cold, warm = ts[0], float(np.median(ts[1:]))
            worst = max(worst, cold / base_cold, warm / base_warm)
            lines.append(f"| {name or 'overview'} | {cold:.2f} | {cold / base_cold:.2f}x | {warm:.2f} | "
                         f"{warm / base_warm:.2f}x |")
        lines.append(f"| (the same frame, no data: page menu of 8, sidebar filters, one chart) | {frame[0]:.2f} | "
                     f"{frame[0] / base_cold:.2f}x | {np.median(frame[1:]):.2f} | "
                     f"{np.median(frame[1:]) / base_warm:.2f}x |")
        lines += ["", f"Goal (every page ≤ {GOAL}x the baseline, cold and warm): "
                      f"{'met' if worst <= GOAL else 'not met'} (worst {worst:.2f}x)."]
        append_results("Dashboard at scale (benchmarks/dashboard_load.py)", lines)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
