"""The compiled E-step of the behaviour family (numba): one pass over a partition, in tiles.

Per tile of rows: (1) encode each row once — every count, binary and amount-zero cell becomes
one row index into a single log-value table (a count's closed bin, its open bin, its censoring
value or its censored tail; see below), plus a count's excess over its open edge and each
Gaussian term's (u, v, x > 0) — one feature at a time, rows innermost, the logs of amounts and
their parents in loops of their own (:func:`~gmm_dask.mixture._kernels._log_reduced`, which
LLVM vectorises; libm's log is a call per value); (2) the log-densities: the table lookups row
by row, each adding a short run of adjacent values (the table's component axis is contiguous),
the rare tail excess only where it is non-zero, then per component with rows innermost the
Gaussian terms' few FMAs; (3) a max-shifted softmax with the Gaussian kernel's vectorisable
``exp`` (and the vectorised log for log Σ); (4) the statistics: responsibilities scattered
into the table rows row by row (component axis contiguous), tail excesses and the Gaussian
terms' moments summed over rows.

A count with a zero parent has a copy of its bins in the extended table, each the bin's value
plus log P(x > 0 | parent = 0) − log(1 − θ₀) (the histogram's positive part renormalised):
where the parent is 0 its one lookup reads link cell 1, log P(x = 0 | parent = 0), if x = 0,
else its bin in the copy; where the parent is > 0, its bin (link cell 0 is log 1). ``estep.py``
folds the copy's sums back into the bins and the three link cells.

The extended table has ``n_table`` cells (count bins, binary cells, amount zero cells, count
zero-link cells), then ``n_cens`` censoring values (P(Y ≥ v) of capped counts, v below the
open edge), then one censored-tail row per count (log θ of the open bin; the excess adds
(x − open)·log q), then the zero-parented counts' copies. So every lookup is
``T[idx, k] + excess·log q``, and its statistic is one scatter and one sum.

Gaussian-term moments are summed about a per-block shift (the block's first value) and centred
per block afterwards (``estep.py``), then merged exactly. All arithmetic is float64.

``lay`` (int64): counts, count_off, count_nbins, count_open, count_cap, count_cens (extended
row of v = 0, −1), count_tail (extended row), bin_of, bin_of_off, binaries, binary_off, terms,
term_parent, term_zero_off, count_zpar (zero parent's feature, −1), count_zoff (first link
cell, −1), count_zcopy (extended row of its copy's first bin, −1). ``par``: logw (K,), T (rows,
K) log values, lq (C, K) log q, ta, tb, tinv, tconst (G, K): a + b·u is a term's mean, 1/var,
−½ log(2π var).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import numpy as np
from numpy.typing import NDArray

from gmm_dask.mixture._kernels import _FLAGS, _SUM_FLAGS, _centre, _exp_reduced, _log_reduced, _moments
from gmm_dask.mixture._kernels import _jit as _kernel_jit

if TYPE_CHECKING:
    from numba.core.dispatcher import Dispatcher


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
    """The engine's kernel decorator (:func:`gmm_dask.mixture._kernels._jit`: cached machine
    code, the GIL released, NumPy's float semantics); ``sums`` lets LLVM reassociate (lane-wise
    partial sums)."""
    return _kernel_jit(_SUM_FLAGS if sums else _FLAGS)


@_jit()
def _tile_buffers(lay: Lay) -> tuple[I64, F64, F64, F64, F64, Bools]:
    """The buffers :func:`_encode` fills for one tile of :data:`TILE` rows: table lookups (as it
    lays them out), count excesses, the Gaussian terms' two coordinates and positions, and each
    row's validity."""
    nlook = lay[0].shape[0] + lay[9].shape[0] + lay[11].shape[0] - np.sum(lay[13] < 0)
    nc, ng = lay[0].shape[0], lay[11].shape[0]
    idx = np.zeros((nlook, TILE), np.int64)
    exc, U, V, pos = np.zeros((nc, TILE)), np.zeros((ng, TILE)), np.zeros((ng, TILE)), np.zeros((ng, TILE))
    return idx, exc, U, V, pos, np.ones(TILE, np.bool_)


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
    is invalid (NaN, inf, a negative count or amount), whose other outputs are then harmless
    (in-range rows, finite values). One feature at a time, rows innermost, with selects
    rather than branches, so that the loops vectorise."""
    counts, binaries, binary_off = lay[0], lay[9], lay[10]
    nc, nb = counts.shape[0], binaries.shape[0]
    for i in range(n):
        ok[i] = True
    for c in range(nc):
        _encode_count(X, start, n, lay, c, censor, idx[c], exc[c], ok)
        if lay[15][c] >= 0:
            _encode_link(X, start, n, lay, c, idx[c])
    for b in range(nb):
        j, o, row = binaries[b], binary_off[b], idx[nc + b]
        for i in range(n):
            x = X[start + i, j]
            ok[i] &= x == x
            row[i] = o + (1 if x > 0.5 else 0)
    for g in range(lay[11].shape[0]):
        _encode_term(X, start, n, lay, g, idx[nc + nb + g], U[g], V[g], pos[g], ok)


@_jit()
def _encode_count(
    X: F64, start: int, n: int, lay: Lay, c: int, censor: bool, row: I64, exc: F64, ok: Bools
) -> None:
    """Count c: its table row (closed bin, open bin, censoring value, censored tail) and excess."""
    j, off, top = lay[0][c], lay[1][c], lay[1][c] + lay[2][c] - 1
    opn, cap, cens, tail = lay[3][c], lay[4][c], lay[5][c], lay[6][c]
    bin_of = lay[7][lay[8][c] :]
    capped = censor and cap >= 0
    fopen = np.float64(opn)
    for i in range(n):
        exc[i] = X[start + i, j]  # x, until the last loop
    if capped:
        for i in range(n):
            row[i] = 1 if exc[i] >= X[start + i, cap] else 0  # at its cap, until the last loop
    for i in range(n):
        x = exc[i]
        valid = (x >= 0.0) & (x < np.inf)
        ok[i] &= valid
        below = valid & (x < fopen)
        xi = np.int64(x if below else 0.0)  # a select, then the conversion: no branch
        e = x - fopen if valid & ~below else 0.0
        r = off + bin_of[xi] if below else (top if valid else off)
        if capped:
            r = (cens + xi if below else tail) if valid & (row[i] == 1) else r
        row[i], exc[i] = r, e


@_jit()
def _encode_link(X: F64, start: int, n: int, lay: Lay, c: int, row: I64) -> None:
    """Count c with a zero parent: where the parent is 0, its row becomes link cell 1 (x = 0) or
    the same bin in its parent-zero copy (x > 0)."""
    p, zo, j, shift = lay[14][c], lay[15][c], lay[0][c], lay[16][c] - lay[1][c]
    for i in range(n):  # a zero-parented count is never capped: its row is one of its bins
        pz, xz = X[start + i, p] == 0.0, X[start + i, j] == 0.0
        row[i] = (zo + 1 if xz else row[i] + shift) if pz else row[i]


@_jit()
def _encode_term(
    X: F64, start: int, n: int, lay: Lay, g: int, zrow: I64, U: F64, V: F64, pos: F64, ok: Bools
) -> None:
    """Gaussian term g: an amount's zero cell, (log parent, log x, x > 0); a continuous
    feature's (0, x, 1)."""
    j, p, zoff = lay[11][g], lay[12][g], lay[13][g]
    if zoff < 0:  # continuous
        for i in range(n):
            x = X[start + i, j]
            valid = abs(x) < np.inf
            ok[i] &= valid
            U[i], V[i], pos[i] = 0.0, x if valid else 0.0, 1.0
        return
    for i in range(n):  # copies first: the loop below then reads and writes contiguous rows
        V[i] = X[start + i, j]
        U[i] = X[start + i, p] if p >= 0 else 1.0
    for i in range(n):
        x, pv = V[i], U[i]
        valid = (x >= 0.0) & (x < np.inf)
        ok[i] &= valid
        xpos = valid & (x > 0.0)
        ppos = (pv > 0.0) & (pv < np.inf)
        zrow[i] = zoff + (0 if pv > 0.0 else 2) + (1 if x == 0.0 else 0)
        pos[i] = 1.0 if xpos else 0.0
        V[i] = x if xpos else 1.0
        U[i] = pv if ppos else 1.0
    _log_inplace(V, n)
    _log_inplace(U, n)


