"""Model selection: fit a grid of component counts and covariance types in parallel, pick by BIC/AIC."""

from __future__ import annotations

from gmm_dask.app import jobs
from gmm_dask.app.params import SelectKParams

from ._params import job_flow
from .artifacts import publish_selection
from .tasks import TASK_STEPS


@job_flow(
    SelectKParams,
    name="select-k",
    description="Fit K in [k_min, k_max] × covariance types in parallel; pick the best by BIC or AIC.",
)
def select_k(p: SelectKParams) -> dict:
    out = jobs.select_k(p, steps=TASK_STEPS)
    publish_selection(out)
    return out.summary()
