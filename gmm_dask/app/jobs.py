"""Each job sequenced once: train, score, segment, backfill, select-k, fluidity.

A job is a function of its parameter model (:mod:`gmm_dask.app.params`) and of the *steps* it is
made of (:class:`Steps`, by default the plain functions of :mod:`gmm_dask.app.pipeline`). The Prefect
flows call the same functions with every step wrapped as a task, so a job cannot drift between
the CLI, the library and the UI.

Every job first *plans* without Dask or Prefect — config, paths, snapshots and their footers,
the model version — so bad input fails in a second, before a cluster starts; then it runs its
steps on the configured cluster (the active Dask client if there is one, so a flow or a
backfill starts it once). A job with nothing to do starts nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gmm_dask.app import pipeline, progress
from gmm_dask.app.config import JobConfig, check_output_location, load_config
from gmm_dask.app.params import (
    AudienceParams,
    BackfillParams,
    FluidityParams,
    PromoteParams,
    ScoreParams,
    SegmentParams,
    SelectKParams,
    TrainParams,
    VacuumParams,
    date_str,
)
from gmm_dask.errors import BackfillError, ConfigError, DataError, GMMDaskInputError, PublishConflictError
from gmm_dask.segmentation.align import align_to
from gmm_dask.segmentation.model import BANDS, SegmentationModel
from gmm_dask.storage import io
from gmm_dask.storage.io import list_snapshots

if TYPE_CHECKING:
    import pandas as pd

    from gmm_dask.app.analysis import Analysis

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
    published_model: Callable = pipeline.published_model
    co_membership: Callable = pipeline.co_membership
    compute_fluidity: Callable = None  # filled below (imports pandas/pyarrow joins lazily)
    write_report: Callable = None
    analyse: Callable = None


def _compute_fluidity(cfg: JobConfig, from_date: str, to_date: str, top_n: int):
    from gmm_dask.app.steps import compute_fluidity

    return compute_fluidity(
        cfg.output.root,
        from_date,
        to_date,
        cfg.input.id_column,
        top_n=top_n,
        storage_options=cfg.input.storage_options,
        table_format=cfg.output.format,
    )


def write_report(cfg: JobConfig, data) -> str:
    """The run's self-contained HTML report (of a :class:`gmm_dask.report.data.ReportData`), next to
    the tables under ``<root>/_reports/``."""
    from gmm_dask.report.html import html_report

    html = html_report(data)
    name = f"{data.kind}-{data.snapshot}-{data.model_version}.html"
    root = cfg.output.root if data.published else io.candidates_root(cfg.output.root, data.run_id)
    return io.write_text_atomic(f"{root.rstrip('/')}/_reports/{name}", html, cfg.input.storage_options)


def report_data(cfg: JobConfig, res: RunResult, kind: str, bic_table: pd.DataFrame | None = None):
    """What the report and the UI's markdown show of a run (:class:`gmm_dask.report.data.ReportData`)."""
    import pandas as pd

    from gmm_dask.report.data import ReportData
    from gmm_dask.segmentation.naming import component_variances, profile_z, typical_values

    model, seg = res.model, res.segments
    feats = model.feature_names
    k, d = model.means.shape
    variances = component_variances(model.covariances, model.covariance_type, k, d)
    z = profile_z(model.weights, model.means, variances)
    raw = (
        seg[[f"mean_{f}" for f in feats]].to_numpy() if len(seg) else typical_values(model.plan, model.means)
    )
    ids = pd.Index(model.ids, name="segment")
    covs = model.full_covariances()
    a = res.analysis
    fl = a.fluidity if a is not None else None
    names = dict(zip(model.ids, model.segment_names, strict=True))
    if a is not None and a.previous_segments is not None:
        names = {
            **dict(zip(a.previous_segments["segment"], a.previous_segments["name"], strict=True)),
            **names,
        }
    seg_ids = np.asarray(model.ids)
    sample_seg = seg_ids[res.sample_segment] if res.sample_segment is not None and len(seg_ids) else None
    return ReportData(
        kind=kind,
        snapshot=res.snapshot,
        model_version=res.model_version,
        published=res.published,
        run_id=res.run_id,
        counts=res.counts,
        fit=res.fit,
        phases={n: ph.seconds for n, ph in res.timings.items()},
        segments=seg,
        features=list(feats),
        profile_z=pd.DataFrame(z, index=ids, columns=feats),
        profile_raw=pd.DataFrame(raw, index=ids, columns=feats),
        entropy_hist=np.asarray(res.entropy_hist, dtype=float),
        bands={"low_max": cfg.entropy_bands.low_max, "moderate_max": cfg.entropy_bands.moderate_max},
        band_count=res.band_count,
        overlaps=res.overlaps,
        components=[
            {"segment": int(i), "name": n, "weight": float(w), "mean": m, "cov": c}
            for i, n, w, m, c in zip(
                model.ids, model.segment_names, model.weights, model.means, covs, strict=True
            )
        ],
        sample_z=res.sample_z,
        sample_segment=sample_seg,
        previous_segments=a.previous_segments if a is not None else None,
        previous_snapshot=a.previous if a is not None else None,
        transitions=fl.transitions if fl is not None else None,
        segment_names=names,
        bic_table=bic_table,
        criterion=(res.fit or {}).get("selected_by", "bic"),
        forecast=_forecast_frame(a),
        backtest=a.backtest.shares
        if a is not None and a.backtest is not None and a.backtest.reason is None
        else None,
        backtest_scores=_backtest_scores(a),
        audiences=a.audiences.sizes.assign(path=a.tables.get("audiences")) if a is not None else None,
        forecast_basis="mean membership γ" if cfg.forecast.counts == "gamma_mass" else "hard segments",
        tables=res.tables,
    )


