"""Overview: the findings first (per stratum and stem how the runs ended, the stem verdicts, and
the verdicts of the last ``stability reproduce`` on this root), then per sweep what is planned, pending, running, done, diverged, pruned and failed (from the
sweep's own record: plan and job ledger), ETA, failures with their error and log tail; it
refreshes every 5 s while runs are live."""

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from stability import analysis, plots
from stability.dashboard.common import (
    md,
    peek_runs,
    root,
    selected_runs,
    table,
    verdict_lines,
    whole_name,
)
from stability.grid.record import sweep_record
from stability.store import RunStatus as S

st.title("stability: is ViT_C more stable than ViT_P?")


ORDER = tuple(map(str, S))


@st.cache_data(show_spinner=False, ttl=5)
def _status(where: str, sweep: str) -> dict | None:
    try:
        return sweep_record(where, sweep)
    except Exception as e:  # a broken record must not hide the rest of the page
        return {"broken": f"{type(e).__name__}: {e}"}


REPRODUCE_FIELDS = ("title", "verdict", "effect", "lo", "hi", "unit", "p", "p_adj", "n_text", "mde", "paper_effect",
                    "reason")


@st.cache_data(show_spinner=False, ttl=30)
def _reproduce_reports(where: str) -> list[tuple[str, dict]]:
    """The verdicts ``stability reproduce`` wrote under ``<root>/reproduce/`` (``<scale>.json``):
    plain JSON, read as data only (never trusted for a path), malformed files skipped."""
    folder = Path(where) / "reproduce"
    out = []
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix == ".json" and p.is_file() and not p.is_symlink())
    except OSError:
        return out
    for path in files[:10]:
        try:
            rep = json.loads(path.read_text()[:1_000_000])
            if isinstance(rep, dict) and isinstance(rep.get("findings"), list):
                out.append((path.name, rep))
        except (OSError, ValueError):
            continue
    return out


def _fmt(v, spec: str = "+.2f") -> str:
    return format(v, spec) if isinstance(v, int | float) and v == v and abs(v) != float("inf") else "n/a"


def findings(runs: pd.DataFrame) -> None:
    """How each stem's runs ended per stratum, the flags, and the verdicts."""
    st.subheader("Findings: how each stem's runs ended")
    strata_cols = analysis.strata(runs)  # stem_outcomes' strata, named
    t = analysis.stem_outcomes(runs, by=strata_cols)
    if t.empty:
        st.info("No finished run yet: nothing to judge.")
        return

    named = analysis.tables.named_axes(runs, strata_cols)  # a flag names what tells it apart, not every setting of its sweep

    def where(r) -> str:
        return analysis.group_text({c: r[c] for c in named}) if named else whole_name(runs)

    flags = []
    # dropna=False: a stratum whose value is missing is flagged too ("n/a"), never skipped
    for _, part in (t.groupby(strata_cols, observed=True, sort=True, dropna=False) if strata_cols else [((), t)]):
        dead = part[part.never_left_chance]
        if len(dead) and len(dead) == len(part):
            whose = "every stem" if len(part) > 1 else f"its only stem ({md(part['stem'].iloc[0])})"
            flags.append(f"**{md(where(part.iloc[0]))}**: every run of {whose} sits at chance, diverged or was pruned: "
                         "no stem learned, so nothing here says which is more stable.")
        for _, r in dead.iterrows() if len(dead) != len(part) else []:
            flags.append(f"**{md(where(r))} · {md(r['stem'])}**: 0 of {int(r['runs'])} runs left chance "
                         f"({int(r['at_chance'])} at chance, {int(r['diverged'])} diverged"
                         + (f", {int(r['pruned'])} pruned" if r["pruned"] else "") + "; median error "
                         f"{r['median_err']:.1f}%, chance {_fmt(r['chance_err'], '.1f')}%).")
    if "data" in strata_cols and (note := analysis.grouping.mixed_data_note(analysis.grouping.data_mix(runs))):
        flags.insert(0, f"Some {md(note)}.")
    for f in flags:
        st.warning(f)
    shown = t.drop(columns=["never_left_chance"]).assign(
        **{"left chance": t.never_left_chance.map({True: "never", False: "yes"})})
    table(shown, key="overview_findings", whole=True, strata=strata_cols)
    st.caption("Per stratum (sweep, optimizer, epochs …: never pooled) and stem. runs: finished (completed, "
               "diverged or pruned); pruned: stopped early by the run's pruner as doomed (counted apart, never as "
               "completed); at_chance: completed with an error ≥ 0.9 × the error at init (the report's rule); "
               "learned: the rest; median_err and best_err count diverged and pruned runs at 100%; chance_err: "
               "the error at init; left_out: failed, preempted or running.")
    st.markdown("**Stem verdicts** (median error b − a, 90% bootstrap interval; permutation test, Holm over "
                "strata at 10%; none where a side has fewer than 4 runs or both stems sit at chance)")
    verdict_lines(runs, key="overview_verdicts")
    reports = _reproduce_reports(str(root()))
    for name, rep in reports:
        rows = [{k: f.get(k) for k in REPRODUCE_FIELDS} for f in rep["findings"] if isinstance(f, dict)]
        if not rows:
            continue
        st.markdown(f"**The paper's findings** (`stability reproduce`, {md(str(rep.get('scale', name))[:40])}, "
                    f"written {md(str(rep.get('written_at', '?'))[:19])}):")
        df = pd.DataFrame(rows)
        df["effect [90% CI]"] = [f"{_fmt(r.effect)} [{_fmt(r.lo)}, {_fmt(r.hi)}] {r.unit or ''}" for r in df.itertuples()]
        df["p → Holm"] = [f"{_fmt(r.p, '.3g')} → {_fmt(r.p_adj, '.3g')}" for r in df.itertuples()]
        table(df[["title", "verdict", "effect [90% CI]", "p → Holm", "n_text", "mde", "paper_effect", "reason"]]
              .rename(columns={"n_text": "n", "paper_effect": "paper"}), key=f"overview_repro_{name}", whole=True)


