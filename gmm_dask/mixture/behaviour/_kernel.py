"""The compiled E-step of the behaviour family (numba): one pass over a partition, in tiles.

Per tile of rows: (1) encode each row once — every count, binary and amount-zero cell becomes
one row index into a single log-value table (a count's closed bin, its open bin, its censoring
value or its censored tail; see below), plus a count's excess over its open edge and each
Gaussian term's (u, v, x > 0); (2) every component's log-density, one component at a time with
rows innermost (a gather per table lookup, a few FMAs per Gaussian term — loops LLVM
vectorises); (3) a max-shifted softmax with the Gaussian kernel's vectorisable ``exp``;
(4) the statistics: responsibilities scattered into the table rows (component axis
contiguous), tail excesses and the Gaussian terms' moments summed over rows.

A count with a zero parent takes a second lookup into its three link cells (parent > 0:
log 1; parent = 0 and x = 0: log P(x = 0 | parent = 0), the first lookup then reads the first
link cell, log 1, instead of the zero bin; parent = 0 and x > 0: log P(x > 0 | parent = 0) −
log(1 − θ₀), the histogram's positive part renormalised), after the amounts' zero lookups.

The extended table has ``n_table`` cells (count bins, binary cells, amount zero cells, count
zero-link cells), then
``n_cens`` censoring values (P(Y ≥ v) of capped counts, v below the open edge), then one
censored-tail row per count (log θ of the open bin; the excess adds (x − open)·log q). So every
lookup is ``T[k, idx] + excess·log q``, and its statistic is one scatter and one sum.

Gaussian-term moments are summed about a per-block shift (the block's first value) and centred
per block afterwards (``estep.py``), then merged exactly. All arithmetic is float64.

``lay`` (int64): counts, count_off, count_nbins, count_open, count_cap, count_cens (extended
row of v = 0, −1), count_tail (extended row), bin_of, bin_of_off, binaries, binary_off, terms,
term_parent, term_zero_off, count_zpar (zero parent's feature, −1), count_zoff (first link
cell, −1). ``par``: logw (K,), T (K, rows) log values, lq (C, K) log q, ta, tb,
tinv, tconst (G, K): a + b·u is a term's mean, 1/var, −½ log(2π var).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import numba
import numpy as np
from numpy.typing import NDArray

from gmm_dask.mixture._kernels import _exp_reduced

if TYPE_CHECKING:
    from numba.core.dispatcher import Dispatcher

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
Bools = NDArray[np.bool_]
Lay = tuple[I64, ...]
Par = tuple[F64, ...]

_EXP_LO = -708.0
TILE = 256


def _jit(sums: bool = False) -> Callable[[Callable[P, T]], Dispatcher[Callable[P, T]]]:
    """numba.njit with cached machine code, the GIL released and NumPy's float semantics (in
    memory where no cache directory is writable); ``sums`` lets LLVM reassociate (lane-wise
    partial sums). numba ignores the annotations."""
    flags = {"contract", "reassoc"} if sums else {"contract"}

    def decorate(fn: Callable[P, T]) -> Dispatcher[Callable[P, T]]:
        try:
            return numba.njit(cache=True, nogil=True, fastmath=flags, error_model="numpy")(fn)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available"
            logger.debug("numba cache unavailable (%s); compiling %s in memory", exc, fn.__name__)
            return numba.njit(cache=False, nogil=True, fastmath=flags, error_model="numpy")(fn)

    return decorate


@_jit()
def _encode(
    X: F64,
    start: int,
    n: int,
    lay: Lay,
    censor: bool,
    idx: I64,
    exc: F64,
    U: F64,
    V: F64,
    pos: F64,
    ok: Bools,
) -> None:
    """Encode rows start … start + n − 1 (see the module docstring); ok[i] False where a value
    is invalid (NaN, inf, a negative count or amount), whose other outputs are then harmless."""
    counts, count_off, count_nbins, count_open, count_cap, count_cens, count_tail = lay[:7]
    bin_of, bin_of_off, binaries, binary_off, terms, term_parent, term_zero_off = lay[7:14]
    count_zpar, count_zoff = lay[14], lay[15]
    nc, nb = counts.shape[0], binaries.shape[0]
    zbase = nc + nb
    for g in range(terms.shape[0]):
        if term_zero_off[g] >= 0:
            zbase += 1
    for i in range(n):
        r = start + i
        good = True
        z = zbase
        for c in range(nc):
            x = X[r, counts[c]]
            e, row = 0.0, count_off[c]
            if not (x >= 0.0 and x < np.inf):
                good = False
            elif censor and count_cap[c] >= 0 and x >= X[r, count_cap[c]]:
                if x < count_open[c]:
                    row = count_cens[c] + np.int64(x)
                else:
                    row, e = count_tail[c], x - count_open[c]
            elif x < count_open[c]:
                row = count_off[c] + bin_of[bin_of_off[c] + np.int64(x)]
            else:
                row, e = count_off[c] + count_nbins[c] - 1, x - count_open[c]
            zo = count_zoff[c]
            if zo >= 0:
                zrow = zo
                if X[r, count_zpar[c]] == 0.0:
                    if x == 0.0:
                        row, zrow = zo, zo + 1
                    else:
                        zrow = zo + 2
                idx[z, i] = zrow
                z += 1
            idx[c, i], exc[c, i] = row, e
        for b in range(nb):
            x = X[r, binaries[b]]
            good &= x == x
            idx[nc + b, i] = binary_off[b] + (1 if x > 0.5 else 0)
        for g in range(terms.shape[0]):
            x = X[r, terms[g]]
            if not (abs(x) < np.inf):
                good, x = False, 0.0
            if term_zero_off[g] < 0:  # continuous
                U[g, i], V[g, i], pos[g, i] = 0.0, x, 1.0
                continue
            if x < 0.0:
                good, x = False, 0.0
            p = term_parent[g]
            pv = X[r, p] if p >= 0 else 1.0
            pzero = 0 if pv > 0.0 else 1
            idx[nc + nb + g, i] = term_zero_off[g] + 2 * pzero + (1 if x == 0.0 else 0)
            pos[g, i] = 1.0 if x > 0.0 else 0.0
            V[g, i] = math.log(x) if x > 0.0 else 0.0
            U[g, i] = math.log(pv) if pzero == 0 else 0.0
        ok[i] = good


@_jit()
def _densities(
    k: int, n: int, par: Par, lay: Lay, idx: I64, exc: F64, U: F64, V: F64, pos: F64, L: F64
) -> None:
    """L[c, :n] = log w_c + Σ features' log p(x | c)."""
    logw, tab, lq, ta, tb, tinv, tconst = par
    nc, ng = lay[0].shape[0], lay[11].shape[0]
    nlook = idx.shape[0]
    jac = lay[13]
    for c in range(k):
        Lc, tc = L[c], tab[c]
        for i in range(n):
            Lc[i] = logw[c]
        for f in range(nlook):
            row = idx[f]
            if f < nc:
                q, e = lq[f, c], exc[f]
                for i in range(n):
                    Lc[i] += tc[row[i]] + e[i] * q
            else:
                for i in range(n):
                    Lc[i] += tc[row[i]]
        for g in range(ng):
            a, b, s, h = ta[g, c], tb[g, c], tinv[g, c], tconst[g, c]
            u, v, m = U[g], V[g], pos[g]
            amount = 1.0 if jac[g] >= 0 else 0.0
            for i in range(n):
                res = v[i] - a - b * u[i]
                Lc[i] += m[i] * (h - 0.5 * s * res * res - amount * v[i])


