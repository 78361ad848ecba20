"""The steps warehouse jobs are made of: snapshot → profile → prepare → fit/load → register → tables.

Each step is a plain function taking configs, small values and paths (not data), so a Prefect
task wraps it one-to-one (``flows/tasks.py``); the jobs in :mod:`gmm_dask.app.jobs` sequence them.
Data move only between Dask workers; the client sees footers, profiles and aggregates. Only
``profile_snapshot`` validates the data: later steps rely on what it checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gmm_dask.app.config import JobConfig
from gmm_dask.app.families import auto_family
from gmm_dask.app.fitting import (
    Fitted,
    degenerate_components,
    fit_record,
    hard_weight,
    subset,
    to_keep,
    warm_params,
    warn_degenerate,
)
from gmm_dask.app.steps import fit_piece_arrays, profile_piece, raw_piece_arrays, score_piece, tree_reduce
from gmm_dask.errors import DataError
from gmm_dask.mixture.gaussian import n_parameters
from gmm_dask.mixture.options import CovarianceType
from gmm_dask.segmentation.behaviour import check_kinds
from gmm_dask.segmentation.features import (
    FeaturePlan,
    Profile,
    build_plan,
    check_profile,
    columns_to_read,
    duplicate_hashes,
    finish_profile,
    infer_kinds,
    merge_duplicates,
    merge_profiles,
)
from gmm_dask.segmentation.fit_record import promotion_like
from gmm_dask.segmentation.model import SegmentationModel
from gmm_dask.storage.io import Snapshot, TableStore, open_snapshot, resolve_snapshot
from gmm_dask.storage.registry import ModelRegistry

if TYPE_CHECKING:
    import dask.array as da
    import pandas as pd
    import pyarrow as pa

    from gmm_dask.mixture.em import FitResult, IterationInfo
    from gmm_dask.mixture.gaussian import MixtureParams
    from gmm_dask.segmentation.tables import PieceResult

logger = logging.getLogger(__name__)

TABLES = ("memberships", "segments", "overlaps")
#: The table metadata key of the inputs fingerprint a run's tables were written for.
INPUTS_KEY = "gmm_dask.inputs"


@contextlib.contextmanager
def cluster(cfg: JobConfig) -> Iterator:
    """The job's Dask client: the active one if there is one, else the configured cluster."""
    from gmm_dask.app.cluster import dask_client

    with dask_client(cfg.cluster) as client:
        yield client


def open_job_snapshot(cfg: JobConfig, snapshot: str | None = None) -> Snapshot:
    """Resolve the snapshot (latest if None) and check every file's footer (no Dask)."""
    date = resolve_snapshot(cfg.input, snapshot)
    snap = open_snapshot(cfg.input, date)
    logger.info("Snapshot %s: %d rows in %d pieces", date, snap.n_rows, len(snap.pieces))
    return snap


#: Rows of ids per duplicate-check task (an 8-byte hash each: 64 MB per task). Every piece hands
#: every bucket its slice, so pieces × buckets small tasks reach the scheduler: at 100M users in
#: 400 pieces, 2M-row buckets made 20,800 of them and the profile pass took 43 s, 8M-row buckets
#: 6,000 and 26 s (2 workers of 1.5 GiB).
ID_BUCKET_ROWS = 8_000_000


def _profile_and_ids(piece, cfg_input, storage_options, n_buckets):
    prof = profile_piece(piece, cfg_input, storage_options, n_buckets)
    buckets, prof.id_hashes = prof.id_hashes, None
    return prof, buckets


def resolve_family(cfg: JobConfig, prof: Profile) -> JobConfig:
    """``cfg`` with ``model.family: auto`` replaced by the family it stands for on this
    snapshot's features (their declared or inferred kinds); logged when auto chose."""
    kinds = infer_kinds(prof, cfg.input)[0]
    fam, why = auto_family(cfg.model.family, cfg.input.missing, cfg.input.feature_names, kinds)
    if cfg.model.family == "auto":
        logger.info("model.family auto: %s (%s)", fam, why)
    return cfg.with_family(kinds)


