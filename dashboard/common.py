"""The dashboard's one state: results root, filters and page controls, kept across pages and
mirrored in the URL, plus cached loading and readable run labels.

``app.py`` calls ``sidebar()`` before the page runs, so the root and the filters are widgets of
the entry script: they are drawn on every page and never reset by navigation. Page controls use
keys starting with ``p_`` that ``keep_page_state`` carries over page switches. Every value that
differs from its default is written to ``st.query_params``, so the URL is a shareable view; a
page opened by URL restores it once per session.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from stability import analysis, plots, store
from stability.analysis.tables import named_axes

RUN_COLUMNS = ["run_id", "status", "model", "stem", "optimizer", "lr", "wd", "epochs", "batch_size",
               "seed", "dataset", *store.DATA_COLUMNS, "params", "flops", "top1_err", "top5_err", "best_top1_err",
               "ema_top1_err", "test_top1_err", "test_ema_top1_err", "final_train_loss", "collapsed", "init_top1_err",
               "diverged_at_step", "pruned_at_step", "prune_rule", "n_spikes",
               "wall_time_s", "device", "slurm_job_id", "started_at", "finished_at", "error"]
# "data": where runs of one sweep recorded other data (analysis.with_design), else no such column
FILTERS = ("sweep", "model", "stem", "optimizer", "epochs", "dataset", "data", "status")
COUNT_COLUMNS = {*store.RunStatus, "runs", "collapsed", "planned", "total", "epochs", "seed", "batch_size",
                 "diverged_at_step", "pruned_at_step"}
PAGE_PREFIX = "p_"


@dataclass(frozen=True)
class Settings:
    root: Path  # the results root the server was started on
    allow_browse: bool  # may the sidebar point at any folder (else only folders under root)


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md(text: object) -> str:
    r"""``text`` from a results file as literal Markdown on one line: every character Streamlit's
    Markdown acts on (links, images, emphasis, ``:color[]`` directives, ``$`` math, HTML) is
    backslash-escaped, so a planted name shows as itself, never as a link or an image.

    >>> md("![x](https://e.vil/p.png) a_b")
    '\\!\\[x\\]\\(https\\://e\\.vil/p\\.png\\) a\\_b'
    """
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).split()))


def settings() -> Settings:
    """From ``streamlit run dashboard/app.py -- --results PATH [--allow-browse]`` or the
    ``STABILITY_RESULTS`` / ``STABILITY_ALLOW_BROWSE`` environment (``stability dashboard``)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--results")
    parser.add_argument("--allow-browse", action="store_true")
    args, _ = parser.parse_known_args(sys.argv[1:])
    root = args.results or os.environ.get("STABILITY_RESULTS") or "results"
    browse = args.allow_browse or os.environ.get("STABILITY_ALLOW_BROWSE", "") not in ("", "0")
    return Settings(Path(root).expanduser().resolve(), browse)


def candidate_roots(base: Path, depth: int = 2) -> list[Path]:
    """``base`` and the folders under it (``depth`` levels) that hold a ``runs/`` folder, each
    confined by its resolved path: a symlink inside the root that leads out of it (to the folder
    or to its ``runs/``) is not offered, so no link can show data from outside the root."""
    base = base.resolve()

    def inside(p: Path) -> bool:
        try:
            return p.resolve(strict=True).is_relative_to(base)
        except (OSError, RuntimeError):  # gone, or a symlink loop
            return False

    found = [base]
    frontier = [base]
    for _ in range(depth):
        nxt = []
        for d in frontier:
            try:
                children = sorted(p for p in d.iterdir()
                                  if p.is_dir() and not p.name.startswith((".", "_")) and inside(p))
            except OSError:
                continue
            for c in children:
                if c.name in store.TABLES:
                    continue
                if (c / "runs").is_dir() and inside(c / "runs"):
                    found.append(c)
                nxt.append(c)
        frontier = nxt
    return found