@_jit()
def _softmax(L: F64, R: F64, k: int, n: int, amax: F64, tot: F64, lpn: F64) -> None:
    """R[:k, :n] = softmax over components; lpn = log Σ exp L (NaN/−inf when no finite max)."""
    for i in range(n):
        amax[i] = L[0, i]
    for c in range(1, k):
        lc = L[c]
        for i in range(n):
            amax[i] = max(amax[i], lc[i])
    for i in range(n):
        tot[i] = 0.0
        if not (abs(amax[i]) < np.inf):
            amax[i] = np.nan
    for c in range(k):
        lc, rc = L[c], R[c]
        for i in range(n):
            v = lc[i] - amax[i]
            e = _exp_reduced(v)
            rc[i] = e if v >= _EXP_LO else 0.0
            tot[i] += rc[i]
    for i in range(n):
        lpn[i] = amax[i] + math.log(tot[i])
        tot[i] = 1.0 / tot[i]
    for c in range(k):
        rc = R[c]
        for i in range(n):
            rc[i] = rc[i] * tot[i]


@_jit()
def _scatter(R: F64, k: int, n: int, idx: I64, S: F64, Rt: F64) -> None:
    """S[idx[f, i], :] += R[:, i] for every lookup f (component axis contiguous in S)."""
    for c in range(k):
        rc = R[c]
        for i in range(n):
            Rt[i, c] = rc[i]
    for f in range(idx.shape[0]):
        row = idx[f]
        for i in range(n):
            s, r = S[row[i]], Rt[i]
            for c in range(k):
                s[c] += r[c]


@_jit(sums=True)
def _sums(
    R: F64, k: int, n: int, exc: F64, EX: F64, U: F64, V: F64, pos: F64, sh: F64, M: F64, nk: F64
) -> None:
    """nk, Σ r·excess per count, and Σ r·pos·{1, du, dv, du², du·dv, dv²} per Gaussian term
    (about the block shift ``sh`` (G, 2)) into M (G, 6, K)."""
    for c in range(k):
        rc = R[c]
        t = 0.0
        for i in range(n):
            t += rc[i]
        nk[c] += t
        for j in range(exc.shape[0]):
            e = exc[j]
            t = 0.0
            for i in range(n):
                t += rc[i] * e[i]
            EX[j, c] += t
        for g in range(U.shape[0]):
            u, v, m = U[g], V[g], pos[g]
            su, sv = sh[g, 0], sh[g, 1]
            s0 = s1 = s2 = s3 = s4 = s5 = 0.0
            for i in range(n):
                r = rc[i] * m[i]
                du, dv = u[i] - su, v[i] - sv
                s0 += r
                s1 += r * du
                s2 += r * dv
                s3 += r * du * du
                s4 += r * du * dv
                s5 += r * dv * dv
            M[g, 0, c] += s0
            M[g, 1, c] += s1
            M[g, 2, c] += s2
            M[g, 3, c] += s3
            M[g, 4, c] += s4
            M[g, 5, c] += s5


