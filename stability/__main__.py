"""``python -m stability`` and the ``stability`` command (``run``)."""

import sys


def run() -> int:
    """The command line; a Ctrl-C before it can answer one (while Python imports it) exits 130
    without a traceback, as one after does."""
    try:
        from .cli import main

        return main()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(run())
