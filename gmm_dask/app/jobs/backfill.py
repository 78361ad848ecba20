"""``backfill``: segment every snapshot in a date range — scored with one model, several dates at
once, or refitted date by date, each fit warm-started from and aligned to the date before."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gmm_dask.app import pipeline, progress
from gmm_dask.app.config import JobConfig
from gmm_dask.app.params import BackfillParams
from gmm_dask.errors import BackfillError, DataError, GMMDaskInputError, PublishConflictError
from gmm_dask.segmentation.model import SegmentationModel
from gmm_dask.storage.io import list_snapshots

from .core import (
    STEPS,
    Steps,
    Target,
    check_job,
    in_context,
    load_job,
    logger,
    made_ahead,
    new_run_id,
    planner,
    write_manifest,
)
from .results import RunResult
from .snapshot import run_snapshot

#: A date's bad input or a lost race for it fails that date only.
FAILURES = (GMMDaskInputError, PublishConflictError)

#: (date, its run's summary or None, why it failed or None)
Outcome = tuple[str, dict | None, str | None]


@dataclass
class BackfillPlan:
    cfg: JobConfig
    params: BackfillParams
    dates: list[str]  # snapshots in range
    missing_days: list[str]  # days in range without a snapshot
    model: SegmentationModel | None  # score mode: the model; refit mode: the starting model
    done: dict[str, str]  # date -> model version already written (skipped unless force)

    @property
    def todo(self) -> list[str]:
        return [d for d in self.dates if d not in self.done]

    @property
    def nothing_to_do(self) -> bool:
        """Whether every date is done (the job starts no cluster; the CLI, not even Prefect)."""
        return not self.todo


@dataclass
class BackfillResult:
    dates: list[dict] = field(default_factory=list)  # one summary per date, in date order
    failed: dict[str, str] = field(default_factory=dict)  # date -> why
    run_id: str = ""
    published: bool = False

    @property
    def n_run(self) -> int:
        return sum(1 for r in self.dates if not r.get("skipped") and r["snapshot"] not in self.failed)


@planner(BackfillParams)
def plan_backfill(p: BackfillParams, steps: Steps = STEPS) -> BackfillPlan:
    cfg = load_job(p.config)
    check_job(cfg)
    start, end = p.start.isoformat(), p.end.isoformat()
    dates = [d for d in list_snapshots(cfg.input) if start <= d <= end]
    if not dates:
        raise DataError(f"start/end: no snapshots between {start} and {end} under {cfg.input.path!r}")
    days = [(p.start + dt.timedelta(days=i)).isoformat() for i in range((p.end - p.start).days + 1)]
    missing = sorted(set(days) - set(dates))
    model = None
    if p.mode == "score":
        model = steps.load_model(cfg, p.model_version or "latest")
    elif p.model_version:
        model = steps.load_model(cfg, p.model_version)
    done = {}
    if not p.force:
        for d in dates:
            v = steps.partition_model_version(cfg, "memberships", d)
            if v and (p.mode == "refit" or (model is not None and v == model.version)):
                done[d] = v
    return BackfillPlan(cfg, p, dates, missing, model, done)


def backfill(p: BackfillParams, *, steps: Steps = STEPS) -> BackfillResult:
    """Segment every snapshot in [start, end], one date at a time in refit mode (each fit
    warm-started from the previous date's model, components aligned to it), up to
    ``max_concurrency`` dates at once in score mode. Completed dates are skipped unless ``force``.
    A date with bad input does not stop the others: the good dates are written whole and a
    :class:`BackfillError` at the end names each bad date and why."""
    plan = made_ahead(p, BackfillPlan) or plan_backfill(p, steps)
    if plan.missing_days:
        logger.warning(
            "%d date(s) in the range have no snapshot and are skipped: %s",
            len(plan.missing_days),
            ", ".join(plan.missing_days[:10]),
        )
    result = BackfillResult()
    target = Target(p.publishes(), new_run_id())
    result.run_id, result.published = target.run_id, target.publish
    by_date: dict[str, dict] = {
        d: {"snapshot": d, "skipped": True, "model_version": v} for d, v in plan.done.items()
    }
    if plan.todo:
        with pipeline.cluster(plan.cfg):
            run = _score_dates if p.mode == "score" else _refit_dates
            outcomes = run(plan, target, steps)
        for d, summary, why in outcomes:
            if why is not None:
                result.failed[d] = why
                by_date[d] = {"snapshot": d, "skipped": False, "error": why}
            else:
                by_date[d] = (summary or {}) | {"skipped": False}
    result.dates = [by_date[d] for d in plan.dates]
    logger.info(
        "Backfill %s..%s: %d date(s) run, %d skipped, %d failed",
        p.start,
        p.end,
        result.n_run,
        len(plan.done),
        len(result.failed),
    )
    if result.failed:
        lines = "\n".join(f"  {d}: {why}" for d, why in result.failed.items())
        raise BackfillError(
            f"Backfill finished {result.n_run} date(s); {len(result.failed)} date(s) failed on bad input:\n{lines}",
            result,
        )
    return result


def _score_dates(plan: BackfillPlan, target: Target, steps: Steps) -> list[Outcome]:
    """Score the dates to do with the plan's model, ``max_concurrency`` at once; then analyse
    them in date order (each date compares with the one before)."""
    cfg, p = plan.cfg, plan.params

    def one(d: str) -> tuple[str, RunResult | None, str | None]:
        try:
            snap = steps.open_snapshot(cfg, d)
            res = run_snapshot(cfg, snap, model=plan.model, target=target, steps=steps)
            return d, res, None
        except FAILURES as err:
            return d, None, str(err)

    with ThreadPoolExecutor(max_workers=p.max_concurrency) as pool:
        outcomes = list(pool.map(in_context(one), plan.todo))
    if p.analyse:
        outcomes = [_analyse_after(cfg, target, o, steps) for o in outcomes]
    return [(d, r.summary() if r is not None else None, e) for d, r, e in outcomes]


def _analyse_after(
    cfg: JobConfig, target: Target, outcome: tuple[str, RunResult | None, str | None], steps: Steps
) -> tuple[str, RunResult | None, str | None]:
    """The analyst step of a date scored in parallel, run afterwards (dates in order)."""
    d, res, _ = outcome
    if res is None:
        return outcome
    try:
        with target.lock(cfg, d), progress.phase("analyse", res.timings, rows=res.counts["rows_written"]):
            res.analysis = steps.analyse(cfg, d, target.store(cfg), res.segments)
    except FAILURES as e:
        return d, None, str(e)
    res.tables.update(res.analysis.tables)
    if not target.publish:
        write_manifest(cfg, target, [res])
    return d, res, None


def _refit_dates(plan: BackfillPlan, target: Target, steps: Steps) -> list[Outcome]:
    """Refit the dates to do in order, each warm-started from and aligned to the model before it:
    the given model, else the published one (ids stay the published ids)."""
    cfg = plan.cfg
    outcomes: list[Outcome] = []
    previous = plan.model if plan.model is not None else steps.published_model(cfg)
    for d in plan.dates:
        if d in plan.done:
            previous = None  # reloaded below only if a later date needs it
            continue
        if previous is None:
            prev_dates = [x for x in plan.dates if x < d and x in plan.done]
            if prev_dates:
                previous = steps.load_model(cfg, plan.done[prev_dates[-1]])
        try:
            snap = steps.open_snapshot(cfg, d)
            res = run_snapshot(
                cfg,
                snap,
                warm_start=previous,
                reference=previous,
                target=target,
                steps=steps,
                analyse=plan.params.analyse,
            )
        except FAILURES as err:
            outcomes.append((d, None, str(err)))
            continue
        outcomes.append((d, res.summary(), None))
        previous = res.model
    return outcomes
