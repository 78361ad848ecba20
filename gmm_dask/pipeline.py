"""The warehouse job in library terms: snapshot → profile → fit/load → register → tables.

Each step is a plain function taking configs and paths (not data), so Prefect tasks can wrap
them one-to-one. Data move only between Dask workers; the client sees small aggregates.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pyarrow as pa

from . import _faults
from .config import JobConfig
from .em import IterationInfo
from .errors import DataError
from .features import (
    FeaturePlan,
    Profile,
    build_plan,
    check_profile,
    finish_profile,
    fit_piece_arrays,
    merge_profiles,
    profile_piece,
)
from .io import PartitionWriter, Snapshot, open_snapshot, resolve_snapshot, write_table_file
from .mixture import GaussianMixture
from .registry import ModelRegistry, SegmentationModel
from .tables import PieceResult, overlaps_table, score_piece, segments_table, table_metadata

logger = logging.getLogger(__name__)

TABLES = ("memberships", "segments", "overlaps")


@dataclass
class RunResult:
    """What a train/score run did (small; printed by the CLI, published by the flows)."""

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
    sample_z: np.ndarray | None = None
    sample_segment: np.ndarray | None = None
    report_path: str | None = None

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
            "segments": self.segments[["segment", "name", "weight", "size"]].to_dict("records"),
        }


def _tree_reduce(items: list, combine: Callable, fan_in: int = 8):
    """Combine delayed values in a shallow tree of few tasks."""
    while len(items) > 1:
        items = [
            dask.delayed(functools.reduce, pure=False)(combine, items[i : i + fan_in])
            for i in range(0, len(items), fan_in)
        ]
    return items[0]


def open_job_snapshot(cfg: JobConfig, snapshot: str | None = None) -> Snapshot:
    """Resolve the snapshot (latest if None) and check every file's footer."""
    date = resolve_snapshot(cfg.input, snapshot)
    snap = open_snapshot(cfg.input, date)
    logger.info("Snapshot %s: %d rows in %d pieces", date, snap.n_rows, len(snap.pieces))
    return snap


def profile_snapshot(cfg: JobConfig, snap: Snapshot) -> Profile:
    """One pass: missing values, duplicates, bad weights and scaler statistics; raises on bad data."""
    parts = [dask.delayed(profile_piece, pure=False)(p, cfg.input, snap.storage_options) for p in snap.pieces]
    prof = dask.compute(dask.delayed(finish_profile)(_tree_reduce(parts, merge_profiles)))[0]
    check_profile(prof, cfg.input, snap.date)
    if prof.rows_with_missing:
        logger.warning(
            "Snapshot %s: %d row(s) with missing features (%s)",
            snap.date,
            prof.rows_with_missing,
            cfg.input.missing,
        )
    return prof


def _model_arrays(cfg: JobConfig, snap: Snapshot, prof: Profile, plan: FeaturePlan):
    d = len(cfg.input.features)
    xs, ws = [], []
    for p in snap.pieces:
        n = prof.complete_per_piece[p.index] if cfg.input.missing == "drop" else p.n_rows
        t = dask.delayed(fit_piece_arrays, nout=2, pure=False)(p, cfg.input, plan, snap.storage_options)
        xs.append(da.from_delayed(t[0], shape=(n, d), dtype=np.float64))
        ws.append(da.from_delayed(t[1], shape=(n,), dtype=np.float64))
    return da.concatenate(xs), da.concatenate(ws)


@dataclass
class FitData:
    """Model inputs of one snapshot (lazy or persisted Dask arrays) and the plan that made them."""

    plan: FeaturePlan
    X: da.Array
    w: da.Array


def fit_data(
    cfg: JobConfig,
    snap: Snapshot,
    prof: Profile,
    *,
    warm_start: SegmentationModel | None = None,
    persist: bool = False,
) -> FitData:
    """Build the model inputs; with ``persist`` they are read once and held by the workers
    (for several fits on the same data, e.g. model selection)."""
    # a warm start keeps the previous scaler, so parameters stay comparable across dates
    plan = warm_start.plan if warm_start is not None else build_plan(prof, cfg.input, cfg.model.standardize)
    X, w = _model_arrays(cfg, snap, prof, plan)
    if persist:
        X, w = dask.persist(X, w)
    return FitData(plan, X, w)


