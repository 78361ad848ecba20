"""Sufficient statistics of one partition, their exact merge, and the M-step.

A partition of rows is reduced to a small :class:`SuffStats` value: per component the summed
responsibility ``nk``, the responsibility-weighted mean, and the *centred* second moment about
that mean. Two values merge with the parallel formula of Chan, Golub & LeVeque, so the result is
the same (to rounding) however the rows are split, and data offset by 1e6 lose no digits.

These functions know nothing about Dask: the distributed driver only maps :func:`estep_stats`
over partitions and folds the results with :func:`combine`. The E-step's work on each block of
rows (the compiled kernel, and the NumPy path kept as its reference) is in
:mod:`gmm_dask.mixture.blocks`; everything here is NumPy.
:func:`merge_moments` is the one implementation of the parallel formula in the package (also
used by the input validation and the feature profile). The k-means kernels of the
initialisation are in :mod:`gmm_dask.mixture.kmeans`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar, overload

import numpy as np

from gmm_dask.mixture.arrays import BoolArray, FloatArray, Int64Array, IntArray
from gmm_dask.mixture.blocks import Kernel, Layout, Precision, estep_blocks, log_density_coefficients
from gmm_dask.mixture.options import CovarianceType, MomentKind

#: A floor: ``floor(means)`` → (K, D) smallest variance of each component in each feature.
VarianceFloor = Callable[[FloatArray], FloatArray]

#: Summed weights: one number, or an array (one per component, column, block, ...).
W = TypeVar("W", float, FloatArray)

EPS = float(np.finfo(np.float64).eps)

#: A component is *collapsed* when its summed responsibility is below this fraction of an
#: average row's weight, i.e. it explains less than a thousandth of one user.
COLLAPSE_FRACTION = 1e-3


def moment_kind(covariance_type: CovarianceType) -> MomentKind:
    """Second moments a covariance type needs: 'full' (K, D, D) or 'diag' (K, D)."""
    return "full" if covariance_type in ("full", "tied") else "diag"


@dataclass(frozen=True)
class SuffStats:
    """Mergeable statistics of a set of rows for a K-component mixture in D features.

    Attributes
    ----------
    nk : ndarray of shape (K,)
        Σ wᵢ γᵢₖ.
    means : ndarray of shape (K, D)
        Σ wᵢ γᵢₖ xᵢ / nkₖ (0 where nkₖ = 0).
    m2 : ndarray of shape (K, D, D) or (K, D), or None
        Σ wᵢ γᵢₖ (xᵢ − meanₖ)(xᵢ − meanₖ)ᵀ, or its diagonal.
    loglik : float
        Σ wᵢ scoreᵢ (log p(xᵢ) for the E-step; −min distance² for k-means).
    weight : float
        Σ wᵢ.
    n_rows : int
    n_bad : int
        Rows whose score was not finite (they contribute nothing else).
    first_bad : int
        Global index of the first such row, −1 if none.
    worst_scores, worst_rows, worst_index : ndarrays of shape (m,), (m, D), (m,)
        The m ≤ K rows with positive weight and the lowest score, used to re-seed collapsed
        components deterministically (ties broken by global row index).
    """

    nk: FloatArray
    means: FloatArray
    m2: FloatArray | None
    loglik: float
    weight: float
    n_rows: int
    n_bad: int
    first_bad: int
    worst_scores: FloatArray
    worst_rows: FloatArray
    worst_index: Int64Array
    hard_nk: FloatArray | None = None  # (K,) Σ w over rows whose most probable component is k


def _keep_worst(
    scores: FloatArray, rows: FloatArray, index: Int64Array, m: int
) -> tuple[FloatArray, FloatArray, Int64Array]:
    order = np.lexsort((index, scores))[:m]
    return scores[order], rows[order], index[order]


def _worst_rows(
    scores: FloatArray, rows: FloatArray, eligible: BoolArray, row_offset: int, m: int
) -> tuple[FloatArray, FloatArray, Int64Array]:
    """The m eligible rows with the lowest score, ties broken by the lower global index:
    (scores, rows as float64 copies, global indices).

    Only rows at or below an upper bound of the m-th lowest score are sorted: the m-th lowest of
    the minima of ≥ m segments (m segments each hold a row at or below it), so this costs two
    cheap passes over ``scores`` instead of a selection over all of them.
    """
    s = scores if eligible.all() else np.where(eligible, scores, np.inf)
    n = s.shape[0]
    bound = np.inf
    if n and m:
        seg = max(1, min(1024, n // m))
        minima = np.minimum.reduceat(s, np.arange(0, n, seg))
        bound = np.partition(minima, m - 1)[m - 1] if minima.size >= m else np.inf
    idx = np.flatnonzero(s <= bound) if np.isfinite(bound) else np.flatnonzero(np.isfinite(s))
    return _keep_worst(s[idx], np.array(rows[idx], dtype=np.float64), idx + row_offset, m)


@overload
def merge_moments(
    wa: W,
    ma: FloatArray,
    m2a: FloatArray,
    wb: W,
    mb: FloatArray,
    m2b: FloatArray,
    pairs: tuple[IntArray, IntArray] | None = None,
) -> tuple[W, FloatArray, FloatArray]: ...
@overload
def merge_moments(
    wa: W,
    ma: FloatArray,
    m2a: FloatArray | None,
    wb: W,
    mb: FloatArray,
    m2b: FloatArray | None,
    pairs: tuple[IntArray, IntArray] | None = None,
) -> tuple[W, FloatArray, FloatArray | None]: ...
def merge_moments(
    wa: W,
    ma: FloatArray,
    m2a: FloatArray | None,
    wb: W,
    mb: FloatArray,
    m2b: FloatArray | None,
    pairs: tuple[IntArray, IntArray] | None = None,
) -> tuple[W, FloatArray, FloatArray | None]:
    """Weight, mean and centred second moment of the union of two disjoint weighted sets.

    The parallel formula of Chan, Golub & LeVeque: with w = wa + wb and δ = mb − ma,
    mean = ma + δ·wb/w and M2 = M2a + M2b + (wa·wb/w)·δδᵀ, so no raw moment E[x²] is ever
    formed and data offset by 1e6 lose no digits. Every argument broadcasts elementwise over a
    leading shape S (one merge per component, per column, per block, ...).

    Parameters
    ----------
    wa, wb : float or ndarray of shape S
        Summed weights (≥ 0) of the two sets.
    ma, mb : ndarray of shape S or S + (D,)
        Weighted means.
    m2a, m2b : ndarray or None
        Centred second moments: the same shape as the means (diagonal), S + (D, D) (full), or
        S + (T,) packed at the index pairs ``pairs``; None to merge the means only.
    pairs : tuple of two int ndarrays of shape (T,), optional
        ``(ia, ja)``: packed entry t holds the moment of features ``ia[t]`` and ``ja[t]``.

    Returns
    -------
    w : float or ndarray of shape S
    mean : ndarray, shape of the means
        Exactly ``mb`` where ``wa == 0`` (so where ``w == 0`` too).
    m2 : ndarray, shape of the moments, or None
    """
    w = wa + wb
    pos = w > 0
    safe = np.where(pos, w, 1.0)
    frac_b = np.where(pos, wb / safe, 0.0)
    coef = np.where(pos, wa * wb / safe, 0.0)
    has_a = np.asarray(wa) > 0
    if np.ndim(ma) > np.ndim(w):  # means carry a feature axis
        frac_b, has_a = frac_b[..., None], has_a[..., None]
        coef = coef[..., None]
    delta = mb - ma
    mean = np.where(has_a, ma + delta * frac_b, mb)
    if m2a is None or m2b is None:
        return w, mean, None
    if pairs is not None:
        outer = delta[..., pairs[0]] * delta[..., pairs[1]]
    elif np.ndim(m2a) > np.ndim(ma):
        outer = delta[..., :, None] * delta[..., None, :]
        coef = coef[..., None]
    else:
        outer = delta**2
    return w, mean, m2a + m2b + coef * outer


class RowTracking(Protocol):
    """What every family's statistics keep of individual rows: the invalid ones, and the worst
    explained (to re-seed collapsed components)."""

    @property
    def nk(self) -> FloatArray: ...
    @property
    def first_bad(self) -> int: ...
    @property
    def worst_scores(self) -> FloatArray: ...
    @property
    def worst_rows(self) -> FloatArray: ...
    @property
    def worst_index(self) -> Int64Array: ...


def merge_row_tracking(a: RowTracking, b: RowTracking) -> tuple[int, FloatArray, FloatArray, Int64Array]:
    """The first invalid row and the worst-explained rows of the union of two disjoint sets:
    (first_bad, worst_scores, worst_rows, worst_index), at most max(K, kept) rows, ties broken by
    the lower global index."""
    m = max(len(a.worst_scores), len(b.worst_scores), a.nk.shape[0])
    ws, wr, wi = _keep_worst(
        np.concatenate([a.worst_scores, b.worst_scores]),
        np.concatenate([a.worst_rows, b.worst_rows]),
        np.concatenate([a.worst_index, b.worst_index]),
        m,
    )
    firsts = [f for f in (a.first_bad, b.first_bad) if f >= 0]
    return (min(firsts) if firsts else -1), ws, wr, wi


def combine(a: SuffStats, b: SuffStats) -> SuffStats:
    """Merge the statistics of two disjoint sets of rows (:func:`merge_moments`)."""
    n, means, m2 = merge_moments(a.nk, a.means, a.m2, b.nk, b.means, b.m2)
    first_bad, ws, wr, wi = merge_row_tracking(a, b)
    return SuffStats(
        nk=n,
        means=means,
        m2=m2,
        loglik=a.loglik + b.loglik,
        weight=a.weight + b.weight,
        n_rows=a.n_rows + b.n_rows,
        n_bad=a.n_bad + b.n_bad,
        first_bad=first_bad,
        worst_scores=ws,
        worst_rows=wr,
        worst_index=wi,
        hard_nk=a.hard_nk + b.hard_nk if a.hard_nk is not None and b.hard_nk is not None else None,
    )


def combine_all(parts: list[SuffStats]) -> SuffStats:
    """Fold a non-empty list of statistics, pairwise (a balanced tree keeps rounding small)."""
    parts = list(parts)
    if not parts:
        raise ValueError("combine_all needs at least one SuffStats")
    while len(parts) > 1:
        nxt = [combine(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def _merge_blocks(
    nk_b: FloatArray, mean_b: FloatArray, m2_b: FloatArray, pairs: tuple[IntArray, IntArray]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Exact merge of per-block statistics (leading axis: blocks), second moments packed at the
    index pairs ``pairs``: a balanced pairwise fold of :func:`merge_moments`."""
    while len(nk_b) > 1:
        h = len(nk_b) // 2 * 2  # blocks 0, 2, 4, … merge with 1, 3, 5, …; an odd last one waits
        nk, mean, m2 = merge_moments(
            nk_b[0:h:2], mean_b[0:h:2], m2_b[0:h:2], nk_b[1:h:2], mean_b[1:h:2], m2_b[1:h:2], pairs
        )
        nk_b = np.concatenate([nk, nk_b[h:]])
        mean_b = np.concatenate([mean, mean_b[h:]])
        m2_b = np.concatenate([m2, m2_b[h:]])
    return nk_b[0], mean_b[0], m2_b[0]


