"""The steps warehouse jobs are made of: snapshot → profile → prepare → fit/load → register → tables.

Each step is a plain function taking configs, small values and paths (not data), so a Prefect
task wraps it one-to-one (``flows/tasks.py``); the jobs in :mod:`gmm_dask.jobs` sequence them.
Data move only between Dask workers; the client sees footers, profiles and aggregates. Only
``profile_snapshot`` validates the data: later steps rely on what it checked.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import io
from .config import JobConfig
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
from .io import Snapshot, open_snapshot, resolve_snapshot
from .model import SegmentationModel
from .registry import ModelRegistry

logger = logging.getLogger(__name__)

TABLES = ("memberships", "segments", "overlaps")


def _tree_reduce(items: list, combine: Callable, fan_in: int = 8):
    """Combine delayed values in a shallow tree of few tasks."""
    import dask

    while len(items) > 1:
        items = [
            dask.delayed(functools.reduce, pure=False)(combine, items[i : i + fan_in])
            for i in range(0, len(items), fan_in)
        ]
    return items[0]


@contextlib.contextmanager
def cluster(cfg: JobConfig) -> Iterator:
    """The job's Dask client: the active one if there is one, else the configured cluster."""
    from .cluster import dask_client

    with dask_client(cfg.cluster) as client:
        yield client


def open_job_snapshot(cfg: JobConfig, snapshot: str | None = None) -> Snapshot:
    """Resolve the snapshot (latest if None) and check every file's footer (no Dask)."""
    date = resolve_snapshot(cfg.input, snapshot)
    snap = open_snapshot(cfg.input, date)
    logger.info("Snapshot %s: %d rows in %d pieces", date, snap.n_rows, len(snap.pieces))
    return snap


def profile_snapshot(cfg: JobConfig, snap: Snapshot) -> Profile:
    """The one validating pass: ids, weights, missing values, domains, magnitudes, and the
    scaler statistics; raises the clear error for bad data before anything is fitted or written."""
    import dask

    parts = [dask.delayed(profile_piece, pure=False)(p, cfg.input, snap.storage_options) for p in snap.pieces]
    prof = dask.compute(dask.delayed(finish_profile)(_tree_reduce(parts, merge_profiles)))[0]
    check_profile(prof, cfg.input, snap.date, standardize=cfg.model.standardize)
    if prof.rows_with_missing:
        logger.warning(
            "Snapshot %s: %d row(s) with missing features (%s)",
            snap.date,
            prof.rows_with_missing,
            cfg.input.missing,
        )
    return prof


def rows_used(cfg: JobConfig, prof: Profile) -> int:
    return int(sum(prof.complete_per_piece.values())) if cfg.input.missing == "drop" else prof.n_rows


@dataclass
class FitData:
    """Model inputs of one snapshot (lazy or persisted Dask arrays) and the plan that made them."""

    plan: FeaturePlan
    X: object  # dask.array.Array (n, D)
    w: object | None  # dask.array.Array (n,) or None without a weight column
    n_rows: int
    variance: float  # mean variance of the model inputs over features (init tolerance)


def prepare_data(
    cfg: JobConfig,
    snap: Snapshot,
    prof: Profile,
    *,
    plan: FeaturePlan | None = None,
    persist: bool = False,
) -> FitData:
    """Build the model inputs from the profile's plan (or a given one, e.g. a warm start's, so
    parameters stay comparable across dates); with ``persist`` they are read once and held by
    the workers (for several fits on the same data, e.g. model selection)."""
    import dask
    import dask.array as da

    plan = plan or build_plan(prof, cfg.input, cfg.model.standardize)
    d = len(cfg.input.features)
    xs, ws = [], []
    for p in snap.pieces:
        n = prof.complete_per_piece[p.index] if cfg.input.missing == "drop" else p.n_rows
        t = dask.delayed(fit_piece_arrays, nout=2, pure=False)(p, cfg.input, plan, snap.storage_options)
        xs.append(da.from_delayed(t[0], shape=(n, d), dtype=np.float64))
        ws.append(da.from_delayed(t[1], shape=(n,), dtype=np.float64))
    X = da.concatenate(xs)
    w = da.concatenate(ws) if cfg.input.weight_column else None
    if persist:
        X, w = dask.persist(X, w) if w is not None else (dask.persist(X)[0], None)
    return FitData(plan, X, w, rows_used(cfg, prof), _model_space_variance(cfg, prof, plan))


