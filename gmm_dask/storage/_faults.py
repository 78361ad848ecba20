"""Fault injection for the reliability tests (inactive unless GMM_DASK_FAULT is set).

``GMM_DASK_FAULT=before_commit:30`` makes the writer sleep 30 s after staging every file and
before committing, so a test can kill the process at exactly that point.
"""

from __future__ import annotations

import logging
import os
import time

logger = logging.getLogger(__name__)


def point(name: str) -> None:
    spec = os.environ.get("GMM_DASK_FAULT", "")
    if not spec:
        return
    where, _, seconds = spec.partition(":")
    if where == name:
        logger.warning("fault injection: pausing %s s at %s", seconds or "60", name)
        print(f"GMM_DASK_FAULT reached {name}", flush=True)  # noqa: T201 - the test waits for this line
        time.sleep(float(seconds or 60))
