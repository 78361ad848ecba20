"""What every job shares: its steps, where it writes, its run id, its config checks, the
``latest`` alias, the candidate manifest, and the registry of plans.

A job's *plan* runs every check that needs no cluster (config, paths, snapshots and their
footers, the model version). Each job module registers its planner for its parameter model
with :func:`planner`, so :func:`plan` knows every job without a table to edit; a plan made
ahead (the CLI's, before Prefect starts) is taken by the job instead of planning again
(:func:`plan_ahead`, :func:`made_ahead`).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from gmm_dask.app import pipeline, progress
from gmm_dask.app.config import JobConfig, check_output_location, load_config
from gmm_dask.app.params import JobParams, ModelOverride
from gmm_dask.mixture.options import CovarianceType
from gmm_dask.segmentation.features import FeaturePlan, Profile
from gmm_dask.segmentation.model import SegmentationModel
from gmm_dask.storage import io
from gmm_dask.storage.io import Snapshot, TableStore

from .results import Latest

if TYPE_CHECKING:
    import pandas as pd

    from gmm_dask.app.analysis import Analysis
    from gmm_dask.mixture.em import IterationInfo
    from gmm_dask.report.data import ReportData
    from gmm_dask.segmentation.fluidity import FluidityResult

#: One logger for every job (the progress sink logs through it too).
logger = logging.getLogger("gmm_dask.app.jobs")


# --- steps --------------------------------------------------------------------------------------


class PrepareDataStep(Protocol):
    def __call__(
        self,
        cfg: JobConfig,
        snap: Snapshot,
        prof: Profile,
        *,
        plan: FeaturePlan | None = None,
        persist: bool = False,
        dequantize: bool = True,
    ) -> pipeline.FitData: ...


class FitStep(Protocol):
    def __call__(
        self,
        cfg: JobConfig,
        snap: Snapshot,
        prof: Profile,
        *,
        n_components: int | None = None,
        covariance_type: CovarianceType | None = None,
        warm_start: SegmentationModel | None = None,
        data: pipeline.FitData | None = None,
        score_data: pipeline.FitData | None = None,
        callback: Callable[[IterationInfo], None] | None = None,
    ) -> SegmentationModel: ...


class RegisterStep(Protocol):
    def __call__(
        self, cfg: JobConfig, model: SegmentationModel, *, alias: str | None = "latest"
    ) -> SegmentationModel: ...


class WriteTablesStep(Protocol):
    def __call__(
        self,
        cfg: JobConfig,
        snap: Snapshot,
        model: SegmentationModel,
        *,
        extra: dict[str, tuple[pd.DataFrame, dict]] | None = None,
        store: TableStore | None = None,
        inputs: str | None = None,
    ) -> pipeline.Written: ...


class AnalyseStep(Protocol):
    def __call__(
        self,
        cfg: JobConfig,
        date: str,
        out: TableStore,
        segments: pd.DataFrame,
        source: TableStore | None = None,
    ) -> Analysis: ...


def compute_fluidity(cfg: JobConfig, from_date: str, to_date: str, top_n: int) -> FluidityResult:
    """The fluidity job's step: compare two snapshots' published memberships and write the result."""
    from gmm_dask.app.steps import compute_fluidity

    return compute_fluidity(cfg.outputs(), from_date, to_date, cfg.input.id_column, top_n=top_n)


def write_report(cfg: JobConfig, data: ReportData) -> str:
    """The run's self-contained HTML report (of a :class:`gmm_dask.report.data.ReportData`), next to
    the tables under ``<root>/_reports/``."""
    from gmm_dask.report.html import html_report

    html = html_report(data)
    name = f"{data.kind}-{data.snapshot}-{data.model_version}.html"
    store = cfg.outputs() if data.published else cfg.outputs().candidates(data.run_id)
    return store.write_text(html, "_reports", name)


def analyse(
    cfg: JobConfig, date: str, out: TableStore, segments: pd.DataFrame, source: TableStore | None = None
) -> Analysis:
    """The analyst step (:func:`gmm_dask.app.analysis.analyse_snapshot`)."""
    from gmm_dask.app.analysis import analyse_snapshot

    return analyse_snapshot(cfg, date, out, segments, source)


@dataclass(frozen=True)
class Steps:
    """The steps jobs call. Flows pass a copy whose fields are Prefect tasks wrapping these."""

    open_snapshot: Callable[[JobConfig, str | None], Snapshot]
    profile: Callable[[JobConfig, Snapshot], Profile]
    prepare_data: PrepareDataStep
    fit: FitStep
    register: RegisterStep
    set_alias: Callable[[JobConfig, str, str], None]
    load_model: Callable[[JobConfig, str | None], SegmentationModel]
    write_tables: WriteTablesStep
    partition_model_version: Callable[[JobConfig, str, str], str | None]
    published_model: Callable[[JobConfig], SegmentationModel | None]
    co_membership: Callable[[JobConfig, Snapshot, SegmentationModel, SegmentationModel], np.ndarray]
    compute_fluidity: Callable[[JobConfig, str, str, int], FluidityResult]
    write_report: Callable[[JobConfig, ReportData], str]
    analyse: AnalyseStep


#: The plain steps (what the library and the CLI's ``train`` and ``score`` run).
STEPS = Steps(
    open_snapshot=pipeline.open_job_snapshot,
    profile=pipeline.profile_snapshot,
    prepare_data=pipeline.prepare_data,
    fit=pipeline.fit_model,
    register=pipeline.register_model,
    set_alias=pipeline.set_alias,
    load_model=pipeline.load_model,
    write_tables=pipeline.write_tables,
    partition_model_version=pipeline.partition_model_version,
    published_model=pipeline.published_model,
    co_membership=pipeline.co_membership,
    compute_fluidity=compute_fluidity,
    write_report=write_report,
    analyse=analyse,
)


# --- checks and plans (no Dask, no Prefect) ------------------------------------------------------


def load_job(config: str, override: ModelOverride | None = None) -> JobConfig:
    """The job config, with a model override from the run's parameters patched in."""
    cfg = load_config(config)
    return override.apply(cfg) if override is not None else cfg