def fit_model(
    cfg: JobConfig,
    snap: Snapshot,
    prof: Profile,
    *,
    callback: Callable[[IterationInfo], None] | None = None,
    warm_start: SegmentationModel | None = None,
    n_components: int | None = None,
    covariance_type: str | None = None,
    data: FitData | None = None,
) -> SegmentationModel:
    """Fit the mixture on the prepared snapshot (unregistered model, with metadata)."""
    m = cfg.model
    k = n_components or m.n_components
    ct = covariance_type or m.covariance_type
    data = data or fit_data(cfg, snap, prof, warm_start=warm_start)
    plan, X, w = data.plan, data.X, data.w
    init = {}
    if warm_start is not None and warm_start.n_components == k and warm_start.covariance_type == ct:
        init = {
            "weights_init": warm_start.weights,
            "means_init": warm_start.means,
            "precisions_init": warm_start.mixture().precisions_,
        }
    gm = GaussianMixture(
        k,
        covariance_type=ct,
        tol=m.tol,
        reg_covar=m.reg_covar,
        max_iter=m.max_iter,
        n_init=1 if init else m.n_init,
        init_params=m.init_params,
        random_state=m.random_state,
        callback=callback,
        persist=m.persist,
        **init,
    )
    t0 = time.perf_counter()
    gm.fit(X, sample_weight=w if cfg.input.weight_column else None)
    names = (
        list(m.segment_names)
        if m.segment_names and len(m.segment_names) == k
        else [f"segment_{i}" for i in range(k)]
    )
    used = int(sum(prof.complete_per_piece.values())) if cfg.input.missing == "drop" else prof.n_rows
    metadata = {
        "snapshot": snap.date,
        "rows_read": prof.n_rows,
        "rows_used": used,
        "rows_dropped": prof.n_rows - used,
        "rows_imputed": prof.rows_with_missing if cfg.input.missing == "impute_mean" else 0,
        "lower_bound": gm.lower_bound_,
        "log_likelihood": gm.final_log_likelihood_,
        "bic": gm.bic_fit(),
        "aic": gm.aic_fit(),
        "n_iter": gm.n_iter_,
        "converged": bool(gm.converged_),
        "seed": m.random_state,
        "n_components": k,
        "covariance_type": ct,
        "config_hash": cfg.config_hash(),
        "reseeded_components": [list(r) for r in gm.reseeded_components_],
        "fit_seconds": round(time.perf_counter() - t0, 3),
        "warm_started_from": warm_start.version if warm_start is not None else None,
    }
    return SegmentationModel(
        plan,
        ct,
        gm.weights_,
        gm.means_,
        gm.covariances_,
        gm.precisions_cholesky_,
        names,
        cfg.input.id_column,
        cfg.input.weight_column,
        metadata,
    )


def register_model(cfg: JobConfig, model: SegmentationModel, *, alias: str = "latest") -> SegmentationModel:
    """Store the model as a new registry version; returns it with its version set."""
    reg = ModelRegistry(cfg.output.registry_path, cfg.input.storage_options)
    version = reg.register(model, alias=alias)
    return reg.load(version)


def load_model(cfg: JobConfig, model_version: str | None = None) -> SegmentationModel:
    """A registered version or alias (default ``latest``), validated."""
    return ModelRegistry(cfg.output.registry_path, cfg.input.storage_options).load(model_version)


def _check_model_fits_input(cfg: JobConfig, model: SegmentationModel) -> None:
    if model.plan.names != cfg.input.feature_names or model.id_column != cfg.input.id_column:
        raise DataError(
            f"Model {model.version} was trained on features {model.plan.names} (id {model.id_column!r}) but "
            f"the config lists {cfg.input.feature_names} (id {cfg.input.id_column!r}). Score with a model "
            "trained on the same features, or retrain."
        )


def write_outputs(
    cfg: JobConfig, snap: Snapshot, model: SegmentationModel
) -> tuple[dict[str, str], PieceResult]:
    """Score every piece and commit the three table partitions atomically (each in one step)."""
    _check_model_fits_input(cfg, model)
    so = snap.storage_options
    writers = {t: PartitionWriter(cfg.output.root, t, snap.date, storage_options=so) for t in TABLES}
    try:
        thr = cfg.output.overlap_threshold
        parts = [
            dask.delayed(score_piece, pure=False)(
                p,
                cfg.input,
                model,
                writers["memberships"].file(f"part-{p.index:05d}.parquet"),
                cfg.entropy_bands,
                thr,
                snap.id_type,
                so,
            )
            for p in snap.pieces
        ]
        agg = dask.compute(_tree_reduce(parts, lambda a, b: a + b))[0]
        version = model.version or "unregistered"
        seg = segments_table(model, agg)
        ov = overlaps_table(model, agg, thr)
        for name, df in (("segments", seg), ("overlaps", ov)):
            table = pa.Table.from_pandas(df, preserve_index=False)
            table = table.replace_schema_metadata(
                {**(table.schema.metadata or {}), **table_metadata(name, version)}
            )
            write_table_file(table, writers[name].file("part-00000.parquet"), so)
        _faults.point("before_commit")
        paths = {t: writers[t].commit() for t in ("segments", "overlaps", "memberships")}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return paths, agg


