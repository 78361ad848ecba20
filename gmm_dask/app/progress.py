"""Progress of a job: phases (read/profile, EM, write) with counts and timings, and EM iterations.

Jobs report to the *current* progress sink, a context variable, so the same job code drives a
terminal display in the CLI, run-log lines in a Prefect flow, and plain log lines in a library
call — without passing display objects through the steps. The library only logs; displays
live with their surfaces (the CLI's terminal display is in ``gmm_dask_cli``).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

logger = logging.getLogger("gmm_dask.app.jobs")


@dataclass
class Phase:
    """One phase of a job: what it works on and how long it took."""

    name: str
    rows: int | None = None
    detail: str = ""
    seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @property
    def rows_per_second(self) -> float | None:
        return self.rows / self.seconds if self.rows and self.seconds > 0 else None

    def summary(self) -> str:
        rate = self.rows_per_second
        rows = f"{self.rows:,} rows " if self.rows else ""
        speed = f" ({rate:,.0f} rows/s)" if rate else ""
        extra = f"; {self.detail}" if self.detail else ""
        return f"{self.name}: {rows}in {self.seconds:.2f} s{speed}{extra}"


def em_line(info) -> str:
    """One EM iteration, as every sink words it."""
    return (
        f"EM init {info.init + 1} iteration {info.n_iter}/{info.max_iter}: lower bound "
        f"{info.lower_bound:.8f}, change {info.change:+.2e} ({info.seconds:.2f} s)"
    )


class Progress:
    """The sink interface; this base class logs through the ``gmm_dask.app.jobs`` logger, EM
    iterations every ``em_every``-th (and the first)."""

    em_every = 10

    def __init__(self, log: logging.Logger | logging.LoggerAdapter | None = None):
        self.log = log or logger

    def phase_started(self, phase: Phase) -> None:
        self.log.info("%s%s ...", phase.name, f" ({phase.rows:,} rows)" if phase.rows else "")

    def phase_done(self, phase: Phase) -> None:
        self.log.info("%s", phase.summary())

    def em_iteration(self, info) -> None:
        if info.n_iter == 1 or info.n_iter % self.em_every == 0:
            self.log.info("%s", em_line(info))

    def message(self, text: str) -> None:
        self.log.info("%s", text)


class RunLogProgress(Progress):
    """Every EM iteration and phase as a line of a Prefect run's log (given its run logger)."""

    em_every = 1


class Tee(Progress):
    """Send everything to several sinks."""

    def __init__(self, *sinks: Progress):
        super().__init__()
        self.sinks = sinks

    def phase_started(self, phase):
        for s in self.sinks:
            s.phase_started(phase)

    def phase_done(self, phase):
        for s in self.sinks:
            s.phase_done(phase)

    def em_iteration(self, info):
        for s in self.sinks:
            s.em_iteration(info)

    def message(self, text):
        for s in self.sinks:
            s.message(text)


_current: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("gmm_dask_progress", default=None)


def current() -> Progress:
    """The active sink (a logging one when none was set)."""
    return _current.get() or Progress()


@contextlib.contextmanager
def use(sink: Progress, *, add: bool = False) -> Iterator[Progress]:
    """Make ``sink`` the current sink; with ``add``, report to it *and* to the one already set."""
    prev = _current.get()
    active = Tee(prev, sink) if add and prev is not None else sink
    token = _current.set(active)
    try:
        yield active
    finally:
        _current.reset(token)


@contextlib.contextmanager
def phase(name: str, timings: dict | None = None, *, rows: int | None = None) -> Iterator[Phase]:
    """Time a phase and report it; its :class:`Phase` is recorded in ``timings`` under ``name``."""
    sink = current()
    ph = Phase(name, rows)
    sink.phase_started(ph)
    try:
        yield ph
    finally:
        ph.seconds = time.perf_counter() - ph.started
        if timings is not None:
            timings[name] = ph
    sink.phase_done(ph)


def em_callback(info) -> None:
    """The EM callback jobs pass to the fit: forwards each iteration to the current sink."""
    current().em_iteration(info)