def _restore_from_url(key: str, options: list | None = None) -> None:
    """Once per session: a query parameter sets the widget state (only to allowed values)."""
    if key in st.session_state or key not in st.query_params:
        return
    raw = st.query_params.get_all(key)
    if options is None:
        st.session_state[key] = raw[0]
        return
    by_text = {str(o): o for o in options}
    chosen = [by_text[v] for v in raw if v in by_text]
    if chosen:
        st.session_state[key] = chosen


def keep_page_state() -> None:
    """Page widgets are dropped from the session when their page is left; re-assigning their
    values keeps them (Streamlit's documented workaround), so a page looks as it was left."""
    for k in list(st.session_state):
        if isinstance(k, str) and k.startswith(PAGE_PREFIX):
            st.session_state[k] = st.session_state[k]


def _root_picker(cfg: Settings) -> Path:
    if cfg.allow_browse:
        _restore_from_url("root")
        st.session_state.setdefault("root", str(cfg.root))
        st.sidebar.text_input("Results root", key="root",
                              help="Any folder with runs/, epochs/, steps/, grad_norms/ (--allow-browse)")
        return Path(st.session_state["root"]).expanduser()
    roots = candidate_roots(cfg.root) if cfg.root.is_dir() else [cfg.root]
    labels = [str(p.relative_to(cfg.root)) if p != cfg.root else str(cfg.root) for p in roots]
    asked = st.query_params.get("root")
    if asked and asked not in labels and "root" not in st.session_state:
        st.sidebar.warning(f"The link asks for results root `{asked}`, which this dashboard does not "
                           f"serve: it shows `{cfg.root}` and folders under it (start it with "
                           "--allow-browse to open any folder).")
    if len(roots) == 1:
        st.sidebar.caption(f"Results root: `{cfg.root}`")
        return cfg.root
    if "root" in st.session_state and st.session_state["root"] not in labels:
        del st.session_state["root"]
    if "root" not in st.session_state and st.query_params.get("root") in labels:
        st.session_state["root"] = st.query_params.get("root")
    choice = st.sidebar.selectbox("Results root", labels, key="root",
                                  help=f"Folders under {cfg.root} that hold runs/ (start the dashboard "
                                       "with --allow-browse to open any folder)")
    return roots[labels.index(choice)]


def _multiselect(col: str, values: list) -> list:
    """A filter over ``values`` (all chosen by default). A selection that was "all" stays "all"
    when new values appear (a live sweep gains a stem, say)."""
    key, seen = f"f_{col}", f"_seen_{col}"
    _restore_from_url(key, values)
    prev_all = st.session_state.get(seen)
    if key in st.session_state:
        kept = [v for v in st.session_state[key] if v in values]
        was_all = prev_all is not None and set(map(str, st.session_state[key])) >= set(map(str, prev_all))
        st.session_state[key] = values if was_all else kept
    else:
        st.session_state[key] = values
    st.session_state[seen] = values
    return st.sidebar.multiselect(col, values, key=key, format_func=str)


def sidebar() -> None:
    """Draw the root and filter widgets (from ``app.py``, before the page)."""
    cfg = settings()
    root = _root_picker(cfg)
    st.session_state["_root_path"] = str(root)
    runs = peek_runs(root)
    if runs is not None and len(runs):
        st.sidebar.markdown("**Filters** (all pages)")
        single = []
        for col in FILTERS:
            if col not in runs:  # (data: only where a sweep mixed data) no stale selection to come back later
                st.session_state.pop(f"f_{col}", None), st.session_state.pop(f"_seen_{col}", None)
                continue
            values = sorted(runs[col].dropna().unique().tolist(), key=lambda v: (str(type(v)), v))
            if values and runs[col].isna().any():  # a missing value is one to keep or leave out, never dropped unasked
                values.append(_missing_name(col))
            if len(values) <= 1:
                single += [f"{col} {values[0]}"] if values else []
                continue
            _multiselect(col, values)
        if single:
            st.sidebar.caption("One value only, so no filter: " + md(", ".join(single)))


