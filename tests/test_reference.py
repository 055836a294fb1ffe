"""docs/reference.md is generated from the code, never typed: every command and option (from the
CLI's own parser), the grid spec's keys and sampler fields, every RunConfig and executor field (name, default, its place in the run id and
the comment beside it in the source), and the environment variables the package reads. Rewrite it
with ``python -m tests.test_reference`` after a change of any of them."""

import argparse
import ast
import dataclasses
import io
import re
import tokenize
from pathlib import Path

from stability import config
from stability.cli import build_parser
from stability.grid import spec

from .conftest import ROOT

DOC = ROOT / "docs" / "reference.md"
# The variables the package reads (a test below finds every one in the source).
ENVIRONMENT = {
    "STABILITY_RESULTS": "the dashboard's results root when started by `streamlit run dashboard/app.py` "
                         "(`stability dashboard --results` sets it)",
    "STABILITY_ALLOW_BROWSE": "the dashboard may open folders beside its root (`stability dashboard --allow-browse`)",
    "STABILITY_PROFILES": "the one folder `--profile NAME` looks in (default: `./slurm/profiles`, then the "
                          "package's own profiles)",
    "STABILITY_JOB_ID": "set by the local launcher for each run it starts: the job id the runs row records "
                        "(on Slurm, `SLURM_JOB_ID`)",
}


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _options(p: argparse.ArgumentParser) -> list[str]:
    rows = []
    for a in p._actions:
        if isinstance(a, argparse._HelpAction | argparse._SubParsersAction):
            continue
        name = ", ".join(a.option_strings) or a.metavar or a.dest
        if a.choices and not a.option_strings:
            name += f" ({', '.join(a.choices)})"
        default = "" if a.default is None or a.default is False or not a.option_strings else f"`{a.default}`"
        choices = f" (one of: {', '.join(map(str, a.choices))})" if a.choices and a.option_strings else ""
        rows.append(f"| `{name}` | {default} | {_cell((a.help or '') + choices)} |")
    return ["| option | default | what it does |", "|---|---|---|", *rows] if rows else []


def _commands(p: argparse.ArgumentParser, prefix: str = "stability") -> list[str]:
    out = []
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        usage = " ".join(p.format_usage().removeprefix("usage: ").replace(" [-h]", "").split())  # not the terminal's width
        return [f"### `{prefix}`", "", f"`{usage}`", "", *_options(p), ""]
    helps = {c.dest: c.help for c in subs[0]._choices_actions}
    for name, child in subs[0].choices.items():
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in child._actions)
        section = _commands(child, f"{prefix} {name}")
        if helps.get(name) and leaf:
            section[1:1] = ["", helps[name][0].upper() + helps[name][1:] + "."]
        out += section
    return out


