"""Feature preparation, partition-wise: raw columns → transform → missing-value policy → scaling.

The profile pass (:func:`profile_piece` + :func:`merge_profiles`) reads every piece once and
returns counts of affected rows, duplicate ids, and the statistics the scaler and imputation
need; nothing is fitted or written before it succeeds. The same :class:`FeaturePlan` is stored
in the model, so scoring applies exactly the training transform.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from gmm_dask.errors import DataError
from gmm_dask.mixture.arrays import BoolArray, FloatArray, Int64Array
from gmm_dask.mixture.limits import MAX_ABS_VALUE
from gmm_dask.mixture.suffstats import W, merge_moments
from gmm_dask.segmentation.specs import FeatureSpec, InputColumns

Transform = Callable[[FloatArray], FloatArray]


def _identity(x: FloatArray) -> FloatArray:
    return x


_FORWARD: dict[str, Transform] = {
    "none": np.positive,
    "log1p": np.log1p,
    "sqrt": np.sqrt,
    "asinh": np.arcsinh,
}
_INVERSE: dict[str, Transform] = {"none": _identity, "log1p": np.expm1, "sqrt": np.square, "asinh": np.sinh}
# Smallest valid raw value (inclusive) and how to say it.
_DOMAIN: dict[str, tuple[float, str, bool]] = {"log1p": (-1.0, "> -1", False), "sqrt": (0.0, ">= 0", True)}

#: Where a problem was first seen: (file, row in the file's piece, column, raw value, transform).
Where = tuple[str, int, str, float, str]


@dataclass(frozen=True)
class FeaturePlan:
    """Everything needed to turn raw columns into model inputs, identically at fit and score time."""

    features: tuple[FeatureSpec, ...]
    missing: str
    mean: FloatArray  # (D,) in transformed space
    scale: FloatArray  # (D,)
    impute_values: FloatArray  # (D,) transformed-space means of observed values
    kinds: tuple[str, ...] = ()  # per feature: count | amount | continuous | binary ('' for old models)
    resolution: FloatArray | None = None  # (D,) raw-unit step of counts/amounts, NaN for continuous
    low: FloatArray | None = None  # (D,) smallest raw value seen in training

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def has_floor(self) -> bool:
        return self.resolution is not None and bool(np.isfinite(self.resolution).any())

    def variance_floor(self, means: FloatArray) -> FloatArray:
        """The smallest variance each component may have in each feature: shape (K, D), model space.

        A count or amount is not resolved finer than its resolution Δ: near a component's mean
        x (raw units) the data cannot tell values within the step of width Δ around it, whose
        width after the transform T is gap = T(x + Δ/2) − T(x − Δ/2); a uniform spread over it has
        variance gap²/12 (Sheppard's correction; the variance uniform dequantisation adds). Divided by the scaler's
        scale², that is the floor in model space; 0 for continuous features.
        """
        floor = np.zeros(means.shape)
        if self.resolution is None or self.low is None or not self.has_floor:
            return floor
        T = means * self.scale + self.mean
        for j, f in enumerate(self.features):
            step = self.resolution[j]
            if not np.isfinite(step):
                continue
            with np.errstate(invalid="ignore", over="ignore"):
                x = _INVERSE[f.transform](T[:, j])
            x = np.nan_to_num(x, nan=self.low[j])
            lo = np.maximum(x - step / 2, self.low[j])
            gap = _FORWARD[f.transform](lo + step) - _FORWARD[f.transform](lo)
            floor[:, j] = (gap / self.scale[j]) ** 2 / 12.0
        return floor

    @property
    def half_step(self) -> FloatArray | float:
        """Half the resolution of counts and amounts (0 for continuous features): scoring places
        a value at the middle of its step."""
        if self.resolution is None or not self.has_floor:
            return 0.0
        return np.where(np.isfinite(self.resolution), self.resolution / 2.0, 0.0)

    def transform(self, X_raw: FloatArray) -> FloatArray:
        return (apply_transforms(X_raw + self.half_step, self.features) - self.mean) / self.scale

    def to_original_units(self, Z: FloatArray) -> FloatArray:
        """Inverse of :meth:`transform` for points in model space (e.g. component means)."""
        T = Z * self.scale + self.mean
        return np.column_stack([_INVERSE[f.transform](T[:, j]) for j, f in enumerate(self.features)])


def apply_transforms(X_raw: FloatArray, features: Sequence[FeatureSpec]) -> FloatArray:
    """Each feature's transform, column by column, into an array of ``X_raw``'s layout (the
    pieces are column-major: each column is contiguous)."""
    out = np.empty_like(X_raw)
    with np.errstate(invalid="ignore", divide="ignore"):
        for j, f in enumerate(features):
            fn = _FORWARD[f.transform]
            if isinstance(fn, np.ufunc):
                fn(X_raw[:, j], out=out[:, j])
            else:
                out[:, j] = fn(X_raw[:, j])
    return out


def columns_to_read(cfg: InputColumns) -> list[str]:
    return [cfg.id_column, *cfg.feature_names] + ([cfg.weight_column] if cfg.weight_column else [])


def _as_float(col: pa.ChunkedArray) -> FloatArray:
    out: FloatArray = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return out


def raw_arrays(table: pa.Table, cfg: InputColumns) -> tuple[pa.ChunkedArray, FloatArray, FloatArray | None]:
    """(ids as pyarrow array, raw features (n, D) float64 with NaN for nulls, weights or None)."""
    ids = table.column(cfg.id_column)
    # column-major: every column is read, checked and transformed contiguously
    X = np.empty((table.num_rows, len(cfg.feature_names)), order="F")
    for j, f in enumerate(cfg.feature_names):
        X[:, j] = _as_float(table.column(f))
    w = _as_float(table.column(cfg.weight_column)) if cfg.weight_column else None
    return ids, X, w


def _domain_bad(X_raw: FloatArray, features: Sequence[FeatureSpec]) -> BoolArray:
    bad = np.zeros(X_raw.shape, dtype=bool)
    for j, f in enumerate(features):
        if f.transform in _DOMAIN:
            lo, _, inclusive = _DOMAIN[f.transform]
            col = X_raw[:, j]
            with np.errstate(invalid="ignore"):
                bad[:, j] = (col < lo) if inclusive else (col <= lo)
    return bad


@dataclass
class Profile:
    """What the profile pass learned about one snapshot (merged over pieces)."""

    n_rows: int = 0
    rows_with_missing: int = 0
    missing_per_column: Int64Array = field(default_factory=lambda: np.zeros(0, np.int64))
    first_missing: tuple[str, int, str] | None = None  # (path, row in file's piece, column)
    n_domain: int = 0
    first_domain: Where | None = None  # (path, row, column, value, transform)
    n_bad_weight: int = 0
    first_bad_weight: tuple[str, int, float | None] | None = None  # (path, row, value)
    n_null_ids: int = 0
    first_null_id: tuple[str, int] | None = None  # (path, row)
    # (D,) every finite value is a whole number
    col_integral: BoolArray = field(default_factory=lambda: np.zeros(0, bool))
    col_zeros: Int64Array = field(default_factory=lambda: np.zeros(0, np.int64))  # (D,) rows exactly 0
    # (D,) smallest / largest finite raw value (±inf if none)
    col_min: FloatArray = field(default_factory=lambda: np.zeros(0))
    col_max: FloatArray = field(default_factory=lambda: np.zeros(0))
    n_huge: int = 0  # rows with a finite transformed value above MAX_ABS_VALUE in magnitude
    first_huge: Where | None = None  # (path, row, column, raw value, transform)
    n_duplicate_ids: int = 0
    duplicate_examples: list[object] = field(default_factory=list)
    duplicate_where: str = ""  # e.g. "id 3 in <file> row 3; <file> row 10"
    # weighted statistics of transformed values
    col_w: FloatArray = field(default_factory=lambda: np.zeros(0))  # observed weight per column
    col_mean: FloatArray = field(default_factory=lambda: np.zeros(0))
    col_m2: FloatArray = field(default_factory=lambda: np.zeros(0))
    total_w: float = 0.0  # all rows with a valid weight
    row_w: float = 0.0  # complete rows
    row_mean: FloatArray = field(default_factory=lambda: np.zeros(0))
    row_m2: FloatArray = field(default_factory=lambda: np.zeros(0))
    complete_per_piece: dict[int, int] = field(default_factory=dict)  # piece index -> complete rows
    # per bucket: this piece's id hashes (see id_buckets)
    id_hashes: list[NDArray[np.uint64]] | None = None


@np.errstate(over="ignore", invalid="ignore")
def _merge_moments(
    wa: W, ma: FloatArray, sa: FloatArray, wb: W, mb: FloatArray, sb: FloatArray
) -> tuple[W, FloatArray, FloatArray]:
    """:func:`suffstats.merge_moments`; huge values may overflow to inf here and are reported by
    build_plan."""
    return merge_moments(wa, ma, sa, wb, mb, sb)


@np.errstate(over="ignore", invalid="ignore")
def _weighted_moments(X: FloatArray, w: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    W = w.sum(axis=0)
    safe = np.where(W > 0, W, 1.0)
    mean = np.where(W > 0, (w * X).sum(axis=0) / safe, 0.0)
    m2 = (w * (X - mean) ** 2).sum(axis=0)
    return W, mean, m2


def profile_table(table: pa.Table, path: str, index: int, cfg: InputColumns, n_buckets: int = 1) -> Profile:
    """Counts and statistics of one piece's table (``path`` and ``index`` name the piece in
    messages and hashes); its ids leave as 64-bit hashes split into ``n_buckets`` by hash (see
    :func:`id_buckets`) in ``id_hashes``, which the caller takes away before the profiles are
    merged."""
    ids, X_raw, w = raw_arrays(table, cfg)
    n, d = X_raw.shape
    prof = Profile(n_rows=n)
    null_ids = ids.is_null().to_numpy(zero_copy_only=False) if ids.null_count else np.zeros(n, bool)
    if null_ids.any():
        prof.n_null_ids = int(null_ids.sum())
        prof.first_null_id = (path, int(np.flatnonzero(null_ids)[0]))
    prof.id_hashes = id_buckets(ids, null_ids, index, n_buckets)
    if w is not None:
        badw = ~np.isfinite(w) | (w < 0)
        if badw.any():
            i = int(np.flatnonzero(badw)[0])
            prof.n_bad_weight = int(badw.sum())
            prof.first_bad_weight = (
                path,
                i,
                float(w[i]) if np.isfinite(w[i]) or np.isinf(w[i]) else None,
            )
    feats = cfg.features
    dom = _domain_bad(X_raw, feats)
    has_dom = bool(dom.any())
    if has_dom:
        r, c = (int(v[0]) for v in np.nonzero(dom))
        prof.n_domain = int(dom.any(axis=1).sum())
        prof.first_domain = (path, r, feats[c].name, float(X_raw[r, c]), feats[c].transform)
    T = apply_transforms(X_raw, feats)
    missing = ~np.isfinite(X_raw)
    has_missing = bool(missing.any())
    # the common case (no missing value, every value in its transform's domain) needs no masks:
    # every transformed value is then finite
    clean = not has_missing and not has_dom
    finite = None if clean else np.isfinite(T)
    with np.errstate(invalid="ignore"):
        hi = (
            np.abs(T).max(axis=0, initial=0.0, where=True if finite is None else finite) if n else np.zeros(d)
        )
    if (hi > MAX_ABS_VALUE).any():
        with np.errstate(invalid="ignore"):
            huge = (np.isfinite(T) if finite is None else finite) & (np.abs(T) > MAX_ABS_VALUE)
        r, c = (int(v[0]) for v in np.nonzero(huge))
        prof.n_huge = int(huge.any(axis=1).sum())
        prof.first_huge = (path, r, feats[c].name, float(X_raw[r, c]), feats[c].transform)
    with np.errstate(invalid="ignore"):
        whole = X_raw == np.round(X_raw)
        prof.col_integral = (whole if clean else whole | missing).all(axis=0)
        prof.col_zeros = n - np.count_nonzero(X_raw, axis=0) - (missing.sum(axis=0) if has_missing else 0)
        if not n:
            prof.col_min, prof.col_max = np.full(d, np.inf), np.full(d, -np.inf)
        elif has_missing:
            prof.col_min = np.where(missing, np.inf, X_raw).min(axis=0)
            prof.col_max = np.where(missing, -np.inf, X_raw).max(axis=0)
        else:
            prof.col_min, prof.col_max = X_raw.min(axis=0), X_raw.max(axis=0)
    prof.missing_per_column = missing.sum(axis=0) if has_missing else np.zeros(d, dtype=np.int64)
    any_missing = missing.any(axis=1) if has_missing else np.zeros(n, bool)
    prof.rows_with_missing = int(any_missing.sum())
    if has_missing:
        r = int(np.flatnonzero(any_missing)[0])
        prof.first_missing = (path, r, feats[int(np.flatnonzero(missing[r])[0])].name)
    wv = np.ones(n) if w is None else np.where(np.isfinite(w) & (w >= 0), w, 0.0)
    prof.total_w = float(wv.sum())
    if finite is None:  # clean, every row complete: the column and the complete-row moments are the same
        prof.col_w, prof.col_mean, prof.col_m2 = _moments(T, wv)
        complete = None
        rw, rm, rs = prof.col_w, prof.col_mean, prof.col_m2
    else:
        Wc = np.where(finite, wv[:, None], 0.0)
        prof.col_w, prof.col_mean, prof.col_m2 = _weighted_moments(np.where(finite, T, 0.0), Wc)
        complete = finite.all(axis=1)
        rw, rm, rs = _weighted_moments(T[complete], wv[complete][:, None])
    prof.row_w, prof.row_mean, prof.row_m2 = (float(rw[0]) if d else 0.0), rm, rs
    prof.complete_per_piece = {index: n if complete is None else int(complete.sum())}
    return prof


@np.errstate(over="ignore", invalid="ignore")
def _moments(T: FloatArray, w: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-column (Σw, weighted mean, Σw(x − mean)²) of rows that are all finite."""
    W = float(w.sum())
    d = T.shape[1]
    if W <= 0:
        return np.zeros(d), np.zeros(d), np.zeros(d)
    mean = (w @ T) / W
    C = T - mean
    C *= C
    return np.full(d, W), mean, w @ C