def sync_url() -> None:
    """Mirror the state in the URL (from ``app.py``, after the page): the root when it is not
    the default, filters that do not hold every value, page controls away from their default."""
    cfg = settings()
    params: dict[str, list[str] | str] = {}
    root = st.session_state.get("root")
    if root is not None and root != str(cfg.root):
        params["root"] = root
    for col in FILTERS:
        key, seen = f"f_{col}", f"_seen_{col}"
        if key in st.session_state and seen in st.session_state \
                and len(st.session_state[key]) != len(st.session_state[seen]):
            params[key] = [str(v) for v in st.session_state[key]]
    defaults = st.session_state.get("_page_defaults", {})
    for k in st.query_params:  # controls of pages not drawn yet this session: those pages read them
        if k.startswith(PAGE_PREFIX) and k not in st.session_state:
            params[k] = st.query_params.get_all(k)
    for k, default in defaults.items():
        if k in st.session_state and st.session_state[k] != default:
            v = st.session_state[k]
            params[k] = [str(x) for x in v] if isinstance(v, list) else str(v)
    # Written on every run: after a click in the page menu the browser's URL has lost its query
    # while the server's copy still holds it, so "unchanged" cannot be trusted.
    st.query_params.from_dict(params)
    from urllib.parse import urlencode

    with st.sidebar.expander("share this view"):
        path = st.session_state.get("_page_path", "")
        st.code(f"/{path}" + (f"?{urlencode(params, doseq=True)}" if params else ""), language=None)
        st.caption("Append to the dashboard's address: it opens this page with these filters and controls.")


def _from_url(key: str, default):
    if isinstance(default, list):
        return st.query_params.get_all(key)
    raw = st.query_params.get(key)
    if isinstance(default, bool):
        return raw == "True"
    try:
        return type(default)(raw)
    except (TypeError, ValueError):
        return default


def control(widget, label: str, *args, key: str, default, **kwargs):
    """A page control whose value survives navigation and is mirrored in the URL: ``widget`` is a
    Streamlit function (st.radio, st.slider, st.multiselect ...), ``key`` starts with ``p_``;
    ``default`` is the value when neither the session nor the URL sets one. A value the options
    no longer hold (filters changed) falls back to the default."""
    assert key.startswith(PAGE_PREFIX), key
    st.session_state.setdefault("_page_defaults", {})[key] = default
    if key not in st.session_state:
        st.session_state[key] = _from_url(key, default) if key in st.query_params else default
    options = args[0] if args and isinstance(args[0], list | tuple) else None
    value = st.session_state[key]
    if options is not None:
        if isinstance(default, list):
            st.session_state[key] = [v for v in value if v in options]
            if gone := [v for v in value if v not in options]:  # a shared link's run since deleted, say
                st.info(f"{md(label)}: {len(gone)} value(s) not offered here, left out (gone, or outside the "
                        f"sidebar's filters): {md(', '.join(str(v)[:80] for v in gone[:5]))}"
                        + (" …" if len(gone) > 5 else ""))
        elif value not in options:
            st.session_state[key] = default
    elif isinstance(default, int | float) and not isinstance(default, bool) and len(args) >= 2:
        lo, hi = args[0], args[1]
        if not isinstance(value, int | float) or not lo <= value <= hi:
            st.session_state[key] = default
    return widget(label, *args, key=key, **kwargs)


def root() -> Path:
    return Path(st.session_state.get("_root_path") or settings().root)


@st.cache_data(show_spinner=False, max_entries=4)
def _load_runs(root: str, sig: tuple) -> tuple[pd.DataFrame, list[str]]:
    errors: list[str] = []
    runs = store.read_table(root, "runs", columns=[*RUN_COLUMNS, "config_json"], errors=errors)
    if len(runs):
        runs["label"] = run_labels(runs)
        runs["key"] = run_key(runs)
        # the strata every view groups by (image_size, fix ... where they vary), read once here: the
        # views' subsets keep with_design's marker, so none parses the configs again
        runs = analysis.with_design(runs).drop(columns="config_json")
    return runs, errors


