"""Each job sequenced once: train, score, segment, backfill, select-k, fluidity.

A job is a function of its parameter model (:mod:`gmm_dask.params`) and of the *steps* it is
made of (:class:`Steps`, by default the plain functions of :mod:`gmm_dask.pipeline`). The Prefect
flows call the same functions with every step wrapped as a task, so a job cannot drift between
the CLI, the library and the UI.

Every job first *plans* without Dask or Prefect — config, paths, snapshots and their footers,
the model version — so bad input fails in a second, before a cluster starts; then it runs its
steps on the configured cluster (the active Dask client if there is one, so a flow or a
backfill starts it once). A job with nothing to do starts nothing.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import pipeline, progress
from .config import JobConfig, check_output_location, load_config
from .errors import DataError, GMMDaskInputError
from .io import list_snapshots
from .model import BANDS, SegmentationModel
from .params import (
    BackfillParams,
    FluidityParams,
    ScoreParams,
    SegmentParams,
    SelectKParams,
    TrainParams,
    date_str,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Steps:
    """The steps jobs call. Flows pass a copy whose fields are Prefect tasks wrapping these."""

    open_snapshot: Callable = pipeline.open_job_snapshot
    profile: Callable = pipeline.profile_snapshot
    prepare_data: Callable = pipeline.prepare_data
    fit: Callable = pipeline.fit_model
    register: Callable = pipeline.register_model
    set_alias: Callable = pipeline.set_alias
    load_model: Callable = pipeline.load_model
    write_tables: Callable = pipeline.write_tables
    partition_model_version: Callable = pipeline.partition_model_version
    compute_fluidity: Callable = None  # filled below (imports pandas/pyarrow joins lazily)
    write_report: Callable = None


def _compute_fluidity(cfg: JobConfig, from_date: str, to_date: str, top_n: int):
    from .fluidity import compute_fluidity

    return compute_fluidity(
        cfg.output.root,
        from_date,
        to_date,
        cfg.input.id_column,
        top_n=top_n,
        storage_options=cfg.input.storage_options,
    )


def write_report(cfg: JobConfig, res: RunResult, kind: str, bic_table: pd.DataFrame | None = None) -> str:
    """The run's self-contained HTML report, next to the tables under ``<root>/_reports/``."""
    from . import io
    from .report import html_report

    html = html_report(res, res.sample_z, res.sample_segment, bic_table)
    name = f"{kind}-{res.snapshot}-{res.model_version}.html"
    return io.write_text_atomic(
        f"{cfg.output.root.rstrip('/')}/_reports/{name}", html, cfg.input.storage_options
    )


STEPS = Steps(compute_fluidity=_compute_fluidity, write_report=write_report)


# --- results ------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What a train/score/segment run did (small; printed by the CLI, published by the flows)."""

    snapshot: str
    model_version: str
    trained: bool
    tables: dict[str, str]
    segments: pd.DataFrame
    overlaps: pd.DataFrame
    counts: dict[str, int]
    fit: dict = field(default_factory=dict)
    entropy_hist: list[float] = field(default_factory=list)
    band_count: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    timings: dict[str, progress.Phase] = field(default_factory=dict)
    sample_z: np.ndarray | None = None
    sample_segment: np.ndarray | None = None
    report_path: str | None = None
    model: SegmentationModel | None = field(default=None, repr=False)

    def summary(self) -> dict:
        """JSON-friendly digest (what flows return)."""
        return {
            "snapshot": self.snapshot,
            "model_version": self.model_version,
            "trained": self.trained,
            "tables": self.tables,
            "counts": self.counts,
            "bands": self.band_count,
            "report": self.report_path,
            "seconds": self.seconds,
            "phases": {k: round(v.seconds, 3) for k, v in self.timings.items()},
            "segments": self.segments[["segment", "name", "weight", "size"]].to_dict("records"),
        }


def _run_result(snap, model, trained, written, t0, timings) -> RunResult:
    agg = written.agg
    return RunResult(
        snapshot=snap.date,
        model_version=model.version or "unregistered",
        trained=trained,
        tables=written.tables,
        segments=written.segments,
        overlaps=written.overlaps,
        counts={
            "rows_read": int(agg.n_read),
            "rows_written": int(agg.n_written),
            "rows_dropped": int(agg.n_dropped),
            "rows_imputed": int(agg.n_imputed),
        },
        fit=dict(model.metadata),
        entropy_hist=agg.entropy_hist.tolist(),
        band_count={b: int(c) for b, c in zip(BANDS, agg.band_count, strict=True)},
        seconds=round(time.perf_counter() - t0, 3),
        timings=timings,
        sample_z=agg.sample_z,
        sample_segment=agg.sample_segment,
        model=model,
    )


