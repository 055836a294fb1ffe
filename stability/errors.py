"""The one exception type for bad user input: the CLI prints it on one line and exits 2."""

import reprlib


class ConfigError(ValueError):
    """Bad input. The message names the source (file), the field and the allowed values."""

    def __init__(self, message: str, source: str | None = None):
        super().__init__(f"{source}: {message}" if source else message)


def printable(text: object) -> str:
    """``text`` with every control character but newline and tab as "?": a line printed from a
    file under a results root (a run's error, a job's log) cannot drive the terminal.

    >>> printable("ok\x1b]0;title\x07 done")
    'ok?]0;title? done'
    """
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in str(text))


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message names a bad value, never prints a
    megabyte of it (a YAML alias bomb or a huge list)."""
    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 8
    r.maxlevel = 3
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"
