"""The files that ship with the package: grid specs, the dashboard, Slurm profiles.

They live at the repository's top level (``grids/``, ``dashboard/``, ``slurm/profiles/``), where a
clone's users read and edit them. ``stability/grids``, ``stability/dashboard`` and
``stability/profiles`` are symlinks to those folders, so one ``importlib.resources`` lookup finds
them from a clone, an editable install and an installed wheel (which holds copies, not links).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .errors import ConfigError

FOLDERS = ("grids", "dashboard", "profiles")


def folder(name: str) -> Path:
    """A shipped folder (one of ``FOLDERS``) as a real path (Streamlit and submitit need files)."""
    if name not in FOLDERS:
        raise ValueError(f"no shipped folder {name!r} (allowed: {', '.join(FOLDERS)})")
    return Path(str(files("stability") / name)).resolve()


def shipped(name: str, kind: str) -> Path:
    """``<kind folder>/<name>.yaml`` (``name`` may hold ``/``: ``cpu/quick/lr_wd``); a missing one is
    a ``ConfigError`` that lists the shipped names."""
    base = folder(kind)
    path = base / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.relative_to(base).with_suffix("").as_posix() for p in base.rglob("*.yaml"))
        what = "a grid spec YAML or the name of a shipped spec" if kind == "grids" else "a shipped profile"
        raise ConfigError(f"{name!r} is not {what} (shipped: {', '.join(known) or 'none'})",
                          "spec" if kind == "grids" else "--profile")
    return path


def spec_path(spec: str) -> Path:
    """A grid spec argument: a YAML path (``.yaml``/``.yml``, or any existing file), else the name
    of a shipped spec (``smoke``, ``cpu/quick/lr_wd``)."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    return shipped(spec, "grids")


def dashboard_app() -> Path:
    """The dashboard's Streamlit entry script."""
    app = folder("dashboard") / "app.py"
    if not app.is_file():
        raise ConfigError(f"dashboard: {app} not found (the package was installed without its dashboard)")
    return app