def profile_snapshot(cfg: JobConfig, snap: Snapshot, scheduler: str | None = None) -> Profile:
    """The one validating pass: ids, weights, missing values, domains, magnitudes, and the
    scaler statistics; raises the clear error for bad data before anything is fitted or written.

    Duplicate ids are found at any size without gathering them: every piece splits its ids'
    hashes into buckets, and each bucket (one slice of every piece) is checked by its own task;
    the few examples found are confirmed against the real ids. ``scheduler``: Dask's (default:
    the active client's, else local threads).
    """
    import dask

    n_buckets = int(np.clip(-(-snap.n_rows // ID_BUCKET_ROWS), 1, 4096))
    outs = [
        dask.delayed(_profile_and_ids, nout=2, pure=False)(p, cfg.input, snap.storage_options, n_buckets)
        for p in snap.pieces
    ]
    checks = [dask.delayed(duplicate_hashes, pure=False)([o[1][b] for o in outs]) for b in range(n_buckets)]
    prof, dups = dask.compute(
        dask.delayed(finish_profile)(tree_reduce([o[0] for o in outs], merge_profiles)),
        tree_reduce(checks, merge_duplicates),
        scheduler=scheduler,
    )
    n_extra, hashes = dups
    prof.n_duplicate_ids, prof.duplicate_examples, prof.duplicate_where = _confirm_duplicates(
        cfg, snap, n_extra, hashes, scheduler=scheduler
    )
    check_profile(prof, cfg.input, snap.date, standardize=cfg.model.standardize)
    kinds = infer_kinds(prof, cfg.input)[0]
    if cfg.with_family(kinds).model.family == "behaviour":
        check_kinds(prof, cfg.input, kinds, snap.date)
    if prof.rows_with_missing:
        logger.warning(
            "Snapshot %s: %d row(s) with missing features (%s)",
            snap.date,
            prof.rows_with_missing,
            cfg.input.missing,
        )
    return prof


def _hash_rows(piece, cfg_input, storage_options, hashes):
    from gmm_dask.segmentation.features import rows_with_hashes
    from gmm_dask.storage.io import read_piece

    ids = read_piece(piece, [cfg_input.id_column], storage_options).column(0)
    null = ids.is_null().to_numpy(zero_copy_only=False) if ids.null_count else np.zeros(len(ids), bool)
    return [(h, piece.index, r, ids[r].as_py()) for h, r in rows_with_hashes(ids, null, hashes)]


def _confirm_duplicates(
    cfg: JobConfig, snap: Snapshot, n_extra: int, hashes: list, scheduler: str | None = None
) -> tuple[int, list, str]:
    """Find the rows behind the duplicated hashes (one more pass over the id column, only when
    there are some) and keep the groups whose ids are really equal: (count, examples, where)."""
    import dask

    if not n_extra:
        return 0, [], ""
    found = dask.compute(
        *[
            dask.delayed(_hash_rows, pure=False)(p, cfg.input, snap.storage_options, hashes)
            for p in snap.pieces
        ],
        scheduler=scheduler,
    )
    groups: dict[int, list] = {}
    for part in found:
        for h, piece, row, value in part:
            groups.setdefault(h, []).append((piece, row, value))
    examples, where = [], ""
    for h in hashes:
        group = sorted(groups.get(h, []))
        if len(group) < 2 or not all(v == group[0][2] for _, _, v in group):
            continue
        examples.append(group[0][2])
        if not where:
            where = f"id {examples[-1]!r} in " + "; ".join(
                f"{snap.pieces[p].path} row {r}" for p, r, _ in group[:3]
            )
    if not examples:  # 64-bit hash collisions only: no duplicate
        return 0, [], ""
    return n_extra, examples, where


def rows_used(cfg: JobConfig, prof: Profile) -> int:
    return int(sum(prof.complete_per_piece.values())) if cfg.input.missing == "drop" else prof.n_rows


@dataclass
class FitData:
    """Model inputs of one snapshot (lazy or persisted Dask arrays) and the plan that made them."""

    plan: FeaturePlan
    X: da.Array  # (n, D)
    w: da.Array | None  # (n,), None without a weight column
    n_rows: int
    variance: float  # mean variance of the model inputs over features (init tolerance)


def prepare_data(
    cfg: JobConfig,
    snap: Snapshot,
    prof: Profile,
    *,
    plan: FeaturePlan | None = None,
    persist: bool = False,
    dequantize: bool = True,
) -> FitData:
    """Build the model inputs from the profile's plan (or a given one, e.g. a warm start's, so
    parameters stay comparable across dates); with ``persist`` they are read once and held by
    the workers (for several fits on the same data, e.g. model selection). Counts and amounts
    are dequantised (see :func:`~gmm_dask.segmentation.features.fit_arrays`) unless ``dequantize`` is
    False, which gives the inputs exactly as scoring sees them. Under ``model.family: behaviour``
    the inputs are the raw features after the missing-value policy (what that family fits)."""
    import dask
    import dask.array as da

    plan = plan or build_plan(prof, cfg.input, cfg.model.standardize)
    d = len(cfg.input.features)
    xs, ws = [], []
    for p in snap.pieces:
        n = prof.complete_per_piece[p.index] if cfg.input.missing == "drop" else p.n_rows
        if cfg.model.family == "behaviour":  # the raw features, as the family fits them
            t = dask.delayed(raw_piece_arrays, nout=2, pure=False)(p, cfg.input, plan, snap.storage_options)
        else:
            t = dask.delayed(fit_piece_arrays, nout=2, pure=False)(
                p, cfg.input, plan, snap.storage_options, cfg.model.random_state if dequantize else None
            )
        xs.append(da.from_delayed(t[0], shape=(n, d), dtype=np.float64))
        ws.append(da.from_delayed(t[1], shape=(n,), dtype=np.float64))
    X = da.concatenate(xs)
    w = da.concatenate(ws) if cfg.input.weight_column else None
    if persist:
        X, w = dask.persist(X, w) if w is not None else (dask.persist(X)[0], None)
    return FitData(plan, X, w, rows_used(cfg, prof), _model_space_variance(cfg, prof, plan))


def behaviour_scale_sum(data: FitData) -> float:
    """Σ w·adj over the Gaussian family's model inputs ``data``, adj each row's change of the
    Gaussian log-density to the behaviour family's units
    (:func:`~gmm_dask.segmentation.comparable.behaviour_scale`): one pass over the (persisted)
    inputs, the same for every Gaussian candidate fitted on them."""
    import functools

    import dask.array as da

    from gmm_dask.segmentation.comparable import behaviour_scale

    adj = da.map_blocks(functools.partial(behaviour_scale, data.plan), data.X, drop_axis=1, dtype=np.float64)
    return float((adj if data.w is None else adj * data.w).sum().compute())


def total_weight(data: FitData) -> float:
    """Σ w over the rows of ``data`` (the number of rows without a weight column)."""
    return float(data.n_rows) if data.w is None else float(data.w.sum().compute())


def _model_space_variance(cfg: JobConfig, prof: Profile, plan: FeaturePlan) -> float:
    if cfg.input.missing == "impute_mean":
        m2, w = prof.col_m2, prof.total_w
    else:
        m2, w = prof.row_m2, prof.row_w
    var = m2 / w if m2 is not None and w > 0 else np.zeros(len(plan.scale))
    return float(np.mean(var / plan.scale**2))


def fit_model(
    cfg: JobConfig,
    snap: Snapshot,
    prof: Profile,
    *,
    n_components: int | None = None,
    covariance_type: CovarianceType | None = None,
    warm_start: SegmentationModel | None = None,
    data: FitData | None = None,
    score_data: FitData | None = None,
    callback: Callable[[IterationInfo], None] | None = None,
) -> SegmentationModel:
    """Fit the mixture with the EM core on the prepared snapshot (an unregistered model with its
    metadata). A ``warm_start`` model with the same K, covariance type and transforms is the
    starting point, its parameters carried into this snapshot's feature plan (the plan always
    comes from this run's config and profile)."""
    m = cfg.model
    k = n_components or m.n_components
    ct = covariance_type or m.covariance_type
    if data is None:
        data = prepare_data(cfg, snap, prof)
    if data.n_rows < k:
        raise DataError(
            f"Snapshot {snap.date}: {data.n_rows} usable row(s) for {k} components; use fewer components "
            "(model.n_components) or more data."
        )
    t0 = time.perf_counter()
    part = None
    if m.family == "behaviour":  # the summaries are full; covariance_type does not apply
        from gmm_dask.app.behaviour_fit import fit_behaviour

        fitted, part, p = fit_behaviour(cfg, snap, data.plan, data.X, data.w, k, warm_start, callback)
        ct, n_params = "full", part.family.n_parameters(part.params)
    else:
        init = warm_params(warm_start, data.plan, k, ct)
        fitted = _fit_and_prune(cfg, snap, prof, data, score_data, k, ct, init, callback)
        p = fitted.res.params
        n_params = n_parameters(len(fitted.names), len(data.plan.names), ct)
    res, names = fitted.res, fitted.names
    if not res.converged:
        logger.warning(
            "Snapshot %s: EM did not converge in %d iterations (K=%d, %s); raise model.max_iter or tol.",
            snap.date,
            res.n_iter,
            len(names),
            ct if part is None else m.family,
        )
    if res.reseeded:
        logger.warning(
            "Snapshot %s: component(s) collapsed and were re-seeded during the fit: %s (iteration, component)",
            snap.date,
            res.reseeded,
        )
    assert p.covariances is not None  # a fit's parameters always have their covariances
    metadata = fit_record(
        cfg, snap.date, prof, data.n_rows, data.plan, fitted, ct, n_components or m.n_components, t0,
        warm_start, n_params, None if part is None else m.family,
    )  # fmt: skip
    shift = promotion_like(metadata.to_json())
    if shift is not None:
        logger.warning("Snapshot %s: %s.", snap.date, shift)
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
        behaviour=part,
    )


def _fit_and_prune(
    cfg: JobConfig,
    snap: Snapshot,
    prof: Profile,
    data: FitData,
    score_data: FitData | None,
    k: int,
    ct: CovarianceType,
    init: MixtureParams | None,
    callback: Callable[[IterationInfo], None] | None,
) -> Fitted:
    """EM from ``init``; then, while the policy prunes degenerate components, EM again from the
    components kept."""
    from gmm_dask.mixture.em import fit_mixture, seed_from
    from gmm_dask.mixture.runner import ChunkedData, make_runner
    from gmm_dask.segmentation.naming import generate_names

    m = cfg.model
    floor = data.plan.variance_floor if data.plan.has_floor else None
    configured = m.segment_names is not None and len(m.segment_names) == k
    names = list(m.segment_names or []) if configured else [f"segment_{i}" for i in range(k)]
    runner = make_runner(ChunkedData(data.X, data.w), persist=m.persist)
    try:

        def fit(n: int, start: MixtureParams | None) -> FitResult:
            return fit_mixture(
                runner,
                n_components=n,
                covariance_type=ct,
                tol=m.tol,
                reg_covar=m.reg_covar,
                max_iter=m.max_iter,
                n_init=1 if start is not None else m.n_init,
                init_params=m.init_params,
                seed=seed_from(m.random_state),
                data_variance=data.variance,
                init=start,
                callback=callback,
                covariance_floor=floor,
            )

        res = fit(k, init)
        fits = [res]
        pruned: list[dict] = []
        scored = score_data  # the undequantised inputs, read when first needed
        while True:
            if not configured:  # named from the fit's profile (configured names win)
                p = res.params
                assert p.covariances is not None  # a fit's parameters always have their covariances
                names = generate_names(data.plan, p.weights, p.means, p.covariances, ct)
            if data.plan.has_floor:  # the published assignment scores undequantised inputs
                if scored is None:
                    scored = prepare_data(cfg, snap, prof, plan=data.plan, dequantize=False)
                hard = hard_weight(scored.X, scored.w, res.params, ct)
            else:
                assert res.hard_weight is not None  # fit_mixture always counts them
                hard = res.hard_weight
            found = degenerate_components(res, hard, data.plan, ct, m.reg_covar, m.degenerate.min_share)
            keep = to_keep(found, m.degenerate, names, snap.date, data.plan.names, pruned)
            if keep is None:
                break
            names = [names[i] for i in keep]
            res = fit(len(keep), subset(res.params, keep, ct))
            fits.append(res)
    finally:
        runner.close()
    # a warm start's first E-step is the published model's mean log-likelihood on today's data
    published = fits[0].lower_bounds[0] if init is not None and fits[0].lower_bounds else None
    return Fitted(res, fits, names, found, pruned, published)


def registry(cfg: JobConfig) -> ModelRegistry:
    return ModelRegistry(cfg.output.registry_path, cfg.input.storage_options)


def register_model(
    cfg: JobConfig, model: SegmentationModel, *, alias: str | None = "latest"
) -> SegmentationModel:
    """Store the model as a new registry version (moving ``alias``); returns it as stored. Its
    degenerate components are logged here, once, under the ids and names its tables show (a
    fit is registered after its alignment to the published model)."""
    stored = registry(cfg).register(model, alias=alias)
    warn_degenerate(stored)
    return stored


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


@dataclass
class Written:
    """What :func:`write_tables` committed, and the aggregates of the scoring pass."""

    tables: dict[str, str]
    agg: PieceResult
    segments: pd.DataFrame
    overlaps: pd.DataFrame


def _with_metadata(df: pd.DataFrame, table: str, version: str, extra: dict | None = None) -> pa.Table:
    import pyarrow as pa

    from gmm_dask.segmentation.tables import table_metadata

    t = pa.Table.from_pandas(df, preserve_index=False)
    return t.replace_schema_metadata({**(t.schema.metadata or {}), **table_metadata(table, version, extra)})


def write_tables(
    cfg: JobConfig,
    snap: Snapshot,
    model: SegmentationModel,
    *,
    extra: dict[str, tuple[pd.DataFrame, dict]] | None = None,
    store: TableStore | None = None,
    inputs: str | None = None,
) -> Written:
    """Score every piece (each worker writes its pieces' memberships files into the staging
    area) and commit the memberships, segments and overlaps partitions — plus any ``extra``
    tables, ``{name: (frame, metadata)}`` — together, each atomically. ``inputs``, the run's
    inputs fingerprint (:mod:`gmm_dask.app.jobs.reruns`), goes into the segments' and overlaps'
    metadata."""
    import dask

    from gmm_dask.segmentation.tables import overlaps_table, segments_table

    check_model_fits_input(cfg, model)
    so = snap.storage_options
    thr = cfg.output.overlap_threshold
    version = model.version or "unregistered"
    names = [*(extra or {}), "segments", "overlaps", "memberships"]
    with (store or cfg.outputs()).stage(names, snap.date) as st:
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
        agg = dask.compute(tree_reduce(parts, lambda a, b: a + b))[0]
        seg = segments_table(model, agg)
        ov = overlaps_table(model, agg, thr)
        stamp = {INPUTS_KEY: inputs} if inputs else None
        st.write("segments", _with_metadata(seg, "segments", version, stamp))
        st.write("overlaps", _with_metadata(ov, "overlaps", version, stamp))
        for name, (df, meta) in (extra or {}).items():
            st.write(name, _with_metadata(df, name, version, meta))
    return Written(st.paths, agg, seg, ov)


def partition_model_version(cfg: JobConfig, table: str, date: str) -> str | None:
    """The model version recorded in a committed table partition, or None if there is none."""
    meta = cfg.outputs().metadata(table, date)
    from gmm_dask.segmentation.tables import MODEL_VERSION_KEY

    return (meta or {}).get(MODEL_VERSION_KEY) or None


def _co_membership_piece(piece, cfg_input, old, new, storage_options):
    from gmm_dask.segmentation.features import prepare_piece
    from gmm_dask.storage.io import read_piece

    table = read_piece(piece, columns_to_read(cfg_input), storage_options)
    old_plan = dataclasses.replace(old.plan, missing=new.plan.missing)  # today's rows, today's policy
    ids_old, X_old, Z_old, _, _, _ = prepare_piece(table, cfg_input, old_plan, piece.path)
    ids_new, X_new, Z_new, w, _, _ = prepare_piece(table, cfg_input, new.plan, piece.path)
    a, b = ids_old.to_numpy(zero_copy_only=False), ids_new.to_numpy(zero_copy_only=False)
    if len(a) != len(b) or not np.array_equal(a, b):  # the plans kept different rows: the users both kept
        keep_a, keep_b = np.isin(a, b), np.isin(b, a)
        Z_old, Z_new, X_old, X_new = Z_old[keep_a], Z_new[keep_b], X_old[keep_a], X_new[keep_b]
        w = None if w is None else w[keep_b]
    g_old = old.memberships(Z_old, X_raw=X_old)["gamma"]
    g_new = new.memberships(Z_new, X_raw=X_new)["gamma"]
    if w is not None:
        g_new = g_new * w[:, None]
    return g_old.T @ g_new


def co_membership(
    cfg: JobConfig, snap: Snapshot, old: SegmentationModel, new: SegmentationModel
) -> np.ndarray:
    """Σᵤ w γ_old ⊗ γ_new over the snapshot's users, both models scoring it: (K_old, K_new), one pass."""
    import dask

    parts = [
        dask.delayed(_co_membership_piece, pure=False)(p, cfg.input, old, new, snap.storage_options)
        for p in snap.pieces
    ]
    return dask.compute(tree_reduce(parts, lambda a, b: a + b))[0]


def published_model(cfg: JobConfig) -> SegmentationModel | None:
    """The model behind the published tables (alias ``latest``), or None before the first publish
    or when it was trained on other features or another id column (a new segmentation: nothing
    to continue from or align to)."""
    from gmm_dask.errors import ModelNotFoundError

    try:
        model = registry(cfg).load("latest")
    except ModelNotFoundError:
        return None
    if model.plan.names != cfg.input.feature_names or model.id_column != cfg.input.id_column:
        logger.warning(
            "The published model %s was trained on other features or another id column; this fit "
            "starts a new segmentation (no warm start, no alignment).",
            model.version,
        )
        return None
    return model
