"""The compiled E-step of the behaviour family (numba): one pass over the rows of a partition.

Per row: encode each feature (a count's bin or censoring value and tail excess, a binary's cell,
an amount's zero cell and (log parent, log x), a continuous value), add every component's
log-density term, a max-shifted softmax, then scatter the responsibilities into the table of
categorical cells, the tail excesses, the censoring table and the Gaussian terms' moments. The
component axis is innermost everywhere, so each feature costs a few K-wide vector operations.

Gaussian-term moments are summed about a per-block shift (the block's first value, so an offset
costs nothing) and turned into centred moments per block afterwards (``family.py``), then merged
exactly. All arithmetic is float64; ``exp`` is the vectorisable one of the Gaussian kernel.

Arrays the kernels read (see :class:`~.structure.Layout`):

``lay`` — counts, count_off, count_nbins, count_open, count_cap, count_cens_off, bin_of,
bin_of_off, binaries, binary_off, terms, term_parent, term_zero_off (int64).
``par`` — logw (K,), ltab (T, K) log value of each table cell (closed count bins: log θ − log
width; open bin: log θ + log(1 − q)), lcens (Tc, K) log P(Y ≥ v), lq (C, K) log q, lopen (C, K)
log θ of the open bin, ta, tb, tinv, tconst (G, K) term mean a + b·u, 1/var, −½ log(2π var).
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
#: Arrays of the layout, of the parameters and the accumulators (S, CS, EX, CT, MOM), in the
#: order of the module docstring.
Lay = tuple[I64, ...]
Par = tuple[F64, ...]
Acc = tuple[F64, ...]

_EXP_LO = -708.0


def _jit(fn: Callable[P, T]) -> Dispatcher[Callable[P, T]]:
    """numba.njit with cached machine code, the GIL released and NumPy's float semantics (in
    memory where no cache directory is writable). numba ignores the annotations."""
    try:
        return numba.njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")(fn)
    except RuntimeError as exc:  # "cannot cache function ...: no locator available"
        logger.debug("numba cache unavailable (%s); compiling %s in memory", exc, fn.__name__)
        return numba.njit(cache=False, nogil=True, fastmath={"contract"}, error_model="numpy")(fn)


@_jit
def _encode_row(
    X: F64, i: int, lay: Lay, censor: bool, cidx: I64, ccode: I64, cexc: F64, bidx: I64, tz: I64,
    tu: F64, tv: F64, tpos: Bools,
) -> bool:  # fmt: skip
    """Encode row i; returns False when a value is invalid (NaN, inf, negative count/amount).

    ccode per count: 0 observed (table row cidx, excess cexc over the open edge), 1 censored
    below the open edge (censoring row cidx), 2 censored in the tail (excess cexc).
    """
    counts, count_off, count_nbins, count_open, count_cap, count_cens_off = lay[:6]
    bin_of, bin_of_off, binaries, binary_off, terms, term_parent, term_zero_off = lay[6:]
    for c in range(counts.shape[0]):
        x = X[i, counts[c]]
        if not (x >= 0.0 and x < np.inf):
            return False
        top = count_open[c]
        cap = count_cap[c]
        if censor and cap >= 0 and x >= X[i, cap]:
            if x < top:
                ccode[c] = 1
                cidx[c] = count_cens_off[c] + np.int64(x)
                cexc[c] = 0.0
            else:
                ccode[c] = 2
                cexc[c] = x - top
        else:
            ccode[c] = 0
            if x < top:
                cidx[c] = count_off[c] + bin_of[bin_of_off[c] + np.int64(x)]
                cexc[c] = 0.0
            else:
                cidx[c] = count_off[c] + count_nbins[c] - 1
                cexc[c] = x - top
    for b in range(binaries.shape[0]):
        x = X[i, binaries[b]]
        if x != x:
            return False
        bidx[b] = binary_off[b] + (1 if x > 0.5 else 0)
    for g in range(terms.shape[0]):
        x = X[i, terms[g]]
        if not (abs(x) < np.inf):
            return False
        if term_zero_off[g] < 0:  # continuous
            tu[g], tv[g], tpos[g], tz[g] = 0.0, x, True, -1
            continue
        if x < 0.0:
            return False
        p = term_parent[g]
        pv = X[i, p] if p >= 0 else 1.0
        pzero = 0 if pv > 0.0 else 1
        tz[g] = term_zero_off[g] + 2 * pzero + (1 if x == 0.0 else 0)
        tpos[g] = x > 0.0
        tv[g] = math.log(x) if x > 0.0 else 0.0
        tu[g] = math.log(pv) if pzero == 0 else 0.0
    return True


@_jit
def _row_logp(
    k: int, par: Par, lay: Lay, cidx: I64, ccode: I64, cexc: F64, bidx: I64, tz: I64, tu: F64, tv: F64,
    tpos: Bools, L: F64,
) -> None:  # fmt: skip
    """L[:k] = log w + Σ features' log p(x | component)."""
    logw, ltab, lcens, lq, lopen, ta, tb, tinv, tconst = par
    term_zero_off = lay[12]
    for c in range(k):
        L[c] = logw[c]
    for j in range(ccode.shape[0]):
        row, code, e = cidx[j], ccode[j], cexc[j]
        if code == 0:
            for c in range(k):
                L[c] += ltab[row, c] + e * lq[j, c]
        elif code == 1:
            for c in range(k):
                L[c] += lcens[row, c]
        else:
            for c in range(k):
                L[c] += lopen[j, c] + e * lq[j, c]
    for b in range(bidx.shape[0]):
        row = bidx[b]
        for c in range(k):
            L[c] += ltab[row, c]
    for g in range(tpos.shape[0]):
        if tz[g] >= 0:
            row = tz[g]
            for c in range(k):
                L[c] += ltab[row, c]
        if tpos[g]:
            u, v = tu[g], tv[g]
            jac = v if term_zero_off[g] >= 0 else 0.0
            for c in range(k):
                res = v - ta[g, c] - tb[g, c] * u
                L[c] += tconst[g, c] - 0.5 * res * res * tinv[g, c] - jac


