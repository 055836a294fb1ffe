"""Which columns group runs: the design axes a study varies on purpose (never pooled silently)."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..store import DATA_COLUMNS, DONE

# Axes a study varies on purpose that must never be pooled silently (lr, wd and seeds are the
# distribution itself and are never strata).
DESIGN_AXES = ("sweep", "size", "dataset", "optimizer", "epochs", "batch_size", "warmup_epochs")
# Columns that identify the same point of a paired design across stems.
PAIR_KEYS = ("sweep", "size", "dataset", "data", "optimizer", "epochs", "batch_size", "warmup_epochs",
             "lr", "wd", "seed")
# ``DATA_COLUMNS`` (store's; null in older rows) make the ``data`` stratum where they differ among
# runs that should share their data (data_root is not in the run id: a sweep rerun with another
# data_root mixes two datasets under one name).
UNRECORDED = "unrecorded"
# What makes runs' data differ on purpose: another sweep or dataset, a test split held out, another
# synthetic size (config fields are columns here where they vary: ``with_design``)
DATA_KEYS = ("sweep", "dataset", "test_split", "synthetic_size")


NO_STEM = "no stem"  # a RegNet's: its own series in every figure and line, never NaN (a groupby drops it)


def stem_name(stem) -> str:
    """One run's stem in words.

    Args:
        stem: a runs row's ``stem`` (None or NaN for a RegNet).

    Returns:
        The stem, or :data:`NO_STEM` for a missing one.

    >>> stem_name("conv"), stem_name(None)
    ('conv', 'no stem')
    """
    return stem if isinstance(stem, str) else NO_STEM


def named_stems(df: pd.DataFrame) -> pd.DataFrame:
    """Runs with a name for a missing stem.

    Args:
        df: runs (or a table of them) with a ``stem`` column.

    Returns:
        ``df`` with a missing ``stem`` as :data:`NO_STEM`; ``df`` itself when none is missing.
    """
    if "stem" not in df or not df["stem"].isna().any():
        return df
    return df.assign(stem=df["stem"].astype(object).where(df["stem"].notna(), NO_STEM))


def require(df: pd.DataFrame, columns: Sequence[str], table: str) -> None:
    """Refuse a frame that is not the table a function reads, in words (a notebook that passes
    ``res.epochs`` where ``res.runs`` is meant gets this, not a bare ``KeyError``).

    Args:
        df: the frame given.
        columns: the columns the function reads.
        table: the ``store.load`` table meant ("runs", "grad_norms" ...).

    Returns:
        None; raises ``ValueError`` naming the missing columns and the table meant.

    >>> require(pd.DataFrame({"x": [1]}), ["status"], "runs")
    Traceback (most recent call last):
    ...
    ValueError: not a runs table: no column 'status' (it has 'x'); pass store.load(root).runs
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"not a {table} table: a {type(df).__name__}; pass store.load(root).{table}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        names = [repr(c) for c in df.columns]  # the first few, to say what was passed
        has = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        raise ValueError(f"not a {table} table: no column {', '.join(map(repr, missing))} (it has {has or 'none'}); "
                         f"pass store.load(root).{table}")


