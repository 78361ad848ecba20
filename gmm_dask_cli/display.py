"""How a long command shows its progress: a live display on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time

from gmm_dask.app.progress import Phase, Progress, em_line

#: The time of day on every line the CLI prints on stderr, progress and log lines alike.
CLOCK = "%H:%M:%S"


class PlainProgress(Progress):
    """Timestamped lines on stderr: each phase's start and end, EM every 10 iterations."""

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream or sys.stderr

    def _line(self, text: str) -> None:
        self.stream.write(f"{time.strftime(CLOCK)} {text}\n")
        self.stream.flush()

    def phase_started(self, phase: Phase) -> None:
        self._line(f"{phase.name} ..." + (f" {phase.rows:,} rows" if phase.rows else ""))

    def phase_done(self, phase: Phase) -> None:
        self._line(phase.summary())

    def em_iteration(self, info) -> None:
        if info.n_iter == 1 or info.n_iter % self.em_every == 0:
            self._line(em_line(info))

    def message(self, text: str) -> None:
        self._line(text)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class TerminalProgress(Progress):
    """A live display (rich): a spinner and row count per phase, a bar over EM iterations with
    the lower bound and an ETA (an upper bound: EM usually converges before max_iter)."""

    def __init__(self):
        super().__init__()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self.console = Console(stderr=True)
        self.bar = RichProgress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA ≤"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.tasks: dict[str, int] = {}
        self.em_task = None

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def phase_started(self, phase: Phase) -> None:
        rows = f" {phase.rows:,} rows" if phase.rows else ""
        self.tasks[phase.name] = self.bar.add_task(f"{phase.name}{rows}", total=None)

    def phase_done(self, phase: Phase) -> None:
        task = self.tasks.pop(phase.name, None)
        if task is not None:
            self.bar.remove_task(task)
        if self.em_task is not None and phase.name == "fit":
            self.bar.remove_task(self.em_task)
            self.em_task = None
        self.console.print(f"✓ {phase.summary()}", highlight=False, soft_wrap=True)

    def em_iteration(self, info) -> None:
        desc = f"EM init {info.init + 1}: lower bound {info.lower_bound:.6f} (Δ {info.change:+.1e})"
        if self.em_task is None:
            self.em_task = self.bar.add_task(desc, total=info.max_iter)
        self.bar.update(self.em_task, completed=info.n_iter, total=info.max_iter, description=desc)

    def message(self, text: str) -> None:
        self.console.print(text)


def make_display():
    """The display for this process's stderr."""
    return TerminalProgress() if sys.stderr.isatty() else PlainProgress()
