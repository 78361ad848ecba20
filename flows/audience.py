"""Audiences of a segmented snapshot: the users behind high entropy, blends, atypicality and moves."""

from __future__ import annotations

from gmm_dask.app import jobs
from gmm_dask.app.params import AudienceParams

from ._params import job_flow
from .artifacts import publish_audience
from .tasks import TASK_STEPS


@job_flow(
    AudienceParams,
    name="audience",
    description="Write a segmented snapshot's audiences (Parquet + CSV), fluidity, transitions and forecast.",
)
def audience(p: AudienceParams) -> jobs.AudienceRunResult:
    res = jobs.audience(p, steps=TASK_STEPS)
    publish_audience(res)
    return res