# --- planning (no Dask, no Prefect) -------------------------------------------------------------


def load_job(config: str, override=None) -> JobConfig:
    """The job config, with a model override from the run's parameters patched in."""
    cfg = load_config(config)
    return override.apply(cfg) if override is not None else cfg


def check_job(cfg: JobConfig) -> None:
    """Checks every job makes before it starts anything: output location and cluster settings."""
    from .cluster import check_cluster_config

    check_output_location(cfg)
    check_cluster_config(cfg.cluster)


@dataclass
class SnapshotPlan:
    cfg: JobConfig
    snapshot: object  # io.Snapshot, footers checked
    model: SegmentationModel | None = None  # pinned model (score), checked against the input


def plan_train(p: TrainParams, *, steps: Steps = STEPS) -> SnapshotPlan:
    cfg = load_job(p.config, p.model)
    check_job(cfg)
    return SnapshotPlan(cfg, steps.open_snapshot(cfg, date_str(p.snapshot)))


def plan_score(p: ScoreParams | SegmentParams, *, steps: Steps = STEPS) -> SnapshotPlan:
    cfg = load_job(p.config, getattr(p, "model", None))
    check_job(cfg)
    model = steps.load_model(cfg, p.model_version) if p.model_version else None
    return SnapshotPlan(cfg, steps.open_snapshot(cfg, date_str(p.snapshot)), model)


# --- train, score, segment ----------------------------------------------------------------------


def run_snapshot(
    cfg: JobConfig,
    snap,
    *,
    model: SegmentationModel | None = None,
    warm_start: SegmentationModel | None = None,
    align: bool = False,
    steps: Steps = STEPS,
) -> RunResult:
    """Segment one opened snapshot: profile → (fit → register | given model) → tables."""
    t0 = time.perf_counter()
    timings: dict[str, progress.Phase] = {}
    with pipeline.cluster(cfg):
        with progress.phase("profile", timings, rows=snap.n_rows):
            prof = steps.profile(cfg, snap)
        trained = model is None
        if trained:
            with progress.phase("fit", timings, rows=pipeline.rows_used(cfg, prof)) as ph:
                model = steps.fit(cfg, snap, prof, warm_start=warm_start, callback=progress.em_callback)
                ph.detail = (
                    f"{model.metadata['n_iter']} EM iterations, converged: {model.metadata['converged']}"
                )
            if align and warm_start is not None and warm_start.n_components == model.n_components:
                from .align import align_to

                model = align_to(warm_start, model)
            model = steps.register(cfg, model)
        with progress.phase("write", timings, rows=snap.n_rows):
            written = steps.write_tables(cfg, snap, model)
    res = _run_result(snap, model, trained, written, t0, timings)
    logger.info(
        "Snapshot %s %s with model %s in %.1f s",
        snap.date,
        "segmented" if trained else "scored",
        res.model_version,
        res.seconds,
    )
    return res


def train(p: TrainParams, *, steps: Steps = STEPS) -> RunResult:
    """Fit on a snapshot (latest by default), register the model, write the tables."""
    plan = plan_train(p, steps=steps)
    return run_snapshot(plan.cfg, plan.snapshot, steps=steps)


def score(p: ScoreParams, *, steps: Steps = STEPS) -> RunResult:
    """Apply a registered model (default ``latest``) to a snapshot and write the tables."""
    plan = plan_score(p, steps=steps)
    return run_snapshot(plan.cfg, plan.snapshot, model=plan.model, steps=steps)


def segment(p: SegmentParams, *, steps: Steps = STEPS, report: bool = True) -> RunResult:
    """The daily job: fit the snapshot (or score it with a pinned model), write the tables and
    the HTML report."""
    plan = plan_score(p, steps=steps)
    res = run_snapshot(plan.cfg, plan.snapshot, model=plan.model, steps=steps)
    if report:
        res.report_path = steps.write_report(plan.cfg, res, "segment")
    return res


# --- backfill -----------------------------------------------------------------------------------


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


