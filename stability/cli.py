"""``stability`` command line. Each command parses its input and calls one entry point.

Bad input exits with code 2 and one line naming the field and the allowed values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as YAML scalars (``lr=1e-3``, ``stem=conv``)."""
    import yaml

    from .yamlio import parse_yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {item!r}", "command line")
        try:
            out[key] = parse_yaml(value) if value != "" else None
        except yaml.YAMLError:
            out[key] = value
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .config import run_config
    from .yamlio import load_yaml

    values: dict[str, Any] = {}
    source = "command line"
    if args.config:
        loaded = load_yaml(args.config)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("expected a mapping of RunConfig fields", args.config)
        values.update(loaded or {})
        source = args.config
    overrides = parse_overrides(args.overrides)
    run_config(overrides, "command line") if overrides else None  # names the command line in errors
    cfg = run_config({**values, **overrides}, source)

    from .data import DataError
    from .progress import RichReporter
    from .train import Preempted, checkpoint_path, train

    try:
        with RichReporter(label=f"{cfg.model} {cfg.stem or ''}".strip()) as reporter:
            row = train(cfg, reporter, resume=not args.no_resume)
    except DataError as e:
        raise ConfigError(str(e), source) from None
    except Preempted:
        print(f"preempted: checkpoint at {checkpoint_path(cfg)}; rerun the same command to resume",
              file=sys.stderr)
        return 143
    err = row.get("top1_err")
    print(f"run {row['run_id']}: {row['status']}, top-1 error {err:.2f}%"
          + (f" (diverged at step {row['diverged_at_step']})" if row["status"] == "diverged" else ""))
    print(f"results: {Path(cfg.results) / 'runs' / f'sweep={cfg.sweep}' / (row['run_id'] + '.parquet')} "
          f"(and epochs/, steps/, grad_norms/)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models.table import model_table

    rows = model_table()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Models (FLOPs: multiply-adds per image, 1 MAC = 1 FLOP, as the paper)")
    for col in ("name", "stem", "depth", "width", "heads", "params M", "GFLOPs", "image", "tokens"):
        table.add_column(col, justify="left" if col in ("name", "stem") else "right")
    for r in rows:
        table.add_row(r["name"], r["stem"], str(r["depth"]), str(r["width"] or "-"), str(r["heads"] or "-"),
                      f"{r['params'] / 1e6:.2f}", f"{r['flops'] / 1e9:.3f}", str(r["image_size"]),
                      str(r["tokens"] or "-"))
    Console(width=120).print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stability", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run one training run")
    p.add_argument("--config", help="YAML file of RunConfig fields")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="RunConfig fields")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="list model presets with counted params and FLOPs")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_models)
    return parser



def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed one usage line + error; keep its code 2
        return int(e.code or 0)
    try:
        return args.func(args)
    except ConfigError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