def _model_space_variance(cfg: JobConfig, prof: Profile, plan: FeaturePlan) -> float:
    if cfg.input.missing == "impute_mean":
        var = prof.col_m2 / prof.total_w if prof.total_w > 0 else np.zeros(len(plan.scale))
    else:
        var = prof.row_m2 / prof.row_w if prof.row_w > 0 else np.zeros(len(plan.scale))
    return float(np.mean(var / plan.scale**2))


def fit_model(
    cfg: JobConfig,
    snap: Snapshot,
    prof: Profile,
    *,
    n_components: int | None = None,
    covariance_type: str | None = None,
    warm_start: SegmentationModel | None = None,
    data: FitData | None = None,
    callback: Callable | None = None,
) -> SegmentationModel:
    """Fit the mixture with the EM core on the prepared snapshot (an unregistered model with its
    metadata). A ``warm_start`` model with the same K and covariance type is the starting point
    (its scaler is kept, its Cholesky factors are used as they are)."""
    from .em import fit_mixture, seed_from
    from .gaussian import MixtureParams, n_parameters
    from .runner import ChunkedData, make_runner

    m = cfg.model
    k = n_components or m.n_components
    ct = covariance_type or m.covariance_type
    if data is None:
        data = prepare_data(cfg, snap, prof, plan=warm_start.plan if warm_start is not None else None)
    if data.n_rows < k:
        raise DataError(
            f"Snapshot {snap.date}: {data.n_rows} usable row(s) for {k} components; use fewer components "
            "(model.n_components) or more data."
        )
    init = None
    if warm_start is not None and warm_start.n_components == k and warm_start.covariance_type == ct:
        init = MixtureParams(
            warm_start.weights, warm_start.means, warm_start.covariances, warm_start.precisions_cholesky
        )
    t0 = time.perf_counter()
    runner = make_runner(ChunkedData(data.X, data.w), persist=m.persist)
    try:
        res = fit_mixture(
            runner,
            n_components=k,
            covariance_type=ct,
            tol=m.tol,
            reg_covar=m.reg_covar,
            max_iter=m.max_iter,
            n_init=1 if init is not None else m.n_init,
            init_params=m.init_params,
            seed=seed_from(m.random_state),
            data_variance=data.variance,
            init=init,
            callback=callback,
        )
    finally:
        runner.close()
    if not res.converged:
        logger.warning(
            "Snapshot %s: EM did not converge in %d iterations (K=%d, %s); raise model.max_iter or tol.",
            snap.date,
            res.n_iter,
            k,
            ct,
        )
    p = res.params
    names = (
        list(m.segment_names)
        if m.segment_names and len(m.segment_names) == k
        else [f"segment_{i}" for i in range(k)]
    )
    n_params = n_parameters(k, p.means.shape[1], ct)
    metadata = {
        "snapshot": snap.date,
        "rows_read": prof.n_rows,
        "rows_used": data.n_rows,
        "rows_dropped": prof.n_rows - data.n_rows,
        "rows_imputed": prof.rows_with_missing if cfg.input.missing == "impute_mean" else 0,
        "lower_bound": res.lower_bound,
        "log_likelihood": res.final_loglik / res.weight,
        "bic": -2 * res.final_loglik + n_params * math.log(res.weight),
        "aic": -2 * res.final_loglik + 2 * n_params,
        "n_iter": res.n_iter,
        "converged": bool(res.converged),
        "seed": m.random_state,
        "n_components": k,
        "covariance_type": ct,
        "config_hash": cfg.config_hash(),
        "reseeded_components": [list(r) for r in res.reseeded],
        "fit_seconds": round(time.perf_counter() - t0, 3),
        "warm_started_from": warm_start.version if warm_start is not None else None,
    }
    return SegmentationModel(
        data.plan,
        ct,
        p.weights,
        p.means,
        p.covariances,
        p.precisions_cholesky,
        names,
        cfg.input.id_column,
        cfg.input.weight_column,
        metadata,
    )


