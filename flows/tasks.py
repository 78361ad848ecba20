"""The library's job steps as Prefect tasks, one line each. Retries on I/O steps only."""

from __future__ import annotations

import os

from prefect import task
from prefect.cache_policies import NO_CACHE

from gmm_dask.app.jobs import STEPS, Steps
from gmm_dask.errors import GMMDaskInputError, PublishConflictError


def _retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry transient failures (network, storage); never retry bad input or config, nor a
    lost race for a date (another run published it first: retrying would overwrite it)."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return not isinstance(exc, GMMDaskInputError | PublishConflictError)


def _fit_name() -> str:
    from prefect.runtime import task_run

    p = task_run.parameters
    k, ct = p.get("n_components"), p.get("covariance_type")
    return f"fit-K{k}-{ct}" if k else "fit-model"


_io = {
    "retries": 2,
    # GMM_DASK_RETRY_DELAY: seconds between the two retries of an I/O step (default 5)
    "retry_delay_seconds": float(os.environ.get("GMM_DASK_RETRY_DELAY", "5")),
    "retry_condition_fn": _retry_unless_bad_input,
    "cache_policy": NO_CACHE,
}
_compute = {"cache_policy": NO_CACHE}

TASK_STEPS = Steps(
    open_snapshot=task(STEPS.open_snapshot, name="open-snapshot", **_io),
    profile=task(STEPS.profile, name="profile-snapshot", **_io),
    prepare_data=task(STEPS.prepare_data, name="read-fit-data", **_io),
    fit=task(STEPS.fit, name="fit-model", task_run_name=_fit_name, **_compute),
    register=task(STEPS.register, name="register-model", **_io),
    set_alias=task(STEPS.set_alias, name="move-alias", **_io),
    load_model=task(STEPS.load_model, name="load-model", **_io),
    write_tables=task(STEPS.write_tables, name="write-tables", **_io),
    partition_model_version=task(STEPS.partition_model_version, name="check-partition", **_io),
    published_model=task(STEPS.published_model, name="load-published-model", **_io),
    co_membership=task(STEPS.co_membership, name="co-membership", **_io),
    compute_fluidity=task(STEPS.compute_fluidity, name="compute-fluidity", **_io),
    write_report=task(STEPS.write_report, name="write-report", **_io),
    analyse=task(STEPS.analyse, name="fluidity-forecast-audiences", **_io),
)
