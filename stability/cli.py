"""``stability`` command line. Each command parses its input and calls one entry point.

Bad input exits with code 2 and one line naming the field and the allowed values.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, printable
from .trainer.stopping import Preempted, StopFlag


def _fail(message: str) -> int:
    print(f"error: {printable(' '.join(message.split()))}", file=sys.stderr)  # one line, whatever the message held
    return 2


class _SetupInterrupt(StopFlag):
    """Ctrl-C while a run is set up (imports, data, model) sets the flag's event, which ``train``
    is handed: the run stops at its first step, with a checkpoint. A ``KeyboardInterrupt`` there
    would be unsafe: raised inside an import it is dropped ("Exception ignored in ...": the run
    went on to the end) or turned into another error (a ``RuntimeError`` from torch's imports). A
    second Ctrl-C, for a set-up that hangs, ends the process at once (exit 130): the set-up has
    written nothing yet, and the run's lock is a file lock the system releases."""

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            print("stability: stopped during the set-up: nothing recorded; the same command starts the run",
                  file=sys.stderr, flush=True)
            if sys.stderr.isatty():
                print("\x1b[?25h", end="", file=sys.stderr, flush=True)  # the progress bar hid the cursor
            os._exit(130)
        super()._handle(signum, frame)
        print("stability: stopping at the run's first step, once it is set up (Ctrl-C again: at once, nothing "
              "recorded)", file=sys.stderr, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    ctrl_c = _SetupInterrupt()
    ctrl_c.install((signal.SIGINT,))  # before torch is imported
    try:
        return _train_command(args, ctrl_c)
    finally:
        ctrl_c.uninstall()


def _train_command(args: argparse.Namespace, ctrl_c: _SetupInterrupt) -> int:
    from .config import run_config
    from .yamlio import load_yaml, parse_overrides

    values: dict[str, Any] = {}
    source = "command line"
    if args.config:
        loaded = load_yaml(args.config)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("expected a mapping of RunConfig fields", args.config)
        values.update(loaded or {})
        source = args.config
    overrides = parse_overrides(args.overrides)
    if overrides:  # validated alone first, so an error names the command line, not the file
        run_config(overrides, "command line")
    if args.run:
        values, source = _recorded_run(args, overrides)
    cfg = run_config({**values, **overrides}, source)
    if args.run and cfg.run_id != args.run:  # the row was altered, or written by another version
        raise ConfigError(f"--run: it gives run id {cfg.run_id}, not {args.run} (altered, or written by another "
                          "version): not trained", source)

    from .data.datasets import DataError
    from .progress import RichReporter
    from .store import RunStatus, check_writable, table_dir
    from .trainer.checkpoint import checkpoint_path
    from .trainer.train import RunDone, refuse_bad_input, train

    try:
        check_writable(cfg.results)  # before the data and model are set up
    except OSError as e:
        blame = "command line" if "results" in overrides else source if "results" in values else None
        raise ConfigError(f"results: {cfg.results} cannot take files ({e.strerror or e})"
                          + ("" if blame else " (the default results root; results=ROOT names another)"),
                          blame) from None

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun: one progress bar, one summary
    try:  # whether the run has a result is decided under its lock (a twin command may be ending it)
        refuse_bad_input(cfg, args.rerun)  # before the lock and the progress bar: a refusal writes nothing
        try:
            if main_rank:
                with RichReporter(label=f"{cfg.model} {cfg.stem or ''}".strip()) as reporter:
                    row = train(cfg, reporter, resume=not args.no_resume, rerun=args.rerun, record_refusals=False,
                                stop=ctrl_c.event)
            else:
                row = train(cfg, resume=not args.no_resume, rerun=args.rerun, record_refusals=False,
                            stop=ctrl_c.event)
        finally:  # the run has ended (or stopped): a Ctrl-C now is no set-up's, and ends the command (130)
            ctrl_c.uninstall()
    except RunDone as e:  # a result is the record: a repeated command must not overwrite it
        if main_rank:
            err = e.row.get("top1_err")
            print(f"run {cfg.run_id}: already {e.row.get('status', 'done')}"
                  + (f" (top-1 error {err:.2f}%)" if isinstance(err, float) else "")
                  + f" in {table_dir(cfg.results, 'runs', cfg.sweep)}; nothing to do ("
                  + ("--rerun continues it from its checkpoint with the pruner off)"
                     if e.row.get("status") == RunStatus.PRUNED else "--rerun trains it again)"))
        return 0
    except DataError as e:  # data_root= on the command line (e.g. beside --run) is the command line's
        raise ConfigError(str(e), "command line" if "data_root" in overrides else source) from None
    except Preempted as e:  # Ctrl-C, scancel or a preemption: the exit code says which (130, 143, 138)
        signum = e.signum or ctrl_c.signum  # a Ctrl-C in the set-up: set ctrl_c.event, the loop stopped at step 1
        how = f"stopped by {signal.Signals(signum).name}" if signum else "stopped"
        print(f"preempted ({how}): checkpoint at {checkpoint_path(cfg)}; rerun the same command to resume",
              file=sys.stderr)
        return 128 + (signum or signal.SIGTERM)
    if not main_rank:
        return 0
    err = row.get("top1_err")
    stop = ""
    if row["status"] == RunStatus.DIVERGED:
        stop = f" (diverged at step {row['diverged_at_step']})"
    elif row["status"] == RunStatus.PRUNED:  # its error is its last validation error
        stop = " (its last validation error)"
    print(f"run {row['run_id']}: {row['status']}, top-1 error {err:.2f}%{stop}")
    if row["status"] == RunStatus.PRUNED:
        print(f"pruned at step {row['pruned_at_step']} by rule {row['prune_rule']} ({row['prune_signals']}); "
              f"checkpoint kept at {checkpoint_path(cfg)}: --rerun continues it with the pruner off")
    elif row.get("pruned_at_step") is not None:
        print(f"(continued past the pruner's verdict at step {row['pruned_at_step']}, rule {row['prune_rule']})")
    print(f"results: {table_dir(cfg.results, 'runs', cfg.sweep) / (row['run_id'] + '.parquet')} "
          f"(and epochs/, steps/, grad_norms/)")
    return 0


def _recorded_run(args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``train --run``: the run's recorded fields and their source; the command line may change
    only where and how it runs (execution fields), never what it computes."""
    from .config import RunConfig
    from .recorded_config import recorded_config

    if args.config:
        raise ConfigError("--run and --config exclude each other (allowed: one of them)")
    if changed := sorted(set(overrides) - RunConfig.EXECUTION_FIELDS):
        raise ConfigError(f"{', '.join(changed)} cannot be set with --run (it continues or repeats run "
                          f"{args.run} as it was; allowed: {', '.join(sorted(RunConfig.EXECUTION_FIELDS))}; "
                          "another run: --config)", "command line")
    rec = recorded_config(overrides.get("results", "results"), args.run, overrides.get("sweep"))
    if rec.data_root is not None and "data_root" not in overrides:
        raise ConfigError(f"--run: run {args.run} read its data from data_root {rec.data_root} (as its row says: "
                          "a path from a results file is never used): pass data_root=PATH")
    return rec.values, rec.source


def cmd_models(args: argparse.Namespace) -> int:
    from .models.table import model_table

    rows = model_table()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.table import Table

    from .progress import make_console

    table = Table(title="Models (FLOPs: multiply-adds per image, 1 MAC = 1 FLOP, as the paper)")
    for col in ("name", "stem", "depth", "width", "heads", "params M", "GFLOPs", "image", "tokens"):
        table.add_column(col, justify="left" if col in ("name", "stem") else "right")
    for r in rows:
        table.add_row(r["name"], r["stem"], str(r["depth"]), str(r["width"] or "-"), str(r["heads"] or "-"),
                      f"{r['params'] / 1e6:.2f}", f"{r['flops'] / 1e9:.3f}", str(r["image_size"]),
                      str(r["tokens"] or "-"))
    make_console().print(table)
    return 0


def _load_grid(args: argparse.Namespace):
    """The spec of a ``grid`` command, with --results/--executor/--profile/--max-parallel applied."""
    from .grid.spec import executor_fields, load_profile, load_spec, with_executor
    from .resources import spec_path

    path = spec_path(args.spec)
    if not path.is_file() and (name := _shipped_name(path)):
        raise ConfigError(f"file not found: {path}; a shipped spec of that name runs as "
                          f"`stability grid {args.grid_command} {name}`")
    spec = load_spec(path, {"results": args.results} if getattr(args, "results", None) else None)
    changes = load_profile(getattr(args, "profile", None))
    for attr, key in (("executor", "kind"), ("max_parallel", "max_parallel"), ("array_size", "array_size")):
        if (value := getattr(args, attr, None)) is not None:
            changes[key] = executor_fields("--" + attr.replace("_", "-"), {key: value})[key]
    return with_executor(spec, **changes) if changes else spec


def _shipped_name(path: Path) -> str | None:
    """The shipped spec a missing ``path`` ends in (``grids/cpu/lr_wd.yaml`` typed outside a
    clone: ``cpu/lr_wd``), the longest such name; None if none."""
    from .resources import folder

    if path.suffix != ".yaml":
        return None
    parts = path.with_suffix("").parts[1 if path.anchor else 0:]
    for i in range(len(parts)):
        tail = parts[i:]
        if ".." not in tail and folder("grids").joinpath(*tail[:-1], tail[-1] + ".yaml").is_file():
            return "/".join(tail)
    return None


def cmd_grid_run(args: argparse.Namespace) -> int:
    spec = _load_grid(args)
    from .analysis.grouping import stem_name
    from .grid.controller import Controller, RunOptions, dry_run
    from .progress import make_console
    from .store import RunStatus

    console = make_console(stderr=True)
    _gpu_only_with_dry_run(args)
    if args.dry_run:
        dry = dry_run(spec, args.gpu)
        _print_plan(spec, dry)
        _print_costs([dry.cost])
        for line in dry.warnings:
            console.print(line, markup=False, style="yellow", soft_wrap=True)
        if dry.local is not None:  # a tpe plan shows its first trials only: so is its time
            print(dry.local.text(spec.name + (" (the runs shown only)" if dry.note else "")))
        return 0
    if spec.executor.kind == "auto":  # where the runs go was not written down: say it before they go
        from .grid.spec import executor_text

        console.print(executor_text(spec), markup=False, highlight=False, soft_wrap=True)
    opts = RunOptions(retry_failed=args.retry is not None, wait=not args.no_wait, show_progress=not args.quiet)
    try:
        outcome = Controller(spec, opts, console).run()  # takes the sweep's lock, then starts the backend
    except KeyboardInterrupt:  # the sweep's lock is released on the way out
        again = f"stability grid run {shlex.quote(str(spec.path))}"
        if spec.kind() == "slurm":  # Ctrl-C does not reach a cluster's jobs
            print(f"interrupted: the Slurm jobs already submitted go on (scancel stops them; `grid status --json` "
                  f"lists their ids); the same command watches them again and submits the rest: {again}",
                  file=sys.stderr)
        else:  # a terminal's Ctrl-C reaches the local runs too: each saves a checkpoint (preempted)
            print(f"interrupted: the runs in progress stop after saving a checkpoint (the table above shows those "
                  f"that had); the same command "
                  f"resumes them and submits the rest: {again}", file=sys.stderr)
        return 130
    c = outcome.counts()
    summary = ", ".join(f"{n} {s}" for s, n in c.items())
    print(f"sweep {spec.name}: {summary or 'nothing planned'}; submitted {len(outcome.submitted)}; "
          f"{outcome.wall_s:.0f} s in all; results in {Path(spec.results).absolute()}")
    _print_stems(outcome.stems, print)
    _print_data(outcome.data, print, spec.results, spec.name,
                f"stability grid status {shlex.quote(str(spec.path))} --json", set(outcome.submitted))
    failed = outcome.state[outcome.state.status.eq(RunStatus.FAILED)] if len(outcome.state) else outcome.state
    for r in failed.head(5).itertuples():  # why, without a second command (grid status has the log tails)
        why = (str(r.error or "").strip().splitlines() or ["(no error recorded)"])[0][:300]
        print(f"  failed {r.run_id} ({stem_name(r.stem)}): {printable(why)}")
    if len(failed) > 5:
        print(f"  ... and {len(failed) - 5} more failed runs: stability grid status {args.spec} lists each")
    for rid, tail in outcome.lost.items():
        print(f"  lost {rid}: its job ended without a result; rerun to resubmit. Log tail:\n    "
              + printable(tail).replace("\n", "\n    "))
    stopped = outcome.state[outcome.state.status.eq(RunStatus.PREEMPTED)] if len(outcome.state) else outcome.state
    for r in stopped.itertuples():  # a signal (scancel, a preemption) stopped it after its checkpoint
        print(f"  preempted {r.run_id} ({stem_name(r.stem)}): its job was stopped after saving a checkpoint; "
              "rerun to resume it")
    if outcome.stopped:
        print(printable(outcome.stopped))
    bad = bool(c.get("failed") or c.get("missing") or c.get("preempted"))
    return 1 if (bad and opts.wait) or outcome.stopped else 0


def _print_stems(stems: list[dict], say) -> None:
    """How each stem's finished runs ended, one line each, and a flag on a stem that never left
    chance (every finished run at chance, diverged or pruned): the sweep's answer, not only its counts."""
    from .analysis.findings import CHANCE

    if not any(o["runs"] for o in stems):
        return
    say(f"per stem (at chance: error >= {CHANCE:g} x the error at init; median error: diverged"
        + (" and pruned" if any(o.get("pruned") for o in stems) else "") + " at 100 %):")
    for o in stems:
        say("  " + o["line"])
    for o in stems:
        if o["never_left_chance"]:
            say(f"warning: {o['name']} never left chance: none of its {o['runs']} finished runs learned "
                f"({o['at_chance']} at chance, {o['diverged']} diverged"
                + (f", {o['pruned']} pruned" if o.get("pruned") else "") + ")")


def _print_data(data: list[dict], say, results, sweep: str, listed_by: str | None = None,
                trained_now: set[str] | frozenset[str] = frozenset()) -> None:
    """A warning when the sweep's runs recorded different data (``grid.state.sweep_data``,
    ``analysis.grouping.data_mix``): each data with its runs, and the command that trains one
    again, afresh, on the data given. ``listed_by``: a command that lists every run id;
    ``trained_now``: the runs this command trained, whose data is the spec's data_root now."""
    from .analysis.grouping import mixed_data_note, mixed_data_runs

    if not (note := mixed_data_note(data)):
        return
    say(printable(f"warning: sweep {sweep}: {note}"))  # dataset and sweep names come from results files
    for d, line in zip(data, mixed_data_runs(data), strict=False):  # no lines where no run ids
        now = trained_now & set(d.get("run_ids", []))
        say("  " + printable(line) + ("  <- what this grid run trained on (its data_root)" if now else ""))
    if listed_by and any(len(d.get("run_ids", [])) > 8 for d in data):
        say(f"  ({listed_by} lists every run id)")
    root = Path(results).absolute()  # pasted from any folder
    say("  to train a run again, afresh, on the data you give: stability train --run RUN_ID "
        f"{shlex.quote(f'results={root}')} {shlex.quote(f'sweep={sweep}')} data_root=PATH --rerun --no-resume")


def _print_plan(spec, dry) -> None:
    from rich.table import Table

    from .grid.spec import executor_text
    from .progress import make_console

    console = make_console()
    plan, cost = dry.plan, dry.cost
    ranges = list(spec.ranges)
    table = Table(title=f"plan of sweep {spec.name} ({spec.sampler.name}, n={spec.sampler.n})")
    for col in ["#", "run_id", "cell", "stem", "seed", *ranges]:
        table.add_column(col)
    shown = plan if len(plan) <= 40 else plan[:20] + plan[-20:]
    for i, r in enumerate(shown):
        idx = i if len(plan) <= 40 or i < 20 else len(plan) - 40 + i
        vals = r.config.to_dict()
        table.add_row(str(idx), r.run_id, r.cell or "-", str(r.stem), str(r.seed),
                      *[f"{vals[k]:.4g}" for k in ranges])
    console.print(table)
    console.print(executor_text(spec), markup=False, highlight=False, soft_wrap=True)
    by_stem: dict[str, int] = {}
    for r in plan:
        by_stem[str(r.stem)] = by_stem.get(str(r.stem), 0) + 1
    console.print(f"{len(plan)} run{'s' if len(plan) != 1 else ''}{dry.note}: " + ", ".join(f"{k}: {v}" for k, v in by_stem.items())
                  + (f"; {dry.done} already have results, the other {len(plan) - dry.done} are costed" if dry.done else "")
                  + f"; {cost.headline()}. Nothing launched.")


def _print_costs(costs: list, total: bool = False) -> None:
    """The cost per study (``grid.cost.StudyCost``): runs, images, the GPU's img/s (the step, and
    with ``decode: gpu`` the decoding it also does) and the input's, GPU-hours and where each rate
    came from; with ``total``, a total row."""
    from rich.table import Table

    from .progress import make_console

    def rate(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    table = Table(title=f"cost on {costs[0].device.name} (img/s per GPU)" if costs else "cost")
    for col in ("study", "runs", "images", "GPU img/s", "input img/s", "input bound", "img/s", "GPU-hours"):
        table.add_column(col, justify="left" if col in ("study", "input bound") else "right")
    for c in costs:
        table.add_row(c.name, str(c.runs), f"{c.images:.3g}", rate(c.step_img_s), rate(c.feed_img_s), c.bound,
                      rate(c.img_s), f"{c.gpu_hours:,.4g}")
    if total and costs:
        table.add_row("total", str(sum(c.runs for c in costs)), f"{sum(c.images for c in costs):.3g}",
                      "", "", "", "", f"{sum(c.gpu_hours for c in costs):,.4g}", style="bold")
    console = make_console()
    console.print(table)
    by_source: dict[str, list[str]] = {}  # on their own lines, once each: a cell would wrap them unreadably
    for c in costs:
        by_source.setdefault(c.source, []).append(c.name)
    for source, names in by_source.items():
        console.print(f"{', '.join(names)}: {source}", markup=False, highlight=False, soft_wrap=True)


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float as None: strict JSON (jq refuses NaN and Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def cmd_grid_status(args: argparse.Namespace) -> int:
    from .analysis.grouping import stem_name
    from .grid.controller import status_report

    spec = _load_grid(args)
    report = status_report(spec)
    if args.json:
        print(json.dumps(_finite(report), indent=1, default=str, allow_nan=False))
        return 0
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from .progress import make_console

    console = make_console()
    c = report["counts"]
    console.print(f"[bold]sweep {report['sweep']}[/] ({report['results']}): {report['planned']} planned; "
                  + ", ".join(f"{k} {v}" for k, v in c.items() if v and k != "total")
                  + (f"; ETA {report['eta_s'] / 60:.1f} min" if report["eta_s"] else ""))
    console.print(f"jobs: {report['jobs']['running']} running, {report['jobs']['pending']} queued "
                  "(live jobs; a run is pending until its job runs, or while never submitted)", markup=False)
    if not spec.sweep_dir.exists():  # its runs are "pending" as never submitted, not queued
        console.print(f"not started: no `grid run` of {spec.name} under {report['results']} yet", markup=False)
    if report["cells"]:
        keys = list(report["cells"][0])
        table = Table(title="per " + " / ".join(k for k in keys if k in ("stem", "optimizer", "epochs", "data")))
        for k in keys:
            table.add_column(k, justify="left" if k in ("stem", "optimizer", "data") else "right")
        for row in report["cells"]:  # Text: a value from a results file is no markup
            table.add_row(*[Text(printable(row[k])) for k in keys])
        console.print(table)
    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True,
                      style="bold red" if line.startswith("warning:") else None)

    _print_stems(report["stems"], say)
    _print_data(report["data"], say, spec.results, spec.name,
                f"stability grid status {shlex.quote(str(spec.path))} --json")
    for f in report["failures"]:
        console.print(f"[red]failed[/] {escape(printable(f['run_id']))} ({escape(printable(stem_name(f['stem'])))}): "
                      f"{escape(printable(f['error']))}")
        if f["log"]:
            console.print("  " + printable(f["log"]).replace("\n", "\n  "), markup=False)
    for f in report["lost"]:  # a job id is the ledger's: shown as text
        run, job = escape(printable(f["run_id"])), escape(printable(f["job_id"]))
        if f.get("preempted"):
            console.print(f"[yellow]preempted[/] {run} (job {job} stopped after saving a checkpoint; "
                          "`grid run` resumes it)")
        else:
            console.print(f"[yellow]lost[/] {run} (job {job} ended without a result)")
    if pruned := report["pruned"]:  # results `grid run` keeps; the user may still want one to the end
        shown = ", ".join(pruned[:8]) + (f" … ({len(pruned)} in all: --json lists them)" if len(pruned) > 8 else "")
        console.print(f"pruned: {printable(shown)}; to continue one to the end with the pruner off: "
                      f"stability train --run RUN_ID results={report['results']} --rerun", markup=False,
                      highlight=False, soft_wrap=True)
    for line in report["unreadable"]:
        console.print("unreadable: " + printable(line), markup=False, style="red")
    for line in report["ledger_problems"]:
        console.print("ledger: " + printable(line), markup=False, style="yellow")
    return 0


def cmd_grid_collect(args: argparse.Namespace) -> int:
    from . import store

    spec = _load_grid(args)
    store.check_root(spec.results)
    if not any(store.table_dir(spec.results, t, spec.name).is_dir() for t in store.TABLES):
        raise ConfigError(f"results: no results of sweep {spec.name!r} under {spec.results} (nothing to compact)")
    counts = store.compact(spec.results, spec.name)
    print(f"compacted sweep {spec.name}: " + ", ".join(f"{k} {v} rows" for k, v in counts.items()))
    return 0


def cmd_grid_clean(args: argparse.Namespace) -> int:
    from . import store
    from .grid.controller import clean_logs

    spec = _load_grid(args)
    store.check_root(spec.results)
    if not spec.sweep_dir.is_dir():
        raise ConfigError(f"results: no record of sweep {spec.name!r} under {spec.results} (no "
                          f"_sweeps/{spec.name}: no job logs to clean)")
    print(f"removed {clean_logs(spec)} log files of finished runs of sweep {spec.name}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from .data.packed import PackError, pack

    if args.short_side is not None and args.short_side < 8:
        raise ConfigError(f"--short-side: {args.short_side} is not allowed (an integer >= 8, or leave it out)")
    if args.shard_mb <= 0 or (args.workers is not None and args.workers < 1):
        raise ConfigError("--shard-mb must be > 0 and --workers >= 1")
    try:
        counts = pack(args.root, args.out, short_side=args.short_side, shard_mb=args.shard_mb,
                      workers=args.workers or len(os.sched_getaffinity(0)), bad=args.bad,
                      progress=sys.stderr.isatty())
    except PackError as e:
        raise ConfigError(str(e)) from None
    print(f"packed {counts['train']} train and {counts['val']} val images into {args.out} "
          f"(dataset=packed data_root={args.out})"
          + (f"; {counts['skipped']} bad file(s) left out, listed in meta.json" if counts["skipped"] else ""))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), like every other bad input."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}\n")


def _existing_root(root: str) -> None:
    """A results root a command only reads must exist: a missing one is a typo, not an empty study."""
    if not Path(root).is_dir():
        why = "a file, not a folder" if Path(root).exists() else "no such folder"
        raise ConfigError(f"--results: no results root {root} ({why}; allowed: an existing folder that `grid run` "
                          "or `train` wrote results under)")


def _out_file(out: str, example: str) -> None:
    """``--out`` must name a file in a folder that exists: checked before the work, which would
    otherwise end in an OSError (or a folder made where a typo points)."""
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"--out: {path} is a folder (allowed: the path of the file to write, e.g. {path / example})")
    if not path.parent.is_dir():  # as cp: the folder must exist
        raise ConfigError(f"--out: no folder {path.parent} to write {path.name} in (allowed: a file in an existing folder)")


def cmd_report(args: argparse.Namespace) -> int:
    from . import store
    from .report import write_report

    _existing_root(args.results)
    sweeps = store.sweeps(args.results)
    if args.sweep is None:  # what could be reported
        print(f"sweeps under {args.results}: {printable(', '.join(sweeps)) or 'none'}")
        return 0
    if args.sweep not in sweeps:
        raise ConfigError(f"sweep: no sweep {args.sweep!r} under {args.results} (found: "
                          f"{printable(', '.join(sweeps)) or 'none'})")
    _out_file(args.out, "report.html")
    unreadable: list[str] = []
    mixed: list[dict] = []
    said: list[tuple[str, str]] = []
    out = write_report(args.results, args.sweep, args.out, unreadable, mixed, said)
    for line in unreadable:
        print(f"unreadable, left out: {printable(line)}", file=sys.stderr)
    _print_data(mixed, lambda line: print(line, file=sys.stderr), args.results, args.sweep)
    # the report's verdict lines, so a terminal (or a Slurm log) shows the finding without a browser
    for name, line in said or [(f"sweep {args.sweep}", "no verdict (no run of this sweep has finished)")]:
        print(printable(f"{name}: {line}"))
    print(f"report: {out}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from . import replay
    from .progress import make_console

    try:
        every = [None] if not args.every else [int(v) for v in args.every.split(",")]
    except ValueError:
        raise ConfigError(f"replay: --every {args.every!r} is not a comma-separated list of step counts") from None
    if any(k is not None and k < 1 for k in every) or args.workers < 1:
        raise ConfigError("replay: --every and --workers must be >= 1")
    if not 0 <= args.within <= 100:  # points of top-1 error; also refuses nan
        raise ConfigError(f"replay: --within {args.within:g} is not allowed (points of top-1 error from a group's "
                          "best: a number from 0 to 100)")
    if set(args.sweeps) & set(args.tune or []):
        raise ConfigError("replay: a sweep is both tuned on and scored (--tune takes other sweeps)")
    _existing_root(args.results)
    if args.out:
        _out_file(args.out, "replay.csv")
    scored = replay.load(args.results, args.sweeps, args.within)
    tuning = replay.load(args.results, args.tune, args.within) if args.tune else []
    for what, runs, sweeps in (("scored", scored, args.sweeps), ("tuning", tuning, args.tune or [])):
        if (n := replay.count_left_out(args.results, sweeps, runs)):
            print(f"{what}: {n} run(s) of {', '.join(sweeps)} left out: recorded pruned, failed or unfinished, "
                  "or with no step to replay (a pruned run's pruner already stopped it: nothing to replay)",
                  file=sys.stderr)
        if sweeps and (not any(r.doomed for r in runs) or not any(r.good for r in runs)):
            print(f"{what}: {', '.join(sweeps)} holds {sum(r.doomed for r in runs)} doomed and "
                  f"{sum(r.good for r in runs)} good replayable runs: a replay needs both to measure anything",
                  file=sys.stderr)
    console = make_console(stderr=True)
    try:
        with console.status("replaying") as status:
            res = replay.study(scored, tuning, every, args.workers, not args.no_baselines,
                               on_candidate=lambda what: status.update(f"replaying {what}"))
    except ValueError as e:
        raise ConfigError(f"replay: {e}") from None
    out = make_console()
    out.print(replay.table_text(res, args.sweeps, args.tune or [], args.workers, args.within))
    if args.out:
        path = Path(args.out)
        res.curve.assign(scored=",".join(args.sweeps)).to_csv(path, index=False)
        if len(res.chosen):
            res.chosen.to_csv(path.with_name(path.stem + "-chosen.csv"), index=False)
        print(f"tables: {path}" + (f" and {path.with_name(path.stem + '-chosen.csv')}" if len(res.chosen) else ""))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .progress import make_console
    from .reproduce import Invocation, run_studies, verdict_line, write_report
    from .store import RunStatus

    inv = Invocation.from_options(quick=args.quick, paper=args.paper, grids=args.grids, only=args.only,
                                  sets=args.set or [], results=args.results, profile=args.profile, out=args.out)
    _gpu_only_with_dry_run(args)
    if args.dry_run:
        from .reproduce import dry_run

        costs, warnings = dry_run(inv, args.gpu)
        _print_costs(costs, total=True)
        for line in warnings:
            print(line)
        print("Nothing launched.")
        return 0
    if args.out:  # the default folder is made under the results root; a typo must not be, after hours of runs
        _out_file(args.out, "reproduce")
    res = run_studies(inv, show_progress=not args.quiet, console=make_console(stderr=True))
    md, page, data = write_report(res, inv.scale, inv.root, inv.out, inv.left_out)
    failed = 0
    for f in res.findings:
        print(verdict_line(f))
    for r in res.studies:
        if n := r.counts.get(RunStatus.FAILED):
            failed += n
            print(f"  {n} run(s) of sweep {r.sweep} failed; first error: {r.first_error()}")
    print(f"report: {md.resolve()}, {page.resolve()} and {data.resolve()}")
    return 1 if failed else 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import subprocess

    from .resources import dashboard_app

    app = dashboard_app()
    if not 0 < args.port < 65536:
        raise ConfigError(f"dashboard: --port {args.port} is not a port (allowed: 1..65535)")
    if Path(args.results).exists():  # before Streamlit starts
        _existing_root(args.results)
    else:  # not an error: opened before the first run lands, it shows the runs as they come
        print(f"stability dashboard: no results root {Path(args.results).resolve()} yet: the pages fill in "
              "when runs write there (a typo? stop with Ctrl-C)", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
           "--server.address", args.host, "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
           "--", "--results", args.results] + (["--allow-browse"] if args.allow_browse else [])
    print(f"stability dashboard: http://{args.host}:{args.port} on {Path(args.results).resolve()}"
          + ("" if args.host != "127.0.0.1" else
             f" (from a laptop: ssh -L {args.port}:127.0.0.1:{args.port} <this host>)"), flush=True)
    server = subprocess.Popen(cmd)

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)  # stopping this command stops the server it started
    try:
        return server.wait()
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:  # Streamlit can sit on SIGTERM while a browser is connected
                server.kill()
                server.wait()


def _gpu_only_with_dry_run(args: argparse.Namespace) -> None:
    if args.gpu is not None and not args.dry_run:  # it names the GPU a cost is for, never the one runs get
        raise ConfigError("--gpu: only with --dry-run (the GPU runs get is the executor's or profile's)")


def gpu_option(p: argparse.ArgumentParser) -> None:
    from .models import throughput

    table = throughput.load()
    p.add_argument("--gpu", help=f"--dry-run: the GPU its cost is computed for, from measured img/s "
                   f"(allowed: {', '.join(table.devices)}; default {table.default_device})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stability", description="Training-stability studies of ViT_P vs ViT_C: train runs, "
                     "run grids of them (locally or on Slurm), report and reproduce the paper's findings.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run one training run")
    p.add_argument("--config", help="YAML file of RunConfig fields")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--rerun", action="store_true",
                   help="train a run that already has a result again (its rows are replaced; a pruned run "
                        "continues from its checkpoint with the pruner off)")
    p.add_argument("--run", metavar="RUN_ID",
                   help="the config of a recorded run under results= (a grid's pruned, failed or preempted "
                        "run: continue it; key=value may set only execution fields)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="RunConfig fields (stability/config.py; an unknown key lists the allowed ones)")
    p.set_defaults(func=cmd_train)

    grid = sub.add_parser("grid", help="run and inspect sweeps").add_subparsers(dest="grid_command", required=True)

    def grid_cmd(name: str, help: str, func) -> argparse.ArgumentParser:
        p = grid.add_parser(name, help=help)
        p.add_argument("spec", help="grid spec YAML, or a shipped spec's name: smoke, cpu/lr_wd (see grids/)")
        p.add_argument("--results", help="results root (overrides the spec's 'results')")
        p.add_argument("--profile", help="cluster profile: slurm/profiles/NAME.yaml or a path")
        p.set_defaults(func=func)
        return p

    p = grid_cmd("run", "plan, submit missing runs, wait for them", cmd_grid_run)
    p.add_argument("--dry-run", action="store_true", help="print the plan and totals; launch nothing")
    gpu_option(p)
    p.add_argument("--retry", choices=["failed"], help="also resubmit runs that failed")
    p.add_argument("--executor", help="override executor.kind: auto, slurm, local, debug")
    p.add_argument("--max-parallel", type=int, help="local executor: runs at a time")
    p.add_argument("--array-size", type=int, help="Slurm array chunk (default: MaxArraySize)")
    p.add_argument("--no-wait", action="store_true", help="submit and return")
    p.add_argument("--quiet", action="store_true", help="no live progress table")
    p = grid_cmd("status", "counts per status and cell, failures, ETA", cmd_grid_status)
    p.add_argument("--json", action="store_true", help="print the status as JSON (counts, failures, ETA)")
    grid_cmd("collect", "compact the sweep's per-run parquet files", cmd_grid_collect)
    grid_cmd("clean", "remove job logs of finished runs", cmd_grid_clean)

    p = sub.add_parser("report", help="write a self-contained HTML report of one sweep and print its verdicts")
    p.add_argument("sweep", nargs="?", help="the sweep's name (left out: the sweeps under --results are listed)")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default: report.html)")
    p.add_argument("--results", default="results", help="the results root (default: results)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("replay", help="replay pruners over recorded sweeps: compute saved vs good runs stopped")
    p.add_argument("sweeps", nargs="+", help="the sweeps scored")
    p.add_argument("--tune", nargs="+", metavar="SWEEP",
                   help="other sweeps on which each pruner family's setting is chosen, then scored on SWEEPS")
    p.add_argument("--results", default="results", help="the results root (default: results)")
    p.add_argument("--every", help="trace intervals to replay, e.g. 1,5,10 (default: as recorded)")
    p.add_argument("--workers", type=int, default=2, help="asynchronous workers simulated (default 2)")
    p.add_argument("--within", type=float, default=4.0,
                   help="a stopped run this many points from its group's best is the costly mistake (default 4)")
    p.add_argument("--no-baselines", action="store_true", help="ours only, not Optuna's pruners")
    p.add_argument("--out", help="also write the table as CSV (the chosen settings beside it)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("reproduce", help="run the paper's four studies and write a verdict report")
    p.add_argument("--quick", action="store_true", help="grids/cpu/quick: a few minutes, tiny runs")
    p.add_argument("--paper", action="store_true", help="grids/: the paper's sizes (use --profile)")
    p.add_argument("--grids", help="a folder holding lr_wd/optimizer/epochs/peak.yaml instead")
    p.add_argument("--only", help="comma-separated studies: lr_wd,optimizer,epochs,peak")
    p.add_argument("--results", help="results root (overrides the specs' 'results')")
    p.add_argument("--profile", help="cluster profile: slurm/profiles/NAME.yaml or a path")
    p.add_argument("--out", help="report path without suffix (default RESULTS/reproduce/SCALE)")
    p.add_argument("--set", action="append", metavar="key=value",
                   help="a RunConfig field for every study, e.g. --set dataset=cifar10 --set data_root=DIR")
    p.add_argument("--quiet", action="store_true", help="no live progress tables: a line as each study starts and ends")
    p.add_argument("--dry-run", action="store_true",
                   help="print each sweep it would launch and its cost; launch nothing, write nothing")
    gpu_option(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("dashboard", help="start the Streamlit dashboard")
    p.add_argument("--results", default="results", help="the results root it shows (and folders under it)")
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: only this host; reach it through an SSH tunnel)")
    p.add_argument("--allow-browse", action="store_true",
                   help="let the sidebar open any folder on this host, not only folders under --results")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("pack", help="pack an ImageFolder into tar shards of its image files' bytes, with an index (dataset=packed)")
    p.add_argument("root", help="an ImageFolder root holding train/ and val/ class folders")
    p.add_argument("out", help="a new folder for the packed dataset")
    p.add_argument("--short-side", type=int, help="re-encode images larger than this short side "
                   "(e.g. 256 for 224 px training); default: keep every file's bytes")
    p.add_argument("--shard-mb", type=float, default=1024, help="size of one tar shard (default 1024)")
    p.add_argument("--workers", type=int, help="processes that decode and re-encode (default: this machine's CPUs)")
    p.add_argument("--bad", choices=("refuse", "skip"), default="refuse",
                   help="files that are not whole images: refuse the pack naming them (default), or leave them "
                        "out and count them")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("models", help="list model presets with counted params and FLOPs")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_models)
    return parser



def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if getattr(args, "command", None) == "train":  # key=value after a flag (`--rerun lr=...`) is still one
            args.overrides += [a for a in extra if not a.startswith("-")]
            extra = [a for a in extra if a.startswith("-")]
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # argparse already printed one usage line + error; keep its code 2
        return int(e.code or 0)
    try:
        return args.func(args)
    except ConfigError as e:
        return _fail(str(e))
    except BrokenPipeError:  # `stability grid status --json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as e:  # a results root that is a file, read-only, full ...: one line, the path named
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f)
        return _fail(f"{where}: {e.strerror or e}" if where else f"{type(e).__name__}: {e}")
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if (why := _storage_failure(e)) is None:
            raise
        return _fail(f"{getattr(args, 'spec', None) or 'optuna storage'}: the sweep's Optuna storage "
                     f"(_sweeps/<name>/optuna.db) failed: {why}; nothing recorded was lost: fix it (free "
                     f"space ...), then rerun the same command")


def _storage_failure(e: BaseException) -> str | None:
    """The first line of a database error (Optuna's ``StorageInternalError`` wraps SQLAlchemy's,
    which wraps sqlite3's "database or disk is full"), or None for any other error."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ in ("StorageInternalError", "OperationalError", "DatabaseError"):
            orig = getattr(e, "orig", None) or e.__cause__ or e.__context__
            return (str(orig) if orig is not None and str(orig) else str(e)).splitlines()[0][:200]
        e = e.__cause__ or e.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
