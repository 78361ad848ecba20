"""``audience``: write a segmented snapshot's audiences (and its fluidity against the previous
snapshot, transitions and forecast)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gmm_dask.app import pipeline, progress
from gmm_dask.app.config import JobConfig
from gmm_dask.app.params import AudienceParams
from gmm_dask.errors import DataError

from .core import STEPS, Steps, Target, check_job, load_job, made_ahead, new_run_id, planner, write_manifest

if TYPE_CHECKING:
    from gmm_dask.app.analysis import Analysis


@dataclass
class AudiencePlan:
    cfg: JobConfig
    snapshot: str
    model_version: str  # of the snapshot's published memberships


@dataclass
class AudienceRunResult:
    """What ``gmm-dask audience`` wrote for one segmented snapshot."""

    snapshot: str
    model_version: str
    analysis: Analysis
    tables: dict[str, str]
    published: bool
    run_id: str
    trained: bool = False

    def summary(self) -> dict:
        return {
            "snapshot": self.snapshot,
            "model_version": self.model_version,
            "tables": self.tables,
            "published": self.published,
            "run_id": self.run_id,
            **self.analysis.summary(),
        }


@planner(AudienceParams)
def plan_audience(p: AudienceParams, steps: Steps = STEPS) -> AudiencePlan:
    """The config, the snapshot and the model version of its memberships, checked without Dask."""
    cfg = p.apply(load_job(p.config))
    check_job(cfg)
    if p.snapshot is not None:
        date = p.snapshot.isoformat()
    else:
        dates = cfg.outputs().dates("memberships")
        if not dates:
            raise DataError(
                f"snapshot: no published memberships under {cfg.output.root!r}; run segment, score or "
                "backfill first."
            )
        date = dates[-1]
    version = steps.partition_model_version(cfg, "memberships", date)
    if version is None:
        raise DataError(
            f"snapshot: no published memberships for {date} under {cfg.output.root!r}; run segment, score "
            "or backfill for that date first."
        )
    return AudiencePlan(cfg, date, version)


def audience(p: AudienceParams, *, steps: Steps = STEPS) -> AudienceRunResult:
    """Write a segmented snapshot's audiences (and its fluidity against the previous snapshot,
    transitions and forecast) — as a candidate unless ``publish``."""
    plan = made_ahead(p, AudiencePlan) or plan_audience(p, steps)
    cfg, date, version = plan.cfg, plan.snapshot, plan.model_version
    target = Target(p.publishes(), new_run_id())
    segments = cfg.outputs().read("segments", date).to_pandas()
    timings: dict[str, progress.Phase] = {}
    rows = int(segments["size"].sum())
    with target.lock(cfg, date), pipeline.cluster(cfg), progress.phase("analyse", timings, rows=rows):
        analysis = steps.analyse(cfg, date, target.store(cfg), segments, source=cfg.outputs())
    res = AudienceRunResult(date, version, analysis, dict(analysis.tables), target.publish, target.run_id)
    if not target.publish:
        write_manifest(cfg, target, [res])
    return res