def run_key(t: pd.DataFrame) -> pd.Series:
    """"sweep/run_id" per row: what names a run here (one run id can sit in two sweeps)."""
    return t["sweep"].astype(str) + "/" + t["run_id"]


def rows_of(t: pd.DataFrame, key: str) -> pd.DataFrame:
    """The rows of one run (``run_key``) in a table of several."""
    return t[run_key(t) == key] if len(t) else t


def peek_runs(root: Path) -> pd.DataFrame | None:
    """The runs table without any message (None when the root has none)."""
    if not (root / "runs").is_dir():
        return None
    return _load_runs(str(root), store.signature(root, "runs"))[0]


def load_runs(where: Path | None = None) -> pd.DataFrame | None:
    """All runs of the root, or None after telling the user what is wrong with it."""
    where = where or root()
    if not where.exists():
        st.warning(f"No results at `{where}`: the folder does not exist. Run a sweep "
                   f"(`stability grid run grids/smoke.yaml`) or start the dashboard on another root.")
        return None
    if not (where / "runs").is_dir():
        st.warning(f"`{where}` holds no `runs/` folder. Expected stability's layout: "
                   f"`{where}/runs/sweep=<name>/<run_id>.parquet` (and epochs/, steps/, grad_norms/).")
        return None
    runs, errors = _load_runs(str(where), store.signature(where, "runs"))
    if errors:
        st.error(f"{len(errors)} unreadable file(s) under `{where}` were skipped: "
                 + md("; ".join(e.split(':')[0] for e in errors[:3])) + (" …" if len(errors) > 3 else ""))
    if runs.empty:
        st.info(f"`{where}` has no runs yet. Expected `{where}/runs/sweep=<name>/<run_id>.parquet`.")
        return None
    return runs


def _missing_name(col: str) -> str:
    """A filter's option for the runs whose ``col`` is missing: "no stem" (a RegNet, as the
    figures name it), else "n/a" (as the tables name a missing value)."""
    from stability.analysis.grouping import NO_STEM
    from stability.analysis.tables import value_text

    return NO_STEM if col == "stem" else value_text(None)


def apply_filters(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs the sidebar's filters keep (a run whose value is missing: where the filter's
    option for it, ``_missing_name``, is chosen; ``isin`` alone would drop it always)."""
    out = runs
    for col in FILTERS:
        key = f"f_{col}"
        if key in st.session_state and col in out:
            chosen = st.session_state[key]
            keep = out[col].isin(chosen)
            if _missing_name(col) in chosen:
                keep |= out[col].isna()
            out = out[keep]
    return out


def selected_runs() -> pd.DataFrame | None:
    """The filtered runs (None, with a message, when there are none to show)."""
    runs = load_runs()
    if runs is None:
        return None
    out = apply_filters(runs)
    if out.empty:
        st.info(f"The sidebar's filters leave none of the {len(runs)} runs.")
        return None
    return out


def _num(v: float) -> str:
    if pd.isna(v):
        return "?"
    return f"{int(v)}" if 100 <= abs(v) < 1e6 and float(v).is_integer() else f"{v:.3g}"  # lr 1e38: no 39 digits


def run_labels(runs: pd.DataFrame) -> pd.Series:
    """sweep · stem · optimizer · lr · wd · epochs (· seed when seeds vary) per run."""
    seeds = runs["seed"].nunique() > 1 if "seed" in runs else False

    def text(col: str) -> pd.Series:
        return runs[col].astype(object).where(runs[col].notna(), "-").map(str)

    # a RegNet has no stem: named as every figure names it (never a NaN label)
    parts = [text("sweep"), plots.named_stems(runs[["stem"]])["stem"].map(str), text("optimizer"),
             "lr " + runs["lr"].map(_num), "wd " + runs["wd"].map(_num),
             runs["epochs"].map(lambda e: f"{int(e)} ep" if pd.notna(e) else "? ep")]
    if runs["model"].nunique() > 1:
        parts.insert(1, text("model"))
    if seeds:
        parts.append("seed " + runs["seed"].astype(str))
    out = parts[0]
    for p in parts[1:]:
        out = out + " · " + p
    return out


@st.cache_data(show_spinner=False, max_entries=4)
def _load_run_columns(root: str, columns: tuple[str, ...], sig: tuple) -> pd.DataFrame:
    return store.read_table(root, "runs", columns=list(columns))


def with_run_columns(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``runs`` with more columns of the runs table than the pages load (config_json, the
    validation losses ...): read once per change of the table; a column older results lack is null."""
    where = root()
    extra = _load_run_columns(str(where), tuple(columns), store.signature(where, "runs"))
    extra = extra.reindex(columns=["sweep", "run_id", *columns])
    out = runs.drop(columns=[c for c in columns if c in runs]).merge(extra, on=["sweep", "run_id"], how="left")
    out.attrs = runs.attrs  # the same rows, more columns: with_design's marker still holds (a merge drops it)
    return out


