"""Every check on user input, in one place.

Parameters are checked at the ``fit`` entry, arrays when they are converted, and values (NaN,
±inf, negative weights) in one distributed pass before any EM work starts. Messages name the
parameter, column or row, the value, and the fix.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeAlias, TypeGuard, cast

import numpy as np
from numpy.typing import ArrayLike

from gmm_dask.errors import GMMDaskInputError
from gmm_dask.mixture.arrays import FloatArray
from gmm_dask.mixture.limits import MAX_ABS_VALUE
from gmm_dask.mixture.options import (
    COVARIANCE_TYPES,
    INIT_METHODS,
    MIN_MAX_ITER,
    MIN_N_COMPONENTS,
    MIN_N_INIT,
    MIN_REG_COVAR,
    MIN_TOL,
    CovarianceType,
)
from gmm_dask.mixture.runner import ChunkedData, Runner
from gmm_dask.mixture.suffstats import merge_moments

if TYPE_CHECKING:
    import dask.array as da
    import dask.dataframe as dd
    import pandas as pd

#: What ``fit`` and the prediction methods take: in-memory arrays (NumPy, lists), pandas or Dask
#: DataFrames, or row-chunked Dask arrays.
InputData: TypeAlias = "ArrayLike | pd.DataFrame | da.Array | dd.DataFrame"
#: Row weights: in memory, a Dask array or a Dask Series.
InputWeights: TypeAlias = "ArrayLike | da.Array | dd.Series"

#: Rows per partition when a NumPy array is split for Dask's local scheduler.
DEFAULT_CHUNK_ROWS = 131_072


class EstimatorParams(Protocol):
    """The constructor arguments of :class:`~gmm_dask.mixture.estimator.GaussianMixture` that
    :func:`check_estimator_params` and :func:`check_init_arrays` read (as given by the user)."""

    @property
    def n_components(self) -> int: ...
    @property
    def covariance_type(self) -> CovarianceType: ...
    @property
    def tol(self) -> float: ...
    @property
    def reg_covar(self) -> ArrayLike: ...
    @property
    def max_iter(self) -> int: ...
    @property
    def n_init(self) -> int: ...
    @property
    def init_params(self) -> str: ...
    @property
    def random_state(self) -> object: ...
    @property
    def weights_init(self) -> ArrayLike | None: ...
    @property
    def means_init(self) -> ArrayLike | None: ...
    @property
    def precisions_init(self) -> ArrayLike | None: ...


def invalid(name: str, value: object, allowed: str) -> GMMDaskInputError:
    return GMMDaskInputError(f"Invalid value for {name}: {value!r}. Expected {allowed}.")


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise invalid(name, value, f"an integer >= {minimum}")
    return int(value)


def check_float(name: str, value: object, minimum: float = 0.0) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not np.isfinite(np.asarray(value))
        or value < minimum
    ):
        raise invalid(name, value, f"a finite number >= {minimum:g}")
    return float(value)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise invalid(name, value, "one of " + ", ".join(repr(c) for c in choices))


def check_reg_covar(value: ArrayLike, n_features: int | None = None) -> float | FloatArray:
    """``reg_covar``: a number >= 0, or one per feature (shape (D,), every value >= 0)."""
    if np.ndim(value) == 0:
        return check_float("reg_covar", value, MIN_REG_COVAR)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise invalid("reg_covar", value, "a number >= 0 or one number >= 0 per feature") from None
    if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr < MIN_REG_COVAR):
        raise invalid(
            "reg_covar", value, "a number >= 0 or a 1-D array of finite numbers >= 0, one per feature"
        )
    if n_features is not None and arr.shape != (n_features,):
        raise invalid(
            "reg_covar",
            f"an array of shape {arr.shape}",
            f"a number or shape ({n_features},), one per feature",
        )
    return arr


def check_estimator_params(est: EstimatorParams) -> None:
    """Validate a GaussianMixture's constructor arguments (shapes of the *_init need D)."""
    check_int("n_components", est.n_components, MIN_N_COMPONENTS)
    check_choice("covariance_type", est.covariance_type, COVARIANCE_TYPES)
    check_float("tol", est.tol, MIN_TOL)
    check_reg_covar(est.reg_covar)
    check_int("max_iter", est.max_iter, MIN_MAX_ITER)
    check_int("n_init", est.n_init, MIN_N_INIT)
    check_choice("init_params", est.init_params, INIT_METHODS)
    rs = est.random_state
    if rs is not None and not isinstance(rs, numbers.Integral | np.random.Generator | np.random.RandomState):
        raise invalid("random_state", rs, "None, an int, or a numpy Generator/RandomState")