def merge_profiles(a: Profile, b: Profile) -> Profile:
    """Combine the profiles of disjoint pieces (exact moment merge; duplicate ids across pieces)."""
    out = Profile(n_rows=a.n_rows + b.n_rows)
    out.rows_with_missing = a.rows_with_missing + b.rows_with_missing
    out.missing_per_column = a.missing_per_column + b.missing_per_column
    for name in ("first_missing", "first_domain", "first_bad_weight", "first_null_id", "first_huge"):
        setattr(out, name, getattr(a, name) or getattr(b, name))
    out.n_domain = a.n_domain + b.n_domain
    out.n_huge = a.n_huge + b.n_huge
    out.col_integral = a.col_integral & b.col_integral
    out.col_zeros = a.col_zeros + b.col_zeros
    out.col_min = np.minimum(a.col_min, b.col_min)
    out.col_max = np.maximum(a.col_max, b.col_max)
    out.n_bad_weight = a.n_bad_weight + b.n_bad_weight
    out.n_null_ids = a.n_null_ids + b.n_null_ids
    out.col_w, out.col_mean, out.col_m2 = _merge_moments(
        a.col_w, a.col_mean, a.col_m2, b.col_w, b.col_mean, b.col_m2
    )
    out.row_w, out.row_mean, out.row_m2 = _merge_moments(
        a.row_w, a.row_mean, a.row_m2, b.row_w, b.row_mean, b.row_m2
    )
    out.total_w = a.total_w + b.total_w
    out.complete_per_piece = {**a.complete_per_piece, **b.complete_per_piece}
    out.n_duplicate_ids = a.n_duplicate_ids + b.n_duplicate_ids
    out.duplicate_examples = (a.duplicate_examples + b.duplicate_examples)[:5]
    return out