def estep_stats(
    X: FloatArray,
    sample_weight: FloatArray | None,
    weights: FloatArray,
    means: FloatArray,
    prec_chol: FloatArray,
    covariance_type: CovarianceType,
    *,
    row_offset: int = 0,
    block_rows: int | None = None,
    hard_counts: bool = False,
    kernel: Kernel = "auto",
    precision: Precision = "float64",
) -> SuffStats:
    """E-step of one partition fused with its sufficient statistics (one pass over ``X``; how,
    block by block, is :mod:`gmm_dask.mixture.blocks`' docstring).

    Parameters
    ----------
    X : ndarray of shape (n, D), float64
    sample_weight : ndarray of shape (n,) or None
    weights, means, prec_chol : current mixture parameters
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    row_offset : int
        Global index of the partition's first row (for error messages and tie-breaking).
    block_rows : int, optional
        Rows whose moments are summed before they are centred and merged (temporaries stay in
        cache).
    hard_counts : bool
        Also count, per component, the weight of the rows it is most probable for.
    kernel : {'auto', 'numpy'}
        'auto' runs the compiled kernel (:mod:`gmm_dask.mixture._kernels`) unless a component needs the
        exactly centred path (see :data:`~gmm_dask.mixture.blocks.EXPANSION_MAX_RHO`), which only
        the NumPy path has; 'numpy' always runs the NumPy path, the reference the compiled kernel
        is tested against.
    precision : {'float64', 'float32'}
        'float32' (opt-in) forms the centred features, their products and the log-densities of
        the compiled kernel in float32 (twice the values per vector register); the softmax,
        every sum over rows and the merges stay float64. About 25 % faster for 'full' (D = 16,
        K = 8); it moves the statistics by ~1e-7 relative, a row's log p(x) by up to ~1e-4
        absolute, and the parameters after 5 EM iterations by ~1e-6 relative
        (``benchmarks/kernel.py`` measures the drift). The NumPy path (``kernel='numpy'``, and
        components needing exact centring) is always float64.

    Returns
    -------
    SuffStats
    """
    if kernel not in ("auto", "numpy"):
        raise ValueError(f"kernel must be 'auto' or 'numpy', got {kernel!r}")
    if precision not in ("float64", "float32"):
        raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")
    k, d = means.shape
    layout = Layout(d, moment_kind(covariance_type))
    dens = log_density_coefficients(layout, weights, means, prec_chol, covariance_type)
    blocks = estep_blocks(
        X, sample_weight, dens, layout,
        block_rows=block_rows, hard_counts=hard_counts, kernel=kernel, precision=precision,
    )  # fmt: skip
    nk, mean_c, m2 = _merge_blocks(blocks.nk, blocks.means, blocks.m2, (layout.ia, layout.ja))
    n_total = X.shape[0]
    finite = np.isfinite(blocks.scores)
    n_bad = int(n_total - finite.sum())
    eligible = finite if sample_weight is None else finite & (sample_weight > 0)
    ws_, wr, wi = _worst_rows(blocks.scores, X, eligible, row_offset, k)
    return SuffStats(
        nk=nk,
        means=mean_c + dens.shift,
        m2=layout.unpack(m2),
        loglik=blocks.loglik,
        weight=float(n_total if sample_weight is None else sample_weight.sum()),
        n_rows=n_total,
        n_bad=n_bad,
        first_bad=row_offset + int(np.flatnonzero(~finite)[0]) if n_bad else -1,
        worst_scores=ws_,
        worst_rows=wr,
        worst_index=wi,
        hard_nk=blocks.hard_nk,
    )


