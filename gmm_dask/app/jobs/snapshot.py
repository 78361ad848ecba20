"""The jobs of one snapshot: ``train`` (fit, register, write), ``score`` (a registered model,
write) and ``segment`` (the daily job: fit warm-started from the published model or score with a
pinned one, write, analyse, report)."""

from __future__ import annotations

import time

from gmm_dask.app import pipeline, progress
from gmm_dask.app.config import JobConfig
from gmm_dask.app.params import ScoreParams, SegmentParams, TrainParams, date_str
from gmm_dask.segmentation.align import align_to
from gmm_dask.segmentation.features import Profile
from gmm_dask.segmentation.model import SegmentationModel
from gmm_dask.storage.io import Snapshot

from .core import (
    STEPS,
    Profiled,
    SnapshotPlan,
    Steps,
    Target,
    check_job,
    latest_after,
    load_job,
    logger,
    made_ahead,
    new_run_id,
    planner,
    profile,
    profile_ahead,
    write_manifest,
)
from .reruns import inputs_fingerprint, published_for, run_kind, unchanged_result
from .results import RunResult, report_data, run_result


@planner(TrainParams)
def plan_train(p: TrainParams, steps: Steps = STEPS) -> SnapshotPlan:
    cfg = load_job(p.config, p.model)
    check_job(cfg)
    plan = SnapshotPlan(cfg, steps.open_snapshot(cfg, date_str(p.snapshot)))
    if p.publishes() and not p.force:
        plan.unchanged = published_for(cfg, plan.snapshot, None, False, steps)
    if plan.unchanged is None:
        plan.profiled = profile_ahead(cfg, plan.snapshot)
    return plan


@planner(ScoreParams, SegmentParams)
def plan_score(p: ScoreParams | SegmentParams, steps: Steps = STEPS) -> SnapshotPlan:
    cfg = load_job(p.config, getattr(p, "model", None))
    check_job(cfg)
    model = steps.load_model(cfg, p.model_version) if p.model_version else None
    plan = SnapshotPlan(cfg, steps.open_snapshot(cfg, date_str(p.snapshot)), model)
    if p.publishes() and not p.force:
        analyse = isinstance(p, SegmentParams)
        plan.unchanged = published_for(cfg, plan.snapshot, model, analyse, steps)
    if plan.unchanged is None:
        plan.profiled = profile_ahead(cfg, plan.snapshot)
    return plan


def run_snapshot(
    cfg: JobConfig,
    snap: Snapshot,
    *,
    model: SegmentationModel | None = None,
    warm_start: SegmentationModel | None = None,
    reference: SegmentationModel | None = None,
    target: Target | None = None,
    steps: Steps = STEPS,
    analyse: bool = False,
    profiled: Profiled | None = None,
) -> RunResult:
    """Segment one opened snapshot: profile → (fit → align to ``reference`` → register | the
    given model) → tables (→ fluidity, forecast and audiences when ``analyse``), stamped with the
    fingerprint of their inputs. A publishing run holds the date's publish lock throughout.
    ``profiled``: the snapshot's profile made while planning (not profiled again)."""
    target = target or Target(True, new_run_id())
    inputs = inputs_fingerprint(cfg, snap, run_kind(model, analyse))
    t0 = time.perf_counter()
    timings: dict[str, progress.Phase] = {}
    with target.lock(cfg, snap.date), pipeline.cluster(cfg):
        prof = profile(cfg, snap, profiled, timings, steps)
        cfg = pipeline.resolve_family(cfg, prof)
        trained = model is None
        kept = None
        if model is None:
            model, kept = _fit(cfg, snap, prof, warm_start, reference, timings, steps)
            trained = kept is None
        with progress.phase("write", timings, rows=snap.n_rows):
            written = steps.write_tables(cfg, snap, model, store=target.store(cfg), inputs=inputs)
        analysis = None
        if analyse:
            with progress.phase("analyse", timings, rows=snap.n_rows) as ph:
                analysis = steps.analyse(cfg, snap.date, target.store(cfg), written.segments)
                written.tables.update(analysis.tables)
                ph.detail = "audiences: " + analysis.audiences.brief()
        # only once its tables are committed; a fit moves it unless `latest` is of a later snapshot
        latest = latest_after(cfg, model, trained, steps) if target.publish else None
    res = run_result(snap, model, trained, written, t0, timings)
    res.kept, res.analysis, res.latest = kept, analysis, latest
    res.published, res.run_id = target.publish, target.run_id
    logger.info(
        "Snapshot %s %s with model %s in %.1f s (%s)",
        snap.date,
        "segmented" if trained else "scored",
        res.model_version,
        res.seconds,
        ("published" if latest.moved else f"tables published, latest stays {latest.version}")
        if latest is not None
        else f"candidate {target.run_id}",
    )
    if not target.publish:
        write_manifest(cfg, target, [res])
    return res


