"""The daily segmentation job, and `train` / `score` on their own."""

from __future__ import annotations

import datetime as dt
import time

from prefect import flow, get_run_logger

from gmm_dask import pipeline
from gmm_dask.config import ModelConfig
from gmm_dask.io import list_snapshots

from . import tasks
from .common import DEFAULT_CONFIG, cluster, date_param, em_progress, load_job, publish, require


def _resolve(cfg, snapshot):
    dates = list_snapshots(cfg.input)
    require(bool(dates), f"snapshot: no snapshots under {cfg.input.path!r}")
    if snapshot is None:
        return dates[-1]
    require(
        snapshot in dates,
        f"snapshot: {snapshot} does not exist under {cfg.input.path!r} (latest is {dates[-1]})",
    )
    return snapshot


def _run_segment(cfg, snapshot: str | None, model_version: str | None):
    logger = get_run_logger()
    snapshot = _resolve(cfg, snapshot)
    t0 = time.perf_counter()
    with cluster(cfg):
        pinned = tasks.load_model(cfg, model_version) if model_version else None
        snap = tasks.open_snapshot(cfg, snapshot)
        prof = tasks.profile_snapshot(cfg, snap)
        if pinned is None:
            model = tasks.register_model(cfg, tasks.fit_model(cfg, snap, prof, callback=em_progress()))
        else:
            model = pinned
        paths, agg = tasks.write_outputs(cfg, snap, model)
    res = pipeline.run_result(
        snap, model, pinned is None, paths, agg, dict(model.metadata), t0, cfg.output.overlap_threshold
    )
    publish(res, cfg)
    logger.info("Snapshot %s segmented with model %s in %.1f s", snapshot, model.version, res.seconds)
    return res


@flow(
    name="segment",
    description="Resolve the snapshot, fit (or score with a pinned model), write tables, publish a report.",
)
def segment(
    config: str = DEFAULT_CONFIG,
    snapshot: dt.date | None = None,
    model_version: str | None = None,
    model: ModelConfig | None = None,
) -> pipeline.RunResult:
    """The daily job.

    Parameters
    ----------
    config : path of the job YAML (relative to the deployment's working directory)
    snapshot : the date partition to segment; default the latest one
    model_version : score with this registered version (vNNNN or an alias) instead of fitting
    model : override the config's model section (number of components, covariance type, ...)
    """
    cfg = load_job(config, model)
    return _run_segment(cfg, date_param(snapshot, "snapshot"), model_version)


@flow(name="train", description="Fit a model on a snapshot, register it and write the tables.")
def train(
    config: str = DEFAULT_CONFIG, snapshot: dt.date | None = None, model: ModelConfig | None = None
) -> pipeline.RunResult:
    cfg = load_job(config, model)
    return _run_segment(cfg, date_param(snapshot, "snapshot"), None)


@flow(name="score", description="Apply a registered model to a snapshot and write the tables.")
def score(
    config: str = DEFAULT_CONFIG, snapshot: dt.date | None = None, model_version: str = "latest"
) -> dict:
    cfg = load_job(config)
    return _run_segment(cfg, date_param(snapshot, "snapshot"), model_version)