def check_init_arrays(
    est: EstimatorParams, n_features: int
) -> tuple[FloatArray | None, FloatArray | None, FloatArray | None]:
    """Validate weights_init / means_init / precisions_init; returns float64 copies or None."""
    k, d, ct = est.n_components, n_features, est.covariance_type
    weights = means = precisions = None
    if est.weights_init is not None:
        weights = np.array(est.weights_init, dtype=np.float64)
        if weights.shape != (k,):
            raise invalid("weights_init", f"array of shape {weights.shape}", f"shape ({k},)")
        if np.any(~np.isfinite(weights)) or np.any(weights < 0) or np.any(weights > 1):
            raise invalid("weights_init", weights.tolist(), "values in [0, 1]")
        if not np.isclose(weights.sum(), 1.0, rtol=0, atol=1e-6):
            raise invalid(
                "weights_init",
                weights.tolist(),
                f"weights summing to 1 (they sum to {weights.sum():.6g})",
            )
    if est.means_init is not None:
        means = np.array(est.means_init, dtype=np.float64)
        if means.shape != (k, d):
            raise invalid("means_init", f"array of shape {means.shape}", f"shape ({k}, {d})")
        if np.any(~np.isfinite(means)):
            raise invalid("means_init", "an array with NaN or inf", "finite values")
    if est.precisions_init is not None:
        precisions = np.array(est.precisions_init, dtype=np.float64)
        shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[ct]
        if precisions.shape != shape:
            raise invalid(
                "precisions_init",
                f"array of shape {precisions.shape}",
                f"shape {shape} for covariance_type={ct!r}",
            )
        if np.any(~np.isfinite(precisions)):
            raise invalid("precisions_init", "an array with NaN or inf", "finite values")
        if ct in ("full", "tied"):
            mats = precisions if ct == "full" else precisions[None]
            if not np.allclose(mats, mats.transpose(0, 2, 1)):
                raise invalid(
                    "precisions_init",
                    "a non-symmetric matrix",
                    "symmetric positive-definite matrices",
                )
            if np.any(np.linalg.eigvalsh(mats) <= 0):
                raise invalid(
                    "precisions_init",
                    "a matrix that is not positive definite",
                    "symmetric positive-definite matrices",
                )
        elif np.any(precisions <= 0):
            raise invalid("precisions_init", "non-positive values", "positive values")
    return weights, means, precisions


# --- array conversion ----------------------------------------------------------------------


def _numeric_frame_columns(dtypes: pd.Series[Any]) -> list[str]:
    import pandas as pd

    return [
        str(c)
        for c, t in dtypes.items()
        if not (pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t))
        or pd.api.types.is_complex_dtype(t)
    ]


def _frame_to_numpy(df: pd.DataFrame) -> FloatArray:
    out: FloatArray = df.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def _check_not_sparse(X: object, name: str = "X") -> None:
    if type(X).__module__.startswith("scipy.sparse"):
        raise GMMDaskInputError(
            f"{name} is a sparse {type(X).__name__}; gmm-dask needs dense features. Pass "
            f"{name}.toarray() (mixtures of few features are dense in practice)."
        )


def _check_features(shape: tuple[int, ...], name: str = "X") -> None:
    if shape[1] == 0:
        raise GMMDaskInputError(
            f"Found array with 0 feature(s) (shape={tuple(shape)}) while a minimum of 1 is required: "
            f"{name} needs at least one feature column."
        )


