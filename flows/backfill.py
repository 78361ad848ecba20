"""Backfills over historical date partitions: score with one model, or refit date by date."""

from __future__ import annotations

from gmm_dask.app import jobs
from gmm_dask.app.params import BackfillParams

from ._params import job_flow
from .tasks import TASK_STEPS


@job_flow(
    BackfillParams,
    name="backfill",
    description="Segment every snapshot in [start, end]; completed dates are skipped unless force.",
)
def backfill(p: BackfillParams) -> list[dict]:
    return jobs.backfill(p, steps=TASK_STEPS).dates
