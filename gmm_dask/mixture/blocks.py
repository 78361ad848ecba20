"""The E-step of one partition, block by block: log-densities, responsibilities and the
moments of each in-cache block of rows.

Each block of rows is expanded once into ``f = [x_i x_j; x; 1]`` (centred at the mixture mean,
products packed by symmetry), so the whole E-step is two matrix products against it: ``A @ f``
gives every component's log-density, and ``R @ fᵀ`` gives every component's weight, first and
second moments. The moments of each block are turned into moments about the block's own
component means (:func:`centre_blocks`); :func:`gmm_dask.mixture.suffstats.estep_stats` merges
them across blocks and partitions exactly with the parallel formula, so an offset of 1e6 costs
nothing.

Two paths do the same arithmetic in float64: the compiled kernel of
:mod:`gmm_dask.mixture._kernels` (numba, imported on the first call) fuses it per cache-sized
tile; the NumPy path (:func:`blocks_numpy`) is the reference it is tested against
(``tests/test_suffstats.py``), and the only one that computes exactly centred the components
whose expansion would lose digits (:data:`EXPANSION_MAX_RHO`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from gmm_dask.mixture.arrays import BoolArray, FloatArray, IntArray
from gmm_dask.mixture.gaussian import LOG_2PI, log_det_cholesky
from gmm_dask.mixture.options import CovarianceType, MomentKind

Kernel = Literal["auto", "numpy"]
Precision = Literal["float64", "float32"]

#: Row padding of the compiled kernel: f has a multiple of 4 rows (the density loop takes 4 at
#: a time) and the coefficients a multiple of 4 components (the moment loop takes 4 at a time).
P_STEP = 4
K_STEP = 4


def padded(k: int, f: int) -> tuple[int, int]:
    """(Kp, Pp): ``k`` components and ``f`` rows of f rounded up to the kernel's steps."""
    return -(-k // K_STEP) * K_STEP, -(-f // P_STEP) * P_STEP


#: Components whose mean lies more than √ρ of their own standard deviations from the mixture
#: mean (ρ = mᵀPm) are handled exactly centred rather than through the shared expansion,
#: whose rounding grows like ε·ρ: beyond 1e6 it would exceed ~1e-10 relative.
EXPANSION_MAX_RHO = 1e6

#: Rows per merge block of the compiled kernel (moments about the mixture mean are summed over
#: a block, then turned into moments about the block's own component means and merged), and
#: rows per tile inside it: a tile's products (F × 224 doubles, 270 KiB for D = 16, full) stay
#: in a 1 MiB L2 while both products read them, and the per-tile passes stay long enough to
#: vectorise well. On this project's 2-core machines 192–256 rows were within 3 % of each other
#: (224 best), 128 and 384 5–10 % slower, 512 25 % slower for 'full'.
COMPILED_BLOCK_ROWS = 16384
COMPILED_TILE_ROWS = 224


def default_block_rows(n_features_total: int) -> int:
    """Rows per in-cache block so the (F, rows) feature block stays under ~4 MiB (F = number of
    per-row features of the E-step).

    At most 3,000 rows: on this project's 2-core machines (1 MiB L2 per core) 4,096-row blocks
    made the E-step 15–25 % slower for diag (the block no longer fits L2, and a power-of-two
    row stride adds cache-set conflicts to the moments GEMM); ``benchmarks/phases.py`` times it.
    """
    return int(np.clip((1 << 19) // max(1, n_features_total), 256, 3000))


class Layout:
    """Which products of centred features a covariance type needs, packed as rows of a block.

    The feature block of n rows is ``f = [q; x; 1]`` of shape (F, n): ``x`` the features
    centred at the mixture mean, ``q`` the products ``x_i x_j`` for the index pairs
    ``(ia, ja)`` — all pairs i ≤ j for 'full'/'tied' (D(D+1)/2 rows), the squares for
    'diag'/'spherical' (D rows) — and a row of ones.
    """

    ia: IntArray
    ja: IntArray

    def __init__(self, d: int, kind: MomentKind) -> None:
        if kind == "full":
            self.ia, self.ja = np.triu_indices(d)
        else:
            self.ia = self.ja = np.arange(d)
        self.kind = kind
        self.d = d
        self.t = len(self.ia)
        self.f = self.t + d + 1
        # for 'full', row block i of q holds x_i * x_{i..D-1}
        self.starts: IntArray | None = (
            np.concatenate([[0], np.cumsum(np.arange(d, 0, -1))]) if kind == "full" else None
        )

    def fill(self, f: FloatArray) -> None:
        """Write q from the centred x already in ``f[t:t+d]``."""
        d, t = self.d, self.t
        xc = f[t : t + d]
        if self.starts is not None:
            for i in range(d):
                np.multiply(xc[i:], xc[i], out=f[self.starts[i] : self.starts[i + 1]])
        else:
            np.square(xc, out=f[:t])

    def unpack(self, packed: FloatArray) -> FloatArray:
        """(K, t) packed second moments → (K, D, D) for 'full', (K, D) for 'diag'."""
        if self.kind != "full":
            return packed
        out = np.empty((packed.shape[0], self.d, self.d))
        out[:, self.ia, self.ja] = packed
        out[:, self.ja, self.ia] = packed
        return out


@dataclass(frozen=True)
class Densities:
    """log πₖ𝓝(x | μₖ, Σₖ) of every component, as coefficients against a block ``f``.

    Attributes
    ----------
    A : ndarray of shape (K, F)
        ``A @ f`` is every component's weighted log-density for the block ``f``.
    consts : ndarray of shape (K,)
        The constant part of each row: log πₖ − ½ D log 2π + log det Pₖ.
    rho : ndarray of shape (K,)
        ρₖ = mₖᵀPₖmₖ, with mₖ the component mean about the mixture mean.
    shift : ndarray of shape (D,)
        The mixture mean, about which the features are centred.
    means_c : ndarray of shape (K, D)
        The component means about ``shift``.
    prec_chol : ndarray
        Precision Cholesky factors, shape by ``covariance_type``.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    """

    A: FloatArray
    consts: FloatArray
    rho: FloatArray
    shift: FloatArray
    means_c: FloatArray
    prec_chol: FloatArray
    covariance_type: CovarianceType

    def far(self) -> IntArray:
        """Components that need the exactly centred path (see :data:`EXPANSION_MAX_RHO`)."""
        return np.flatnonzero(~(self.rho <= EXPANSION_MAX_RHO))


@dataclass(frozen=True)
class BlockStats:
    """What the E-step of one partition leaves to merge (leading axis of the moments: blocks).

    Attributes
    ----------
    scores : ndarray of shape (n,)
        log p(x) of each row (not finite for rows with no finite density).
    loglik : float
        Σ w·log p(x) over the rows with a finite score.
    hard_nk : ndarray of shape (K,) or None
        Σ w over the rows whose most probable component is k (when asked for).
    nk, means, m2 : ndarrays of shapes (B, K), (B, K, D), (B, K, t)
        Per block: Σ r, the means about the mixture mean, and the packed second moments about
        the block's own component means.
    """

    scores: FloatArray
    loglik: float
    hard_nk: FloatArray | None
    nk: FloatArray
    means: FloatArray
    m2: FloatArray


def log_density_coefficients(
    layout: Layout,
    weights: FloatArray,
    means: FloatArray,
    prec_chol: FloatArray,
    covariance_type: CovarianceType,
) -> Densities:
    """The coefficients A of shape (K, F) with ``A @ f`` = log πₖ + log 𝓝(x | μₖ, Σₖ) for the
    block ``f``, the constant part of each row, and ρₖ = mₖᵀPₖmₖ.

    −½ (x − m)ᵀ P (x − m) = −½ xᵀPx + (Pm)ᵀx − ½ mᵀPm with P the precision, x and m centred at
    the mixture mean; xᵀPx = Σ_{i≤j} (2 − δᵢⱼ) Pᵢⱼ xᵢxⱼ is linear in the packed products.
    Rounding in this expansion grows like ε·ρₖ, which is why components with a large ρₖ are
    computed exactly centred instead (see :data:`EXPANSION_MAX_RHO`).
    """
    shift = weights @ means
    means_c = means - shift
    k, d = means_c.shape
    with np.errstate(divide="ignore"):
        consts = -0.5 * d * LOG_2PI + log_det_cholesky(prec_chol, covariance_type, d) + np.log(weights)
    A = np.empty((k, layout.f))
    rho: FloatArray
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
    return Densities(A, consts, rho, shift, means_c, prec_chol, covariance_type)


def _exact_log_density(
    xc: FloatArray, mean_c: FloatArray, prec_chol_k: FloatArray, covariance_type: CovarianceType, const: float
) -> FloatArray:
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
    out: FloatArray = const - 0.5 * y.sum(axis=0)
    return out


def _exact_moment(xc: FloatArray, mean: FloatArray, r_k: FloatArray, layout: Layout) -> FloatArray:
    """Σ r (x − m)(x − m)ᵀ (packed as the layout) of one component for a block ``xc`` (D, n)."""
    diff = xc - mean[:, None]
    wdiff = diff * r_k
    if layout.kind == "full":
        return (wdiff @ diff.T)[layout.ia, layout.ja]
    out: FloatArray = (wdiff * diff).sum(axis=1)
    return out


def centre_blocks(S: FloatArray, layout: Layout) -> tuple[FloatArray, FloatArray, FloatArray]:
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


def estep_blocks(
    X: FloatArray,
    sample_weight: FloatArray | None,
    dens: Densities,
    layout: Layout,
    *,
    block_rows: int | None,
    hard_counts: bool,
    kernel: Kernel,
    precision: Precision,
) -> BlockStats:
    """The E-step of one partition on the compiled kernel, or on the NumPy path where asked
    (``kernel='numpy'``) or where a component needs exact centring."""
    if kernel == "auto" and not dens.far().size:
        return blocks_compiled(
            X, sample_weight, dens.A, dens.shift, layout, block_rows, hard_counts, precision
        )
    return blocks_numpy(X, sample_weight, dens, layout, block_rows, hard_counts)


def blocks_compiled(
    X: FloatArray,
    sample_weight: FloatArray | None,
    A: FloatArray,
    shift: FloatArray,
    layout: Layout,
    block_rows: int | None,
    hard_counts: bool,
    precision: Precision = "float64",
) -> BlockStats:
    """Per-row scores, the log-likelihood, hard counts and per-block centred statistics from
    the compiled kernel (see :func:`gmm_dask.mixture.suffstats.estep_stats`)."""
    from gmm_dask.mixture import aot

    k = A.shape[0]
    X = np.ascontiguousarray(X, dtype=np.float64)
    n_total = X.shape[0]
    weighted = sample_weight is not None
    w = np.ascontiguousarray(sample_weight, dtype=np.float64) if weighted else np.empty(0)
    block = max(1, block_rows or COMPILED_BLOCK_ROWS)
    tile = min(block, COMPILED_TILE_ROWS)
    tiles_per_block = -(-block // tile)
    n_blocks = max(1, -(-n_total // (tile * tiles_per_block)))
    kp, pp = padded(k, layout.f)
    Ap = np.zeros((kp, pp), dtype=np.float32 if precision == "float32" else np.float64)
    Ap[:k, : layout.f] = A  # the kernel forms f = [q; x; 1] and A @ f in A's dtype
    S = np.zeros((n_blocks, kp, pp))
    scores = np.empty(n_total)
    hard_nk = np.zeros(k)
    ia = np.ascontiguousarray(layout.ia, dtype=np.int64)
    ja = np.ascontiguousarray(layout.ja, dtype=np.int64)
    loglik = aot.call(
        "estep_tiles", X, w, weighted, np.ascontiguousarray(shift, dtype=np.float64), Ap, ia, ja, k,
        tile, tiles_per_block, hard_counts, scores, S, hard_nk,
    )  # fmt: skip
    nk_b, mean_b, m2_b = centre_blocks(S[:, :k, : layout.f], layout)
    return BlockStats(scores, float(loglik), (hard_nk if hard_counts else None), nk_b, mean_b, m2_b)


def blocks_numpy(
    X: FloatArray,
    sample_weight: FloatArray | None,
    dens: Densities,
    layout: Layout,
    block_rows: int | None,
    hard_counts: bool,
) -> BlockStats:
    """The NumPy path: two BLAS products per in-cache block, and the exactly centred
    computation for the components :meth:`Densities.far` names."""
    t, F, d = layout.t, layout.f, layout.d
    k = dens.A.shape[0]
    far = dens.far()
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
        f = fbuf[:, : stop - start]
        np.subtract(X[start:stop].T, dens.shift[:, None], out=f[t : t + d])
        layout.fill(f)
        r = rbuf[:, : stop - start]
        np.matmul(dens.A, f, out=r)  # log πₖ𝓝ₖ, (K, n)
        for j in far:
            pc = dens.prec_chol if dens.covariance_type == "tied" else dens.prec_chol[j]
            r[j] = _exact_log_density(f[t : t + d], dens.means_c[j], pc, dens.covariance_type, dens.consts[j])
        lpn, bad = _softmax_block(r, f, t + d)
        scores[start:stop] = lpn
        wb = None if sample_weight is None else sample_weight[start:stop]
        if hard_nk is not None:
            hw = np.where(bad, 0.0, 1.0 if wb is None else wb)
            hard_nk += np.bincount(r.argmax(axis=0), weights=hw, minlength=k)
        if wb is not None:
            r *= wb
            loglik += float(wb[~bad] @ lpn[~bad])
        else:
            loglik += float(lpn[~bad].sum()) if bad.any() else float(lpn.sum())
        # Σ r·[q; x; 1] about the mixture mean, turned into moments about the block's own
        # component means.
        nkb, mb, m2 = centre_blocks(r @ f.T, layout)  # (K, F) → per component
        for j in far:
            m2[j] = _exact_moment(f[t : t + d], mb[j], r[j], layout)
        nk_b[i], mean_b[i], m2_b[i] = nkb, mb, m2
    return BlockStats(scores, loglik, hard_nk, nk_b, mean_b, m2_b)


def _softmax_block(r: FloatArray, f: FloatArray, n_moment_rows: int) -> tuple[FloatArray, BoolArray]:
    """Responsibilities in place of the log-densities ``r`` (K, n), and log p(x) of each row;
    rows with no finite density get r = 0 and their products in ``f`` zeroed (0·inf in the
    moments would still be NaN), so they contribute nothing. Returns (log p(x), bad rows)."""
    amax = r.max(axis=0)
    finite_max = np.isfinite(amax)
    safe = amax if finite_max.all() else np.where(finite_max, amax, 0.0)
    r -= safe
    np.exp(r, out=r)
    tot = r.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lpn: FloatArray = np.log(tot)
        lpn += safe
        r /= tot
    bad = ~np.isfinite(lpn)
    if bad.any():
        r[:, bad] = 0.0
        f[:n_moment_rows, bad] = 0.0
        lpn[bad & ~finite_max] = amax[bad & ~finite_max]
    return lpn, bad
