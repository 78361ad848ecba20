"""k-means kernels: nearest centres and hard-assignment statistics on one partition, and k-means
on an in-memory weighted sample.

Used by the initialisations in :mod:`gmm_dask.mixture.init` (k-means-sample, k-means||, k-means++
and their Lloyd passes). Like :mod:`gmm_dask.mixture.suffstats` they are pure NumPy, and their statistics are the same
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


# --- k-means on an in-memory (weighted) sample -------------------------------------------------


def greedy_kmeanspp(points: FloatArray, weights: FloatArray, k: int, rng: np.random.Generator) -> FloatArray:
    """Greedy weighted k-means++ (as scikit-learn): for each centre, 2 + ⌊log K⌋ trials drawn
    ∝ w·d², keep the one that lowers Σ w·min d² most. ``points`` (m, D), ``weights`` (m,) > 0;
    returns (k, D). Fewer distinct points than k: the last centre is repeated."""
    n_trials = 2 + int(np.log(k))
    shift = np.average(points, axis=0, weights=weights)
    P = points - shift
    pp = (P * P).sum(axis=1)
    chosen = [int(rng.choice(len(P), p=weights / weights.sum()))]
    d2 = np.maximum(pp - 2.0 * (P @ P[chosen[0]]) + pp[chosen[0]], 0.0)
    for _ in range(1, k):
        mass = weights * d2
        total = mass.sum()
        if total <= 0:
            chosen.append(chosen[-1])
            continue
        trials = np.unique(rng.choice(len(P), size=n_trials, p=mass / total))
        dt = np.maximum(pp[:, None] - 2.0 * (P @ P[trials].T) + pp[trials][None, :], 0.0)
        cand = np.minimum(d2[:, None], dt)
        best = int(np.argmin(weights @ cand))
        chosen.append(int(trials[best]))
        d2 = cand[:, best]
    return points[chosen].copy()


def weighted_lloyd(
    points: FloatArray, weights: FloatArray, centers: FloatArray, *, tol: float, max_iter: int = 100
) -> tuple[FloatArray, float]:
    """Lloyd iterations on an in-memory weighted sample until the total squared centre shift is
    at most ``tol``; an emptied centre moves to the point farthest from every centre. Returns the
    centres (k, D) and their inertia Σ w·min d²."""
    shift = np.average(points, axis=0, weights=weights)
    P = points - shift
    C = centers - shift
    k = len(C)
    for _ in range(max_iter):
        labels, d2 = nearest_center(P, C)
        nk = np.bincount(labels, weights=weights, minlength=k)
        order = np.argsort(labels, kind="stable")
        held = np.flatnonzero(np.bincount(labels, minlength=k))  # centres with rows: ascending starts
        sums = np.zeros_like(C)
        sums[held] = np.add.reduceat(
            (P * weights[:, None])[order], np.searchsorted(labels[order], held), axis=0
        )
        new = np.where(nk[:, None] > 0, sums / np.where(nk > 0, nk, 1.0)[:, None], C)
        empty = np.flatnonzero(nk <= 0)
        if empty.size:
            far = np.argsort(-d2, kind="stable")
            new[empty] = P[far[np.arange(empty.size) % len(P)]]
        moved = float(((new - C) ** 2).sum())
        C = new
        if moved <= tol:
            break
    _, d2 = nearest_center(P, C)
    return C + shift, float(weights @ d2)


def sample_kmeans(
    points: FloatArray, weights: FloatArray, k: int, rng: np.random.Generator, *, tol: float, restarts: int
) -> FloatArray:
    """k-means on a weighted sample: ``restarts`` greedy k-means++ seedings each refined by
    :func:`weighted_lloyd`; the centres of least inertia (the first of equals), shape (k, D)."""
    best: tuple[float, FloatArray] | None = None
    for _ in range(restarts):
        centers, inertia = weighted_lloyd(points, weights, greedy_kmeanspp(points, weights, k, rng), tol=tol)
        if best is None or inertia < best[0]:
            best = (inertia, centers)
    if best is None:
        raise ValueError(f"sample_kmeans needs restarts >= 1, got {restarts}")
    return best[1]
