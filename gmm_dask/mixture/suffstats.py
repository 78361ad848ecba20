"""Sufficient statistics of one partition, their exact merge, and the M-step.

A partition of rows is reduced to a small :class:`SuffStats` value: per component the summed
responsibility ``nk``, the responsibility-weighted mean, and the *centred* second moment about
that mean. Two values merge with the parallel formula of Chan, Golub & LeVeque, so the result is
the same (to rounding) however the rows are split, and data offset by 1e6 lose no digits.

These functions know nothing about Dask: the distributed driver only maps :func:`estep_stats`
over partitions and folds the results with :func:`combine`. The E-step runs the compiled kernel
of :mod:`gmm_dask.mixture._kernels` (numba, imported on the first call) and keeps its NumPy path as the
reference; everything else here is NumPy.
:func:`merge_moments` is the one implementation of the parallel formula in the package (also
used by the input validation and the feature profile). The k-means kernels of the
initialisation are in :mod:`gmm_dask.mixture.kmeans`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = float(np.finfo(np.float64).eps)

#: Components whose mean lies more than √ρ of their own standard deviations from the mixture
#: mean (ρ = mᵀPm) are handled exactly centred rather than through the shared expansion,
#: whose rounding grows like ε·ρ: beyond 1e6 it would exceed ~1e-10 relative.
EXPANSION_MAX_RHO = 1e6

#: A component is *collapsed* when its summed responsibility is below this fraction of an
#: average row's weight, i.e. it explains less than a thousandth of one user.
COLLAPSE_FRACTION = 1e-3


def moment_kind(covariance_type: str) -> str:
    """Second moments a covariance type needs: 'full' (K, D, D) or 'diag' (K, D)."""
    return "full" if covariance_type in ("full", "tied") else "diag"


def default_block_rows(n_features_total: int) -> int:
    """Rows per in-cache block so the (F, rows) feature block stays under ~4 MiB (F = number of
    per-row features of the E-step).

    At most 3,000 rows: on this project's 2-core machines (1 MiB L2 per core) 4,096-row blocks
    made the E-step 15–25 % slower for diag (the block no longer fits L2, and a power-of-two
    row stride adds cache-set conflicts to the moments GEMM); ``benchmarks/phases.py`` times it.
    """
    return int(np.clip((1 << 19) // max(1, n_features_total), 256, 3000))


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
    hard_nk: np.ndarray | None = None  # (K,) Σ w over rows whose most probable component is k


def _keep_worst(scores, rows, index, m):
    order = np.lexsort((index, scores))[:m]
    return scores[order], rows[order], index[order]


def _worst_rows(scores: np.ndarray, rows: np.ndarray, eligible: np.ndarray, row_offset: int, m: int):
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


def merge_moments(wa, ma, m2a, wb, mb, m2b, pairs=None):
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


def combine(a: SuffStats, b: SuffStats) -> SuffStats:
    """Merge the statistics of two disjoint sets of rows (:func:`merge_moments`)."""
    n, means, m2 = merge_moments(a.nk, a.means, a.m2, b.nk, b.means, b.m2)
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


class _Layout:
    """Which products of centred features a covariance type needs, packed as rows of a block.

    The feature block of n rows is ``f = [q; x; 1]`` of shape (F, n): ``x`` the features
    centred at the mixture mean, ``q`` the products ``x_i x_j`` for the index pairs
    ``(ia, ja)`` — all pairs i ≤ j for 'full'/'tied' (D(D+1)/2 rows), the squares for
    'diag'/'spherical' (D rows) — and a row of ones.
    """

    def __init__(self, d: int, kind: str):
        if kind == "full":
            self.ia, self.ja = np.triu_indices(d)
        else:
            self.ia = self.ja = np.arange(d)
        self.kind = kind
        self.d = d
        self.t = len(self.ia)
        self.f = self.t + d + 1
        # for 'full', row block i of q holds x_i * x_{i..D-1}
        self.starts = np.concatenate([[0], np.cumsum(np.arange(d, 0, -1))]) if kind == "full" else None

    def fill(self, f: np.ndarray) -> None:
        """Write q from the centred x already in ``f[t:t+d]``."""
        d, t = self.d, self.t
        xc = f[t : t + d]
        if self.kind == "full":
            for i in range(d):
                np.multiply(xc[i:], xc[i], out=f[self.starts[i] : self.starts[i + 1]])
        else:
            np.square(xc, out=f[:t])

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        """(K, t) packed second moments → (K, D, D) for 'full', (K, D) for 'diag'."""
        if self.kind != "full":
            return packed
        out = np.empty((packed.shape[0], self.d, self.d))
        out[:, self.ia, self.ja] = packed
        out[:, self.ja, self.ia] = packed
        return out


def _log_density_coefficients(layout, weights, means_c, prec_chol, covariance_type):
    """A of shape (K, F) with ``A @ f`` = log πₖ + log 𝓝(x | μₖ, Σₖ) for the block ``f``, the
    constant part of each row, and ρₖ = mₖᵀPₖmₖ.

    −½ (x − m)ᵀ P (x − m) = −½ xᵀPx + (Pm)ᵀx − ½ mᵀPm with P the precision, x and m centred at
    the mixture mean; xᵀPx = Σ_{i≤j} (2 − δᵢⱼ) Pᵢⱼ xᵢxⱼ is linear in the packed products.
    Rounding in this expansion grows like ε·ρₖ, which is why components with a large ρₖ are
    computed exactly centred instead (see :data:`EXPANSION_MAX_RHO`).
    """
    from gmm_dask.mixture.gaussian import LOG_2PI, log_det_cholesky

    k, d = means_c.shape
    with np.errstate(divide="ignore"):
        consts = -0.5 * d * LOG_2PI + log_det_cholesky(prec_chol, covariance_type, d) + np.log(weights)
    A = np.empty((k, layout.f))
    if covariance_type in ("full", "tied"):
        pc = prec_chol if covariance_type == "full" else np.broadcast_to(prec_chol, (k, d, d))
        b = np.einsum("kd,kdj->kj", means_c, pc)  # Uᵀm, so mᵀPm = ‖Uᵀm‖²
        P = pc @ pc.transpose(0, 2, 1)
        A[:, : layout.t] = -0.5 * P[:, layout.ia, layout.ja] * np.where(layout.ia == layout.ja, 1.0, 2.0)
        A[:, layout.t : layout.t + d] = np.einsum("kdj,kj->kd", pc, b)
        rho = (b**2).sum(axis=1)
    else:
        p2 = prec_chol**2 if covariance_type == "diag" else np.repeat((prec_chol**2)[:, None], d, axis=1)
        A[:, : layout.t] = -0.5 * p2
        A[:, layout.t : layout.t + d] = p2 * means_c
        rho = (p2 * means_c**2).sum(axis=1)
    A[:, -1] = consts - 0.5 * rho
    return A, consts, rho


def _exact_log_density(xc, mean_c, prec_chol_k, covariance_type, const):
    """log πₖ𝓝(x | μₖ, Σₖ) of one component for a block ``xc`` (D, n), centred exactly.

    Not :func:`gaussian.squared_mahalanobis`: for full/tied that forms ``x·U − μ·U`` (one GEMM
    for all components), whose cancellation is exactly what this path exists to avoid.
    """
    diff = xc - mean_c[:, None]
    if covariance_type in ("full", "tied"):
        y = prec_chol_k.T @ diff
    else:
        y = diff * np.reshape(prec_chol_k, (-1, 1))  # diag (D,) or spherical scalar
    y *= y
    return const - 0.5 * y.sum(axis=0)


def _exact_moment(xc, mean, r_k, layout):
    """Σ r (x − m)(x − m)ᵀ (packed as the layout) of one component for a block ``xc`` (D, n)."""
    diff = xc - mean[:, None]
    wdiff = diff * r_k
    if layout.kind == "full":
        return (wdiff @ diff.T)[layout.ia, layout.ja]
    return (wdiff * diff).sum(axis=1)


def _merge_blocks(nk_b: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray, pairs: tuple):
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


#: Rows per merge block of the compiled kernel (moments about the mixture mean are summed over
#: a block, then turned into moments about the block's own component means and merged), and
#: rows per tile inside it: a tile's products (F × 224 doubles, 270 KiB for D = 16, full) stay
#: in a 1 MiB L2 while both products read them, and the per-tile passes stay long enough to
#: vectorise well. On this project's 2-core machines 192–256 rows were within 3 % of each other
#: (224 best), 128 and 384 5–10 % slower, 512 25 % slower for 'full'.
COMPILED_BLOCK_ROWS = 16384
COMPILED_TILE_ROWS = 224


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
    hard_counts: bool = False,
    kernel: str = "auto",
    precision: str = "float64",
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
        Rows whose moments are summed before they are centred and merged (temporaries stay in
        cache).
    hard_counts : bool
        Also count, per component, the weight of the rows it is most probable for.
    kernel : {'auto', 'numpy'}
        'auto' runs the compiled kernel (:mod:`gmm_dask.mixture._kernels`) unless a component needs the
        exactly centred path (see :data:`EXPANSION_MAX_RHO`), which only the NumPy path has;
        'numpy' always runs the NumPy path, the reference the compiled kernel is tested against.
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

    Notes
    -----
    Each in-cache block of rows is expanded once into ``f = [x_i x_j; x; 1]`` (centred at the
    mixture mean, products packed by symmetry), so the whole E-step is two matrix products
    against it: ``A @ f`` gives every component's log-density, and ``R @ fᵀ`` gives every
    component's weight, first and second moments. The moments of each block are turned into
    moments about the block's own component means and merged across blocks and partitions
    exactly with the parallel formula, so an offset of 1e6 costs nothing. Both paths do the same
    arithmetic in float64; the compiled one fuses it per cache-sized tile and agrees with the
    NumPy one to rounding (``tests/test_suffstats.py``).
    """
    if kernel not in ("auto", "numpy"):
        raise ValueError(f"kernel must be 'auto' or 'numpy', got {kernel!r}")
    if precision not in ("float64", "float32"):
        raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")
    k, d = means.shape
    kind = moment_kind(covariance_type)
    layout = _Layout(d, kind)
    shift = weights @ means
    means_c = means - shift
    A, consts, rho = _log_density_coefficients(layout, weights, means_c, prec_chol, covariance_type)
    far = np.flatnonzero(~(rho <= EXPANSION_MAX_RHO))
    n_total = X.shape[0]
    if kernel == "auto" and not far.size:
        blocks = _blocks_compiled(X, sample_weight, A, shift, layout, k, block_rows, hard_counts, precision)
    else:
        blocks = _blocks_numpy(
            X, sample_weight, A, shift, layout, k, block_rows, hard_counts,
            far=far, means_c=means_c, prec_chol=prec_chol, consts=consts, covariance_type=covariance_type,
        )  # fmt: skip
    scores, loglik, hard_nk, nk_b, mean_b, m2_b = blocks
    nk, mean_c, m2 = _merge_blocks(nk_b, mean_b, m2_b, (layout.ia, layout.ja))
    finite = np.isfinite(scores)
    n_bad = int(n_total - finite.sum())
    first_bad = row_offset + int(np.flatnonzero(~finite)[0]) if n_bad else -1
    eligible = finite if sample_weight is None else finite & (sample_weight > 0)
    ws_, wr, wi = _worst_rows(scores, X, eligible, row_offset, k)
    return SuffStats(
        nk=nk,
        means=mean_c + shift,
        m2=layout.unpack(m2),
        loglik=loglik,
        weight=float(n_total if sample_weight is None else sample_weight.sum()),
        n_rows=n_total,
        n_bad=n_bad,
        first_bad=first_bad,
        worst_scores=ws_,
        worst_rows=wr,
        worst_index=wi,
        hard_nk=hard_nk,
    )


