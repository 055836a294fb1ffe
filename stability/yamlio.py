"""YAML reading for specs, configs and profiles: YAML 1.2 floats (``1e-3`` is a number, not the
string PyYAML makes it), and bounded: aliases are refused (a few hundred bytes of nested aliases
expand to gigabytes), a key given twice in one mapping is an error naming both lines, and a file
over ``MAX_BYTES`` is not read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

MAX_BYTES = 1 << 20  # a grid spec is a few hundred bytes; a megabyte is not a spec


class _Loader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed: write the values out",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        first: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice (first at line {first[key]})", key_node.start_mark)
                first[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: the base class reports it
                pass
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file; ``ConfigError`` naming the file when it is missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"file not found: {path}")
    try:
        if (size := p.stat().st_size) > MAX_BYTES:
            raise ConfigError(f"{size} bytes: over the {MAX_BYTES} byte limit of a spec or config file", str(path))
        return parse_yaml(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        why = getattr(e, "problem", None) or " ".join(str(e).split())  # a reader error spans two lines
        raise ConfigError(f"not valid YAML{where}: {why}", str(path)) from None
    except RecursionError:  # '[' * 10**5: nested past the parser's recursion limit
        raise ConfigError("not valid YAML: nested too deep to read (over Python's recursion limit)",
                          str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", str(path)) from None
    except ValueError as e:  # an integer of over 4,300 digits: Python's int() refuses to convert it
        raise ConfigError(f"not valid YAML: {str(e).split(';')[0]}", str(path)) from None


def parse_overrides(items: list[str], source: str = "command line") -> dict[str, Any]:
    """``key=value`` pairs; values parsed as YAML scalars (``lr=1e-3``, ``stem=conv``); an error
    names ``source`` (the option that gave them, e.g. ``--set``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {item!r}", source)
        try:
            out[key] = parse_yaml(value) if value != "" else None
        except (yaml.YAMLError, RecursionError, ValueError):  # '[' * 10**5, 5,000 digits: kept as text (then refused)
            out[key] = value
    return out