def _fit(
    cfg: JobConfig,
    snap: Snapshot,
    prof: Profile,
    warm_start: SegmentationModel | None,
    reference: SegmentationModel | None,
    timings: dict[str, progress.Phase],
    steps: Steps,
) -> tuple[SegmentationModel, str | None]:
    """Fit → align to ``reference`` → register (unaliased); or, when the fit started from
    ``warm_start`` and gains less than ``model.refit_min_gain`` over it, ``warm_start`` itself
    with the reason it was kept."""
    with progress.phase("fit", timings, rows=pipeline.rows_used(cfg, prof)) as ph:
        model = steps.fit(cfg, snap, prof, warm_start=warm_start, callback=progress.em_callback)
        ph.detail = f"{model.metadata.n_iter} EM iterations, converged: {model.metadata.converged}"
    kept = keeps(warm_start, model, cfg.model.refit_min_gain)
    if warm_start is not None and kept is not None:
        logger.info("Snapshot %s: %s", snap.date, kept)
        return warm_start, kept
    if reference is not None:
        with progress.phase("align", timings, rows=snap.n_rows) as ph:
            model = align_to(reference, model, steps.co_membership(cfg, snap, reference, model))
            a = model.metadata.alignment or {}
            ph.detail = f"to {reference.version}: births {a['births']}, deaths {a['deaths']}"
    return steps.register(cfg, model, alias=None), None


def keeps(warm_start: SegmentationModel | None, fit: SegmentationModel, min_gain: float) -> str | None:
    """Why ``warm_start`` (the model before) stays in use instead of ``fit``, its refit on this
    snapshot — the refit's mean log-likelihood per user gains less than ``min_gain`` nats over
    it, with the same components — or None when the refit replaces it (or did not start from it)."""
    drift = fit.metadata.drift
    if warm_start is None or drift is None or min_gain <= 0 or fit.n_components != warm_start.n_components:
        return None
    gain = drift["delta"]
    if not gain < min_gain:
        return None
    return (
        f"kept model {warm_start.version}: a refit explains this snapshot only {gain:.4f} nats/user "
        f"better (< model.refit_min_gain {min_gain:g})"
    )


def starts_fit(reference: SegmentationModel, cfg: JobConfig) -> bool:
    """Whether the published ``reference`` can start this config's fit: same features and K,
    and a start for its family — a behaviour part for the behaviour family, the covariance type
    for the Gaussian one (either under ``auto``, which resolves to the family of the data's
    kinds; :func:`~gmm_dask.app.pipeline.fit_model` ignores a start of the other family)."""
    m = cfg.model
    if reference.n_components != m.n_components or reference.feature_names != cfg.input.feature_names:
        return False
    gaussian_start = reference.behaviour is None and reference.covariance_type == m.covariance_type
    if m.family == "gaussian":
        return gaussian_start
    return reference.behaviour is not None or (m.family == "auto" and gaussian_start)


def train(p: TrainParams, *, steps: Steps = STEPS) -> RunResult:
    """Fit on a snapshot (latest by default), register the model, write the tables (nothing when
    the published tables were written for the same inputs, unless ``force``)."""
    plan = made_ahead(p, SnapshotPlan) or plan_train(p, steps)
    if plan.unchanged is not None:
        return unchanged_result(plan.cfg, plan.snapshot, plan.unchanged, steps)
    target = Target(p.publishes(), new_run_id())
    # aligned to the published model even as a candidate: its ids stay true if it is promoted
    reference = steps.published_model(plan.cfg)
    res = run_snapshot(
        plan.cfg, plan.snapshot, reference=reference, target=target, steps=steps, profiled=plan.profiled
    )
    res.report = report_data(plan.cfg, res, "train")
    return res


def score(p: ScoreParams, *, steps: Steps = STEPS) -> RunResult:
    """Apply a registered model (default ``latest``) to a snapshot and write the tables (nothing
    when the published tables were written for the same inputs, unless ``force``)."""
    plan = made_ahead(p, SnapshotPlan) or plan_score(p, steps)
    if plan.unchanged is not None:
        return unchanged_result(plan.cfg, plan.snapshot, plan.unchanged, steps)
    res = run_snapshot(
        plan.cfg,
        plan.snapshot,
        model=plan.model,
        target=Target(p.publishes(), new_run_id()),
        steps=steps,
        profiled=plan.profiled,
    )
    res.report = report_data(plan.cfg, res, "score")
    return res


def segment(p: SegmentParams, *, steps: Steps = STEPS, report: bool = True) -> RunResult:
    """The daily job: fit the snapshot (or score it with a pinned model), write the tables and
    the HTML report. A publishing fit starts from the published model when that has the
    configured K and covariance type (today's segments stay yesterday's unless the data moved
    them), and is aligned to it either way. A published date whose tables were written for the
    same inputs is left as it is unless ``force``: the result says it is unchanged."""
    plan = made_ahead(p, SnapshotPlan) or plan_score(p, steps)
    if plan.unchanged is not None:
        return unchanged_result(plan.cfg, plan.snapshot, plan.unchanged, steps)
    target = Target(p.publishes(), new_run_id())
    reference = steps.published_model(plan.cfg) if plan.model is None else None
    warm = reference if reference is not None and starts_fit(reference, plan.cfg) else None
    res = run_snapshot(
        plan.cfg,
        plan.snapshot,
        model=plan.model,
        warm_start=warm,
        reference=reference,
        target=target,
        steps=steps,
        analyse=True,
        profiled=plan.profiled,
    )
    res.report = report_data(plan.cfg, res, "segment")
    if report:
        res.report_path = steps.write_report(plan.cfg, res.report)
    return res