def finish_profile(p: Profile) -> Profile:
    p.id_hashes = None
    return p


# --- duplicate ids at any size: hash-partitioned checks -----------------------------------------


def id_hashes(ids: pa.ChunkedArray, null: BoolArray) -> tuple[NDArray[np.uint64], Int64Array]:
    """(64-bit hashes of the non-null ids, their rows): deterministic across processes."""
    import pandas as pd

    values = ids.to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(~null).astype(np.int64)
    h = pd.util.hash_array(
        np.asarray(values[~null], dtype=object) if values.dtype == object else values[~null]
    )
    return h, rows


def id_buckets(
    ids: pa.ChunkedArray, null: BoolArray, piece_index: int, n_buckets: int
) -> list[NDArray[np.uint64]]:
    """This piece's non-null ids as 64-bit hashes split by ``hash % n_buckets``: one array of
    hashes per bucket, so each bucket of every piece can be checked on its own (8 bytes per id
    move between workers, a few MB per task at any number of users). Which rows a duplicated
    hash came from is found afterwards, only when there is one (:func:`rows_with_hashes`)."""
    h, _ = id_hashes(ids, null)
    if n_buckets == 1:
        return [h]
    # a small integer type: NumPy's stable sort is then a radix sort, linear in the rows
    which = (h % np.uint64(n_buckets)).astype(np.int16 if n_buckets < 2**15 else np.int64)
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(n_buckets + 1))
    h = h[order]
    return [h[a:b] for a, b in itertools.pairwise(bounds)]