def body() -> None:
    runs = selected_runs()
    if runs is None:
        return
    findings(runs)
    st.subheader("Sweeps")
    finished = pd.to_datetime(runs["finished_at"], utc=True).max()
    c = st.columns(6)
    c[0].metric("sweeps", runs.sweep.nunique())
    c[1].metric("runs", len(runs))
    for col, s in zip(c[2:], (S.DIVERGED, S.PRUNED, S.FAILED, S.RUNNING), strict=True):
        col.metric(s, int(runs.status.eq(s).sum()))
    st.caption("Last result: " + ("none yet" if pd.isna(finished) else finished.strftime("%Y-%m-%d %H:%M UTC")))
    rows, failures = [], []
    for sweep in sorted(runs.sweep.dropna().unique()):
        rep = _status(str(root()), sweep)
        logs: dict = {}
        mine = runs[runs.sweep == sweep]
        if rep is None or "broken" in rep:
            counts = mine.status.value_counts()
            row = {"sweep": sweep, "planned": "", **{s: int(counts.get(s, 0)) for s in ORDER}, "ETA": ""}
            row["note"] = rep["broken"] if rep else "no sweep record (runs of stability train)"
        else:
            row = {"sweep": sweep, "planned": str(rep["planned"]), **{s: rep["counts"].get(s, 0) for s in ORDER}}
            row["ETA"] = f"{rep['eta_s'] / 60:.0f} min" if rep["eta_s"] else ""
            row["note"] = ""
            logs = {f["run_id"]: f["log"] for f in rep["failures"]}
            failures += [dict(f, sweep=sweep, error=f"lost: job {f['job_id']} ended without a result")
                         for f in rep["lost"]]
        for r in mine[mine.status == S.FAILED].itertuples():
            failures.append({"sweep": sweep, "stem": r.stem, "run_id": r.run_id, "label": r.label,
                             "error": r.error, "log": logs.get(r.run_id, "") if rep and "broken" not in rep else ""})
        rows.append(row)
    table(pd.DataFrame(rows), key="overview_sweeps", whole=True)
    st.caption("From each sweep's files (`_sweeps/<sweep>/`: plan, job ledger, the controller's lease, each "
               "run's lock), never the scheduler: running = a live process holds the run; pending = not started "
               "(submitted while a controller watches the sweep, or not submitted yet); missing = its job was "
               "submitted but no controller watches it and it has no result (`grid run` resubmits it; `grid "
               "status` asks the scheduler).")
    if failures:
        st.subheader(f"Failures ({len(failures)})")
        for f in failures:
            name = f.get("label") or f"{f['sweep']} · {f['run_id']}"
            with st.expander(md(f"{name}: {str(f['error'])[:120]}")):
                st.code(f["error"] or "", language=None)
                if f.get("log"):
                    st.caption("log tail")
                    st.code(f["log"], language=None)
                else:
                    st.caption("No job log for this run (it ran outside a grid, or its logs were cleaned).")
    st.subheader("Runs per sweep, stem and status")
    # named_stems: a RegNet (no stem) is counted under "no stem", where a groupby would drop it
    counts = analysis.grouping.named_stems(runs).groupby(["sweep", "stem", "status"], observed=True).size()
    counts = counts.rename("n").reset_index()
    st.plotly_chart(plots.status_figure(counts), width="stretch", key="overview_chart")
    t = counts.pivot_table(index=["sweep", "stem"], columns="status", values="n", fill_value=0)
    table(t.reset_index(), key="overview_status")
    live = int(runs.status.eq(S.RUNNING).sum())
    if live:
        st.caption(f"{live} run(s) running: this page refreshes every 5 s.")


# Refresh while a sweep is running (the cache key changes with every written file).
peek = peek_runs(root())
running_now = peek is not None and bool(peek.status.eq(S.RUNNING).any())
(st.fragment(run_every=5)(body) if running_now else body)()