def _check_numpy(X: ArrayLike, name: str = "X") -> FloatArray:
    _check_not_sparse(X, name)
    X = np.asarray(X) if not isinstance(X, np.ndarray) else X
    if X.ndim == 1:
        raise GMMDaskInputError(
            f"Expected a 2-D {name} (rows × features), got a 1-D array of {X.shape[0]} values. "
            f"Reshape your data: {name}.reshape(-1, 1) for one feature or {name}.reshape(1, -1) for one row."
        )
    if X.ndim != 2:
        raise GMMDaskInputError(f"Expected a 2-D {name} (rows × features), got {X.ndim} dimensions.")
    _check_features(X.shape, name)
    if X.dtype.kind == "c":
        raise GMMDaskInputError(
            f"Complex data not supported: {name} has dtype {X.dtype}; pass real-valued features "
            "(e.g. the absolute value, or the real and imaginary parts as two columns)."
        )
    if X.dtype.kind not in "biuf":
        try:
            return X.astype(np.float64)
        except (TypeError, ValueError):
            raise GMMDaskInputError(
                f"{name} has non-numeric values (dtype {X.dtype}); every feature must be a number."
            ) from None
    return X.astype(np.float64, copy=False)


def to_numpy(X: ArrayLike | pd.DataFrame) -> FloatArray:
    """In-memory input (NumPy, list, pandas DataFrame) as a checked 2-D float64 array."""
    import pandas as pd

    if isinstance(X, pd.DataFrame):
        bad = _numeric_frame_columns(X.dtypes)
        if bad:
            raise GMMDaskInputError(_non_numeric_msg(bad, X.dtypes))
        return _frame_to_numpy(X)
    return _check_numpy(X)


def _is_dask_frame(X: object) -> TypeGuard[dd.DataFrame]:
    if not type(X).__module__.startswith("dask"):
        return False
    import dask.dataframe as dd

    return isinstance(X, dd.DataFrame)


