"""The library's job steps as Prefect tasks, one line each. Retries on I/O steps only."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from gmm_dask.app.jobs import STEPS, Steps
from gmm_dask.errors import GMMDaskInputError, PublishConflictError, StorageUnavailableError


def _retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry transient failures (network, storage); never retry bad input or config, nor a
    lost race for a date (another run published it first: retrying would overwrite it), nor a
    store whose retries (GMM_DASK_STORAGE_RETRY_SECONDS) are spent already."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return not isinstance(exc, GMMDaskInputError | PublishConflictError | StorageUnavailableError)


def _fit_name() -> str:
    from prefect.runtime import task_run

    p = task_run.parameters
    k, ct = p.get("n_components"), p.get("covariance_type")
    cfg = p.get("cfg")
    family = getattr(getattr(cfg, "model", None), "family", "gaussian")
    if not k:
        return "fit-model"
    return f"fit-{family}-K{k}" if family != "gaussian" or ct is None else f"fit-K{k}-{ct}"


P = ParamSpec("P")
R = TypeVar("R")


def _io(fn: Callable[P, R], name: str) -> Task[P, R]:
    """An I/O step as a task: retried twice, after GMM_DASK_RETRY_DELAY seconds (default 5)."""
    return task(
        name=name,
        retries=2,
        retry_delay_seconds=float(os.environ.get("GMM_DASK_RETRY_DELAY", "5")),
        retry_condition_fn=_retry_unless_bad_input,
        cache_policy=NO_CACHE,
    )(fn)


TASK_STEPS = Steps(
    open_snapshot=_io(STEPS.open_snapshot, "open-snapshot"),
    profile=_io(STEPS.profile, "profile-snapshot"),
    prepare_data=_io(STEPS.prepare_data, "read-fit-data"),
    fit=task(name="fit-model", task_run_name=_fit_name, cache_policy=NO_CACHE)(STEPS.fit),
    register=_io(STEPS.register, "register-model"),
    set_alias=_io(STEPS.set_alias, "move-alias"),
    load_model=_io(STEPS.load_model, "load-model"),
    write_tables=_io(STEPS.write_tables, "write-tables"),
    partition_model_version=_io(STEPS.partition_model_version, "check-partition"),
    published_model=_io(STEPS.published_model, "load-published-model"),
    co_membership=_io(STEPS.co_membership, "co-membership"),
    compute_fluidity=_io(STEPS.compute_fluidity, "compute-fluidity"),
    write_report=_io(STEPS.write_report, "write-report"),
    analyse=_io(STEPS.analyse, "fluidity-forecast-audiences"),
)
