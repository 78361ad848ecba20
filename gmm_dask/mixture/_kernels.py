"""The compiled E-step kernel (numba): products, log-densities, softmax and moments per tile.

:func:`gmm_dask.mixture.suffstats.estep_stats` imports this module lazily, so only a fit pays for
numba's import and for loading (or, the first time, compiling: ~5 s) the kernel. ``cache=True``
keeps the machine code in ``NUMBA_CACHE_DIR`` if set, else in ``__pycache__`` beside this file,
else (read-only install) in numba's user-wide ``~/.cache/numba``, so later processes load it in
about a second; where none is writable the kernel compiles in memory in each process.

The arithmetic is the NumPy path's, in float64 (float32 for the features, their products and the
log-densities only when asked for), over tiles of rows small enough to stay in the core's
caches: per tile the centred features ``x`` and their packed products ``q``
are written once into ``f = [q; x; 1]`` (rows on the contiguous axis), every component's
log-density is ``A @ f``, the responsibilities are a max-shifted softmax, and every component's
weight, first and second moments about the mixture mean are summed as ``R @ fᵀ``. The two
products are register-blocked loops that LLVM vectorises over rows, which beats BLAS on these
K × F by F × n shapes and reads each tile while it is still in cache.

Floating-point flags are scoped: only the loop that sums products over rows (the moments)
allows reassociation, so that LLVM may keep lane-wise partial sums as BLAS does; ``contract``
lets ``a * b + c`` become a fused multiply-add (one rounding instead of two). Nothing assumes
finite values: rows whose log-densities are all −inf or NaN come out as in the NumPy path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import numba
import numpy as np
from numpy.typing import NDArray

from gmm_dask.mixture.arrays import FloatArray, Int64Array
from gmm_dask.mixture.blocks import K_STEP, P_STEP

if TYPE_CHECKING:
    from numba.core.dispatcher import Dispatcher

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: float64, or float32 where the kernel forms the products and log-densities in float32.
Floats = NDArray[np.float64] | NDArray[np.float32]

_FLAGS = {"contract"}
_SUM_FLAGS = {"contract", "reassoc"}


def _jit(fastmath: set[str] = _FLAGS) -> Callable[[Callable[P, T]], Dispatcher[Callable[P, T]]]:
    """numba.njit with the kernel's options: cached machine code, the GIL released, NumPy's
    float semantics (x / 0 is ±inf or NaN, no exception). Where no cache directory is writable
    (neither ``__pycache__`` here nor numba's user-wide one) numba refuses ``cache=True``; the
    kernel then compiles in memory in each process instead."""

    def decorate(fn: Callable[P, T]) -> Dispatcher[Callable[P, T]]:
        # The annotations of the kernels are for readers and mypy: numba ignores them and
        # compiles for the argument types it is called with.
        try:
            return numba.njit(cache=True, nogil=True, fastmath=fastmath, error_model="numpy")(fn)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available"
            logger.debug("numba cache unavailable (%s); compiling %s in memory", exc, fn.__name__)
            return numba.njit(cache=False, nogil=True, fastmath=fastmath, error_model="numpy")(fn)

    return decorate


# exp(x) for x in [_EXP_LO, 0] comes from the vectorised polynomial below and is 0 below
# _EXP_ZERO (also −inf), where libm's exp is 0 too (it underflows below −745.14); the rest (NaN,
# x > 0 when a row's maximum is not finite, subnormal results) goes through libm.
_EXP_LO = -708.0
_EXP_ZERO = -746.0
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # low 21 bits zero: n·_LN2_HI is exact for |n| < 2²¹
_LN2_LO = 1.90821492927058770002e-10
_MAGIC = 6755399441055744.0  # 1.5·2⁵²: x + _MAGIC rounds x to an integer held in the low bits


@_jit()
def _exp_reduced(x: float) -> float:
    """exp(x) for x in [_EXP_LO, 0], branch-free and vectorisable (callers select another value
    outside that range: there the result is meaningless); within 0.84 ulp of the exact value
    (libm's exp: 0.51), measured against extended precision over 2·10⁶ arguments.

    exp(x) = 2ⁿ·exp(r) with n = round(x/ln 2) and r = x − n·ln 2 reduced in two steps (Cody &
    Waite), |r| ≤ ln2/2; exp(r) is its Taylor polynomial of degree 13 (truncation < 1e-17
    relative) and 2ⁿ is assembled from the low bits of x/ln2 + 1.5·2⁵², which hold n.
    """
    t = x * _LOG2E + _MAGIC
    k = t - _MAGIC
    r = x - k * _LN2_HI
    r = r - k * _LN2_LO
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    scale = np.int64((np.float64(t).view(np.int64) + 1023) << 52).view(np.float64)  # 2ⁿ, n ≥ −1022
    return p * scale


_LG1, _LG2, _LG3 = 6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01
_LG4, _LG5 = 2.222219843214978396e-01, 1.818357216161805012e-01
_LG6, _LG7 = 1.531383769920937332e-01, 1.479819860511658591e-01
_TWO54 = 18014398509481984.0
_DBL_MIN = 2.2250738585072014e-308


@_jit()
def _log_reduced(x: float) -> float:
    """log(x) for finite x > 0 (subnormals included), branch-free and vectorisable (callers
    select another value elsewhere: there the result is meaningless); within 1 ulp of libm's
    log, measured over 10⁷ arguments (musl's log, on the 64-bit word).

    x = 2ᵏ·m with m in [√2/2, √2); log m = f − ½f² + s·(½f² + R(s²)), f = m − 1, s = f/(2 + f),
    R the minimax polynomial of degree 7 in s² (fdlibm's Lg1 … Lg7).
    """
    sub = x < _DBL_MIN
    x = x * _TWO54 if sub else x
    hx = np.float64(x).view(np.int64) + np.int64(0x95F6200000000)  # (0x3ff00000 − 0x3fe6a09e) << 32
    k = ((hx & np.int64(0x7FF0000000000000)) >> 52) - (1077 if sub else 1023)
    m = np.int64((hx & np.int64(0x000FFFFFFFFFFFFF)) + np.int64(0x3FE6A09E00000000)).view(np.float64)
    f = m - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    dk = np.float64(k)
    return s * (hfsq + t2 + t1) + dk * _LN2_LO - hfsq + f + dk * _LN2_HI


@_jit()
def exp_into(x: FloatArray, out: FloatArray) -> int:
    """out[:] = exp(x[:]) as the softmax computes it: vectorised within [_EXP_LO, 0], 0 below
    _EXP_ZERO, libm's exp elsewhere. Returns how many values took the libm path."""
    n = x.shape[0]
    n_slow = 0
    for i in range(n):
        v = x[i]
        ok = (v >= _EXP_LO) & (v <= 0.0)
        out[i] = _exp_reduced(v) if ok else 0.0
        n_slow += 0 if ok | (v < _EXP_ZERO) else 1
    if n_slow:
        for i in range(n):
            v = x[i]
            if not ((v >= _EXP_LO) & (v <= 0.0) | (v < _EXP_ZERO)):
                out[i] = math.exp(v)
    return n_slow


@_jit()
def _density(A: Floats, f: Floats, out: Floats, n: int, ia: Int64Array, ja: Int64Array) -> None:
    """out[k, :n] = Σ_p A[k, p]·f[p, :n] for all padded k (A: (Kp, Pp), both multiples of 4),
    writing the products f[p] = x_ia[p]·x_ja[p] (p < t) just before their first use.

    Four rows of f against four components at a time: the four rows are written here and read
    back from L1 by every component group, and each output row is read and written once per
    four rows of f.
    """
    kp, pp = A.shape
    t = ia.shape[0]
    for k in range(kp):
        out[k, :n] = 0.0
    for p in range(0, pp, 4):
        f0, f1, f2, f3 = f[p], f[p + 1], f[p + 2], f[p + 3]
        if p + 4 <= t:  # four products: one pass
            u0, u1, u2, u3 = f[t + ia[p]], f[t + ia[p + 1]], f[t + ia[p + 2]], f[t + ia[p + 3]]
            v0, v1, v2, v3 = f[t + ja[p]], f[t + ja[p + 1]], f[t + ja[p + 2]], f[t + ja[p + 3]]
            for i in range(n):
                f0[i] = u0[i] * v0[i]
                f1[i] = u1[i] * v1[i]
                f2[i] = u2[i] * v2[i]
                f3[i] = u3[i] * v3[i]
        else:
            for q in range(p, min(p + 4, t)):
                xi, xj, fq = f[t + ia[q]], f[t + ja[q]], f[q]
                for i in range(n):
                    fq[i] = xi[i] * xj[i]
        for k in range(0, kp, 4):
            a0, a1, a2, a3 = A[k, p], A[k, p + 1], A[k, p + 2], A[k, p + 3]
            b0, b1, b2, b3 = A[k + 1, p], A[k + 1, p + 1], A[k + 1, p + 2], A[k + 1, p + 3]
            c0, c1, c2, c3 = A[k + 2, p], A[k + 2, p + 1], A[k + 2, p + 2], A[k + 2, p + 3]
            e0, e1, e2, e3 = A[k + 3, p], A[k + 3, p + 1], A[k + 3, p + 2], A[k + 3, p + 3]
            o0, o1, o2, o3 = out[k], out[k + 1], out[k + 2], out[k + 3]
            for i in range(n):
                x0, x1, x2, x3 = f0[i], f1[i], f2[i], f3[i]
                o0[i] = o0[i] + a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
                o1[i] = o1[i] + b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3
                o2[i] = o2[i] + c0 * x0 + c1 * x1 + c2 * x2 + c3 * x3
                o3[i] = o3[i] + e0 * x0 + e1 * x1 + e2 * x2 + e3 * x3


@_jit(_SUM_FLAGS)
def _moments(R: FloatArray, f: Floats, S: FloatArray, n: int) -> None:
    """S[k, p] += Σ_i R[k, i]·f[p, i] over i < n (R: (Kp, ·), f: (Pp, ·), multiples of 4).

    Two rows of f at a time against four components: eight lane-wise sums in registers; the
    two rows stay in L1 while every component group reads them.
    """
    kp = R.shape[0]
    pp = f.shape[0]
    for p in range(0, pp, 2):
        f0, f1 = f[p], f[p + 1]
        for k in range(0, kp, 4):
            r0, r1, r2, r3 = R[k], R[k + 1], R[k + 2], R[k + 3]
            s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = 0.0
            for i in range(n):
                u, v = f0[i], f1[i]
                s00 += r0[i] * u
                s01 += r0[i] * v
                s10 += r1[i] * u
                s11 += r1[i] * v
                s20 += r2[i] * u
                s21 += r2[i] * v
                s30 += r3[i] * u
                s31 += r3[i] * v
            S[k, p] += s00
            S[k, p + 1] += s01
            S[k + 1, p] += s10
            S[k + 1, p + 1] += s11
            S[k + 2, p] += s20
            S[k + 2, p + 1] += s21
            S[k + 3, p] += s30
            S[k + 3, p + 1] += s31


@_jit()
def _centre(X: FloatArray, start: int, n: int, shift: FloatArray, t: int, f: Floats) -> None:
    """f[t + j, :n] = X[start:start + n, j] − shift[j] (the tile's features, transposed)."""
    d = X.shape[1]
    Xb = X[start : start + n]
    for j in range(d):
        fj, s = f[t + j], shift[j]
        for i in range(n):
            fj[i] = Xb[i, j] - s


@_jit()
def _softmax(
    L: Floats,
    R: FloatArray,
    k: int,
    n: int,
    amax: FloatArray,
    safe: FloatArray,
    tot: FloatArray,
    lpn: FloatArray,
) -> int:
    """Responsibilities R[:k, :n] and log p(x) ``lpn`` from log-densities L[:k, :n], as the
    NumPy path computes them (max-shifted, rows with no finite density zeroed). Returns the
    number of such rows."""
    for i in range(n):
        amax[i] = L[0, i]
    for c in range(1, k):
        lc = L[c]
        for i in range(n):
            v, m = lc[i], amax[i]
            amax[i] = v if (v > m) | (v != v) else m  # NaN sticks, as in np.max
    for i in range(n):
        m = amax[i]
        safe[i] = m if m - m == 0.0 else 0.0
    # R = exp(L − safe) and its column sums, one pass per component (libm for the few values
    # outside the polynomial's range, added in the same component order)
    for c in range(k):
        lc, rc = L[c], R[c]
        n_slow = 0
        for i in range(n):
            v = lc[i] - safe[i]
            ok = (v >= _EXP_LO) & (v <= 0.0)
            e = _exp_reduced(v) if ok else 0.0
            rc[i] = e
            tot[i] = e if c == 0 else tot[i] + e
            n_slow += 0 if ok | (v < _EXP_ZERO) else 1
        if n_slow:
            for i in range(n):
                v = lc[i] - safe[i]
                if not ((v >= _EXP_LO) & (v <= 0.0) | (v < _EXP_ZERO)):
                    rc[i] = math.exp(v)
                    tot[i] += rc[i]  # tot held the other components' sum plus 0
    for i in range(n):
        lpn[i] = math.log(tot[i]) + safe[i]
    for i in range(n):
        tot[i] = 1.0 / tot[i]  # one division per row, then products (≤ 1 ulp from r / tot)
    for c in range(k):
        rc = R[c]
        for i in range(n):
            rc[i] = rc[i] * tot[i]
    n_bad = 0
    for i in range(n):
        v = lpn[i]
        if v - v != 0.0:
            n_bad += 1
            for c in range(k):
                R[c, i] = 0.0
            m = amax[i]
            if m - m != 0.0:
                lpn[i] = m
    return n_bad


@_jit()
def estep_tiles(
    X: FloatArray, w: FloatArray, weighted: bool, shift: FloatArray, A: Floats, ia: Int64Array, ja: Int64Array,
    k: int, tile: int, tiles_per_group: int, hard: bool, scores: FloatArray, S: FloatArray, hard_nk: FloatArray,
) -> float:  # fmt: skip
    """The E-step of one partition over tiles of ``tile`` rows.

    Parameters
    ----------
    X : (n, D) C-contiguous float64
    w : (n,) float64 sample weights (read only when ``weighted``)
    shift : (D,) the mixture mean (the features are centred at it)
    A : (Kp, Pp) log-density coefficients against f = [q; x; 1; 0…] (zero padding rows);
        float64, or float32 to form f and A @ f in float32 (the rest stays float64)
    ia, ja : (t,) int64, the packed products' feature pairs
    k : the number of real components (≤ Kp)
    scores : (n,) out, log p(x) of each row
    S : (groups, Kp, Pp) out, zeroed: Σ r·f of each group of ``tiles_per_group`` tiles
    hard_nk : (k,) out, zeroed: Σ w over rows whose most probable component is c (if ``hard``)

    Returns
    -------
    loglik : Σ w·log p(x) over rows with a finite score
    """
    n_total, d = X.shape
    kp, pp = A.shape
    t = ia.shape[0]
    f = np.zeros((pp, tile), dtype=A.dtype)
    f[t + d] = 1.0
    L = np.zeros((kp, tile), dtype=A.dtype)
    R = np.zeros((kp, tile))
    amax = np.empty(tile)
    safe = np.empty(tile)
    tot = np.empty(tile)
    lpn = np.empty(tile)
    loglik = 0.0
    for ti, start in enumerate(range(0, n_total, tile)):
        n = min(tile, n_total - start)
        _centre(X, start, n, shift, t, f)
        _density(A, f, L, n, ia, ja)
        n_bad = _softmax(L, R, k, n, amax, safe, tot, lpn)
        if hard:
            for i in range(n):
                best = 0
                top = R[0, i]
                for c in range(1, k):
                    if R[c, i] > top:
                        top = R[c, i]
                        best = c
                v = lpn[i]
                if v - v == 0.0:
                    hard_nk[best] += w[start + i] if weighted else 1.0
        if weighted:
            for c in range(k):
                rc = R[c]
                for i in range(n):
                    rc[i] = rc[i] * w[start + i]
        part = 0.0
        if n_bad:
            for i in range(n):
                v = lpn[i]
                if v - v == 0.0:
                    part += w[start + i] * v if weighted else v
        elif weighted:
            for i in range(n):
                part += w[start + i] * lpn[i]
        else:
            for i in range(n):
                part += lpn[i]
        loglik += part
        for i in range(n):
            scores[start + i] = lpn[i]
        if n_bad:  # their r is 0, but 0·inf would still be NaN: they contribute nothing
            for i in range(n):
                v = lpn[i]
                if v - v != 0.0:
                    for p in range(t + d):
                        f[p, i] = 0.0
        _moments(R, f, S[ti // tiles_per_group], n)
    return loglik


def warm_up() -> float:
    """Load (or compile) the kernel now, on a few rows; returns the seconds it took.

    A process pays this once, on its first E-step (about 1.5 s from numba's cache, 5 s to
    compile); call it where that should not count, e.g. in each worker before a timed fit.
    """
    import time

    t0 = time.perf_counter()
    d, k = 2, 1
    X = np.zeros((3, d))
    A = np.zeros((K_STEP, P_STEP * 2))
    ia, ja = np.triu_indices(d)
    S = np.zeros((1, K_STEP, P_STEP * 2))
    estep_tiles(
        X, np.empty(0), False, np.zeros(d), A, ia.astype(np.int64), ja.astype(np.int64), k,
        256, 1, True, np.empty(3), S, np.zeros(k),
    )  # fmt: skip
    return time.perf_counter() - t0