def duplicate_hashes(parts: list[NDArray[np.uint64]], max_examples: int = 5) -> tuple[int, list[int]]:
    """Hashes that occur more than once across ``parts`` (one bucket of every piece): (number of
    extra rows, up to ``max_examples`` of the repeated hashes)."""
    h = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
    same = h[1:] == h[:-1]
    n_extra = int(same.sum())
    examples = [int(x) for x in np.unique(h[1:][same])[:max_examples]] if n_extra else []
    return n_extra, examples


def rows_with_hashes(ids: pa.ChunkedArray, null: BoolArray, hashes: list[int]) -> list[tuple[int, int]]:
    """(hash, row) of this piece's ids whose hash is one of ``hashes``."""
    h, rows = id_hashes(ids, null)
    hit = np.flatnonzero(np.isin(h, np.asarray(hashes, dtype=np.uint64)))
    return [(int(h[i]), int(rows[i])) for i in hit]


def merge_duplicates(a: tuple[int, list[int]], b: tuple[int, list[int]]) -> tuple[int, list[int]]:
    return a[0] + b[0], (a[1] + b[1])[:5]


def check_profile(p: Profile, cfg: InputColumns, date: str, *, standardize: bool = True) -> None:
    """Raise the one clear error for data that cannot be used under the configured policy.

    ``standardize`` is ``model.standardize``: without scaling, transformed values above
    ``MAX_ABS_VALUE`` in magnitude reach the fit as they are and are refused here (with scaling
    they are scaled first, and an overflowing mean or variance is refused by :func:`build_plan`).
    """
    if p.n_null_ids and p.first_null_id is not None:
        path, row = p.first_null_id
        raise DataError(
            f"Snapshot {date}: {p.n_null_ids} row(s) have a null {cfg.id_column!r} (first: file {path!r}, "
            f"row {row}). Every user needs an id."
        )
    if p.n_duplicate_ids:
        raise DataError(
            f"Snapshot {date}: {p.n_duplicate_ids} duplicate value(s) in id column {cfg.id_column!r}, "
            f"e.g. {p.duplicate_examples}{f' ({p.duplicate_where})' if p.duplicate_where else ''}. Each user "
            "must appear once per snapshot; deduplicate upstream "
            "or aggregate rows and pass the count as input.weight_column."
        )
    if p.n_bad_weight and p.first_bad_weight is not None:
        path, row, val = p.first_bad_weight
        raise DataError(
            f"Snapshot {date}: weight column {cfg.weight_column!r} has {p.n_bad_weight} null, negative or "
            f"infinite value(s) (first: file {path!r}, row {row}, value {val}). Weights must be >= 0."
        )
    if p.n_domain and p.first_domain is not None:
        path, row, col, val, tr = p.first_domain
        rule = _DOMAIN[tr][1]
        raise DataError(
            f"Snapshot {date}: feature {col!r} has values outside the domain of its {tr} transform "
            f"({p.n_domain} row(s); first: file {path!r}, row {row}, value {val}). {tr} needs values "
            f"{rule}; use transform 'asinh' for signed values or 'none'."
        )
    per_col = {
        f: int(c) for f, c in zip(cfg.feature_names, np.atleast_1d(p.missing_per_column), strict=True) if c
    }
    if p.n_rows:
        empty = [f for f, c in per_col.items() if c == p.n_rows]
        if empty:
            raise DataError(
                f"Snapshot {date}: feature column(s) {empty} are null, NaN or infinite in all "
                f"{p.n_rows} rows, so there is nothing to fit them on (input.missing is {cfg.missing!r}). "
                "Check the export upstream (a renamed or unfilled column?), or remove them from "
                "input.features."
            )
    if p.rows_with_missing and cfg.missing == "error" and p.first_missing is not None:
        path, row, col = p.first_missing
        raise DataError(
            f"Snapshot {date}: {p.rows_with_missing} row(s) have null, NaN or infinite features {per_col} "
            f"(first: file {path!r}, row {row}, column {col!r}). Set input.missing to 'drop' or "
            "'impute_mean', or fix the data upstream."
        )
    used = p.n_rows - (p.rows_with_missing if cfg.missing == "drop" else 0)
    if used == 0:
        raise DataError(
            f"Snapshot {date}: no usable rows ({p.n_rows} read, every one has a null, NaN or infinite "
            f"feature; rows missing per column: {per_col}). Fix the data upstream, or set input.missing "
            "to 'impute_mean'."
        )
    if cfg.weight_column:
        used_w = p.row_w if cfg.missing == "drop" else p.total_w
        if not used_w > 0:
            rows = "usable rows (rows with missing features dropped)" if cfg.missing == "drop" else "rows"
            raise DataError(
                f"Snapshot {date}: weight column {cfg.weight_column!r} (input.weight_column) is 0 in all "
                f"{used} {rows}. At least one row needs a positive weight; fix the weights upstream, or "
                "set input.weight_column: null to weigh every row equally."
            )
    if p.n_huge and not standardize and p.first_huge is not None:
        path, row, col, val, tr = p.first_huge
        after = "" if tr == "none" else f" after its {tr} transform"
        raise DataError(
            f"Snapshot {date}: {p.n_huge} row(s) have a feature whose magnitude{after} exceeds "
            f"{MAX_ABS_VALUE:g} (first: file {path!r}, row {row}, column {col!r}, value {val!r}); with "
            "model.standardize: false squared distances would overflow float64. Use transform 'asinh' "
            "or 'log1p', set model.standardize: true, or fix the values upstream."
        )


