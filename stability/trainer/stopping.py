"""Stopping a run on a signal: the flag the loop reads after each step, and the exception a stopped
run ends with. Torch-free, so the command line can install a flag before torch is imported."""

from __future__ import annotations

import signal
import threading
from typing import Any

# Ctrl-C too: an interrupted run checkpoints and reads as preempted, and the same command resumes it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(Exception):
    """Raised after a checkpoint was saved on a stop signal (or a ``stop`` request).

    ``signum`` is the signal that stopped the run (None for a ``stop`` request) and
    ``previous_handler`` the handler it displaced (submitit's, inside a Slurm job).
    """

    def __init__(self, message: str, signum: int | None = None, previous_handler: Any = None):
        super().__init__(message)
        self.signum = signum
        self.previous_handler = previous_handler


class StopFlag:
    """Set by a stop signal (or by a caller) so the loop checkpoints after the current step.

    Args:
        event: the event to set (a caller's, to stop the run from another thread); a new one if None.
    """

    def __init__(self, event: threading.Event | None = None) -> None:
        self.event = event or threading.Event()
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self.event.set()

    def install(self, signals: tuple[int, ...]) -> None:
        """Handle ``signals`` (from the main thread only: elsewhere Python refuses, and the caller's event stops it)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in signals:
            self._old[sig] = signal.signal(sig, self._handle)

    def preempted(self, message: str) -> Preempted:
        return Preempted(message, self.signum, self._old.get(self.signum))

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