def check_job(cfg: JobConfig) -> None:
    """Checks every job makes before it starts anything: output location and cluster settings."""
    from gmm_dask.app.cluster import check_cluster_config

    check_output_location(cfg)
    io.check_storage(cfg)
    check_cluster_config(cfg.cluster)


#: Snapshots of at most this many rows (the count in their footers) are profiled while planning,
#: in this process on Dask's local threads: bad data (a NaN, a duplicate id, an absurd value)
#: exits 2 before a cluster starts, and the run reuses that profile. A million rows of the demo's
#: six features (20 MiB of Parquet) profile in about 1 s on two shared cores, less than a
#: LocalCluster takes to start; larger snapshots stream through the cluster's workers instead.
PROFILE_AHEAD_ROWS = 1_000_000


@dataclass(frozen=True)
class Profiled:
    """A snapshot's profile made while planning, and its phase (reported with the run's)."""

    profile: Profile
    phase: progress.Phase


def profile_ahead(cfg: JobConfig, snap: Snapshot) -> Profiled | None:
    """The validating profile pass over a small snapshot (:data:`PROFILE_AHEAD_ROWS`), in this
    process before any cluster starts; None for a larger one (profiled on the cluster)."""
    if snap.n_rows > PROFILE_AHEAD_ROWS:
        return None
    phase = progress.Phase("profile", snap.n_rows, detail="while planning, before the cluster started")
    prof = pipeline.profile_snapshot(cfg, snap, scheduler="threads")
    phase.seconds = time.perf_counter() - phase.started
    return Profiled(prof, phase)


def profile(
    cfg: JobConfig,
    snap: Snapshot,
    profiled: Profiled | None,
    timings: dict[str, progress.Phase],
    steps: Steps,
) -> Profile:
    """The snapshot's profile: the one made while planning (its phase reported now, with the
    run's), else one pass on the cluster."""
    if profiled is not None:
        timings["profile"] = profiled.phase
        progress.current().phase_done(profiled.phase)
        return profiled.profile
    with progress.phase("profile", timings, rows=snap.n_rows):
        return steps.profile(cfg, snap)


@dataclass
class SnapshotPlan:
    cfg: JobConfig
    snapshot: Snapshot  # footers checked
    model: SegmentationModel | None = None  # pinned model (score), checked against the input
    unchanged: str | None = None  # the model version of published tables written for these inputs
    profiled: Profiled | None = None  # a small snapshot's profile, made while planning

    @property
    def nothing_to_do(self) -> bool:
        """Whether the job writes nothing (decided without Prefect or Dask)."""
        return self.unchanged is not None


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


F = TypeVar("F", bound=Callable[..., object])
PlanT = TypeVar("PlanT")

#: parameter model -> its job's planner, ``plan_x(p, steps)``; filled by :func:`planner`
_PLANNERS: dict[type[JobParams], Callable[..., object]] = {}


def planner(*params_types: type[JobParams]) -> Callable[[F], F]:
    """Register ``plan_x(p, steps)`` as the plan of the jobs whose parameters are ``params_types``."""

    def register(fn: F) -> F:
        for t in params_types:
            _PLANNERS[t] = fn
        return fn

    return register


def plan(p: JobParams) -> object:
    """Run a job's checks (config, paths, snapshots, model version) without starting anything."""
    return _PLANNERS[type(p)](p, STEPS)


@dataclass
class _Ahead:
    params: JobParams
    plan: object | None