def to_chunked(
    X: InputData,
    sample_weight: InputWeights | None = None,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> ChunkedData:
    """Convert X (NumPy, Dask array, pandas or Dask DataFrame) and weights to :class:`ChunkedData`.

    Only types, shapes and column dtypes are checked here (cheap); values are checked by
    :func:`validate_values` in one pass.
    """
    import dask.array as da
    import pandas as pd

    names = None
    if isinstance(X, pd.DataFrame):
        names = [str(c) for c in X.columns]
        X = to_numpy(X)
    if isinstance(X, da.Array):
        if X.ndim != 2:
            raise GMMDaskInputError(f"Expected a 2-D Dask array (rows × features), got {X.ndim} dimensions.")
        _check_features(X.shape)
        if X.dtype.kind not in "biuf":
            raise GMMDaskInputError(
                f"X has non-numeric values (dtype {X.dtype}); every feature must be a number."
            )
        if any(np.isnan(c) for c in X.chunks[0]):
            X = X.compute_chunk_sizes()  # type: ignore[no-untyped-call]  # dask: unannotated
        if len(X.chunks[1]) > 1:
            X = X.rechunk({1: -1})
        Xd = X.astype(np.float64)
    elif _is_dask_frame(X):
        from dask.base import compute
        from dask.delayed import delayed

        bad = _numeric_frame_columns(X.dtypes)
        if bad:
            raise GMMDaskInputError(_non_numeric_msg(bad, X.dtypes))
        names = [str(c) for c in X.columns]
        parts = X.to_delayed()  # type: ignore[no-untyped-call]  # dask: unannotated
        lengths = compute(*[delayed(len)(p) for p in parts])  # type: ignore[no-untyped-call]  # dask: unannotated
        d = len(names)
        blocks = [
            da.from_delayed(delayed(_frame_to_numpy)(p), shape=(n, d), dtype=np.float64)  # type: ignore[no-untyped-call]  # dask: unannotated
            for p, n in zip(parts, lengths, strict=True)
        ]
        Xd = da.concatenate(blocks, axis=0) if blocks else da.zeros((0, d))  # type: ignore[no-untyped-call]  # dask: unannotated
    else:
        Xn = to_numpy(X)
        n = Xn.shape[0]
        rows = max(1, min(chunk_rows, n))
        Xd = da.from_array(Xn, chunks=(rows, -1))  # type: ignore[no-untyped-call]  # dask: unannotated
    w = None
    if sample_weight is not None:
        w = _to_weight_array(sample_weight, Xd)
    return ChunkedData(Xd, w, names)


def _non_numeric_msg(bad: list[str], dtypes: pd.Series[Any]) -> str:
    desc = ", ".join(f"{c!r} ({dtypes[c]})" for c in bad)
    return (
        f"X has non-numeric column(s): {desc}. Pass only numeric features, e.g. "
        "X[feature_columns], or encode categories as numbers first."
    )


def _to_weight_array(sample_weight: InputWeights, Xd: da.Array) -> da.Array:
    import dask.array as da

    n = Xd.shape[0]
    w: da.Array
    if isinstance(sample_weight, da.Array):
        w = sample_weight
        if any(np.isnan(c) for c in w.chunks[0]):
            w = w.compute_chunk_sizes()  # type: ignore[no-untyped-call]  # dask: unannotated
    elif hasattr(sample_weight, "npartitions"):  # a Dask Series (or one-column frame)
        w = cast("dd.Series", sample_weight).to_dask_array(lengths=True)
    else:
        arr = np.asarray(sample_weight)
        if arr.dtype.kind not in "biuf":
            raise GMMDaskInputError(f"sample_weight must be numeric, got dtype {arr.dtype}.")
        chunks = (Xd.chunks[0],) if arr.ndim == 1 and len(arr) == n else -1
        w = da.from_array(arr.astype(np.float64), chunks=chunks)  # type: ignore[no-untyped-call]  # dask: unannotated
    if w.ndim != 1 or w.shape[0] != n:
        raise GMMDaskInputError(
            f"sample_weight must be 1-D with one weight per row of X ({n}), got shape {w.shape}."
        )
    out: da.Array = w.astype(np.float64).rechunk((Xd.chunks[0],))  # type: ignore[no-untyped-call]  # dask: unannotated
    return out


# --- value validation (one pass) -------------------------------------------------------------


@dataclass(frozen=True)
class ValueReport:
    """What the validation pass learned about valid data (invalid data raised instead)."""

    n_rows: int
    weight_sum: float
    mean_variance: float  # mean over features of the (weighted) variance


class _Values(NamedTuple):
    """What the validation pass finds in some rows (global row indices; −1: none)."""

    n_rows: int
    n_bad: int  # rows with NaN or ±inf
    first_row: int
    first_col: int
    n_bad_w: int  # negative or non-finite weights
    first_w: int
    wsum: float  # Σ of the valid weights
    tot: float  # Σ w over the valid rows
    mean: FloatArray | None  # their weighted mean, (D,)
    m2: FloatArray | None  # their centred second moment, (D,)
    n_huge: int  # rows with a value beyond MAX_ABS_VALUE
    first_huge: tuple[int, int]  # (row, column)


@np.errstate(over="ignore", invalid="ignore")  # overflowing variances are reported by validate_values
def _value_chunk(Xb: FloatArray, wb: FloatArray | None, idx: int, off: int) -> _Values:
    finite = np.isfinite(Xb)
    bad_rows = np.flatnonzero(~finite.all(axis=1))
    first_row = first_col = -1
    if bad_rows.size:
        first_row = off + int(bad_rows[0])
        first_col = int(np.flatnonzero(~finite[bad_rows[0]])[0])
    huge = finite & (np.abs(Xb) > MAX_ABS_VALUE)
    huge_rows = np.flatnonzero(huge.any(axis=1))
    first_huge = (
        (off + int(huge_rows[0]), int(np.flatnonzero(huge[huge_rows[0]])[0])) if huge_rows.size else (-1, -1)
    )
    n_bad_w, first_w, wsum = 0, -1, float(len(Xb))
    w = np.ones(len(Xb)) if wb is None else wb
    if wb is not None:
        badw = np.flatnonzero(~np.isfinite(wb) | (wb < 0))
        n_bad_w = int(badw.size)
        first_w = off + int(badw[0]) if badw.size else -1
        wsum = float(wb[np.isfinite(wb) & (wb >= 0)].sum())
    ok = finite.all(axis=1) & np.isfinite(w) & (w >= 0)
    Xo, wo = Xb[ok], w[ok]
    tot: float = wo.sum()
    mean = (wo @ Xo) / tot if tot > 0 else np.zeros(Xb.shape[1])
    m2 = wo @ (Xo - mean) ** 2 if tot > 0 else np.zeros(Xb.shape[1])
    return _Values(
        len(Xb),
        int(bad_rows.size),
        first_row,
        first_col,
        n_bad_w,
        first_w,
        wsum,
        tot,
        mean,
        m2,
        int(huge_rows.size),
        first_huge,
    )


@np.errstate(over="ignore", invalid="ignore")
def _merge_values(parts: list[_Values]) -> _Values:
    n = nbad = nbw = nhuge = 0
    fr = fc = fw = -1
    fh = (-1, -1)
    wsum = 0.0
    tot: float = 0.0
    mean: FloatArray | None = None
    m2: FloatArray | None = None
    for p in parts:
        n += p.n_rows
        nbad += p.n_bad
        if p.first_row >= 0 and (fr < 0 or p.first_row < fr):
            fr, fc = p.first_row, p.first_col
        nbw += p.n_bad_w
        if p.first_w >= 0 and (fw < 0 or p.first_w < fw):
            fw = p.first_w
        wsum += p.wsum
        nhuge += p.n_huge
        if p.first_huge[0] >= 0 and (fh[0] < 0 or p.first_huge[0] < fh[0]):
            fh = p.first_huge
        if mean is None:
            tot, mean, m2 = p.tot, p.mean, p.m2
        elif p.tot > 0 and p.mean is not None:
            tot, mean, m2 = merge_moments(tot, mean, m2, p.tot, p.mean, p.m2)
    return _Values(n, nbad, fr, fc, nbw, fw, wsum, tot, mean, m2, nhuge, fh)


def check_predict_values(X: FloatArray) -> None:
    """NaN/±inf or |x| > MAX_ABS_VALUE in an in-memory array given to predict/score."""
    finite = np.isfinite(X)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise GMMDaskInputError(f"X contains NaN or infinity (first at row {row}); drop or impute it first.")
    huge = np.abs(X) > MAX_ABS_VALUE
    if huge.any():
        row = int(np.flatnonzero(huge.any(axis=1))[0])
        raise GMMDaskInputError(
            f"X has a value whose magnitude exceeds {MAX_ABS_VALUE:g} (first at row {row}); rescale or "
            "log-transform the features as for fit."
        )


def validate_values(runner: Runner, feature_names: list[str] | None) -> ValueReport:
    """One pass: NaN/±inf or |x| > MAX_ABS_VALUE in X, negative or non-finite weights, row count,
    data variance."""
    n, nbad, fr, fc, nbw, fw, wsum, tot, _, m2, nhuge, fh = runner.map_reduce(_value_chunk, _merge_values)
    if nbad:
        col = feature_names[fc] if feature_names else fc
        raise GMMDaskInputError(
            f"X contains NaN or infinity in {nbad} row(s); the first is row {fr} (column {col!r}). "
            "Drop or impute those rows before fitting (the pipeline's `missing: drop` or "
            "`missing: impute_mean` policy does this)."
        )
    if nhuge:
        col = feature_names[fh[1]] if feature_names else fh[1]
        raise GMMDaskInputError(
            f"X has {nhuge} row(s) with a value whose magnitude exceeds {MAX_ABS_VALUE:g}; the first is "
            f"row {fh[0]} (column {col!r}). Squared distances would overflow float64: rescale or "
            "log-transform the features (the pipeline's `transform: asinh` or `log1p`)."
        )
    if nbw:
        raise GMMDaskInputError(
            f"sample_weight has {nbw} negative or non-finite value(s); the first is at row {fw}. "
            "Weights must be finite and >= 0."
        )
    if n and wsum <= 0:
        raise GMMDaskInputError("sample_weight sums to zero: at least one row needs a positive weight.")
    mean_var = float(np.mean(m2 / tot)) if tot > 0 and m2 is not None else 0.0
    if not np.isfinite(mean_var):
        col = int(np.flatnonzero(~np.isfinite(m2))[0]) if m2 is not None and (~np.isfinite(m2)).any() else 0
        name = feature_names[col] if feature_names else col
        raise GMMDaskInputError(
            f"X has values so large that the variance of column {name!r} overflows float64. "
            "Rescale or log-transform the features."
        )
    return ValueReport(n, wsum, mean_var)