def resp_stats(
    X: FloatArray,
    sample_weight: FloatArray | None,
    resp: FloatArray,
    moments: MomentKind | None,
    *,
    row_offset: int = 0,
) -> SuffStats:
    """Statistics for given responsibilities ``resp`` (n, K) (the 'random' initialisation).

    Moments are formed exactly centred (about the partition mean, then each component's mean);
    ``loglik`` is 0 and the "worst" rows are the first rows with positive weight.
    """
    n, k = resp.shape
    r = resp if sample_weight is None else resp * sample_weight[:, None]
    shift = X.mean(axis=0) if n else np.zeros(X.shape[1])
    Xc = X - shift
    nk = r.sum(axis=0)
    sums = r.T @ Xc
    means_c = np.divide(sums, nk[:, None], out=np.zeros_like(sums), where=(nk > 0)[:, None])
    m2 = None
    if moments is not None:  # one component at a time: (n, D) temporaries, not (K, n, D)
        d = X.shape[1]
        m2 = np.empty((k, d, d) if moments == "full" else (k, d))
        for c in range(k):
            diff = Xc - means_c[c]
            wdiff = diff * r[:, c : c + 1]
            if moments == "full":
                m2[c] = diff.T @ wdiff
            else:
                wdiff *= diff
                m2[c] = wdiff.sum(axis=0)
    eligible = np.ones(n, dtype=bool) if sample_weight is None else sample_weight > 0
    ws, wr, wi = _worst_rows(np.zeros(n), X, eligible, row_offset, k)
    return SuffStats(
        nk=nk,
        means=means_c + shift,
        m2=m2,
        loglik=0.0,
        weight=float(n if sample_weight is None else sample_weight.sum()),
        n_rows=n,
        n_bad=0,
        first_bad=-1,
        worst_scores=ws,
        worst_rows=wr,
        worst_index=wi,
    )


