"""``stability reproduce``: run the paper's four studies as grids and write one verdict report.

The studies are the grid specs ``lr_wd``, ``optimizer``, ``epochs`` and ``peak`` of one folder:
``grids/cpu`` (this machine's scale, the default), ``grids/cpu/quick`` (a few minutes, for CI
and a first look) or ``grids`` (the paper's sizes, for a Slurm cluster with ``--profile``).
Each study runs exactly as ``stability grid run`` would (idempotent: a rerun only runs what is
missing), then ``analysis.findings`` turns its runs into a verdict. The report is markdown and
HTML, written atomically.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from . import store
from .analysis.findings import CI, FINDINGS, MIN_RUNS, Finding, assess
from .errors import ConfigError
from .store import RunStatus

STUDIES = tuple(FINDINGS)
GRIDS = Path(__file__).resolve().parent.parent / "grids"
SCALES = {"cpu": GRIDS / "cpu", "quick": GRIDS / "cpu" / "quick", "paper": GRIDS}
RULE = (f"reproduced: the effect has the paper's sign and its {CI:.0%} bootstrap interval excludes 0; "
        "not reproduced: the interval excludes 0 on the other side; inconclusive: the interval "
        f"contains 0, a group has fewer than {MIN_RUNS} runs, or more than half of the finished runs "
        "collapsed (never left chance).")
CAVEATS = {"quick": "Quick scale: runs of a few steps that mostly stay at chance. These verdicts show "
                    "that the machinery works, not what the paper found."}


@dataclass
class StudyResult:
    name: str
    sweep: str
    finding: Finding
    runs: pd.DataFrame
    wall_s: float  # this invocation (a rerun that trains nothing takes seconds)

    @property
    def counts(self) -> dict[str, int]:
        return self.runs["status"].value_counts().to_dict() if len(self.runs) else {}

    @property
    def train_s(self) -> float:
        """The runs' own training time, summed (``wall_time_s`` of each finished run)."""
        return float(self.runs["wall_time_s"].sum()) if len(self.runs) else 0.0

    @property
    def collapsed(self) -> int:
        return int(self.runs.get("collapsed", pd.Series(dtype=bool)).fillna(False).astype(bool).sum())

    def first_error(self) -> str | None:
        failed = self.runs[self.runs["status"] == RunStatus.FAILED] if len(self.runs) else self.runs
        return str(failed["error"].iloc[0]) if len(failed) else None


def study_specs(folder: Path) -> dict[str, Path]:
    """The four spec files of ``folder``; a missing one is a ConfigError naming it."""
    out = {}
    for name in STUDIES:
        path = folder / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"reproduce: no study spec {str(path)!r} (a study folder holds "
                              f"{', '.join(s + '.yaml' for s in STUDIES)})")
        out[name] = path
    return out


def sweep_suffix(base: dict) -> str:
    """``-dataset_cifar10-data_root_cifar`` for ``{"dataset": "cifar10", "data_root": "/x/cifar"}``:
    studies run with changed base fields are sweeps of their own, one per set of changes,
    never mixed with the unchanged ones or with other changes."""
    import re

    def clean(v: object) -> str:
        return re.sub(r"[^A-Za-z0-9_]+", "_", str(v)).strip("_")[-24:]

    return "".join(f"-{clean(k)}_{clean(v)}" for k, v in base.items())


def prepare(folder: Path, results: str | None = None, executor: dict | None = None,
            only: list[str] | None = None, base: dict | None = None) -> dict:
    """Every study's spec with the overrides applied, each checked by planning it (no runs, no
    files): a bad spec or override fails before any study trains."""
    from .grid.controller import initial_plan
    from .grid.spec import load_spec, with_executor
    from .grid.studies import open_storage
    from .yamlio import load_yaml

    specs = {}
    for name, path in study_specs(folder).items():
        if only and name not in only:
            continue
        overrides: dict = {"results": results} if results else {}
        raw = load_yaml(path)
        if base and isinstance(raw, dict):
            overrides |= {"base": {**(raw.get("base") or {}), **base},
                          "name": f"{raw.get('name')}{sweep_suffix(base)}"}
        spec = load_spec(path, overrides or None)
        if executor:
            spec = with_executor(spec, **executor)
        initial_plan(spec, open_storage(spec, in_memory=True))  # the check grid run makes, no files
        specs[name] = spec
    return specs


