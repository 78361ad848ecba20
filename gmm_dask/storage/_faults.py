"""Fault injection for the reliability tests (inactive unless GMM_DASK_FAULT is set).

``GMM_DASK_FAULT=before_commit:30`` makes the writer sleep 30 s after staging every file and
before committing, so a test can kill the process at exactly that point.

``GMM_DASK_FAULT=transient:write_file:5`` makes the store "go down" for 5 s at the point
``write_file`` (every data-file write): each process's writes there fail with
:class:`InjectedOutage`, a transient error, for 5 s from the first one it attempts. Injected
outages are retried like a remote store's transient errors, on local paths too, so the retry
policy can be tested without a store.
"""

from __future__ import annotations

import logging
import os
import time

logger = logging.getLogger(__name__)

#: When each injected outage began in this process, by point.
_OUTAGE_STARTED: dict[str, float] = {}


class InjectedOutage(ConnectionError):
    """A transient storage error raised by ``GMM_DASK_FAULT=transient:<point>:<seconds>``."""


def point(name: str) -> None:
    spec = os.environ.get("GMM_DASK_FAULT", "")
    if not spec:
        return
    where, _, seconds = spec.partition(":")
    if where == name:
        logger.warning("fault injection: pausing %s s at %s", seconds or "60", name)
        print(f"GMM_DASK_FAULT reached {name}", flush=True)  # noqa: T201 - the test waits for this line
        time.sleep(float(seconds or 60))


def outage(name: str, url: str) -> None:
    """Raise :class:`InjectedOutage` while an injected outage at ``name`` lasts."""
    kind, _, rest = os.environ.get("GMM_DASK_FAULT", "").partition(":")
    where, _, seconds = rest.partition(":")
    if kind != "transient" or where != name:
        return
    started = _OUTAGE_STARTED.setdefault(name, time.monotonic())
    if time.monotonic() - started < float(seconds or 60):
        raise InjectedOutage(f"injected storage outage at {name} (GMM_DASK_FAULT): {url}")