def m_step(
    stats: SuffStats,
    covariance_type: CovarianceType,
    reg_covar: float | FloatArray,
    floor: VarianceFloor | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Mixture parameters from merged statistics, as scikit-learn's M-step computes them.

    Parameters
    ----------
    stats : SuffStats
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    reg_covar : float or ndarray of shape (D,)
        Added to the diagonal of every covariance (per feature when a vector).
    floor : callable, optional
        ``floor(means)`` → (K, D): the smallest variance of each component in each feature
        (e.g. from a discrete feature's resolution). A variance below it is raised to it
        before ``reg_covar`` is added; tied and spherical covariances use the weighted and
        the feature-averaged floor.

    Returns
    -------
    weights : ndarray of shape (K,), summing to 1
    means : ndarray of shape (K, D)
    covariances : ndarray, shape by ``covariance_type``
    """
    nk = stats.nk + 10 * EPS
    weights = nk / nk.sum()
    means = stats.means.copy()
    d = means.shape[1]
    m2 = stats.m2
    if m2 is None:
        raise ValueError("m_step needs second moments: these statistics hold means only")
    fl = floor(means) if floor is not None else None
    idx = np.arange(d)
    cov: FloatArray
    if covariance_type == "full":
        cov = m2 / nk[:, None, None]
        if fl is not None:
            cov[:, idx, idx] = np.maximum(cov[:, idx, idx], fl)
        cov[:, idx, idx] += reg_covar
    elif covariance_type == "tied":
        cov = m2.sum(axis=0) / nk.sum()
        if fl is not None:
            cov[idx, idx] = np.maximum(cov[idx, idx], (nk @ fl) / nk.sum())
        cov[idx, idx] += reg_covar
    elif covariance_type == "diag":
        cov = m2 / nk[:, None]
        if fl is not None:
            cov = np.maximum(cov, fl)
        cov = cov + reg_covar
    else:
        cov = (m2 / nk[:, None]).mean(axis=1)
        if fl is not None:
            cov = np.maximum(cov, fl.mean(axis=1))
        cov = cov + np.mean(reg_covar)
    return weights, means, cov


def variance_at_floor(
    covariances: FloatArray,
    covariance_type: CovarianceType,
    reg_covar: float | FloatArray,
    floor: FloatArray,
    weights: FloatArray | None = None,
) -> BoolArray:
    """(K, D) mask of the variances :func:`m_step` raised to (or left exactly at) the floor
    (``weights``: the mixture weights, which weight the tied floor as the M-step does)."""
    k, d = floor.shape
    reg = np.broadcast_to(np.asarray(reg_covar, dtype=float), (d,))
    if covariance_type == "full":
        var = np.diagonal(covariances, axis1=1, axis2=2) - reg
    elif covariance_type == "tied":
        var = np.broadcast_to(np.diag(covariances) - reg, (k, d))
        w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights) / np.sum(weights)
        floor = np.broadcast_to(w @ floor, (k, d))
    elif covariance_type == "diag":
        var = covariances - reg
    else:
        var = np.broadcast_to((covariances - reg.mean())[:, None], (k, d))
        floor = np.broadcast_to(floor.mean(axis=1, keepdims=True), (k, d))
    at_floor: BoolArray = (floor > 0) & (var <= floor * (1 + 1e-9))
    return at_floor


class PassCounts(Protocol):
    """The weights of one pass's statistics (every family's statistics have them)."""

    @property
    def nk(self) -> FloatArray: ...
    @property
    def weight(self) -> float: ...
    @property
    def n_rows(self) -> int: ...


def collapsed_components(stats: PassCounts) -> IntArray:
    """Indices of components holding less than :data:`COLLAPSE_FRACTION` of an average row."""
    if stats.n_rows == 0:
        return np.array([], dtype=int)
    threshold = COLLAPSE_FRACTION * stats.weight / stats.n_rows
    return np.flatnonzero(stats.nk < threshold)