@dataclass
class Invocation:
    """One ``stability reproduce``: its scale, prepared specs (checked, nothing written yet),
    results root, report path, and the studies ``--only`` leaves out."""

    scale: str
    specs: dict
    root: str
    out: Path
    left_out: list[str]

    @classmethod
    def from_options(cls, quick: bool = False, paper: bool = False, grids: str | None = None,
                     only: str | None = None, sets: list[str] = (), results: str | None = None,
                     profile: str | None = None, out: str | None = None) -> Invocation:
        """The command line's options, validated (ConfigError naming the option on bad input)."""
        from .config import run_config
        from .grid.spec import load_profile
        from .yamlio import parse_overrides

        if quick and paper:
            raise ConfigError("reproduce: --quick and --paper exclude each other (allowed: one of them, or neither)")
        scale = "quick" if quick else "paper" if paper else "cpu"
        folder = Path(grids) if grids else SCALES[scale]
        if grids:
            scale = f"grids {folder.name or folder}"
        study_specs(folder)  # every spec present before anything runs
        chosen = None
        if only is not None:
            chosen = [s.strip() for s in only.split(",")]
            if bad := sorted(s for s in chosen if s not in STUDIES):
                raise ConfigError(f"--only: unknown study {bad[0]!r} (allowed: {', '.join(STUDIES)})")
        base = parse_overrides(list(sets))
        if where := sorted(set(base) & {"results", "sweep"}):
            raise ConfigError(f"--set: {where[0]} is not a study field (use --results; sweeps are named by the specs)")
        if base:
            run_config(base, "--set")  # each field checked alone first: the error names --set
        specs = prepare(folder, results, load_profile(profile) or None, chosen, base)  # no files yet
        root = results or "results"
        name = scale.replace(" ", "-") + sweep_suffix(base) + (f"-only-{'-'.join(chosen)}" if chosen else "")
        return cls(scale, specs, root, Path(out) if out else Path(root) / "reproduce" / name,
                   [s for s in STUDIES if chosen and s not in chosen])


def run_studies(specs: dict, show_progress: bool = True, console=None) -> list[StudyResult]:
    """Run each prepared study (``prepare``) as ``grid run`` would, then compute its finding."""
    from .grid.controller import Controller, RunOptions

    out = []
    for name, spec in specs.items():
        t0 = time.monotonic()
        Controller(spec, RunOptions(show_progress=show_progress), console).run()
        runs = store.read_table(spec.results, "runs", sweep=spec.name)
        out.append(StudyResult(name, spec.name, assess(name, runs), runs, time.monotonic() - t0))
    return out


def _fmt(v: float | None, spec: str = "+.2f") -> str:
    return "–" if v is None or pd.isna(v) else format(v + 0.0, spec)


def report_markdown(results: list[StudyResult], scale: str, root: str, left_out: list[str] = ()) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    wall = sum(r.wall_s for r in results)
    train = sum(r.train_s for r in results)
    lines = [f"# Reproduction of Xiao et al. 2021 (scale: {scale})", "",
             f"Results root `{root}`; made {stamp}. This invocation took {wall / 60:.1f} min; the runs' "
             f"own training time adds up to {train / 60:.1f} min (summed over runs, which run in parallel).", ""]
    if scale in CAVEATS:
        lines += [f"**{CAVEATS[scale]}**", ""]
    if left_out:
        lines += [f"Studies not run in this invocation (`--only`): {', '.join(left_out)}.", ""]
    lines += [f"**Verdict rule.** {RULE}", "",
              "| finding | verdict | effect [90% CI] | unit | p (test) | n | the paper |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        f = r.finding
        p = f"{_fmt(f.p, '.3g')} ({f.p_test})" if f.p is not None else "–"
        lines.append(f"| {f.title} | **{f.verdict}** | {_fmt(f.effect)} [{_fmt(f.lo)}, {_fmt(f.hi)}] | "
                     f"{f.unit} | {p} | {f.n} | {f.paper} |")
    for r in results:
        f = r.finding
        counts = ", ".join(f"{v} {k}" for k, v in sorted(r.counts.items())) or "no runs"
        lines += ["", f"## {f.title}: {f.verdict}", "",
                  f"- The paper's claim: {f.claim}.", f"- The paper's numbers: {f.paper}.",
                  f"- Statistic (> 0 is the paper's direction): {f.statistic} = **{_fmt(f.effect)}** {f.unit}, "
                  f"{CI:.0%} CI [{_fmt(f.lo)}, {_fmt(f.hi)}]"
                  + (f", p = {_fmt(f.p, '.3g')} ({f.p_test})" if f.p is not None else ""),
                  f"- n: {f.n}. Sweep `{r.sweep}`: {counts}; {r.collapsed} collapsed (never left chance); "
                  f"training time {r.train_s / 60:.1f} min summed over runs.",
                  f"- Details: {f.details}."]
        if err := r.first_error():
            lines.append(f"- A failed run's error: `{err[:300]}`.")
    return "\n".join(lines) + "\n"


def report_html(markdown: str, title: str) -> str:
    """The markdown report as a small self-contained HTML page (tables and headings only)."""
    body, table = [], []

    def flush_table():
        if table:
            head, *rows = [[c.strip() for c in line.strip("|").split("|")] for line in table if "---" not in line]
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                        + "</table>")
            table.clear()

    for line in markdown.splitlines():
        if body and body[-1].startswith("<li>") and not line.startswith("- "):
            body.append("</ul>")
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("- "):
            if not body or not body[-1].startswith("<li>"):
                body.append("<ul>")
            body.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush_table()
    if body and body[-1].startswith("<li>"):
        body.append("</ul>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{padding:3px 8px;border-bottom:1px solid #ddd;font-size:13px;text-align:left}</style></head><body>"
            + "\n".join(body) + "</body></html>")


def _inline(text: str) -> str:
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def write_report(results: list[StudyResult], scale: str, root: str, out: Path,
                 left_out: list[str] = ()) -> tuple[Path, Path]:
    """``out`` + ``.md`` and + ``.html`` (each written to a temp file, then renamed)."""
    md = report_markdown(results, scale, root, left_out)
    return (store.write_text_atomic(out.with_name(out.name + ".md"), md),
            store.write_text_atomic(out.with_name(out.name + ".html"), report_html(md, f"stability reproduce ({scale})")))
