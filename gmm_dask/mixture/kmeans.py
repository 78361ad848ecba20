"""k-means kernels on one partition: nearest centres and hard-assignment statistics.

Used by the initialisations in :mod:`gmm_dask.mixture.init` (k-means||, k-means++ and their Lloyd
passes). Like :mod:`gmm_dask.mixture.suffstats` they are pure NumPy, and their statistics are the same
:class:`~gmm_dask.mixture.suffstats.SuffStats` value, merged with :func:`~gmm_dask.mixture.suffstats.combine`.
"""

from __future__ import annotations

import numpy as np

from gmm_dask.mixture.arrays import FloatArray, IntArray
from gmm_dask.mixture.options import MomentKind
from gmm_dask.mixture.suffstats import SuffStats, _worst_rows


def nearest_center(
    Xc: FloatArray, centers_c: FloatArray, block_rows: int = 8192
) -> tuple[IntArray, FloatArray]:
    """Index of and squared distance to the nearest centre, both shape (n,).

    ‖x − c‖² = ‖x‖² − 2 x·c + ‖c‖² as a GEMM in row blocks (memory O(block × C)); ``Xc`` and
    ``centers_c`` should be expressed around a common shift near the data, which keeps the
    expansion accurate. Distances are clipped at 0.
    """
    n = Xc.shape[0]
    labels = np.empty(n, dtype=np.intp)
    d2 = np.empty(n)
    cc = (centers_c**2).sum(axis=1)
    for start in range(0, n, block_rows):
        xb = Xc[start : start + block_rows]
        g = xb @ centers_c.T
        g *= -2.0
        g += cc
        lab = g.argmin(axis=1)
        labels[start : start + block_rows] = lab
        d2[start : start + block_rows] = np.maximum(g[np.arange(len(lab)), lab] + (xb * xb).sum(axis=1), 0.0)
    return labels, d2


def labelled_stats(
    X: FloatArray,
    sample_weight: FloatArray | None,
    labels: IntArray,
    scores: FloatArray,
    k: int,
    moments: MomentKind | None,
    row_offset: int,
) -> SuffStats:
    """Statistics of rows wholly assigned to components ``labels`` (exactly centred per cluster).

    The "worst" rows are those with the lowest ``scores``.
    """
    n, d = X.shape
    w = np.ones(n) if sample_weight is None else sample_weight
    nk = np.bincount(labels, weights=w, minlength=k).astype(np.float64)
    means = np.zeros((k, d))
    m2 = None if moments is None else np.zeros((k, d, d) if moments == "full" else (k, d))
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    for j in range(k):
        idx = order[bounds[j] : bounds[j + 1]]
        if not idx.size or nk[j] <= 0:
            continue
        xj, wj = X[idx], w[idx]
        means[j] = (wj @ xj) / nk[j]
        if m2 is not None:
            dj = xj - means[j]
            if moments == "full":
                m2[j] = dj.T @ (dj * wj[:, None])
            else:
                m2[j] = wj @ (dj * dj)
    ws_, wr, wi = _worst_rows(scores, X, w > 0, row_offset, k)
    return SuffStats(
        nk=nk,
        means=means,
        m2=m2,
        loglik=float(w @ scores),
        weight=float(w.sum()),
        n_rows=n,
        n_bad=0,
        first_bad=-1,
        worst_scores=ws_,
        worst_rows=wr,
        worst_index=wi,
    )


def hard_stats(
    X: FloatArray,
    sample_weight: FloatArray | None,
    centers: FloatArray,
    moments: MomentKind | None,
    *,
    row_offset: int = 0,
    block_rows: int | None = None,
) -> SuffStats:
    """Statistics with each row assigned wholly to its nearest centre (a k-means step).

    ``loglik`` is −Σ w·d² (minus the inertia); the "worst" rows are the farthest from any centre.
    ``moments`` is 'full', 'diag' or None (means only).
    """
    shift = centers.mean(axis=0)
    labels, d2 = nearest_center(X - shift, centers - shift, block_rows or 8192)
    return labelled_stats(X, sample_weight, labels, -d2, len(centers), moments, row_offset)