@_jit
def _softmax_row(L: F64, r: F64, k: int) -> float:
    """r[:k] = softmax(L[:k]); returns log Σ exp L (NaN or ±inf when no finite maximum)."""
    m = L[0]
    for c in range(1, k):
        m = max(m, L[c])
    if not (abs(m) < np.inf):
        return float(m) if m == m else np.nan
    tot = 0.0
    for c in range(k):
        v = L[c] - m
        e = _exp_reduced(v) if v >= _EXP_LO else 0.0
        r[c] = e
        tot += e
    inv = 1.0 / tot
    for c in range(k):
        r[c] *= inv
    return float(m + math.log(tot))


@_jit
def _scatter_row(
    r: F64, k: int, cidx: I64, ccode: I64, cexc: F64, bidx: I64, tz: I64, tu: F64, tv: F64, tpos: Bools,
    lay: Lay, acc: Acc, blk: int, shift: F64, shift_set: Bools,
) -> None:  # fmt: skip
    """Add one row's responsibilities r[:k] (already × its weight) to the accumulators."""
    count_off, count_nbins = lay[1], lay[2]
    S, CS, EX, CT, MOM = acc
    for j in range(ccode.shape[0]):
        code, row, e = ccode[j], cidx[j], cexc[j]
        if code == 1:
            for c in range(k):
                CS[row, c] += r[c]
            continue
        if code == 2:
            row = count_off[j] + count_nbins[j] - 1
            for c in range(k):
                CT[j, c] += r[c]
        for c in range(k):
            S[row, c] += r[c]
            EX[j, c] += r[c] * e
    for b in range(bidx.shape[0]):
        row = bidx[b]
        for c in range(k):
            S[row, c] += r[c]
    for g in range(tpos.shape[0]):
        if tz[g] >= 0:
            row = tz[g]
            for c in range(k):
                S[row, c] += r[c]
        if not tpos[g]:
            continue
        if not shift_set[blk, g]:
            shift[blk, g, 0], shift[blk, g, 1] = tu[g], tv[g]
            shift_set[blk, g] = True
        du, dv = tu[g] - shift[blk, g, 0], tv[g] - shift[blk, g, 1]
        m = MOM[blk, g]
        for c in range(k):
            rc = r[c]
            m[0, c] += rc
            m[1, c] += rc * du
            m[2, c] += rc * dv
            m[3, c] += rc * du * du
            m[4, c] += rc * du * dv
            m[5, c] += rc * dv * dv