def build_plan(p: Profile, cfg: InputColumns, standardize: bool) -> FeaturePlan:
    """Scaler and imputation values from the profile (no further pass over the data)."""
    d = len(cfg.features)
    impute = np.where(p.col_w > 0, p.col_mean, 0.0)
    if cfg.missing == "impute_mean":
        # imputed values sit at the mean: variance over all rows = observed m2 / all rows' weight
        mean = impute
        var = p.col_m2 / p.total_w if p.total_w > 0 else np.zeros(d)
    else:
        mean = p.row_mean
        var = p.row_m2 / p.row_w if p.row_w > 0 else np.zeros(d)
    bad = [
        f.name
        for f, m, v in zip(cfg.features, np.atleast_1d(mean), np.atleast_1d(var), strict=True)
        if not (np.isfinite(m) and np.isfinite(v))
    ]
    if bad:
        raise DataError(
            f"Feature(s) {bad} have values so large that their mean or variance overflows float64. "
            "Use transform 'log1p' or 'asinh', or clip the values upstream."
        )
    if not standardize:
        mean, scale = np.zeros(d), np.ones(d)
    else:
        scale = np.sqrt(var)
        scale = np.where(scale > 0, scale, 1.0)  # a constant feature stays centred, unscaled
    kinds, resolution = infer_kinds(p, cfg)
    low = np.where(np.isfinite(p.col_min), p.col_min, 0.0)
    return FeaturePlan(
        tuple(cfg.features),
        cfg.missing,
        np.asarray(mean, float),
        np.asarray(scale, float),
        impute,
        kinds,
        resolution,
        low,
    )