@_jit()
def _log_inplace(a: F64, n: int) -> None:
    """a[:n] = log a[:n] (finite, > 0) — a loop of its own, which LLVM vectorises."""
    for i in range(n):
        a[i] = _log_reduced(a[i])


@_jit()
def _densities(
    k: int, n: int, par: Par, lay: Lay, idx: I64, exc: F64, U: F64, V: F64, pos: F64, L: F64, Lt: F64
) -> None:
    """L[c, :n] = log w_c + Σ features' log p(x | c). The table lookups row by row into Lt
    (rows, components): each reads a short run of adjacent values (the table's component
    axis is contiguous); then per component, rows innermost, the Gaussian terms."""
    logw, tab, lq, ta, tb, tinv, tconst = par
    nc, ng = lay[0].shape[0], lay[11].shape[0]
    nlook = idx.shape[0]
    jac = lay[13]
    for i in range(n):
        for c in range(k):
            Lt[i, c] = logw[c]
        for f in range(nlook):
            t = idx[f, i]
            for c in range(k):
                Lt[i, c] += tab[t, c]
        for f in range(nc):
            e = exc[f, i]
            if e != 0.0:  # rare: only counts in their open bin have an excess
                for c in range(k):
                    Lt[i, c] += e * lq[f, c]
    for c in range(k):
        Lc = L[c]
        for i in range(n):
            Lc[i] = Lt[i, c]
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
        t = tot[i]
        lpn[i] = amax[i] + _log_reduced(t if t >= 1.0 else 1.0)  # t ≥ 1 unless amax is NaN
        tot[i] = 1.0 / tot[i]
    for c in range(k):
        rc = R[c]
        for i in range(n):
            rc[i] = rc[i] * tot[i]