def _centre_blocks(S: np.ndarray, layout: _Layout):
    """Moments Σ r·[q; x; 1] about the mixture mean of blocks (leading axes) → (nk, means about
    the mixture mean, packed moments about each block's own component means)."""
    t, d = layout.t, layout.d
    nkb = S[..., t + d]
    pos = nkb > 0
    mb = np.divide(
        S[..., t : t + d], nkb[..., None], out=np.zeros(S[..., t : t + d].shape), where=pos[..., None]
    )
    m2 = S[..., :t] - nkb[..., None] * (mb[..., layout.ia] * mb[..., layout.ja])
    diag = np.flatnonzero(layout.ia == layout.ja)
    m2[..., diag] = np.maximum(m2[..., diag], 0.0)
    return nkb, mb, m2


def _blocks_compiled(X, sample_weight, A, shift, layout, k, block_rows, hard_counts, precision="float64"):
    """Per-row scores, the log-likelihood, hard counts and per-block centred statistics from
    the compiled kernel (see :func:`estep_stats`)."""
    from gmm_dask.mixture import _kernels

    X = np.ascontiguousarray(X, dtype=np.float64)
    n_total = X.shape[0]
    weighted = sample_weight is not None
    w = np.ascontiguousarray(sample_weight, dtype=np.float64) if weighted else np.empty(0)
    block = max(1, block_rows or COMPILED_BLOCK_ROWS)
    tile = min(block, COMPILED_TILE_ROWS)
    tiles_per_block = -(-block // tile)
    n_blocks = max(1, -(-n_total // (tile * tiles_per_block)))
    kp = -(-k // _kernels.K_STEP) * _kernels.K_STEP
    pp = -(-layout.f // _kernels.P_STEP) * _kernels.P_STEP
    Ap = np.zeros((kp, pp), dtype=np.float32 if precision == "float32" else np.float64)
    Ap[:k, : layout.f] = A  # the kernel forms f = [q; x; 1] and A @ f in A's dtype
    S = np.zeros((n_blocks, kp, pp))
    scores = np.empty(n_total)
    hard_nk = np.zeros(k)
    ia = np.ascontiguousarray(layout.ia, dtype=np.int64)
    ja = np.ascontiguousarray(layout.ja, dtype=np.int64)
    loglik = _kernels.estep_tiles(
        X, w, weighted, np.ascontiguousarray(shift, dtype=np.float64), Ap, ia, ja, k,
        tile, tiles_per_block, hard_counts, scores, S, hard_nk,
    )  # fmt: skip
    nk_b, mean_b, m2_b = _centre_blocks(S[:, :k, : layout.f], layout)
    return scores, float(loglik), (hard_nk if hard_counts else None), nk_b, mean_b, m2_b


def _blocks_numpy(
    X,
    sample_weight,
    A,
    shift,
    layout,
    k,
    block_rows,
    hard_counts,
    *,
    far,
    means_c,
    prec_chol,
    consts,
    covariance_type,
):
    """The NumPy path of :func:`estep_stats`: two BLAS products per in-cache block, and the
    exactly centred computation for the components in ``far``."""
    t, F, d = layout.t, layout.f, layout.d
    n_total = X.shape[0]
    block_rows = max(1, min(block_rows or default_block_rows(F), n_total))
    # Buffers reused by every block (allocating per block is slow where glibc returns memory
    # eagerly, as under Dask's nanny); rows on the contiguous axis keep NumPy's passes long.
    fbuf = np.empty((F, block_rows))
    fbuf[F - 1] = 1.0
    rbuf = np.empty((k, block_rows))
    n_blocks = max(1, -(-n_total // block_rows))
    nk_b = np.zeros((n_blocks, k))
    mean_b = np.zeros((n_blocks, k, d))
    m2_b = np.zeros((n_blocks, k, t))
    scores = np.empty(n_total)
    loglik = 0.0
    hard_nk = np.zeros(k) if hard_counts else None
    for i, start in enumerate(range(0, n_total, block_rows)):
        stop = min(start + block_rows, n_total)
        n = stop - start
        f = fbuf[:, :n]
        np.subtract(X[start:stop].T, shift[:, None], out=f[t : t + d])
        layout.fill(f)
        r = rbuf[:, :n]
        np.matmul(A, f, out=r)  # log πₖ𝓝ₖ, (K, n)
        for j in far:
            pc = prec_chol if covariance_type == "tied" else prec_chol[j]
            r[j] = _exact_log_density(f[t : t + d], means_c[j], pc, covariance_type, consts[j])
        amax = r.max(axis=0)
        finite_max = np.isfinite(amax)
        safe = amax if finite_max.all() else np.where(finite_max, amax, 0.0)
        r -= safe
        np.exp(r, out=r)
        tot = r.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            lpn = np.log(tot)
            lpn += safe
            r /= tot
        bad = ~np.isfinite(lpn)
        any_bad = bad.any()
        if any_bad:  # they contribute nothing (0·inf in the moments would still be NaN)
            r[:, bad] = 0.0
            f[: t + d, bad] = 0.0
            lpn[bad & ~finite_max] = amax[bad & ~finite_max]
        scores[start:stop] = lpn
        if hard_counts:
            hw = np.where(bad, 0.0, 1.0 if sample_weight is None else sample_weight[start:stop])
            hard_nk += np.bincount(r.argmax(axis=0), weights=hw, minlength=k)
        if sample_weight is not None:
            wb = sample_weight[start:stop]
            r *= wb
            loglik += float(wb[~bad] @ lpn[~bad])
        else:
            loglik += float(lpn[~bad].sum()) if any_bad else float(lpn.sum())
        # Σ r·[q; x; 1] about the mixture mean, turned into moments about the block's own
        # component means.
        nkb, mb, m2 = _centre_blocks(r @ f.T, layout)  # (K, F) → per component
        for j in far:
            m2[j] = _exact_moment(f[t : t + d], mb[j], r[j], layout)
        nk_b[i], mean_b[i], m2_b[i] = nkb, mb, m2
    return scores, loglik, hard_nk, nk_b, mean_b, m2_b


def resp_stats(
    X: np.ndarray,
    sample_weight: np.ndarray | None,
    resp: np.ndarray,
    moments: str | None,
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
    if moments is not None:
        diff = Xc[None, :, :] - means_c[:, None, :]  # (K, n, D)
        wdiff = diff * r.T[:, :, None]
        if moments == "full":
            m2 = np.matmul(diff.transpose(0, 2, 1), wdiff)
        else:
            wdiff *= diff
            m2 = wdiff.sum(axis=1)
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
    stats: SuffStats, covariance_type: str, reg_covar, floor=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    fl = floor(means) if floor is not None else None
    idx = np.arange(d)
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
    covariances, covariance_type: str, reg_covar, floor: np.ndarray, weights=None
) -> np.ndarray:
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
    return (floor > 0) & (var <= floor * (1 + 1e-9))


def collapsed_components(stats: SuffStats) -> np.ndarray:
    """Indices of components holding less than :data:`COLLAPSE_FRACTION` of an average row."""
    if stats.n_rows == 0:
        return np.array([], dtype=int)
    threshold = COLLAPSE_FRACTION * stats.weight / stats.n_rows
    return np.flatnonzero(stats.nk < threshold)