def _forecast_frame(a):
    if a is None or a.forecast is None or a.forecast.reason is not None:
        return None
    f = a.forecast.shares.rename(columns={"now": "share_now", "forecast": "share_forecast"})
    return f[[c for c in ("segment", "name", "share_now", "share_forecast") if c in f]]


def _backtest_scores(a):
    if a is None or a.backtest is None or a.backtest.reason is not None:
        return None
    return a.backtest.scores


def _analyse(cfg: JobConfig, date: str, out_root: str, segments, source_root: str | None = None):
    from gmm_dask.app.analysis import analyse_snapshot

    return analyse_snapshot(cfg, date, out_root, segments, source_root)


STEPS = Steps(compute_fluidity=_compute_fluidity, write_report=write_report, analyse=_analyse)


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
    published: bool = True
    run_id: str = ""
    analysis: Analysis | None = field(default=None, repr=False)
    report: object | None = field(default=None, repr=False)  # report.ReportData: what the report and UI show

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
            "published": self.published,
            "run_id": self.run_id,
            "seconds": self.seconds,
            "phases": {k: round(v.seconds, 3) for k, v in self.timings.items()},
            "segments": self.segments[["segment", "name", "weight", "size"]].to_dict("records"),
            **({"analysis": self.analysis.summary()} if self.analysis is not None else {}),
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
    from gmm_dask.app.cluster import check_cluster_config

    check_output_location(cfg)
    io.check_storage(cfg)
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


@dataclass(frozen=True)
class Target:
    """Where a run writes: the published tables, or its own candidate namespace."""

    publish: bool
    run_id: str

    def root(self, cfg: JobConfig) -> str:
        return cfg.output.root if self.publish else io.candidates_root(cfg.output.root, self.run_id)

    def lock(self, cfg: JobConfig, date: str):
        """The date's publish lock for a publishing run (a candidate writes only its own namespace)."""
        if not self.publish:
            return contextlib.nullcontext()
        return io.publish_lock(cfg.output.root, date, cfg.input.storage_options, owner=self.run_id)


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def run_snapshot(
    cfg: JobConfig,
    snap,
    *,
    model: SegmentationModel | None = None,
    warm_start: SegmentationModel | None = None,
    reference: SegmentationModel | None = None,
    target: Target | None = None,
    steps: Steps = STEPS,
    analyse: bool = False,
) -> RunResult:
    """Segment one opened snapshot: profile → (fit → align to ``reference`` → register | the
    given model) → tables (→ fluidity, forecast and audiences when ``analyse``). A publishing
    run holds the date's publish lock throughout."""
    target = target or Target(True, new_run_id())
    t0 = time.perf_counter()
    timings: dict[str, progress.Phase] = {}
    with target.lock(cfg, snap.date), pipeline.cluster(cfg):
        with progress.phase("profile", timings, rows=snap.n_rows):
            prof = steps.profile(cfg, snap)
        trained = model is None
        if trained:
            with progress.phase("fit", timings, rows=pipeline.rows_used(cfg, prof)) as ph:
                model = steps.fit(cfg, snap, prof, warm_start=warm_start, callback=progress.em_callback)
                ph.detail = (
                    f"{model.metadata['n_iter']} EM iterations, converged: {model.metadata['converged']}"
                )
            if reference is not None:
                with progress.phase("align", timings, rows=snap.n_rows) as ph:
                    model = align_to(reference, model, steps.co_membership(cfg, snap, reference, model))
                    a = model.metadata["alignment"]
                    ph.detail = f"to {reference.version}: births {a['births']}, deaths {a['deaths']}"
            model = steps.register(cfg, model, alias=None)
        with progress.phase("write", timings, rows=snap.n_rows):
            written = steps.write_tables(cfg, snap, model, root=target.root(cfg))
        analysis = None
        if analyse:
            with progress.phase("analyse", timings, rows=snap.n_rows) as ph:
                analysis = steps.analyse(cfg, snap.date, target.root(cfg), written.segments)
                written.tables.update(analysis.tables)
                ph.detail = "audiences: " + analysis.audiences.brief()
        if trained and target.publish:  # only once its tables are committed
            move_latest(cfg, model, steps)
    res = _run_result(snap, model, trained, written, t0, timings)
    res.analysis = analysis
    res.published, res.run_id = target.publish, target.run_id
    logger.info(
        "Snapshot %s %s with model %s in %.1f s (%s)",
        snap.date,
        "segmented" if trained else "scored",
        res.model_version,
        res.seconds,
        "published" if target.publish else f"candidate {target.run_id}",
    )
    if not target.publish:
        write_manifest(cfg, target, [res])
    return res


