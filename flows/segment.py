"""The daily segmentation job, and `train` / `score` on their own."""

from __future__ import annotations

from gmm_dask.app import jobs
from gmm_dask.app.params import ScoreParams, SegmentParams, TrainParams

from ._params import job_flow
from .artifacts import publish_run
from .tasks import TASK_STEPS


@job_flow(
    SegmentParams,
    name="segment",
    description="Resolve the snapshot, fit (or score with a pinned model), write tables, publish a report.",
)
def segment(p: SegmentParams) -> jobs.RunResult:
    return _published(jobs.segment, p, "segment")


@job_flow(
    TrainParams, name="train", description="Fit a model on a snapshot, register it and write the tables."
)
def train(p: TrainParams) -> jobs.RunResult:
    return _published(jobs.train, p, "train")


@job_flow(
    ScoreParams, name="score", description="Apply a registered model to a snapshot and write the tables."
)
def score(p: ScoreParams) -> jobs.RunResult:
    return _published(jobs.score, p, "score")


def _published(job, p, kind: str) -> jobs.RunResult:
    """Run the library's job with its steps as tasks, then show the result in the UI."""
    res = job(p, steps=TASK_STEPS)
    publish_run(res, kind)
    return res
