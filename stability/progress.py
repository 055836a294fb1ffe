"""Progress of one training run: the ``Reporter`` callbacks ``stability.trainer.train`` calls, and a rich bar."""

from __future__ import annotations

from typing import Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PIPE_WIDTH = 200  # columns of output that goes to a file or a pipe (rich's own default there: 80)


def make_console(stderr: bool = False) -> Console:
    """A rich console: the terminal's width on a terminal; piped or redirected, ``PIPE_WIDTH``
    columns, so tables keep whole words (at rich's 80 they are cut: "complet…", "0:0…")."""
    out = Console(stderr=stderr)
    return out if out.is_terminal else Console(stderr=stderr, width=PIPE_WIDTH)


class Reporter(Protocol):
    """Progress callbacks (the CLI draws a rich progress bar with them)."""

    def on_start(self, total_steps: int, start_step: int) -> None: ...
    def on_log(self, step: int, epoch: int, loss: float, lr: float) -> None: ...
    def on_epoch(self, row: dict[str, Any]) -> None: ...


class RichReporter:
    """Progress bar with epoch, step, loss, lr and the last validation error."""

    def __init__(self, console: Console | None = None, label: str = "train"):
        self.console = console or make_console(stderr=True)
        self.progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]} loss {task.fields[loss]} lr {task.fields[lr]} "
                       "val err {task.fields[val]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
            redirect_stderr=False, redirect_stdout=False,  # messages of train() go out as written
        )
        self.task = None

    def __enter__(self) -> RichReporter:
        return self  # the bar starts with the run (on_start): a refused set-up prints only its error

    def __exit__(self, *exc: Any) -> None:
        if self.task is not None:
            self.progress.stop()

    def on_start(self, total_steps: int, start_step: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("run", total=total_steps, completed=start_step,
                                           epoch="-", loss="-", lr="-", val="-")

    def on_log(self, step: int, epoch: int, loss: float, lr: float) -> None:  # epoch counted from 1, as the JSON
        self.progress.update(self.task, completed=step, epoch=epoch + 1, loss=f"{loss:.4g}", lr=f"{lr:.3g}")

    def on_epoch(self, row: dict[str, Any]) -> None:
        self.progress.update(self.task, val=f"{row['val_top1_err']:.2f}%")
        if not self.console.is_terminal:  # a log file (a batch job, a pipe): the bar draws only at the end
            loss = row.get("train_loss")
            self.console.print(f"epoch {row['epoch'] + 1} done: val err {row['val_top1_err']:.2f}%"
                               + (f", train loss {loss:.4g}" if isinstance(loss, float) else ""),
                               markup=False, highlight=False)
