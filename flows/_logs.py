"""What a flow run's logs say: every library warning of the run, and a bad-input error once.

* The library logs (``gmm_dask.*``) at WARNING and above are copied into the run's logs while the
  run's job runs (:func:`library_warnings`), from every thread the job uses.
* A bad-input error (:class:`~gmm_dask.errors.GMMDaskInputError`) ends the run Failed with the
  error's message as the state message and one ERROR line ("Finished in state Failed(...)"), no
  traceback: the task that met it does not log it again (:class:`InputErrorsOnce`). With the
  ``gmm_dask`` logger at DEBUG (``-vv``, or ``GMM_DASK_TRACEBACKS=1``) tracebacks are kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from gmm_dask.errors import GMMDaskInputError, error_names

LIBRARY = "gmm_dask"


def verbose() -> bool:
    """Whether tracebacks of bad input are wanted."""
    return os.environ.get("GMM_DASK_TRACEBACKS") == "1" or logging.getLogger(LIBRARY).isEnabledFor(
        logging.DEBUG
    )


class _ToRunLog(logging.Handler):
    """Re-log a library record into the flow run's logs."""

    def __init__(self, run_logger: logging.LoggerAdapter[logging.Logger]) -> None:
        super().__init__(logging.WARNING)
        self.run_logger = run_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.run_logger.log(record.levelno, "%s", record.getMessage(), extra={"source": record.name})
        except Exception:  # a log line must never fail the run
            self.handleError(record)


@contextlib.contextmanager
def library_warnings(run_logger: logging.LoggerAdapter[logging.Logger]) -> Iterator[None]:
    """Copy the library's warnings into ``run_logger`` (a flow run's) while inside."""
    handler = _ToRunLog(run_logger)
    lib = logging.getLogger(LIBRARY)
    lib.addHandler(handler)
    try:
        yield
    finally:
        lib.removeHandler(handler)


class InputErrorsOnce(logging.Filter):
    """On Prefect's run loggers: drop a task run's record of a bad-input error (the flow run
    reports it, once, as its state) and any traceback of one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if verbose():
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if record.name.startswith("prefect.task_runs"):  # "Finished in state Failed('DataError: ...')"
            msg = record.getMessage()
            return not (isinstance(exc, GMMDaskInputError) or any(f"{n}:" in msg for n in _names()))
        if isinstance(exc, GMMDaskInputError):
            record.exc_info, record.exc_text = None, None
        return True


def _names() -> set[str]:
    return error_names(GMMDaskInputError)


_FILTER = InputErrorsOnce()


def install() -> None:
    """Put :class:`InputErrorsOnce` on Prefect's run loggers (idempotent)."""
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        log = logging.getLogger(name)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)