@_jit()
def _scatter(R: F64, k: int, n: int, idx: I64, S: F64, Rt: F64) -> None:
    """S[idx[f, i], :] += R[:, i] for every lookup f (component axis contiguous in S), row by
    row (a row's lookups hit different table rows, so their updates overlap)."""
    for c in range(k):
        for i in range(n):
            Rt[i, c] = R[c, i]
    for i in range(n):
        for f in range(idx.shape[0]):
            t = idx[f, i]
            for c in range(k):
                S[t, c] += Rt[i, c]


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
def _weigh(
    R: F64,
    k: int,
    n: int,
    start: int,
    w: F64,
    weighted: bool,
    ok: Bools,
    lpn: F64,
    scores: F64,
    wv: F64,
    bad: I64,
) -> float:
    """Scores of the tile's rows, their weights wv (0 where the score is not finite: the row
    contributes nothing), R weighted; returns Σ w·score; counts the bad rows into ``bad``."""
    t = 0.0
    nbad = 0
    for i in range(n):
        v = lpn[i] if ok[i] else np.nan
        scores[start + i] = v
        fin = abs(v) < np.inf
        wi = w[start + i] if weighted else 1.0
        wv[i] = wi if fin else 0.0
        t += wi * v if fin else 0.0
        nbad += 0 if fin else 1
    if nbad:
        if bad[1] < 0:
            for i in range(n):
                if wv[i] == 0.0 and not (abs(scores[start + i]) < np.inf):
                    bad[1] = start + i
                    break
        bad[0] += nbad
    if weighted or nbad:
        for c in range(k):
            for i in range(n):
                R[c, i] = R[c, i] * wv[i] if wv[i] != 0.0 else 0.0
    return t


@_jit()
def _hard(R: F64, k: int, n: int, wv: F64, hard_nk: F64) -> None:
    """hard_nk[most probable component of each row] += its weight (rows with weight 0 add 0)."""
    for i in range(n):
        best = 0
        for c in range(1, k):
            if R[c, i] > R[best, i]:
                best = c
        hard_nk[best] += wv[i]


@_jit()
def estep(
    X: F64, w: F64, weighted: bool, resp: F64, given: bool, censor: bool, lay: Lay, par: Par, k: int,
    block_rows: int, hard: bool, scores: F64, S: F64, EX: F64, MOM: F64, shift: F64, nk: F64, hard_nk: F64,
    bad: I64,
) -> float:  # fmt: skip
    """E-step statistics of one partition; returns Σ w·log p(x) over rows with a finite score.

    With ``given`` the responsibilities are ``resp`` (n, k) instead (scores 0). Without
    ``censor`` a capped count is read as observed at its value. ``block_rows`` must be a
    multiple of :data:`TILE`. Outputs (zeroed): scores (n,), S (rows, K), EX (C, K),
    MOM (blocks, G, 6, K), shift (blocks, G, 2), nk (K,), hard_nk (K,), bad (2,): how many
    rows have no finite score and the first of them (−1).
    """
    n_total = X.shape[0]
    idx, exc, U, V, pos, ok = _tile_buffers(lay)
    L, R, Rt, Lt = (
        np.zeros((k, TILE)),
        np.zeros((k, TILE)),
        np.zeros((TILE, k)),
        np.zeros((TILE, k)),
    )
    amax, tot, lpn, wv = np.zeros(TILE), np.zeros(TILE), np.zeros(TILE), np.zeros(TILE)
    done = np.zeros(lay[11].shape[0], np.bool_)
    loglik = 0.0
    bad[0], bad[1] = 0, -1
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
            _densities(k, n, par, lay, idx, exc, U, V, pos, L, Lt)
            _softmax(L, R, k, n, amax, tot, lpn)
        loglik += _weigh(R, k, n, start, w, weighted, ok, lpn, scores, wv, bad)
        if hard:
            _hard(R, k, n, wv, hard_nk)
        _set_shift(n, U, V, pos, shift[blk], done)
        _scatter(R, k, n, idx, S, Rt)
        _sums(R, k, n, exc, EX, U, V, pos, shift[blk], MOM[blk], nk)
    return loglik