def move_latest(cfg: JobConfig, model: SegmentationModel, steps: Steps = STEPS) -> bool:
    """Point ``latest`` at ``model`` unless the published model is of a later snapshot (a
    backfill or a re-run of an old date never takes ``latest`` back in time)."""
    current = steps.published_model(cfg)
    if current is not None and str(current.metadata.get("snapshot", "")) > str(
        model.metadata.get("snapshot", "")
    ):
        logger.info(
            "latest stays %s (snapshot %s, after %s)",
            current.version,
            current.metadata.get("snapshot"),
            model.metadata.get("snapshot"),
        )
        return False
    steps.set_alias(cfg, "latest", model.version)
    return True


def write_manifest(cfg: JobConfig, target: Target, results: list) -> str:
    """Record what a candidate run wrote (``candidate.json``), for ``promote``."""

    runs = [r for r in results if r is not None]
    path = f"{target.root(cfg)}/candidate.json"
    with _MANIFEST_LOCK:
        return _write_manifest(cfg, target, runs, path)


_MANIFEST_LOCK = threading.Lock()


def _write_manifest(cfg, target, runs, path) -> str:
    import json

    previous = (
        json.loads(io.read_text(path, cfg.input.storage_options))
        if io.exists(path, cfg.input.storage_options)
        else {}
    )
    dates = {
        **previous.get("dates", {}),
        **{
            r.snapshot: {"model_version": r.model_version, "trained": r.trained, "tables": sorted(r.tables)}
            for r in runs
        },
    }
    doc = {
        "run_id": target.run_id,
        "created_at": previous.get("created_at") or time.strftime("%Y-%m-%dT%H:%M:%S"),
        "dates": dates,
    }
    return io.write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=True), cfg.input.storage_options)


def train(p: TrainParams, *, steps: Steps = STEPS) -> RunResult:
    """Fit on a snapshot (latest by default), register the model, write the tables."""
    plan = plan_train(p, steps=steps)
    target = Target(p.publishes(), new_run_id())
    # aligned to the published model even as a candidate: its ids stay true if it is promoted
    reference = steps.published_model(plan.cfg)
    res = run_snapshot(plan.cfg, plan.snapshot, reference=reference, target=target, steps=steps)
    res.report = report_data(plan.cfg, res, "train")
    return res


def score(p: ScoreParams, *, steps: Steps = STEPS) -> RunResult:
    """Apply a registered model (default ``latest``) to a snapshot and write the tables."""
    plan = plan_score(p, steps=steps)
    res = run_snapshot(
        plan.cfg, plan.snapshot, model=plan.model, target=Target(p.publishes(), new_run_id()), steps=steps
    )
    res.report = report_data(plan.cfg, res, "score")
    return res