@st.cache_data(show_spinner=False, max_entries=8)
def load_attention(root: str, run_ids: tuple[str, ...], sig: tuple) -> pd.DataFrame:
    """Per traced step, the max over layers of the attention logit of the runs ``run_ids`` (what
    ``analysis.attn_logit_at`` reads), reduced before it is cached: the per-layer rows of 10,000
    runs are ~20M, their traced maxima a few thousand; empty for results that predate it."""
    gn = store.read_table(root, "grad_norms", columns=["step", "attn_logit_max"], run_ids=list(run_ids))
    gn = gn[gn["attn_logit_max"].notna()]
    return gn.groupby(["sweep", "run_id", "step"], observed=True, as_index=False)["attn_logit_max"].max()


@st.cache_data(show_spinner=False, max_entries=32)
def load_run_tables(root: str, run_ids: tuple[str, ...], sig: tuple) -> dict[str, pd.DataFrame]:
    """Epochs, steps and grad norms of a few runs (filtered in parquet, never the whole table)."""
    ids = list(run_ids)
    return {
        "epochs": store.read_table(root, "epochs", run_ids=ids),
        "steps": store.read_table(root, "steps", columns=["step", "epoch", "loss", "lr", "grad_norm"], run_ids=ids),
        "grad_norms": store.read_table(root, "grad_norms", columns=["step", "layer", "depth", "grad_norm"], run_ids=ids),
    }


def run_tables(keys: list[str]) -> dict[str, pd.DataFrame]:
    """Epochs, steps and grad norms of the runs ``keys`` ("sweep/run_id", the runs table's ``key``)."""
    where = root()
    sig = tuple(store.signature(where, t) for t in ("steps",))
    ids = sorted({k.split("/", 1)[1] for k in keys})
    tables = load_run_tables(str(where), tuple(ids), sig)
    wanted = set(keys)
    return {name: t[run_key(t).isin(wanted)] if len(t) else t for name, t in tables.items()}


@st.cache_data(show_spinner=False, max_entries=16)
def cached_edf(runs: pd.DataFrame, by: tuple[str, ...], relative: bool, pruned: str = "diverged") -> pd.DataFrame:
    """``analysis.edf`` with its bootstrap bands, cached on the (filtered) runs table; ``pruned``:
    how it scores pruned runs (``analysis.edf.PRUNED_AS``)."""
    from stability import analysis

    return analysis.edf(runs, by=list(by), relative=relative, pruned=pruned)  # else the library's defaults


@st.cache_data(show_spinner=False, max_entries=16)
def cached_verdicts(runs: pd.DataFrame) -> pd.DataFrame:
    """``analysis.stem_verdicts``: the stem comparison per stratum, with a verdict only where one
    means something (the same rows ``stability report`` prints)."""
    from stability import analysis

    return analysis.stem_verdicts(runs)


VERDICT_RUNS = 3000  # above this the permutation tests wait for a click


