"""Backfills over historical date partitions: score with one model, or refit date by date."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from prefect import flow, get_run_logger
from pydantic import Field

from gmm_dask.io import list_snapshots

from . import tasks
from .common import DEFAULT_CONFIG, cluster, date_param, em_progress, load_job, require


@flow(
    name="backfill",
    description="Segment every snapshot in [start, end]; completed dates are skipped unless force.",
)
def backfill(
    start: dt.date,
    end: dt.date,
    mode: Literal["score", "refit"] = "score",
    model_version: str | None = None,
    force: bool = False,
    max_concurrency: int = Field(2, ge=1, le=32),
    config: str = DEFAULT_CONFIG,
) -> list[dict]:
    """Each snapshot is its own task run.

    ``score``: every date is scored with one model (``model_version``, default ``latest``), up to
    ``max_concurrency`` dates at a time. ``refit``: dates run in order, each fit warm-started from
    the previous date's model with components aligned to it, so a segment id keeps its meaning.
    A date whose memberships partition already exists (from the same model, in score mode) is
    skipped unless ``force``.
    """
    logger = get_run_logger()
    cfg = load_job(config)
    start_s, end_s = date_param(start, "start"), date_param(end, "end")
    require(end_s >= start_s, f"end ({end_s}) is before start ({start_s}); give end >= start")
    available = list_snapshots(cfg.input)
    dates = [d for d in available if start_s <= d <= end_s]
    require(bool(dates), f"start/end: no snapshots between {start_s} and {end_s} under {cfg.input.path!r}")
    every_day = [
        (dt.date.fromisoformat(start_s) + dt.timedelta(days=i)).isoformat()
        for i in range((dt.date.fromisoformat(end_s) - dt.date.fromisoformat(start_s)).days + 1)
    ]
    missing = sorted(set(every_day) - set(dates))
    if missing:
        logger.warning(
            "%d date(s) in the range have no snapshot and are skipped: %s",
            len(missing),
            ", ".join(missing[:10]),
        )
    results: list[dict] = []
    with cluster(cfg):
        if mode == "score":
            model = tasks.load_model(cfg, model_version)
            todo = []
            for d in dates:
                done = tasks.partition_model_version(cfg, "memberships", d)
                if done == model.version and not force:
                    logger.info("%s already scored with %s: skipped", d, model.version)
                    results.append({"snapshot": d, "skipped": True, "model_version": done})
                else:
                    todo.append(d)
            for i in range(0, len(todo), max_concurrency):
                futures = [
                    tasks.score_with_model.submit(cfg, d, model) for d in todo[i : i + max_concurrency]
                ]
                for fut in futures:
                    res = fut.result()
                    results.append(res.summary() | {"skipped": False})
        else:
            previous = tasks.load_model(cfg, model_version) if model_version else None
            for d in dates:
                done = tasks.partition_model_version(cfg, "memberships", d)
                if done and not force:
                    logger.info("%s already segmented with %s: skipped", d, done)
                    previous = tasks.load_model(cfg, done)
                    results.append({"snapshot": d, "skipped": True, "model_version": done})
                    continue
                res = tasks.refit(cfg, d, previous, callback=em_progress())
                previous = tasks.load_model(cfg, res.model_version)
                results.append(res.summary() | {"skipped": False})
    if results and not results[-1].get("skipped"):
        last = [r for r in results if not r.get("skipped")][-1]
        logger.info(
            "Backfill done: %d dates run, %d skipped (last: %s)",
            sum(not r["skipped"] for r in results),
            sum(r["skipped"] for r in results),
            last["snapshot"],
        )
    return results


__all__ = ["backfill"]