#: Default resolution by kind: one unit of a count, one currency (or time) unit of an amount.
DEFAULT_RESOLUTION = {"count": 1.0, "amount": 1.0, "continuous": np.nan, "binary": 1.0}


def infer_kinds(p: Profile, cfg: InputColumns) -> tuple[tuple[str, ...], FloatArray]:
    """Each feature's kind and resolution: as configured, else inferred from the profile —
    whole non-negative numbers are counts; non-negative values spanning at least 10 units with
    at least 1 % exact zeros are amounts; anything else (rates and shares included) is continuous."""
    kinds: list[str] = []
    res: list[float] = []
    observed = np.maximum(p.n_rows - p.missing_per_column, 1)
    for j, f in enumerate(cfg.features):
        kind = f.kind
        if kind is None:
            nonneg = p.col_min[j] >= 0
            # a value range of a few units (a rate, a share) is not money: one unit would swamp it
            wide = p.col_max[j] - p.col_min[j] >= 10 * DEFAULT_RESOLUTION["amount"]
            if nonneg and p.col_integral[j]:
                kind = "count"
            elif nonneg and wide and p.col_zeros[j] >= 0.01 * observed[j]:
                kind = "amount"
            else:
                kind = "continuous"
        kinds.append(kind)
        res.append(f.resolution if f.resolution is not None else DEFAULT_RESOLUTION[kind])
    return tuple(kinds), np.asarray(res, dtype=float)