def segment(p: SegmentParams, *, steps: Steps = STEPS, report: bool = True) -> RunResult:
    """The daily job: fit the snapshot (or score it with a pinned model), write the tables and
    the HTML report. A publishing fit starts from the published model when that has the
    configured K and covariance type (today's segments stay yesterday's unless the data moved
    them), and is aligned to it either way."""
    plan = plan_score(p, steps=steps)
    target = Target(p.publishes(), new_run_id())
    reference = steps.published_model(plan.cfg) if plan.model is None else None
    m = plan.cfg.model
    warm = (
        reference
        if reference is not None
        and reference.n_components == m.n_components
        and reference.covariance_type == m.covariance_type
        and reference.feature_names == plan.cfg.input.feature_names
        else None
    )
    res = run_snapshot(
        plan.cfg,
        plan.snapshot,
        model=plan.model,
        warm_start=warm,
        reference=reference,
        target=target,
        steps=steps,
        analyse=True,
    )
    res.report = report_data(plan.cfg, res, "segment")
    if report:
        res.report_path = steps.write_report(plan.cfg, res.report)
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
    run_id: str = ""
    published: bool = False

    @property
    def n_run(self) -> int:
        return sum(1 for r in self.dates if not r.get("skipped") and r["snapshot"] not in self.failed)


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