def with_size(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with their model size.

    Args:
        runs: the runs table.

    Returns:
        ``runs`` with a ``size`` column: the model without its stem (vit_c_tiny -> vit_tiny);
        ``runs`` itself when it has one already or has no ``model``.
    """
    if "size" in runs.columns or "model" not in runs.columns:
        return runs
    size = runs["model"].astype("string").str.replace(r"^vit_[pc]_", "vit_", regex=True)
    return runs.assign(size=size)


def with_design(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with every column their strata need.

    Args:
        runs: the runs table.

    Returns:
        ``with_size(runs)``, plus a column per config field that varies among the runs besides
        the ``DESIGN_AXES`` (image size, label smoothing, momentum, pruner ...: read from
        ``config_json``, a field an older config lacks as its default), and ``fix`` when the
        fixes vary. Left out, as never strata: lr, wd and the seed (the distribution itself),
        the execution fields (where and how a run executes), and fields another column carries
        (model -> size, stem, the fix fields -> fix). Two ad-hoc runs at different image sizes
        in one sweep are two strata, never one group; so are runs that should share their data
        (``DATA_KEYS``) whose rows record other data (``data``: a sweep rerun with a data_root of
        another dataset).
    """
    return _design(runs)[0]


def _design(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[dict] | None]:
    """``with_design``'s work, and the configs it parsed (None when it parsed none)."""
    done = runs.attrs.get(_DESIGN)
    if done and len(runs) <= done[0] and set(done[1]) <= set(runs.columns):
        return runs, None  # done already, or a subset of such a frame (which cannot add a varying field)
    df = with_size(runs)
    if "config_json" not in df.columns or not len(df):
        return _with_data(df), None
    cfgs = _configs(df)
    if "fix" not in df.columns and len(set(fixes := [fix_of(c) for c in cfgs])) > 1:
        df = df.assign(fix=fixes)
    extra = {k: _groupable(v) for k, v in _varying_fields(cfgs, set(df.columns) | set(NOT_STRATA)).items()}
    if "z_loss" not in df.columns and (z := _z_losses(cfgs)) is not None:
        extra["z_loss"] = z  # two coefficients are two strata, never one "z_loss" fix
    df = df.assign(**extra) if extra else df.copy()
    df = _with_data(df)
    df.attrs[_DESIGN] = (len(df), tuple(c for c in df.columns if c not in runs.columns))
    return df, cfgs


def _with_data(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``data`` column when runs that should share their data (``DATA_KEYS``
    alike) finished on other data (a data_root changed between runs); ``df`` itself otherwise.
    Only finished runs decide (where a ``status`` says so): a failed or running row may record
    data it never trained on. In such a group each run's ``data_label`` (``UNRECORDED`` where its
    row has none); elsewhere the group's one finished data for all its rows, so older rows (null)
    and unfinished ones beside them split nothing."""
    if "data" in df.columns or not set(DATA_COLUMNS) <= set(df.columns):
        return df
    rec = df[list(DATA_COLUMNS)].reset_index(drop=True)
    decides = rec.notna().all(axis=1)
    if "status" in df.columns:
        decides &= df["status"].reset_index(drop=True).isin(list(DONE))
    if rec[decides].drop_duplicates().shape[0] <= 1:  # one data everywhere (or none recorded)
        return df
    label = pd.Series([data_label(*r) for r in rec.itertuples(index=False)])
    keys = [df[k].reset_index(drop=True) for k in DATA_KEYS if k in df.columns]
    decided = label.where(decides)
    groups = decided.groupby(keys, dropna=False, observed=True) if keys else decided.groupby(lambda _: 0)
    mixed = groups.transform("nunique") > 1
    if not mixed.any():
        return df
    one = groups.transform("first").fillna(UNRECORDED)
    return df.assign(data=label.where(mixed, one).to_numpy())


def data_label(classes, train, val) -> str:
    """A runs row's data record in words.

    Args:
        classes, train, val: its ``DATA_COLUMNS`` (null in rows older than the record).

    Returns:
        "10 classes, 1197 train / 300 val", or ``UNRECORDED``.

    >>> data_label(10, 1197, 300)
    '10 classes, 1197 train / 300 val'
    """
    if pd.isna(classes) or pd.isna(train) or pd.isna(val):
        return UNRECORDED
    return f"{int(classes)} classes, {int(train)} train / {int(val)} val"


def data_mix(runs: pd.DataFrame) -> pd.DataFrame:
    """The finished runs on other data than runs that should share theirs (``with_design``'s
    ``data`` stratum).

    Args:
        runs: the runs table (or a selection of it: its ``data`` column is kept).

    Returns:
        Per group (its ``DATA_KEYS`` columns present) and data: ``runs`` finished there, the
        data's ``DATA_COLUMNS`` (null where unrecorded) and, where the runs have ids, ``run_ids``;
        most runs first. No rows when every finished run recorded
        the data of the runs it should share it with.
    """
    df = with_design(runs)
    keys = [k for k in DATA_KEYS if k in df.columns]
    if "data" not in df.columns:
        return pd.DataFrame(columns=[*keys, "data", "runs"])
    flat = df.reset_index(drop=True)
    by = [flat[k] for k in keys]
    varies = flat["data"].groupby(by, dropna=False, observed=True).transform("nunique") > 1 if keys else \
        pd.Series(flat["data"].nunique() > 1, index=flat.index)
    if "status" in flat.columns:
        varies &= flat["status"].isin(list(DONE))
    groups = flat[varies].groupby([*keys, "data"], dropna=False, observed=True)
    n = groups.size().rename("runs").reset_index()
    for col in DATA_COLUMNS if set(DATA_COLUMNS) <= set(flat.columns) else ():  # the label's numbers
        n[col] = groups[col].first().to_numpy()
        n.loc[n["data"].eq(UNRECORDED), col] = None  # a partial record is no record (as the label)
    if "run_id" in flat.columns:
        n["run_ids"] = groups["run_id"].agg(lambda ids: sorted(map(str, ids))).to_numpy()
    return n.sort_values(["runs", *keys, "data"], ascending=[False, *[True] * (len(keys) + 1)], ignore_index=True)


def _mix_where(mix: pd.DataFrame) -> list[str]:
    """The keys (sweep, dataset) that tell ``data_mix``'s groups apart: those with several values."""
    return [k for k in ("sweep", "dataset") if k in mix.columns and mix[k].nunique(dropna=False) > 1]


def _mix_group(where: list[str], key) -> str:
    return ", ".join(f"{k} {v}" for k, v in zip(where, key if isinstance(key, tuple) else (key,), strict=True))


def mixed_data_note(mix: pd.DataFrame | list[dict]) -> str | None:
    """The warning every view gives for runs on different data.

    Args:
        mix: ``data_mix``'s rows (or their records, as ``grid status --json`` has them).

    Returns:
        One sentence naming each data and its run count, per sweep where there are several;
        None when there are none.
    """
    mix = pd.DataFrame(mix) if isinstance(mix, list) else mix
    if not len(mix):
        return None
    where = _mix_where(mix)

    def each(rows: pd.DataFrame) -> str:
        return "; ".join(f"{r.data} ({r.runs} run{'s' if r.runs != 1 else ''})" for r in rows.itertuples())

    listed = " | ".join(f"{_mix_group(where, key)}: {each(g)}"
                        for key, g in mix.groupby(where, sort=True, dropna=False)) if where else each(mix)
    return (f"runs trained on different data: {listed} (did a data_root change between runs? it is not in the "
            "run id); the analyses keep them apart as the 'data' stratum")


def mixed_data_runs(mix: pd.DataFrame | list[dict], limit: int | None = 8) -> list[str]:
    """Each data of ``mixed_data_note`` with its run ids, a line each.

    Args:
        mix: ``data_mix``'s rows (or their records).
        limit: how many run ids a line names at most (None: all).

    Returns:
        "DATA: id, id and k more", named by sweep and dataset where several are mixed; no lines
        when ``mix`` has no run ids.

    >>> mixed_data_runs([{"data": "10 classes, 40 train / 10 val", "runs": 3, "run_ids": ["a", "b", "c"]}], 2)
    ['10 classes, 40 train / 10 val: a, b and 1 more']
    """
    mix = pd.DataFrame(mix) if isinstance(mix, list) else mix
    if "run_ids" not in mix.columns:
        return []
    where = _mix_where(mix)
    out = []
    for r in mix.to_dict("records"):
        ids = list(r["run_ids"])
        shown = ids if limit is None else ids[:limit]
        head = f"{_mix_group(where, tuple(r[k] for k in where))}: " if where else ""
        out.append(f"{head}{r['data']}: {', '.join(map(str, shown))}"
                   + (f" and {len(ids) - len(shown)} more" if len(shown) < len(ids) else ""))
    return out


def _z_losses(cfgs: list[dict]) -> list[float] | None:
    """Each run's z-loss coefficient (0 without) when the runs with z-loss use several; else None."""
    z = [float(_field(c, "z_loss") or 0.0) for c in cfgs]
    return z if len({v for v in z if v > 0}) > 1 else None


_DESIGN = "stability.with_design"  # ``with_design``'s marker on its result: (rows, the columns it added)


def _groupable(vals: list) -> list:
    """``vals`` as a stratum column: unchanged when they share one type, else as text with None
    as "none" (a groupby drops a None key, and cannot sort 17 beside "none")."""
    if None not in vals and len({type(v) for v in vals}) == 1:
        return vals
    return ["none" if v is None else str(v) for v in vals]


def _varying_fields(cfgs: list[dict], skip: set[str]) -> dict[str, list]:
    """Config field -> each run's value (hashable), for the fields not in ``skip`` that vary."""
    from ..config import FIELDS, RunConfig

    skip = skip | set(RunConfig.EXECUTION_FIELDS)
    out = {}
    for k in sorted({k for c in cfgs for k in c} - skip):
        default = FIELDS[k].default if k in FIELDS else None
        default = None if default is dataclasses.MISSING else default
        # a config written before the field existed has its default; a run without a config, None
        vals = [c.get(k, default) if c else None for c in cfgs]
        if all(v == vals[0] for v in vals):  # most fields: one value (cheaper than hashing 10k)
            continue
        vals = [_hashable(v) for v in vals]
        if len(set(vals)) > 1:
            out[k] = vals
    return out


def strata_groups(df: pd.DataFrame, by: Sequence[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """(key, rows) per stratum of ``by``, in sorted order: how the views loop over strata.

    Args:
        df: the table.
        by: its columns to group on; none: the whole table is one stratum.

    Returns:
        One (key, rows) per stratum, the key a tuple of ``by``'s values (``()`` for no ``by``). A
        missing value is a stratum of its own ("n/a"; pandas' default drops it); ``stratum_rows``
        matches such a key back.

    >>> [(k, len(g)) for k, g in strata_groups(pd.DataFrame({"a": [1, None, 1]}), ["a"])]
    [((1.0,), 2), ((nan,), 1)]
    """
    by = list(by)
    if not by:
        return [((), df)]
    return [(k if isinstance(k, tuple) else (k,), g) for k, g in df.groupby(by, observed=True, sort=True, dropna=False)]


def stratum_rows(df: pd.DataFrame, values: Mapping) -> np.ndarray:
    """The rows of one stratum: a group's key (a ``groupby(..., dropna=False)`` key, a row of
    ``compare``) matched back to a table. ``==`` would never match a missing value (NaN != NaN)
    and so lose the stratum whose value is missing, which groups on its own ("n/a").

    Args:
        df: the table (runs, ``errors`` or ``stem_outcomes`` rows ...).
        values: column -> the stratum's value (None or NaN for a missing one).

    Returns:
        A boolean array, one per row of ``df``: every column of ``values`` equal to its value,
        a missing value matching a missing one; all True for no ``values``.

    >>> df = pd.DataFrame({"warmup_epochs": [1.0, None, None], "stem": ["conv", "conv", "patchify"]})
    >>> stratum_rows(df, {"warmup_epochs": float("nan"), "stem": "conv"}).tolist()
    [False, True, False]
    """
    mask = np.ones(len(df), bool)
    for col, v in values.items():
        mask &= df[col].isna().to_numpy() if pd.isna(v) else df[col].eq(v).to_numpy(bool)
    return mask


def strata(runs: pd.DataFrame, exclude: Sequence[str] = ("stem",)) -> list[str]:
    """The design axes that vary: the strata, the default grouping besides the stem.

    Args:
        runs: the runs table.
        exclude: axes left out (the compared column).

    Returns:
        The ``DESIGN_AXES`` present in ``runs`` with more than one value, in that order, then
        ``fix`` and every other config field that varies (``with_design``: a consumer groups
        ``with_design(runs)``). The named strata of ``compare``, ``stem_outcomes`` and
        ``stem_verdicts``: a consumer that needs a row's stratum reads these columns.

    >>> strata(pd.DataFrame({"sweep": ["a", "b"], "optimizer": "adamw", "stem": ["conv", "patchify"]}))
    ['sweep']
    """
    from ..config import FIELDS, RunConfig

    df = with_design(runs)
    never = {*DESIGN_AXES, *NOT_STRATA, *RunConfig.EXECUTION_FIELDS}
    fields = sorted(c for c in df.columns if c in FIELDS and c not in never)
    return [c for c in (*DESIGN_AXES, "data", "fix", "z_loss", *fields) if c in df.columns and c not in exclude
            and df[c].nunique(dropna=False) > 1]


def pooled(runs: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """What a grouping pools.

    Args:
        runs: the runs table.
        by: the grouping.

    Returns:
        The design axes that vary in ``runs`` but are not in ``by``.
    """
    return [c for c in strata(runs, exclude=()) if c not in by]


# The fixes of later work, read from a run's config: QK-layernorm and z-loss (Wortsman et al. 2023),
# a frozen stem (MoCo v3). ``fix`` is one axis of every view; this is its one definition.
FIX_FIELDS = ("qk_norm", "z_loss", "freeze_stem")
NO_FIX = "none"
# Config fields that are never a fixed hyper-parameter of an lr group: the swept lr and the seed,
# and fields another column already carries (model -> size, stem, the fix fields -> fix).
NOT_FIXED = ("lr", "seed", "model", "stem", *FIX_FIELDS)
# Config fields that are never strata: those, and wd (with lr, the distribution itself).
NOT_STRATA = (*NOT_FIXED, "wd")


def fix_of(cfg: Mapping | None) -> str:
    """The fixes a run's config turns on.

    Args:
        cfg: the run's config (``config_json`` read), or None.

    Returns:
        "qk_norm" (config ``qk_norm``), "z_loss" (``z_loss`` > 0), "frozen_stem"
        (``freeze_stem``) joined with "+"; "none" when none is on (or the config predates the
        field, or its value is not of the field's type: unknown, never a fix).

    >>> fix_of({"qk_norm": True, "z_loss": 1e-4}), fix_of(None), fix_of({"z_loss": "x", "qk_norm": "no"})
    ('qk_norm+z_loss', 'none', 'none')
    """
    cfg = cfg or {}
    parts = [name for name, on in (("qk_norm", bool(_field(cfg, "qk_norm"))),
                                   ("z_loss", float(_field(cfg, "z_loss") or 0.0) > 0),
                                   ("frozen_stem", bool(_field(cfg, "freeze_stem")))) if on]
    return "+".join(parts) or NO_FIX


def run_config(text) -> dict:
    """A runs row's config (its ``config_json``), read as untrusted text.

    Args:
        text: the ``config_json`` value (None or NaN in rows without one).

    Returns:
        The config as a dict; {} where it is absent, not JSON, not an object, or nested too
        deep to parse. A ``RunConfig`` field whose value is not of the field's type (z_loss
        "x", trace_every [1]) is None there: unknown, as a whole config that cannot be read is.
        Fields of no ``RunConfig`` (an older or newer version's) are kept as they are.

    >>> run_config('{"lr": 0.1}'), run_config("[1]"), run_config("{bad"), run_config(None)
    ({'lr': 0.1}, {}, {}, {})
    >>> run_config('{"a":' * 100_000)  # a planted file nested past the parser's recursion limit
    {}
    >>> run_config('{"z_loss": "x", "qk_norm": 1, "lr": 0.1, "steps_per_epoch": null}')
    {'z_loss': None, 'qk_norm': None, 'lr': 0.1, 'steps_per_epoch': None}
    """
    try:
        cfg = json.loads(text) if isinstance(text, str) else {}
    except (ValueError, RecursionError):  # RecursionError: '[' * 10**5 in a planted file
        return {}
    if not isinstance(cfg, dict):
        return {}
    bad = [k for k, v in cfg.items() if not _readable(k, v)]
    return {**cfg, **dict.fromkeys(bad)} if bad else cfg


def _field(cfg: Mapping, field: str):
    """``cfg``'s ``field``: None where it is absent or not of the field's type (a caller's own
    mapping is read as ``run_config`` reads a row's)."""
    value = cfg.get(field)
    return value if _readable(field, value) else None


def _readable(field: str, value) -> bool:
    """Whether ``value`` may be config field ``field``'s (its type; any value for a field of no
    ``RunConfig``). The one check of the values every reader of a row's config takes as typed."""
    if isinstance(value, list | dict):
        return _fits(field, value)
    try:
        return _fits_scalar(field, type(value), value)
    except TypeError:  # unhashable: never from JSON, but a caller's dict may hold anything
        return _fits(field, value)


@functools.lru_cache(maxsize=4096)
def _fits_scalar(field: str, kind: type, value) -> bool:  # kind: True == 1 must not share an entry
    return _fits(field, value)


def _fits(field: str, value) -> bool:
    from ..config import FIELDS, RunConfig
    from ..errors import ConfigError
    from ..validate import check_value, hints

    if field not in FIELDS:  # hints also has the class's own (LATER_FIELDS ...)
        return True
    hint = hints(RunConfig)[field]
    try:
        check_value(hint, field, value, None)
    except (ConfigError, OverflowError):  # OverflowError: a 400-digit integer as a float
        return False
    return True


def _configs(runs: pd.DataFrame) -> list[dict]:
    """Each row's config (``config_json``), {} where it is absent or unreadable."""
    return [run_config(t) for t in (runs["config_json"] if "config_json" in runs.columns else [None] * len(runs))]


def with_fix(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with their fix.

    Args:
        runs: the runs table.

    Returns:
        ``runs`` with a ``fix`` column (``fix_of`` of each row's config; kept if already there).
    """
    if "fix" in runs.columns:
        return runs
    return runs.assign(fix=[fix_of(c) for c in _configs(runs)])


def fixed_axes(runs: pd.DataFrame, series: Sequence[str] = ("stem", "fix")) -> tuple[pd.DataFrame, list[str]]:
    """The axes that make runs *the same experiment but for lr and seed*.

    Args:
        runs: the runs table (``config_json`` gives the config fields).
        series: the lines inside a group, never axes.

    Returns:
        ``runs`` with ``size``, ``fix`` and a column per such config field (a field an older
        config lacks reads as its default), and the axes: every design axis that varies, then
        every config field that varies (wd, label smoothing, adam eps, ...) except lr, seed, the
        execution fields (where and how a run executes) and fields another column carries.
        When runs with z-loss use several coefficients, ``z_loss`` (0 without) is added and
        returned as an axis too: two coefficients are never pooled under one "z_loss".
    """
    df, cfgs = _design(runs)
    cfgs = _configs(df) if cfgs is None else cfgs  # config_json parsed once
    if "fix" not in df.columns:
        df = df.assign(fix=[fix_of(c) for c in cfgs])
    axes = [c for c in strata(df, exclude=tuple(series)) if c not in series]
    extra = _varying_fields(cfgs, set(NOT_FIXED) | set(DESIGN_AXES) | set(series) | set(axes))
    if "z_loss" not in axes and (z := _z_losses(cfgs)) is not None:
        extra["z_loss"] = z
    for k, vals in extra.items():
        if k in df.columns and k != "z_loss":
            axes.append(k)  # a runs column (wd ...): its own values
        else:
            df = df.assign(**{k: vals})
            axes.append(k)
    return df, axes


def _hashable(v):  # a tuple default (betas) reads as its config_json list
    return json.dumps(v, sort_keys=True) if isinstance(v, list | tuple | dict) else v