def run_result(snap, model, trained, paths, agg, fit, t0, thr) -> RunResult:
    """Assemble the :class:`RunResult` of a run from what :func:`write_outputs` returned."""
    from .tables import BANDS

    return RunResult(
        snapshot=snap.date,
        model_version=model.version or "unregistered",
        trained=trained,
        tables=paths,
        segments=segments_table(model, agg),
        overlaps=overlaps_table(model, agg, thr),
        counts={
            "rows_read": int(agg.n_read),
            "rows_written": int(agg.n_written),
            "rows_dropped": int(agg.n_dropped),
            "rows_imputed": int(agg.n_imputed),
        },
        fit=fit,
        entropy_hist=agg.entropy_hist.tolist(),
        band_count={b: int(c) for b, c in zip(BANDS, agg.band_count, strict=True)},
        seconds=round(time.perf_counter() - t0, 3),
        sample_z=agg.sample_z,
        sample_segment=agg.sample_segment,
    )


def partition_model_version(cfg: JobConfig, table: str, date: str) -> str | None:
    """The model version recorded in a committed table partition, or None if there is none."""
    import pyarrow.parquet as pq

    from .io import filesystem

    fs, base = filesystem(cfg.output.root, cfg.input.storage_options)
    path = f"{base.rstrip('/')}/{table}/dt={date}"
    if not fs.exists(path):
        return None
    files = sorted(f for f in fs.find(path) if f.endswith(".parquet"))
    if not files:
        return None
    with fs.open(files[0], "rb") as f:
        meta = pq.read_schema(f).metadata or {}
    return meta.get(b"gmm_dask.model_version", b"").decode() or None


def score_with_model(cfg: JobConfig, snapshot: str | None, model: SegmentationModel) -> RunResult:
    """Score a snapshot with an already-loaded model and write the tables."""
    t0 = time.perf_counter()
    snap = open_job_snapshot(cfg, snapshot)
    _check_model_fits_input(cfg, model)
    profile_snapshot(cfg, snap)  # validates ids, weights and the missing policy before any write
    paths, agg = write_outputs(cfg, snap, model)
    return run_result(snap, model, False, paths, agg, dict(model.metadata), t0, cfg.output.overlap_threshold)


def refit(cfg: JobConfig, snapshot: str, previous: SegmentationModel | None, *, callback=None) -> RunResult:
    """Fit a snapshot warm-started from ``previous`` with components aligned to it, register, write."""
    from .align import align_to

    t0 = time.perf_counter()
    snap = open_job_snapshot(cfg, snapshot)
    prof = profile_snapshot(cfg, snap)
    model = fit_model(cfg, snap, prof, callback=callback, warm_start=previous)
    if previous is not None and previous.n_components == model.n_components:
        model = align_to(previous, model)
    model = register_model(cfg, model)
    paths, agg = write_outputs(cfg, snap, model)
    return run_result(snap, model, True, paths, agg, dict(model.metadata), t0, cfg.output.overlap_threshold)


def train(
    cfg: JobConfig, snapshot: str | None = None, *, callback=None, warm_start: SegmentationModel | None = None
) -> RunResult:
    """Fit on a snapshot, register the model, write the tables."""
    t0 = time.perf_counter()
    snap = open_job_snapshot(cfg, snapshot)
    prof = profile_snapshot(cfg, snap)
    model = register_model(cfg, fit_model(cfg, snap, prof, callback=callback, warm_start=warm_start))
    paths, agg = write_outputs(cfg, snap, model)
    return run_result(snap, model, True, paths, agg, dict(model.metadata), t0, cfg.output.overlap_threshold)


def score(cfg: JobConfig, snapshot: str | None = None, model_version: str | None = None) -> RunResult:
    """Apply a stored model (default ``latest``) to a snapshot and write the tables."""
    return score_with_model(cfg, snapshot, load_model(cfg, model_version))