def _analyse_after(cfg: JobConfig, target: Target, outcome, steps: Steps):
    """The analyst step of a date scored in parallel, run afterwards (dates in order)."""
    d, res, _ = outcome
    if res is None:
        return outcome
    try:
        with target.lock(cfg, d), progress.phase("analyse", res.timings, rows=res.counts["rows_written"]):
            res.analysis = steps.analyse(cfg, d, target.root(cfg), res.segments)
    except (GMMDaskInputError, PublishConflictError) as e:
        return d, None, str(e)
    res.tables.update(res.analysis.tables)
    if not target.publish:
        write_manifest(cfg, target, [res])
    return d, res, None


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
    target = Target(p.publishes(), new_run_id())
    result.run_id, result.published = target.run_id, target.publish
    by_date: dict[str, dict] = {
        d: {"snapshot": d, "skipped": True, "model_version": v} for d, v in plan.done.items()
    }
    failures = (GMMDaskInputError, PublishConflictError)
    if plan.todo:
        with pipeline.cluster(cfg):
            if p.mode == "score":

                def one(d):
                    try:
                        snap = steps.open_snapshot(cfg, d)
                        res = run_snapshot(cfg, snap, model=plan.model, target=target, steps=steps)
                        return d, res, None
                    except failures as err:
                        return d, None, str(err)

                with ThreadPoolExecutor(max_workers=p.max_concurrency) as pool:
                    outcomes = list(pool.map(_in_context(one), plan.todo))
                if p.analyse:  # in date order: each date compares with the one before
                    outcomes = [_analyse_after(cfg, target, o, steps) for o in outcomes]
                outcomes = [(d, r.summary() if r is not None else None, e) for d, r, e in outcomes]
            else:
                outcomes = []
                # the chain starts from the given model, else the published one (ids stay the published ids)
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
                            analyse=p.analyse,
                        )
                    except failures as err:
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

    @property
    def grid_edge(self) -> str | None:
        """A warning when the selected K is the largest K tried (or the smallest, above 1): the
        criterion may keep improving beyond the grid, so its minimum there is not a choice."""
        k = self.selected["n_components"]
        lo, hi = int(self.table.n_components.min()), int(self.table.n_components.max())
        name = self.criterion.upper()
        if lo == hi:
            return None
        if k == hi:
            return (
                f"{name} is lowest at the largest K tried ({k}): it may keep falling beyond the grid. "
                "Widen k_max; on discrete, zero-inflated features expect it to keep falling (extra "
                "components buy likelihood on exact values and zero patterns), so weigh where the "
                "curve flattens and the degenerate-component report, not its minimum alone."
            )
        if k == lo and lo > 1:
            return f"{name} is lowest at the smallest K tried ({k}): a smaller K may be better still. Lower k_min."
        return None

    def summary(self) -> dict:
        return {
            "snapshot": self.run.snapshot,
            "selected": self.selected,
            "criterion": self.criterion,
            "warning": self.grid_edge,
            "published": self.run.published,
            "run_id": self.run.run_id,
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
    align the best to the published model, register it (alias ``selected``; ``latest`` only when
    publishing), write its tables and the criterion table (``model_selection``) — as a candidate
    unless ``publish``."""
    plan = plan_select_k(p, steps=steps)
    cfg, snap = plan.cfg, plan.snapshot
    target = Target(p.publishes(), new_run_id())
    reference = steps.published_model(cfg)
    grid = [(k, ct) for ct in dict.fromkeys(p.covariance_types) for k in range(p.k_min, p.k_max + 1)]
    t0 = time.perf_counter()
    timings: dict[str, progress.Phase] = {}
    with target.lock(cfg, snap.date), pipeline.cluster(cfg):
        with progress.phase("profile", timings, rows=snap.n_rows):
            prof = steps.profile(cfg, snap)
        with progress.phase("read", timings, rows=pipeline.rows_used(cfg, prof)):
            data = steps.prepare_data(cfg, snap, prof, persist=True)  # read once, shared by every fit
            # the inputs as the tables will score them (segment sizes), also held once for every fit
            scored = (
                steps.prepare_data(cfg, snap, prof, persist=True, dequantize=False)
                if data.plan.has_floor
                else None
            )

        def fit_one(k, ct):
            m = steps.fit(cfg, snap, prof, n_components=k, covariance_type=ct, data=data, score_data=scored)
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
        if reference is not None:  # ids that stay true if this winner is promoted
            best = align_to(reference, best, steps.co_membership(cfg, snap, reference, best))
        best = steps.register(cfg, best, alias="selected")
        table["model_version"] = [best.version if s else None for s in table.selected]
        with progress.phase("write", timings, rows=snap.n_rows):
            written = steps.write_tables(
                cfg,
                snap,
                best,
                extra={"model_selection": (table, {"gmm_dask.criterion": p.criterion})},
                root=target.root(cfg),
            )
        if target.publish:
            move_latest(cfg, best, steps)
    res = _run_result(snap, best, True, written, t0, timings)
    res.published, res.run_id = target.publish, target.run_id
    if not target.publish:
        write_manifest(cfg, target, [res])
    res.report = report_data(cfg, res, "select-k", table)
    if report:
        res.report_path = steps.write_report(cfg, res.report)
    out = SelectKResult(res, table, p.criterion)
    if out.grid_edge:
        logger.warning("%s", out.grid_edge)
    return out


# --- fluidity -------------------------------------------------------------------------------


def plan_fluidity(p: FluidityParams, *, steps: Steps = STEPS) -> JobConfig:
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


def fluidity(p: FluidityParams, *, steps: Steps = STEPS):
    """Compare the memberships of two snapshots; writes ``<root>/fluidity/dt=<to_date>``."""
    cfg = plan_fluidity(p, steps=steps)
    timings: dict[str, progress.Phase] = {}
    with progress.phase("fluidity", timings):
        return steps.compute_fluidity(cfg, p.from_date.isoformat(), p.to_date.isoformat(), p.top_n)


# --- audiences -----------------------------------------------------------------------------


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


def plan_audience(p: AudienceParams, *, steps: Steps = STEPS) -> tuple[JobConfig, str, str]:
    """(config, snapshot, model version of its memberships), checked without Dask."""
    cfg = p.apply(load_job(p.config))
    check_job(cfg)
    so = cfg.input.storage_options
    if p.snapshot is not None:
        date = p.snapshot.isoformat()
    else:
        dates = io.partition_dates(cfg.output.root, "memberships", so)
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
    return cfg, date, version


def audience(p: AudienceParams, *, steps: Steps = STEPS) -> AudienceRunResult:
    """Write a segmented snapshot's audiences (and its fluidity against the previous snapshot,
    transitions and forecast) — as a candidate unless ``publish``."""
    cfg, date, version = plan_audience(p, steps=steps)
    target = Target(p.publishes(), new_run_id())
    so = cfg.input.storage_options
    segments = io.read_partition(cfg.output.root, "segments", date, None, so).to_pandas()
    timings: dict[str, progress.Phase] = {}
    rows = int(segments["size"].sum())
    with target.lock(cfg, date), pipeline.cluster(cfg), progress.phase("analyse", timings, rows=rows):
        analysis = steps.analyse(cfg, date, target.root(cfg), segments, source_root=cfg.output.root)
    res = AudienceRunResult(date, version, analysis, dict(analysis.tables), target.publish, target.run_id)
    if not target.publish:
        write_manifest(cfg, target, [res])
    return res


# --- promote -------------------------------------------------------------------------------


@dataclass
class PromoteResult:
    run_id: str
    dates: list[str]
    tables: dict[str, dict[str, str]]  # date -> table -> published path
    latest: str | None


def plan_promote(p: PromoteParams, *, steps: Steps = STEPS):
    import json

    cfg = load_job(p.config)
    check_output_location(cfg)
    io.check_storage(cfg)
    target = Target(False, p.run_id)
    path = f"{target.root(cfg)}/candidate.json"
    if not io.exists(path, cfg.input.storage_options):
        known = io.list_names(f"{cfg.output.root.rstrip('/')}/_candidates", cfg.input.storage_options)
        raise DataError(
            f"run_id: no candidate run {p.run_id!r} under {cfg.output.root!r} (candidates: "
            f"{', '.join(sorted(known)[-10:]) or 'none'})."
        )
    manifest = json.loads(io.read_text(path, cfg.input.storage_options))
    return cfg, target, manifest


def promote(p: PromoteParams, *, steps: Steps = STEPS) -> PromoteResult:
    """Publish a candidate run: each date's partitions are copied into the published tables and
    committed together (each atomically) under that date's publish lock; ``latest`` then points
    at the model of the candidate's most recent trained date."""
    cfg, target, manifest = plan_promote(p, steps=steps)
    so = cfg.input.storage_options
    out: dict[str, dict[str, str]] = {}
    for date, info in sorted(manifest["dates"].items()):
        with io.publish_lock(cfg.output.root, date, so, owner=f"promote {p.run_id}"):
            out[date] = io.copy_partitions(
                target.root(cfg), cfg.output.root, info["tables"], date, so, cfg.output.format
            )
    trained = [info["model_version"] for _, info in sorted(manifest["dates"].items()) if info.get("trained")]
    latest = trained[-1] if trained else None
    if latest:
        model = steps.load_model(cfg, latest)
        if not move_latest(cfg, model, steps):
            latest = None
    logger.info("Promoted candidate %s: %d date(s), latest -> %s", p.run_id, len(out), latest)
    return PromoteResult(p.run_id, sorted(out), out, latest)


