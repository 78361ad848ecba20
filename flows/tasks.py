"""Library functions wrapped as Prefect tasks, one line each. Retries on I/O steps only."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from gmm_dask import fluidity, pipeline
from gmm_dask.errors import GMMDaskInputError


def _retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry transient failures (network, storage); never retry bad input or config."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return not isinstance(exc, GMMDaskInputError)


_io = {
    "retries": 2,
    "retry_delay_seconds": 5,
    "retry_condition_fn": _retry_unless_bad_input,
    "cache_policy": NO_CACHE,
}
_compute = {"cache_policy": NO_CACHE}

open_snapshot = task(pipeline.open_job_snapshot, name="open-snapshot", **_io)
profile_snapshot = task(pipeline.profile_snapshot, name="profile-snapshot", **_io)
fit_data = task(pipeline.fit_data, name="prepare-fit-data", **_io)
fit_model = task(pipeline.fit_model, name="fit-model", **_compute)
register_model = task(pipeline.register_model, name="register-model", **_io)
load_model = task(pipeline.load_model, name="load-model", **_io)
write_outputs = task(pipeline.write_outputs, name="write-tables", **_io)
score_with_model = task(pipeline.score_with_model, name="score-snapshot", **_io)
refit = task(pipeline.refit, name="refit-snapshot", **_compute)
partition_model_version = task(pipeline.partition_model_version, name="check-partition", **_io)
compute_fluidity = task(fluidity.compute_fluidity, name="compute-fluidity", **_io)