def prepare_piece(
    table: pa.Table, cfg: InputColumns, plan: FeaturePlan, path: str, *, offsets: FloatArray | None = None
) -> tuple[pa.ChunkedArray, FloatArray, FloatArray, FloatArray | None, int, int]:
    """Apply the plan to one piece: (ids kept, raw features kept, model inputs, weights, n dropped,
    n imputed). Counts and amounts are placed at the middle of their resolution step, or at
    ``offsets`` (n, D) raw units into it (the fit's dequantisation)."""
    ids, X_raw, w = raw_arrays(table, cfg)
    T = apply_transforms(X_raw + (plan.half_step if offsets is None else offsets), plan.features)
    bad = ~np.isfinite(T)
    with np.errstate(over="ignore", invalid="ignore"):
        huge = ~bad & (np.abs((T - plan.mean) / plan.scale) > MAX_ABS_VALUE)
    if huge.any():
        rows = huge.any(axis=1)
        r = int(np.flatnonzero(rows)[0])
        c = int(np.flatnonzero(huge[r])[0])
        raise DataError(
            f"{int(rows.sum())} row(s) of {path!r} have a feature whose magnitude after transform and "
            f"scaling exceeds {MAX_ABS_VALUE:g} (first: row {r}, column {plan.names[c]!r}, value "
            f"{float(X_raw[r, c])!r}); squared distances would overflow float64. Use transform 'asinh' or "
            "'log1p', or set model.standardize: true."
        )
    rows_bad = bad.any(axis=1)
    n_dropped = n_imputed = 0
    if rows_bad.any():
        if plan.missing == "error":
            r = int(np.flatnonzero(rows_bad)[0])
            col = plan.names[int(np.flatnonzero(bad[r])[0])]
            raise DataError(
                f"{int(rows_bad.sum())} row(s) of {path!r} have null, NaN, infinite or out-of-domain "
                f"features (first: row {r}, column {col!r}). Set input.missing to 'drop' or 'impute_mean'."
            )
        if plan.missing == "drop":
            keep = ~rows_bad
            n_dropped = int(rows_bad.sum())
            ids = ids.filter(pa.array(keep))
            X_raw, T = X_raw[keep], T[keep]
            w = None if w is None else w[keep]
        else:
            n_imputed = int(rows_bad.sum())
            T = np.where(bad, plan.impute_values[None, :], T)
    Z = np.ascontiguousarray((T - plan.mean) / plan.scale)  # the E-step reads rows
    return ids, X_raw, Z, w, n_dropped, n_imputed


def fit_arrays(
    table: pa.Table, path: str, index: int, cfg: InputColumns, plan: FeaturePlan, seed: int | None = 0
) -> tuple[FloatArray, FloatArray]:
    """(model inputs, weights) of one piece's table, for the fit.

    Counts and amounts are *dequantised*: each value x is drawn uniformly from its step
    [x, x + resolution) (seeded by ``seed`` and the piece ``index``, so a fit is reproducible), so the
    mixture is fitted to a continuous density instead of spikes on exact values. ``seed=None``:
    no dequantisation (the inputs as scoring sees them).
    """
    offsets = None
    if plan.resolution is not None and plan.has_floor and seed is not None:
        step = np.where(np.isfinite(plan.resolution), plan.resolution, 0.0)
        offsets = np.random.default_rng([seed, index]).random((table.num_rows, len(step))) * step
    _, _, Z, w, _, _ = prepare_piece(table, cfg, plan, path, offsets=offsets)
    return Z, (np.ones(len(Z)) if w is None else w)