@dataclass
class BackfillResult:
    dates: list[dict] = field(default_factory=list)  # one summary per date, in date order
    failed: dict[str, str] = field(default_factory=dict)  # date -> why

    @property
    def n_run(self) -> int:
        return sum(1 for r in self.dates if not r.get("skipped") and r["snapshot"] not in self.failed)


class BackfillError(DataError):
    """Some dates of a backfill had bad input; the others were completed. ``result`` has both."""

    def __init__(self, message: str, result: BackfillResult):
        super().__init__(message)
        self.result = result


def plan_backfill(p: BackfillParams, *, steps: Steps = STEPS) -> BackfillPlan:
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
            if v and (p.mode == "refit" or v == model.version):
                done[d] = v
    return BackfillPlan(cfg, p, dates, missing, model, done)


def _in_context(fn):
    """Run ``fn`` in a copy of the caller's context (so Prefect's run context and the progress
    sink reach worker threads)."""
    ctx = contextvars.copy_context()
    return lambda *a, **k: ctx.copy().run(fn, *a, **k)


def backfill(p: BackfillParams, *, steps: Steps = STEPS) -> BackfillResult:
    """Segment every snapshot in [start, end], one date at a time in refit mode (each fit
    warm-started from the previous date's model, components aligned to it), up to
    ``max_concurrency`` dates at once in score mode. Completed dates are skipped unless ``force``.
    A date with bad input does not stop the others: the good dates are written whole and a
    :class:`BackfillError` at the end names each bad date and why."""
    plan = plan_backfill(p, steps=steps)
    cfg = plan.cfg
    if plan.missing_days:
        logger.warning(
            "%d date(s) in the range have no snapshot and are skipped: %s",
            len(plan.missing_days),
            ", ".join(plan.missing_days[:10]),
        )
    result = BackfillResult()
    by_date: dict[str, dict] = {
        d: {"snapshot": d, "skipped": True, "model_version": v} for d, v in plan.done.items()
    }
    if plan.todo:
        with pipeline.cluster(cfg):
            if p.mode == "score":

                def one(d):
                    try:
                        snap = steps.open_snapshot(cfg, d)
                        return d, run_snapshot(cfg, snap, model=plan.model, steps=steps).summary(), None
                    except GMMDaskInputError as err:
                        return d, None, str(err)

                with ThreadPoolExecutor(max_workers=p.max_concurrency) as pool:
                    outcomes = list(pool.map(_in_context(one), plan.todo))
            else:
                outcomes = []
                previous = plan.model
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
                        res = run_snapshot(cfg, snap, warm_start=previous, align=True, steps=steps)
                    except GMMDaskInputError as err:
                        outcomes.append((d, None, str(err)))
                        continue
                    outcomes.append((d, res.summary(), None))
                    previous = res.model
        for d, summary, err in outcomes:
            if err is not None:
                result.failed[d] = err
                by_date[d] = {"snapshot": d, "skipped": False, "error": err}
            else:
                by_date[d] = summary | {"skipped": False}
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


# --- model selection -------------------------------------------------------------------------


@dataclass
class SelectKResult:
    run: RunResult
    table: pd.DataFrame  # one row per (K, covariance type)
    criterion: str

    @property
    def selected(self) -> dict:
        row = self.table[self.table.selected].iloc[0]
        return {
            "n_components": int(row.n_components),
            "covariance_type": row.covariance_type,
            "model_version": self.run.model_version,
        }

    def summary(self) -> dict:
        return {
            "snapshot": self.run.snapshot,
            "selected": self.selected,
            "criterion": self.criterion,
            "table": self.table.to_dict("records"),
            "report": self.run.report_path,
        }


def selection_table(models: list[SegmentationModel], criterion: str) -> pd.DataFrame:
    """One row per candidate with its criteria; ``selected`` marks the minimum of ``criterion``."""
    import pandas as pd

    table = pd.DataFrame(
        [
            {
                "n_components": m.n_components,
                "covariance_type": m.covariance_type,
                "bic": m.metadata["bic"],
                "aic": m.metadata["aic"],
                "log_likelihood": m.metadata["log_likelihood"],
                "n_iter": m.metadata["n_iter"],
                "converged": m.metadata["converged"],
            }
            for m in models
        ]
    )
    best = int(table[criterion].idxmin())
    table["selected"] = [i == best for i in range(len(table))]
    return table


