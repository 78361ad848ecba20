"""Segment fluidity between two snapshots: which users' identities moved, and where to."""

from __future__ import annotations

from gmm_dask.app import jobs
from gmm_dask.app.params import FluidityParams

from ._params import job_flow
from .artifacts import publish_fluidity
from .tasks import TASK_STEPS


@job_flow(
    FluidityParams,
    name="fluidity",
    description="Per-user membership shift between two snapshots, transitions, top movers.",
)
def fluidity(p: FluidityParams) -> dict:
    res = jobs.fluidity(p, steps=TASK_STEPS)
    publish_fluidity(res)
    return {"from_date": res.from_date, "to_date": res.to_date, "path": res.path, **res.summary}
