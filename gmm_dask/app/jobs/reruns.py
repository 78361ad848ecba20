"""Idempotent re-runs: a publishing run of a date whose published tables were written for the same
inputs — the snapshot's files (their footers), the config, the model (a fit, or the pinned
version), the tables' schema — writes nothing unless ``force``.

Every run stamps the fingerprint of its inputs into its tables' metadata
(:data:`gmm_dask.app.pipeline.INPUTS_KEY`); a job's plan compares it with the published tables'
before Prefect or Dask start, and the job then returns an *unchanged* result.
"""

from __future__ import annotations

import hashlib
import json

from gmm_dask.app.config import JobConfig
from gmm_dask.app.pipeline import INPUTS_KEY
from gmm_dask.segmentation.model import SegmentationModel
from gmm_dask.segmentation.tables import MODEL_VERSION_KEY, SCHEMA_VERSION
from gmm_dask.storage.io import Snapshot

from .core import STEPS, Steps, logger
from .results import RunResult


def run_kind(model: SegmentationModel | None, analyse: bool) -> str:
    """What a run of a snapshot does: fit, or score with a pinned version; and whether it analyses."""
    kind = "fit" if model is None else f"score {model.version}"
    return kind + (" + analyse" if analyse else "")


def inputs_fingerprint(cfg: JobConfig, snap: Snapshot, kind: str) -> str:
    """The digest of what a run's tables depend on: the config (all but the cluster), the
    snapshot's files, the run's kind (:func:`run_kind`) and the tables' schema version."""
    payload = {
        "schema": SCHEMA_VERSION,
        # all but where it runs and how long it waits: neither changes a table
        "config": cfg.model_dump(mode="json", exclude={"cluster": True, "output": {"lock_wait_seconds"}}),
        "snapshot": snap.fingerprint,
        "run": kind,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def published_for(
    cfg: JobConfig,
    snap: Snapshot,
    model: SegmentationModel | None,
    analyse: bool,
    steps: Steps = STEPS,
) -> str | None:
    """The model version of ``snap``'s published tables when a run (fitting if ``model`` is None,
    else scoring with it) would write them again from the same inputs: they carry this run's
    fingerprint, they are whole (memberships, and audiences when ``analyse``, of the same model),
    and after a fit ``latest`` is that model or of a later snapshot. None: the run writes."""
    if not snap.fingerprint or cfg.outputs().pending(snap.date):  # a torn date is written again
        return None
    meta = cfg.outputs().metadata("segments", snap.date) or {}
    if meta.get(INPUTS_KEY) != inputs_fingerprint(cfg, snap, run_kind(model, analyse)):
        return None
    version = meta.get(MODEL_VERSION_KEY)
    tables = ["memberships", "audiences"] if analyse else ["memberships"]
    if not version or any(steps.partition_model_version(cfg, t, snap.date) != version for t in tables):
        return None
    if model is None:
        latest = steps.published_model(cfg)
        if latest is None:
            return None
        if latest.version != version and (latest.metadata.snapshot or "") <= snap.date:
            return None
    return version


def unchanged_result(cfg: JobConfig, snap: Snapshot, version: str, steps: Steps = STEPS) -> RunResult:
    """The result of a run that wrote nothing: the published segments and overlaps of ``snap``,
    by model ``version``."""
    out = cfg.outputs()
    logger.info(
        "Snapshot %s unchanged: its published tables (model %s) were written for the same data, "
        "config and model settings; nothing written",
        snap.date,
        version,
    )
    return RunResult(
        snapshot=snap.date,
        model_version=version,
        trained=False,
        tables={},
        segments=out.read("segments", snap.date).to_pandas(),
        overlaps=out.read("overlaps", snap.date).to_pandas(),
        counts={},
        model=steps.load_model(cfg, version),
        unchanged=True,
    )