_ahead: contextvars.ContextVar[_Ahead | None] = contextvars.ContextVar("gmm_dask_plan_ahead", default=None)


@contextlib.contextmanager
def plan_ahead(p: JobParams) -> Iterator[object]:
    """Plan ``p``'s job now (every check that needs no cluster, so bad input fails before Prefect
    or Dask start); the job run inside this context takes that plan instead of planning again."""
    ahead = _Ahead(p, plan(p))
    token = _ahead.set(ahead)
    try:
        yield ahead.plan
    finally:
        _ahead.reset(token)


def made_ahead(p: JobParams, kind: type[PlanT]) -> PlanT | None:
    """The plan :func:`plan_ahead` made for these parameters, once (None if there is none)."""
    ahead = _ahead.get()
    if ahead is None or ahead.params != p or not isinstance(ahead.plan, kind):
        return None
    found, ahead.plan = ahead.plan, None
    return found


# --- where a run writes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a run writes: the published tables, or its own candidate namespace."""

    publish: bool
    run_id: str

    def store(self, cfg: JobConfig) -> TableStore:
        """The tables this run writes: the published ones, or its candidates."""
        return cfg.outputs() if self.publish else cfg.outputs().candidates(self.run_id)

    def lock(self, cfg: JobConfig, date: str) -> AbstractContextManager[object]:
        """The date's publish lock for a publishing run (a candidate writes only its own namespace)."""
        if not self.publish:
            return contextlib.nullcontext()
        return cfg.outputs().lock(
            date, owner=run_owner(self.run_id), wait_seconds=cfg.output.lock_wait_seconds
        )


#: Who is running the job, as people find it: the flows set it to the Prefect flow run (name, id,
#: URL), so that a run waiting for, or refused, a date's publish lock names the run holding it.
RUN_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("gmm_dask_run_label", default="")


@contextlib.contextmanager
def run_label(label: str) -> Iterator[None]:
    """Label the jobs run inside (see :data:`RUN_LABEL`)."""
    token = RUN_LABEL.set(label)
    try:
        yield
    finally:
        RUN_LABEL.reset(token)


def run_owner(run_id: str) -> str:
    """The publish lock's owner: the run id, and the label where there is one."""
    label = RUN_LABEL.get()
    return f"{label}, run {run_id}" if label else f"run {run_id}"


def move_latest(cfg: JobConfig, model: SegmentationModel, steps: Steps = STEPS) -> Latest:
    """Point ``latest`` at ``model`` unless the published model is of a later snapshot (a
    backfill or a re-run of an old date never takes ``latest`` back in time); where it points
    after, and whether it moved."""
    current = steps.published_model(cfg)
    if current is not None and (current.metadata.snapshot or "") > (model.metadata.snapshot or ""):
        logger.info(
            "latest stays %s (snapshot %s, after %s)",
            current.version,
            current.metadata.snapshot,
            model.metadata.snapshot,
        )
        return Latest(current.version, current.metadata.snapshot, moved=False)
    assert model.version is not None  # registered before it is published (not an input check)
    steps.set_alias(cfg, "latest", model.version)
    return Latest(model.version, model.metadata.snapshot, moved=True)


def latest_after(cfg: JobConfig, model: SegmentationModel, fitted: bool, steps: Steps = STEPS) -> Latest:
    """Where ``latest`` points once a publishing run has committed its tables: moved to
    ``model`` where the run ``fitted`` it (:func:`move_latest`); where it was for a run that
    scored with a registered model (never moved by it)."""
    if fitted:
        return move_latest(cfg, model, steps)
    current = steps.published_model(cfg)
    if current is None:
        return Latest(None, None, moved=False)
    return Latest(current.version, current.metadata.snapshot, moved=False)


class Manifested(Protocol):
    """What the candidate manifest records of a run's date."""

    snapshot: str
    model_version: str
    trained: bool
    tables: dict[str, str]


def write_manifest(cfg: JobConfig, target: Target, results: Sequence[Manifested | None]) -> str:
    """Record what a candidate run wrote (``candidate.json``), for ``promote``."""

    runs = [r for r in results if r is not None]
    with _MANIFEST_LOCK:
        return _write_manifest(target, runs, target.store(cfg))


_MANIFEST_LOCK = threading.Lock()


MANIFEST = "candidate.json"


def _write_manifest(target: Target, runs: list[Manifested], store: TableStore) -> str:
    previous = json.loads(store.read_text(MANIFEST)) if store.exists(MANIFEST) else {}
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
    return store.write_text(json.dumps(doc, indent=1, sort_keys=True), MANIFEST)


T = TypeVar("T")


def in_context(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` in a copy of the caller's context (so Prefect's run context and the progress
    sink reach worker threads)."""
    ctx = contextvars.copy_context()
    return lambda *a, **k: ctx.copy().run(fn, *a, **k)