# --- vacuum --------------------------------------------------------------------------------

#: Below this retention a run still writing could lose its not-yet-committed files.
VACUUM_SAFE_HOURS = 24


@dataclass
class VacuumResult:
    tables: dict[str, list[str]]  # table -> files deleted (or that would be, on a dry run)
    retention_hours: int
    dry_run: bool


def plan_vacuum(p: VacuumParams, *, steps: Steps = STEPS):
    cfg = load_job(p.config)
    if cfg.output.format != "delta":
        raise ConfigError(
            f"output.format is {cfg.output.format!r}: there is nothing to vacuum — only Delta tables keep "
            "the files of replaced partitions (the Parquet layout replaces them in place)."
        )
    check_output_location(cfg)
    io.check_storage(cfg)
    return cfg


def vacuum(p: VacuumParams, *, steps: Steps = STEPS) -> VacuumResult:
    """Vacuum every Delta table under ``output.root`` (the published ones; candidates live under
    ``_candidates/`` and are removed with their folder)."""
    cfg = plan_vacuum(p, steps=steps)
    so = cfg.input.storage_options
    root = cfg.output.root.rstrip("/")
    if p.retention_hours < VACUUM_SAFE_HOURS:
        held = io.held_publish_locks(root, so)
        if held:
            raise PublishConflictError(
                f"retention_hours {p.retention_hours} is under {VACUUM_SAFE_HOURS} and a run holds "
                f"{', '.join(held)} under {root}/{io.LOCKS_DIR}: its files are not committed yet and "
                "would be deleted. Vacuum when it has finished (or remove a lock its dead run left)."
            )
    tables = {}
    for name in io.delta_tables(root, so):
        tables[name] = io.delta_vacuum(f"{root}/{name}", so, p.retention_hours, p.dry_run)
        logger.info(
            "%s %d file(s) of %s/%s",
            "Would delete" if p.dry_run else "Deleted",
            len(tables[name]),
            root,
            name,
        )
    return VacuumResult(tables, p.retention_hours, p.dry_run)


# --- planning for the CLI ----------------------------------------------------------------------

PLANS = {
    TrainParams: plan_train,
    ScoreParams: plan_score,
    SegmentParams: plan_score,
    BackfillParams: plan_backfill,
    SelectKParams: plan_select_k,
    FluidityParams: plan_fluidity,
    PromoteParams: plan_promote,
    AudienceParams: plan_audience,
    VacuumParams: plan_vacuum,
}


def plan(p) -> object:
    """Run a job's checks (config, paths, snapshots, model version) without starting anything."""
    return PLANS[type(p)](p)


__all__ = [
    "STEPS",
    "BackfillResult",
    "RunResult",
    "SelectKResult",
    "Steps",
    "VacuumResult",
    "audience",
    "backfill",
    "fluidity",
    "plan",
    "score",
    "segment",
    "select_k",
    "train",
    "vacuum",
]