@_jit()
def _set_shift(n: int, U: F64, V: F64, pos: F64, sh: F64, done: Bools) -> None:
    """The block's shift of each Gaussian term: its first present (u, v)."""
    for g in range(U.shape[0]):
        if done[g]:
            continue
        for i in range(n):
            if pos[g, i] > 0.0:
                sh[g, 0], sh[g, 1], done[g] = U[g, i], V[g, i], True
                break


@_jit()
def estep(
    X: F64, w: F64, weighted: bool, resp: F64, given: bool, censor: bool, lay: Lay, par: Par, k: int,
    block_rows: int, hard: bool, scores: F64, S: F64, EX: F64, MOM: F64, shift: F64, nk: F64, hard_nk: F64,
) -> float:  # fmt: skip
    """E-step statistics of one partition; returns Σ w·log p(x) over rows with a finite score.

    With ``given`` the responsibilities are ``resp`` (n, k) instead (scores 0). Without
    ``censor`` a capped count is read as observed at its value. ``block_rows`` must be a
    multiple of :data:`TILE`. Outputs (zeroed): scores (n,), S (rows, K), EX (C, K),
    MOM (blocks, G, 6, K), shift (blocks, G, 2), nk (K,), hard_nk (K,).
    """
    n_total = X.shape[0]
    nlook = lay[0].shape[0] + lay[9].shape[0] + lay[11].shape[0] - np.sum(lay[13] < 0) + np.sum(lay[15] >= 0)
    nc, ng = lay[0].shape[0], lay[11].shape[0]
    idx = np.zeros((nlook, TILE), np.int64)
    exc, U, V, pos = np.zeros((nc, TILE)), np.zeros((ng, TILE)), np.zeros((ng, TILE)), np.zeros((ng, TILE))
    ok = np.ones(TILE, np.bool_)
    L, R, Rt = np.zeros((k, TILE)), np.zeros((k, TILE)), np.zeros((TILE, k))
    amax, tot, lpn = np.zeros(TILE), np.zeros(TILE), np.zeros(TILE)
    done = np.zeros(ng, np.bool_)
    loglik = 0.0
    for start in range(0, n_total, TILE):
        n = min(TILE, n_total - start)
        blk = start // block_rows
        if start % block_rows == 0:
            done[:] = False
        _encode(X, start, n, lay, censor, idx, exc, U, V, pos, ok)
        if given:
            for c in range(k):
                for i in range(n):
                    R[c, i] = resp[start + i, c]
                    lpn[i] = 0.0
        else:
            _densities(k, n, par, lay, idx, exc, U, V, pos, L)
            _softmax(L, R, k, n, amax, tot, lpn)
        for i in range(n):
            wi = w[start + i] if weighted else 1.0
            v = lpn[i] if ok[i] else np.nan
            scores[start + i] = v
            if not (abs(v) < np.inf):
                for c in range(k):
                    R[c, i] = 0.0  # the row contributes nothing
                continue
            loglik += wi * v
            if hard:
                best = 0
                for c in range(1, k):
                    if R[c, i] > R[best, i]:
                        best = c
                hard_nk[best] += wi
            for c in range(k):
                R[c, i] *= wi
        _set_shift(n, U, V, pos, shift[blk], done)
        _scatter(R, k, n, idx, S, Rt)
        _sums(R, k, n, exc, EX, U, V, pos, shift[blk], MOM[blk], nk)
    return loglik


@_jit()
def log_prob(X: F64, lay: Lay, par: Par, k: int, out: F64) -> None:
    """out[i, :k] = log w + log p(x_i | component); NaN rows where a value is invalid."""
    n_total = X.shape[0]
    nlook = lay[0].shape[0] + lay[9].shape[0] + lay[11].shape[0] - np.sum(lay[13] < 0) + np.sum(lay[15] >= 0)
    nc, ng = lay[0].shape[0], lay[11].shape[0]
    idx = np.zeros((nlook, TILE), np.int64)
    exc, U, V, pos = np.zeros((nc, TILE)), np.zeros((ng, TILE)), np.zeros((ng, TILE)), np.zeros((ng, TILE))
    ok = np.ones(TILE, np.bool_)
    L = np.zeros((k, TILE))
    for start in range(0, n_total, TILE):
        n = min(TILE, n_total - start)
        _encode(X, start, n, lay, True, idx, exc, U, V, pos, ok)
        _densities(k, n, par, lay, idx, exc, U, V, pos, L)
        for i in range(n):
            for c in range(k):
                out[start + i, c] = L[c, i] if ok[i] else np.nan