def registry(cfg: JobConfig) -> ModelRegistry:
    return ModelRegistry(cfg.output.registry_path, cfg.input.storage_options)


def register_model(
    cfg: JobConfig, model: SegmentationModel, *, alias: str | None = "latest"
) -> SegmentationModel:
    """Store the model as a new registry version (moving ``alias``); returns it as stored."""
    return registry(cfg).register(model, alias=alias)


def set_alias(cfg: JobConfig, alias: str, version: str) -> None:
    registry(cfg).set_alias(alias, version)


def check_model_fits_input(cfg: JobConfig, model: SegmentationModel) -> None:
    if model.plan.names != cfg.input.feature_names or model.id_column != cfg.input.id_column:
        raise DataError(
            f"Model {model.version} was trained on features {model.plan.names} (id {model.id_column!r}) but "
            f"the config lists {cfg.input.feature_names} (id {cfg.input.id_column!r}). Score with a model "
            "trained on the same features, or retrain."
        )


def load_model(cfg: JobConfig, model_version: str | None = None) -> SegmentationModel:
    """A registered version or alias (default ``latest``), validated, and checked against the
    config's features (no Dask)."""
    model = registry(cfg).load(model_version)
    check_model_fits_input(cfg, model)
    return model


if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from .tables import PieceResult


@dataclass
class Written:
    """What :func:`write_tables` committed, and the aggregates of the scoring pass."""

    tables: dict[str, str]
    agg: PieceResult
    segments: pd.DataFrame
    overlaps: pd.DataFrame


def _with_metadata(df: pd.DataFrame, table: str, version: str, extra: dict | None = None) -> pa.Table:
    import pyarrow as pa

    from .tables import table_metadata

    t = pa.Table.from_pandas(df, preserve_index=False)
    return t.replace_schema_metadata({**(t.schema.metadata or {}), **table_metadata(table, version, extra)})


def write_tables(
    cfg: JobConfig,
    snap: Snapshot,
    model: SegmentationModel,
    *,
    extra: dict[str, tuple[pd.DataFrame, dict]] | None = None,
) -> Written:
    """Score every piece (each worker writes its pieces' memberships files into the staging
    area) and commit the memberships, segments and overlaps partitions — plus any ``extra``
    tables, ``{name: (frame, metadata)}`` — together, each atomically."""
    import dask

    from .tables import overlaps_table, score_piece, segments_table

    check_model_fits_input(cfg, model)
    so = snap.storage_options
    thr = cfg.output.overlap_threshold
    version = model.version or "unregistered"
    names = [*(extra or {}), "segments", "overlaps", "memberships"]
    with io.StagedPartitions(cfg.output.root, names, snap.date, so) as st:
        parts = [
            dask.delayed(score_piece, pure=False)(
                p,
                cfg.input,
                model,
                st.file("memberships", f"part-{p.index:05d}.parquet"),
                cfg.entropy_bands,
                thr,
                snap.id_type,
                so,
            )
            for p in snap.pieces
        ]
        agg = dask.compute(_tree_reduce(parts, lambda a, b: a + b))[0]
        seg = segments_table(model, agg)
        ov = overlaps_table(model, agg, thr)
        st.write("segments", _with_metadata(seg, "segments", version))
        st.write("overlaps", _with_metadata(ov, "overlaps", version))
        for name, (df, meta) in (extra or {}).items():
            st.write(name, _with_metadata(df, name, version, meta))
    return Written(st.paths, agg, seg, ov)


def partition_model_version(cfg: JobConfig, table: str, date: str) -> str | None:
    """The model version recorded in a committed table partition, or None if there is none."""
    meta = io.partition_metadata(cfg.output.root, table, date, cfg.input.storage_options)
    return (meta or {}).get("gmm_dask.model_version") or None