def plan_select_k(p: SelectKParams, *, steps: Steps = STEPS) -> SnapshotPlan:
    cfg = load_job(p.config)
    check_job(cfg)
    return SnapshotPlan(cfg, steps.open_snapshot(cfg, date_str(p.snapshot)))


def select_k(p: SelectKParams, *, steps: Steps = STEPS, report: bool = True) -> SelectKResult:
    """Fit K in [k_min, k_max] × covariance types on data read once, in parallel on the cluster;
    register the best (alias ``selected`` and ``latest``), write its tables and the criterion
    table (``model_selection``)."""
    plan = plan_select_k(p, steps=steps)
    cfg, snap = plan.cfg, plan.snapshot
    grid = [(k, ct) for ct in dict.fromkeys(p.covariance_types) for k in range(p.k_min, p.k_max + 1)]
    t0 = time.perf_counter()
    timings: dict[str, progress.Phase] = {}
    with pipeline.cluster(cfg):
        with progress.phase("profile", timings, rows=snap.n_rows):
            prof = steps.profile(cfg, snap)
        with progress.phase("read", timings, rows=pipeline.rows_used(cfg, prof)):
            data = steps.prepare_data(cfg, snap, prof, persist=True)  # read once, shared by every fit

        def fit_one(k, ct):
            m = steps.fit(cfg, snap, prof, n_components=k, covariance_type=ct, data=data)
            progress.current().message(
                f"fitted K={k} ({ct}): {p.criterion.upper()} {m.metadata[p.criterion]:,.1f}, "
                f"{m.metadata['n_iter']} iterations"
            )
            return m

        with (
            progress.phase("fit", timings, rows=data.n_rows) as ph,
            ThreadPoolExecutor(p.max_concurrency) as pool,
        ):
            models = list(pool.map(_in_context(fit_one), *zip(*grid, strict=True)))
            ph.detail = f"{len(grid)} candidates"
        table = selection_table(models, p.criterion)
        best = models[int(np.flatnonzero(table.selected)[0])]
        best = dataclasses.replace(
            best, metadata=best.metadata | {"selected_by": p.criterion, "candidates": len(grid)}
        )
        best = steps.register(cfg, best, alias="selected")
        steps.set_alias(cfg, "latest", best.version)
        table["model_version"] = [best.version if s else None for s in table.selected]
        with progress.phase("write", timings, rows=snap.n_rows):
            written = steps.write_tables(
                cfg, snap, best, extra={"model_selection": (table, {"gmm_dask.criterion": p.criterion})}
            )
    res = _run_result(snap, best, True, written, t0, timings)
    if report:
        res.report_path = steps.write_report(cfg, res, "select-k", table)
    return SelectKResult(res, table, p.criterion)


# --- fluidity -------------------------------------------------------------------------------


def plan_fluidity(p: FluidityParams, *, steps: Steps = STEPS) -> JobConfig:
    cfg = load_job(p.config)
    check_output_location(cfg)
    for name, d in (("from_date", p.from_date), ("to_date", p.to_date)):
        if steps.partition_model_version(cfg, "memberships", d.isoformat()) is None:
            raise DataError(
                f"{name}: no memberships for snapshot {d} under {cfg.output.root!r}; run segment, score or "
                "backfill for that date first."
            )
    return cfg


def fluidity(p: FluidityParams, *, steps: Steps = STEPS):
    """Compare the memberships of two snapshots; writes ``<root>/fluidity/dt=<to_date>``."""
    cfg = plan_fluidity(p, steps=steps)
    timings: dict[str, progress.Phase] = {}
    with progress.phase("fluidity", timings):
        return steps.compute_fluidity(cfg, p.from_date.isoformat(), p.to_date.isoformat(), p.top_n)


# --- planning for the CLI ----------------------------------------------------------------------

PLANS = {
    TrainParams: plan_train,
    ScoreParams: plan_score,
    SegmentParams: plan_score,
    BackfillParams: plan_backfill,
    SelectKParams: plan_select_k,
    FluidityParams: plan_fluidity,
}


def plan(p) -> object:
    """Run a job's checks (config, paths, snapshots, model version) without starting anything."""
    return PLANS[type(p)](p)


__all__ = [
    "STEPS",
    "BackfillError",
    "BackfillResult",
    "RunResult",
    "SelectKResult",
    "Steps",
    "backfill",
    "fluidity",
    "plan",
    "score",
    "segment",
    "select_k",
    "train",
]
