"""The daily segmentation job, and `train` / `score` on their own."""

from __future__ import annotations

from gmm_dask import jobs
from gmm_dask.params import ScoreParams, SegmentParams, TrainParams

from ._params import job_flow
from .artifacts import publish_run
from .tasks import TASK_STEPS


@job_flow(
    SegmentParams,
    name="segment",
    description="Resolve the snapshot, fit (or score with a pinned model), write tables, publish a report.",
)
def segment(p: SegmentParams) -> jobs.RunResult:
    res = jobs.segment(p, steps=TASK_STEPS)
    publish_run(res)
    return res


@job_flow(
    TrainParams, name="train", description="Fit a model on a snapshot, register it and write the tables."
)
def train(p: TrainParams) -> jobs.RunResult:
    res = jobs.train(p, steps=TASK_STEPS)
    publish_run(res, "train")
    return res


@job_flow(
    ScoreParams, name="score", description="Apply a registered model to a snapshot and write the tables."
)
def score(p: ScoreParams) -> jobs.RunResult:
    res = jobs.score(p, steps=TASK_STEPS)
    publish_run(res, "score")
    return res