@_jit()
def log_prob(X: F64, lay: Lay, par: Par, k: int, out: F64) -> None:
    """out[i, :k] = log w + log p(x_i | component); NaN rows where a value is invalid."""
    n_total = X.shape[0]
    idx, exc, U, V, pos, ok = _tile_buffers(lay)
    L, Lt = np.zeros((k, TILE)), np.zeros((TILE, k))
    for start in range(0, n_total, TILE):
        n = min(TILE, n_total - start)
        _encode(X, start, n, lay, True, idx, exc, U, V, pos, ok)
        _densities(k, n, par, lay, idx, exc, U, V, pos, L, Lt)
        for i in range(n):
            for c in range(k):
                out[start + i, c] = L[c, i] if ok[i] else np.nan


@_jit()
def _products(f: F64, t: int, ia: I64, ja: I64, n: int) -> None:
    """f[p, :n] = f[t + ia[p], :n] · f[t + ja[p], :n]: the packed products of the centred rows."""
    for p in range(t):
        a, b, fp = f[t + ia[p]], f[t + ja[p]], f[p]
        for i in range(n):
            fp[i] = a[i] * b[i]


@_jit()
def summary(
    X: F64, Z: F64, w: F64, weighted: bool, lay: Lay, par: Par, k: int, block_rows: int, shift: F64,
    ia: I64, ja: I64, S: F64, bad: I64,
) -> None:  # fmt: skip
    """The components' Gaussian summary of one partition: with γ of the raw rows ``X`` (n, D)
    (as :func:`log_prob` and a softmax), per block of ``block_rows`` rows (a multiple of
    :data:`TILE`) S[block, c, :] += Σ w·γ_c·[q; z − shift; 1] over the block's rows of the
    model inputs ``Z`` (n, D'), q the products at the pairs ``(ia, ja)`` — the layout of the
    Gaussian kernel (:func:`gmm_dask.mixture._kernels._moments`: S is (blocks, Kp, Pp), zeroed,
    padded to its steps). Rows without a finite log p(x) add nothing; ``bad`` (2,): how many
    and the first of them (−1)."""
    n_total, d = Z.shape
    t = ia.shape[0]
    kp, pp = S.shape[1], S.shape[2]
    idx, exc, U, V, pos, ok = _tile_buffers(lay)
    L, R, Lt = np.zeros((k, TILE)), np.zeros((kp, TILE)), np.zeros((TILE, k))
    amax, tot, lpn = np.zeros(TILE), np.zeros(TILE), np.zeros(TILE)
    f = np.zeros((pp, TILE))
    f[t + d] = 1.0
    bad[0], bad[1] = 0, -1
    for start in range(0, n_total, TILE):
        n = min(TILE, n_total - start)
        _encode(X, start, n, lay, True, idx, exc, U, V, pos, ok)
        _densities(k, n, par, lay, idx, exc, U, V, pos, L, Lt)
        _softmax(L, R, k, n, amax, tot, lpn)
        _centre(Z, start, n, shift, t, f)
        _products(f, t, ia, ja, n)
        for i in range(n):
            fine = ok[i] and abs(lpn[i]) < np.inf
            wi = (w[start + i] if weighted else 1.0) if fine else 0.0
            if not fine:
                bad[0] += 1
                if bad[1] < 0:
                    bad[1] = start + i
                for p in range(t + d):  # 0·NaN would still be NaN
                    f[p, i] = 0.0
            for c in range(k):
                R[c, i] = R[c, i] * wi if fine else 0.0
        _moments(R, f, S[start // block_rows], n)
