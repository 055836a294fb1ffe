"""CI: the package works installed from its wheel, not only from a clone.

Builds the wheel from the work tree's files, installs it (no deps: they come from the system
site-packages) into a fresh venv in a temp dir, and from another temp dir runs the named smoke
grid, checks ``stability reproduce`` and ``--profile`` find their shipped files, and renders the
dashboard's first page in headless Chromium. Everything lives in one temp dir, removed at the end;
the processes it starts are stopped by PID. Run alone: ``python3 .ci/installed_wheel.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
T0 = time.monotonic()


def step(msg: str) -> None:
    print(f"[{time.monotonic() - T0:5.0f} s] {msg}", flush=True)


def run(cmd: list, cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    """``cmd``, failing the step with its output when it exits non-zero."""
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        sys.exit(f"installed wheel: {' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout}{p.stderr}")
    return p


def expect_error(cmd: list, cwd: Path, env: dict, text: str) -> None:
    """``cmd`` fails with exit code 2 and one line naming ``text``."""
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if p.returncode != 2 or text not in p.stderr or len(p.stderr.strip().splitlines()) != 1:
        sys.exit(f"installed wheel: {' '.join(map(str, cmd))}: expected exit 2 naming {text!r}, "
                 f"got {p.returncode}:\n{p.stdout}{p.stderr}")


def copy_tree(dst: Path) -> None:
    """The files a clone of this work tree would hold (tracked and new, not ignored): the wheel is
    built from them, so build/ and *.egg-info land in the temp dir, not in the work tree."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, names):
        src, out = REPO / name, dst / name
        if not src.is_symlink() and not src.exists():  # deleted, not yet committed
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():  # stability/{grids,dashboard,profiles}: kept as links, as git does
            out.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, out)


def render(url: str) -> None:
    """The dashboard's first page shows a Plotly chart with data and no exception."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if not chromium:
        sys.exit("installed wheel: no chromium on PATH (.ci/run installs Debian's chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("[...document.querySelectorAll('.js-plotly-plot')]"
                                   ".some(p => p.data && p.data.length > 0 && p.querySelector('.main-svg'))",
                                   timeout=90_000)
            title = page.title()
            errors = page.locator("[data-testid='stException']").count()
        finally:
            browser.close()
    if "stability" not in title or errors:
        sys.exit(f"installed wheel: dashboard page title {title!r}, {errors} exception(s) shown")


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="stability-wheel-"))
    dashboard = None
    try:
        step("build the wheel from the work tree's files")
        src, wheels, venv, work, results = (tmp / n for n in ("src", "wheels", "venv", "work", "results"))
        copy_tree(src)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STABILITY_PROFILES")}
        # no build isolation: setuptools comes from this Python, so the build needs no network
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, src],
            tmp, env)
        shutil.rmtree(src)
        wheel = next(wheels.glob("stability-*.whl"))

        step(f"install {wheel.name} into a fresh venv (system site-packages for torch & co.)")
        run([sys.executable, "-m", "venv", "--system-site-packages", venv], tmp, env)
        py, cli = venv / "bin" / "python", venv / "bin" / "stability"
        # --force-reinstall: the system may hold a `stability` (an editable install) pip would keep
        run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", wheel], tmp, env)
        work.mkdir()
        where = run([py, "-c", "import stability; print(stability.__file__)"], work, env).stdout.strip()
        if not Path(where).resolve().is_relative_to(venv.resolve()):
            sys.exit(f"installed wheel: stability imported from {where}, not from the venv {venv}")

        port = free_port()
        step(f"start `stability dashboard` on port {port}; run the named smoke grid meanwhile (8 runs)")
        log = (tmp / "dashboard.log").open("w")
        dashboard = subprocess.Popen([cli, "dashboard", "--results", results, "--port", str(port)], cwd=work,
                                     env=env, stdout=log, stderr=subprocess.STDOUT)
        grid = run([cli, "grid", "run", "smoke", "--results", results, "--quiet"], work, env, timeout=600)
        if "8 completed" not in grid.stdout:
            sys.exit(f"installed wheel: the smoke grid did not complete its 8 runs:\n{grid.stdout}{grid.stderr}")

        step("shipped specs and profiles are found from any folder; bad names are one-line errors")
        run([cli, "grid", "run", "smoke", "--profile", "local", "--results", results, "--dry-run"], work, env)
        expect_error([cli, "grid", "run", "nosuch"], work, env, "shipped: cpu/divergence")
        expect_error([cli, "grid", "run", "smoke", "--profile", "nosuch"], work, env, "known: example-gpu, local")
        # reproduce reads its four studies from the package before it checks --only
        expect_error([cli, "reproduce", "--quick", "--only", "nosuch", "--results", results], work, env,
                     "--only: unknown study 'nosuch'")

        step("the dashboard's first page renders (headless Chromium)")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while not healthy(url):
            if dashboard.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"installed wheel: `stability dashboard` did not come up (exit code {dashboard.poll()}):\n"
                         + (tmp / "dashboard.log").read_text())
            time.sleep(0.5)
        render(url)
        step("ok")
        return 0
    finally:
        if dashboard is not None and dashboard.poll() is None:
            dashboard.terminate()  # `stability dashboard` stops the Streamlit server it started
            try:
                dashboard.wait(30)
            except subprocess.TimeoutExpired:
                dashboard.kill()
                dashboard.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok"
    except OSError:
        return False


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
