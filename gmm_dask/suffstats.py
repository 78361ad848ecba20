"""Sufficient statistics of one partition, their exact merge, and the M-step.

A partition of rows is reduced to a small :class:`SuffStats` value: per component the summed
responsibility ``nk``, the responsibility-weighted mean, and the *centred* second moment about
that mean. Two values merge with the parallel formula of Chan, Golub & LeVeque, so the result is
the same (to rounding) however the rows are split, and data offset by 1e6 lose no digits.

These functions are pure NumPy and know nothing about Dask: the distributed driver only maps
:func:`partition_stats` over partitions and folds the results with :func:`combine`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .gaussian import estimate_weighted_log_prob, log_responsibilities

EPS = float(np.finfo(np.float64).eps)

#: A component is *collapsed* when its summed responsibility is below this fraction of an
#: average row's weight, i.e. it explains less than a thousandth of one user.
COLLAPSE_FRACTION = 1e-3


def moment_kind(covariance_type: str) -> str:
    """Second moments a covariance type needs: 'full' (K, D, D) or 'diag' (K, D)."""
    return "full" if covariance_type in ("full", "tied") else "diag"


def default_block_rows(n_components: int, n_features: int) -> int:
    """Rows per in-cache block so the (rows, K, D) temporaries stay around 2 MiB."""
    return int(np.clip((1 << 18) // max(1, n_components * n_features), 256, 16384))


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

    nk: np.ndarray
    means: np.ndarray
    m2: np.ndarray | None
    loglik: float
    weight: float
    n_rows: int
    n_bad: int
    first_bad: int
    worst_scores: np.ndarray
    worst_rows: np.ndarray
    worst_index: np.ndarray


def _keep_worst(scores, rows, index, m):
    order = np.lexsort((index, scores))[:m]
    return scores[order], rows[order], index[order]


def combine(a: SuffStats, b: SuffStats) -> SuffStats:
    """Merge the statistics of two disjoint sets of rows (Chan et al.'s parallel formula)."""
    n = a.nk + b.nk
    pos = n > 0
    safe_n = np.where(pos, n, 1.0)
    delta = b.means - a.means
    frac_b = np.where(pos, b.nk / safe_n, 0.0)
    means = np.where((a.nk > 0)[:, None], a.means + delta * frac_b[:, None], b.means)
    m2 = None
    if a.m2 is not None and b.m2 is not None:
        coef = np.where(pos, a.nk * b.nk / safe_n, 0.0)
        if a.m2.ndim == 3:
            m2 = a.m2 + b.m2 + coef[:, None, None] * (delta[:, :, None] * delta[:, None, :])
        else:
            m2 = a.m2 + b.m2 + coef[:, None] * delta**2
    m = max(len(a.worst_scores), len(b.worst_scores), a.nk.shape[0])
    ws, wr, wi = _keep_worst(
        np.concatenate([a.worst_scores, b.worst_scores]),
        np.concatenate([a.worst_rows, b.worst_rows]),
        np.concatenate([a.worst_index, b.worst_index]),
        m,
    )
    firsts = [f for f in (a.first_bad, b.first_bad) if f >= 0]
    return SuffStats(
        nk=n,
        means=means,
        m2=m2,
        loglik=a.loglik + b.loglik,
        weight=a.weight + b.weight,
        n_rows=a.n_rows + b.n_rows,
        n_bad=a.n_bad + b.n_bad,
        first_bad=min(firsts) if firsts else -1,
        worst_scores=ws,
        worst_rows=wr,
        worst_index=wi,
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


def _block_stats(Xc, shift, r, scores, w, kind, row_offset, n_worst) -> SuffStats:
    """Statistics of one block given per-row weighted responsibilities ``r`` (n, K)."""
    n = Xc.shape[0]
    finite = np.isfinite(scores)
    n_bad = int(n - finite.sum())
    first_bad = -1
    if n_bad:
        first_bad = row_offset + int(np.flatnonzero(~finite)[0])
        r = np.where(finite[:, None], r, 0.0)
    nk = r.sum(axis=0)
    pos = nk > 0
    sums = r.T @ Xc
    means_c = np.divide(sums, nk[:, None], out=np.zeros_like(sums), where=pos[:, None])
    m2 = None
    if kind is not None:
        diff = Xc[None, :, :] - means_c[:, None, :]  # (K, n, D)
        wdiff = diff * r.T[:, :, None]
        if kind == "full":
            m2 = np.matmul(diff.transpose(0, 2, 1), wdiff)
        else:
            wdiff *= diff
            m2 = wdiff.sum(axis=1)
    wsum = float(n if w is None else w.sum())
    contrib = scores if w is None else w * scores
    loglik = float(contrib[finite].sum())
    # Rows that can seed a collapsed component: positive weight, finite score.
    eligible = finite if w is None else finite & (w > 0)
    idx = np.flatnonzero(eligible)
    if idx.size > n_worst:
        part = np.argpartition(scores[idx], n_worst - 1)[:n_worst]
        idx = idx[part]
    ws, wr, wi = _keep_worst(scores[idx], Xc[idx] + shift, idx + row_offset, n_worst)
    return SuffStats(
        nk=nk,
        means=means_c + shift,
        m2=m2,
        loglik=loglik,
        weight=wsum,
        n_rows=n,
        n_bad=n_bad,
        first_bad=first_bad,
        worst_scores=ws,
        worst_rows=wr,
        worst_index=wi,
    )


def _blocked(
    X: np.ndarray,
    sample_weight: np.ndarray | None,
    block_rows: int,
    row_offset: int,
    block_fn: Callable[[np.ndarray, np.ndarray | None, int], SuffStats],
) -> SuffStats:
    n = X.shape[0]
    parts = []
    for start in range(0, max(n, 1), block_rows):
        stop = min(start + block_rows, n)
        wb = None if sample_weight is None else sample_weight[start:stop]
        parts.append(block_fn(X[start:stop], wb, row_offset + start))
    return combine_all(parts)


def estep_stats(
    X: np.ndarray,
    sample_weight: np.ndarray | None,
    weights: np.ndarray,
    means: np.ndarray,
    prec_chol: np.ndarray,
    covariance_type: str,
    *,
    row_offset: int = 0,
    block_rows: int | None = None,
) -> SuffStats:
    """E-step of one partition fused with its sufficient statistics (one pass over ``X``).

    Parameters
    ----------
    X : ndarray of shape (n, D), float64
    sample_weight : ndarray of shape (n,) or None
    weights, means, prec_chol : current mixture parameters
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    row_offset : int
        Global index of the partition's first row (for error messages and tie-breaking).
    block_rows : int, optional
        Rows processed at a time so temporaries stay in cache.

    Returns
    -------
    SuffStats
    """
    k, d = means.shape
    kind = moment_kind(covariance_type)
    shift = weights @ means
    block_rows = block_rows or default_block_rows(k, d)

    def block(Xb, wb, off):
        wlp = estimate_weighted_log_prob(Xb, weights, means, prec_chol, covariance_type, shift)
        lpn, log_resp = log_responsibilities(wlp)
        with np.errstate(invalid="ignore", under="ignore"):
            r = np.exp(log_resp)
        if wb is not None:
            r *= wb[:, None]
        return _block_stats(Xb - shift, shift, r, lpn, wb, kind, off, k)

    return _blocked(X, sample_weight, block_rows, row_offset, block)


def nearest_center(Xc: np.ndarray, centers_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and squared distance to the nearest centre, both shape (n,)."""
    d2 = ((Xc[:, None, :] - centers_c[None, :, :]) ** 2).sum(axis=2)
    labels = d2.argmin(axis=1)
    return labels, d2[np.arange(len(labels)), labels]


def hard_stats(
    X: np.ndarray,
    sample_weight: np.ndarray | None,
    centers: np.ndarray,
    moments: str | None,
    *,
    row_offset: int = 0,
    block_rows: int | None = None,
) -> SuffStats:
    """Statistics with each row assigned wholly to its nearest centre (a k-means step).

    ``loglik`` is −Σ w·d² (minus the inertia); the "worst" rows are the farthest from any centre.
    ``moments`` is 'full', 'diag' or None (means only).
    """
    k, d = centers.shape
    shift = centers.mean(axis=0)
    block_rows = block_rows or default_block_rows(k, d)

    def block(Xb, wb, off):
        Xc = Xb - shift
        labels, d2 = nearest_center(Xc, centers - shift)
        r = np.zeros((len(labels), k))
        r[np.arange(len(labels)), labels] = 1.0 if wb is None else wb
        return _block_stats(Xc, shift, r, -d2, wb, moments, off, k)

    return _blocked(X, sample_weight, block_rows, row_offset, block)


def resp_stats(
    X: np.ndarray,
    sample_weight: np.ndarray | None,
    resp: np.ndarray,
    moments: str | None,
    *,
    row_offset: int = 0,
) -> SuffStats:
    """Statistics for given responsibilities (the 'random' initialisation)."""
    r = resp if sample_weight is None else resp * sample_weight[:, None]
    shift = X.mean(axis=0) if len(X) else np.zeros(X.shape[1])
    return _block_stats(
        X - shift, shift, r, np.zeros(len(X)), sample_weight, moments, row_offset, resp.shape[1]
    )


def m_step(
    stats: SuffStats, covariance_type: str, reg_covar: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mixture parameters from merged statistics, as scikit-learn's M-step computes them.

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
    if covariance_type == "full":
        cov = m2 / nk[:, None, None]
        cov[:, np.arange(d), np.arange(d)] += reg_covar
    elif covariance_type == "tied":
        cov = m2.sum(axis=0) / nk.sum()
        cov[np.arange(d), np.arange(d)] += reg_covar
    elif covariance_type == "diag":
        cov = m2 / nk[:, None] + reg_covar
    else:
        cov = (m2 / nk[:, None]).mean(axis=1) + reg_covar
    return weights, means, cov


def collapsed_components(stats: SuffStats) -> np.ndarray:
    """Indices of components holding less than :data:`COLLAPSE_FRACTION` of an average row."""
    if stats.n_rows == 0:
        return np.array([], dtype=int)
    threshold = COLLAPSE_FRACTION * stats.weight / stats.n_rows
    return np.flatnonzero(stats.nk < threshold)
