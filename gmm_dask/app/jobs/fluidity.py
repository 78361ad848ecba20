"""``fluidity``: compare the published memberships of two snapshots."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gmm_dask.app import progress
from gmm_dask.app.config import JobConfig, check_output_location
from gmm_dask.app.params import FluidityParams
from gmm_dask.errors import DataError
from gmm_dask.storage import io

from .core import STEPS, Steps, load_job, made_ahead, planner

if TYPE_CHECKING:
    from gmm_dask.segmentation.fluidity import FluidityResult


@planner(FluidityParams)
def plan_fluidity(p: FluidityParams, steps: Steps = STEPS) -> JobConfig:
    cfg = load_job(p.config)
    check_output_location(cfg)
    io.check_storage(cfg)
    for name, d in (("from_date", p.from_date), ("to_date", p.to_date)):
        if steps.partition_model_version(cfg, "memberships", d.isoformat()) is None:
            raise DataError(
                f"{name}: no memberships for snapshot {d} under {cfg.output.root!r}; run segment, score or "
                "backfill for that date first."
            )
    return cfg


def fluidity(p: FluidityParams, *, steps: Steps = STEPS) -> FluidityResult:
    """Compare the memberships of two snapshots; writes ``<root>/fluidity/dt=<to_date>``."""
    cfg = made_ahead(p, JobConfig) or plan_fluidity(p, steps)
    timings: dict[str, progress.Phase] = {}
    with progress.phase("fluidity", timings):
        return steps.compute_fluidity(cfg, p.from_date.isoformat(), p.to_date.isoformat(), p.top_n)