def _comments(path: Path, cls: str) -> dict[str, str]:
    """``{field: comment}`` of a dataclass in ``path``: the comment on the field's line, else the
    comment block above the run of fields it is in (a block over several fields is each one's)."""
    source = path.read_text()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls)
    out = {}
    for item in node.body:
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        if item.lineno in comments:
            out[item.target.id] = comments[item.lineno]
            continue
        line = item.lineno - 1
        while line > 0 and lines[line - 1].strip() and not lines[line - 1].lstrip().startswith("#"):
            line -= 1  # up over the fields of the same run to the comment block over them
        above = []
        while line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        if above:
            out[item.target.id] = " ".join(above)
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`" if not isinstance(f.default, str) else f"`{f.default}`"
    return f"`{f.default_factory()!r}`" if f.default_factory is not dataclasses.MISSING else "required"


def _run_config() -> list[str]:
    RC = config.RunConfig
    notes = _comments(ROOT / "stability" / "config.py", "RunConfig")

    def role(name: str) -> str:
        if name in RC.EXECUTION_FIELDS:
            return "no (execution)"
        if name in ("mix_prob", "mix_switch_prob"):  # config.identity: they compute nothing with mixing off
            return "yes, when not at its default and mixup_alpha or cutmix_alpha is on"
        return "yes, when not at its default" if name in RC.LATER_FIELDS else "yes"

    rows = [f"| `{f.name}` | {_default(f)} | {role(f.name)} | {_cell(notes.get(f.name, ''))} |"
            for f in dataclasses.fields(RC)]
    return ["| field | default | in the run id | note (from stability/config.py) |", "|---|---|---|---|", *rows]


def _executor() -> list[str]:
    notes = _comments(ROOT / "stability" / "grid" / "spec.py", "ExecutorSpec")
    rows = [f"| `{f.name}` | {_default(f)} | {_cell(notes.get(f.name, ''))} |" for f in dataclasses.fields(spec.ExecutorSpec)]
    return ["| field | default | note (from stability/grid/spec.py) |", "|---|---|---|", *rows]


def _grid_spec() -> list[str]:
    example = spec.__doc__.split("```yaml\n")[1].split("```")[0].rstrip()
    notes = _comments(ROOT / "stability" / "grid" / "spec.py", "SamplerSpec")
    rows = [f"| `{f.name}` | {_default(f)} | {_cell(notes.get(f.name, ''))} |" for f in dataclasses.fields(spec.SamplerSpec)]
    return ["Top-level keys: " + ", ".join(f"`{k}`" for k in spec.TOP_KEYS) + f" (`max_runs`: the plan's cap, "
            f"default {spec.MAX_RUNS:,}). Range kinds: " + ", ".join(f"`{k}`" for k in spec.RANGE_KINDS) + ".",
            "", "```yaml", example, "```", "", "`sampler:`", "",
            "| field | default | note (from stability/grid/spec.py) |", "|---|---|---|", *rows]


def reference() -> str:
    parts = [
        "# Reference: commands, run fields, grid specs, executor fields, environment",
        "",
        "Generated from the code by `python -m tests.test_reference` (a test fails when it is stale):",
        "the options are the CLI's own parser, the fields the dataclasses with the comments beside them.",
        "README.md says how they fit together; this page lists them all.",
        "",
        "## Commands",
        "",
        *_commands(build_parser()),
        "## Run fields (`stability train key=value`, a grid spec's `base:` and `space:`)",
        "",
        "A field in the run id changes the run: another value is another run. A field added after run",
        "ids were first issued is in the id only when set to something else than its default, so earlier",
        "runs keep their ids. Execution fields say where and how a run executes, not what it computes.",
        "",
        *_run_config(),
        "",
        "## Grid spec (`stability grid run SPEC`)",
        "",
        *_grid_spec(),
        "",
        "## Executor fields (a grid spec's `executor:`, a cluster profile)",
        "",
        *_executor(),
        "",
        "## Environment",
        "",
        "| variable | what it does |",
        "|---|---|",
        *[f"| `{k}` | {_cell(v)} |" for k, v in ENVIRONMENT.items()],
        "",
    ]
    return "\n".join(parts)


def test_the_reference_is_the_code_s():
    """docs/reference.md lists every command, option and field as the code has them: rewrite it with
    ``python -m tests.test_reference`` after a change."""
    assert DOC.read_text() == reference(), "docs/reference.md is stale: run python -m tests.test_reference"


def test_every_environment_variable_read_is_listed():
    """A ``STABILITY_*`` variable read anywhere in the package or dashboard is in the reference."""
    read = set()
    for path in [*(ROOT / "stability").rglob("*.py"), *(ROOT / "dashboard").rglob("*.py")]:
        read |= set(re.findall(r"""(?:environ(?:\.get\(|\.setdefault\(|\[)|getenv\()\s*["'](STABILITY_\w+)["']""",
                               path.read_text()))
    assert read and read <= set(ENVIRONMENT), sorted(read - set(ENVIRONMENT))


def test_every_field_has_a_note():
    """A field without a comment beside it would be a bare row in the reference: say what it is."""
    for cls, path in ((config.RunConfig, "config.py"), (spec.ExecutorSpec, "grid/spec.py"),
                      (spec.SamplerSpec, "grid/spec.py")):
        bare = [f.name for f in dataclasses.fields(cls) if f.name not in _comments(ROOT / "stability" / path, cls.__name__)]
        assert not bare, f"{cls.__name__} fields with no comment in stability/{path}: {bare}"


if __name__ == "__main__":
    DOC.write_text(reference())
    print(f"wrote {DOC}")