@_jit
def estep(
    X: F64, w: F64, weighted: bool, resp: F64, given: bool, censor: bool, lay: Lay, par: Par, k: int, block_rows: int,
    hard: bool, scores: F64, acc: Acc, shift: F64, shift_set: Bools, nk: F64, hard_nk: F64,
) -> float:  # fmt: skip
    """E-step statistics of one partition (see the module docstring); returns Σ w·log p(x).

    With ``given`` the responsibilities are ``resp`` (n, k) instead, and the scores are 0.
    Without ``censor`` a capped count is read as observed at its value.
    """
    n = X.shape[0]
    nc, nb, ng = lay[0].shape[0], lay[8].shape[0], lay[10].shape[0]
    cidx = np.zeros(nc, np.int64)
    ccode = np.zeros(nc, np.int64)
    cexc = np.zeros(nc)
    bidx = np.zeros(nb, np.int64)
    tz = np.zeros(ng, np.int64)
    tu = np.zeros(ng)
    tv = np.zeros(ng)
    tpos = np.zeros(ng, np.bool_)
    L = np.zeros(k)
    r = np.zeros(k)
    loglik = 0.0
    for i in range(n):
        if not _encode_row(X, i, lay, censor, cidx, ccode, cexc, bidx, tz, tu, tv, tpos):
            scores[i] = np.nan
            continue
        wi = w[i] if weighted else 1.0
        if given:
            for c in range(k):
                r[c] = resp[i, c]
            lpn = 0.0
        else:
            _row_logp(k, par, lay, cidx, ccode, cexc, bidx, tz, tu, tv, tpos, L)
            lpn = _softmax_row(L, r, k)
            if not (abs(lpn) < np.inf):
                scores[i] = lpn
                continue
        scores[i] = lpn
        loglik += wi * lpn
        if hard:
            best = 0
            for c in range(1, k):
                if r[c] > r[best]:
                    best = c
            hard_nk[best] += wi
        if weighted:
            for c in range(k):
                r[c] *= wi
        for c in range(k):
            nk[c] += r[c]
        _scatter_row(
            r, k, cidx, ccode, cexc, bidx, tz, tu, tv, tpos, lay, acc, i // block_rows, shift, shift_set
        )
    return loglik


@_jit
def log_prob(X: F64, lay: Lay, par: Par, k: int, out: F64) -> None:
    """out[i, :k] = log w + log p(x_i | component); NaN rows where a value is invalid."""
    n = X.shape[0]
    nc, nb, ng = lay[0].shape[0], lay[8].shape[0], lay[10].shape[0]
    cidx = np.zeros(nc, np.int64)
    ccode = np.zeros(nc, np.int64)
    cexc = np.zeros(nc)
    bidx = np.zeros(nb, np.int64)
    tz = np.zeros(ng, np.int64)
    tu = np.zeros(ng)
    tv = np.zeros(ng)
    tpos = np.zeros(ng, np.bool_)
    L = np.zeros(k)
    for i in range(n):
        if _encode_row(X, i, lay, True, cidx, ccode, cexc, bidx, tz, tu, tv, tpos):
            _row_logp(k, par, lay, cidx, ccode, cexc, bidx, tz, tu, tv, tpos, L)
            for c in range(k):
                out[i, c] = L[c]
        else:
            for c in range(k):
                out[i, c] = np.nan