def whole_name(runs: pd.DataFrame) -> str:
    """The name of a selection with no stratum: its sweep(s), as the report names it."""
    sweeps = sorted(runs["sweep"].dropna().astype(str).unique()) if "sweep" in runs else []
    return ("sweep " + ", ".join(sweeps)) if sweeps else "all runs"


def verdict_lines(runs: pd.DataFrame, key: str, ready: bool = False) -> pd.DataFrame | None:
    """One bullet per stratum (its verdict, effect, n and why), shared by Overview and EDF; None
    while a large selection waits for its button (``ready``: the page already asked)."""
    from stability import analysis

    if not ready and len(runs) > VERDICT_RUNS and not st.button(
            f"Compute the stem verdicts for {len(runs):,} runs (bootstrap and permutation tests: seconds)", key=key):
        return None
    v = cached_verdicts(runs)
    if v.empty:
        st.info("Only one stem in the selection: there is nothing to compare.")
        return v
    strata_cols = analysis.strata(runs)  # stem_verdicts' strata
    named = named_axes(runs, strata_cols)  # a bullet names what tells it apart, not every setting of its sweep
    for _, row in v.iterrows():
        where = analysis.group_text({c: row[c] for c in named}) if named else whole_name(runs)
        line = md(analysis.verdict_line(row))
        st.markdown(f"- **{md(where)}**: " + (f":gray[{line}]" if row["verdict"] == "none" else line))
    return v


@st.cache_data(show_spinner=False, max_entries=16)
def cached_compare(runs: pd.DataFrame, relative: bool) -> pd.DataFrame:
    from stability import analysis

    return analysis.compare(runs, by="stem", relative=relative)  # the library's defaults, as a notebook gets


def sweep_label(runs: pd.DataFrame) -> str:
    sweeps = sorted(runs["sweep"].dropna().unique().tolist())
    return ", ".join(sweeps) if len(sweeps) <= 3 else f"{len(sweeps)} sweeps"


def answers_first(df: pd.DataFrame, strata: Sequence[str]) -> pd.DataFrame:
    """``df`` with the ``strata`` columns that tell no rows apart beyond those before them (two
    sweeps' batch sizes, EMA, test split: the sweeps') moved to the end, after the answers: every
    column kept, the ones that matter on screen."""
    strata = [c for c in strata if c in df.columns]
    if not strata or df.empty:
        return df
    named = named_axes(df, strata)
    later = [c for c in strata if c not in named]
    return df[[c for c in df.columns if c not in later] + later]



def table(df: pd.DataFrame, key: str | None = None, whole: bool = False, strata: Sequence[str] = (),
          **kwargs) -> None:
    """A dataframe at readable precision (errors to 0.01 point, rates to 3 digits), fitting the page;
    ``whole``: tall enough to show every row (no scroll box that hides rows); ``strata``: the
    grouping columns, the redundant ones shown last (``answers_first``)."""
    df = answers_first(df, strata)
    config = {}
    for c in df.columns:
        if pd.api.types.is_float_dtype(df[c]):
            v = df[c].dropna()
            if len(v) and v.abs().max() >= 2 ** 53:  # past the browser's exact integers (an lr of 1e38):
                df = df.assign(**{c: df[c].map(_num)})  # Streamlit greys such a number cell as unsupported
            elif c in COUNT_COLUMNS or c == "n" or c.startswith("n_"):
                config[c] = st.column_config.NumberColumn(c, format="%d")
            else:
                small = v.abs().max() < 1e-2 if len(v) else False
                config[c] = st.column_config.NumberColumn(c, format="%.3g" if small or c in ("lr", "wd") else "%.2f")
    if whole:
        kwargs.setdefault("height", 38 + 35 * len(df))
    st.dataframe(df, hide_index=True, width="stretch", column_config=config, key=key, **kwargs)


@st.cache_data(show_spinner=False, max_entries=16)
def spec_ranges(where: str, sweeps: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """The sampling ranges of lr and wd in the sweeps' saved specs (their union), where they
    sample them; {} for sweeps without a record or with listed values."""
    from stability.grid.record import sampled_ranges

    return sampled_ranges(where, list(sweeps))
