"""The E-step of one partition: parameters → kernel tables, the compiled pass, its statistics.

:func:`chunk_stats` is what every EM iteration maps over the partitions; :func:`resp_stats`
forms the same statistics for given responsibilities (initialisation, re-seeding, supervised
fits). Censored (capped) counts are summed by censoring value in the kernel and turned into
expected bin occupancies here, under the current parameters, so the statistics stay plain sums.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from gmm_dask.mixture import aot
from gmm_dask.mixture.behaviour.structure import Layout, Structure, layout_of
from gmm_dask.mixture.behaviour.values import BehaviourParams, BehaviourStats
from gmm_dask.mixture.suffstats import SuffStats, _worst_rows, merge_moments

F64 = NDArray[np.float64]
LOG_2PI = float(np.log(2 * np.pi))
#: Rows whose Gaussian-term moments are summed about one shift before they are centred.
BLOCK_ROWS = 16384
#: Index pairs of the packed (uu, uv, vv) moments of a Gaussian term.
PAIRS: tuple[NDArray[np.intp], NDArray[np.intp]] = (np.array([0, 0, 1]), np.array([0, 1, 1]))

_Merge = Callable[
    [F64, F64, F64, F64, F64, F64, tuple[NDArray[np.intp], NDArray[np.intp]]], tuple[F64, F64, F64 | None]
]
_merge_moments: _Merge = merge_moments


def merge_terms(na: F64, ma: F64, m2a: F64, nb: F64, mb: F64, m2b: F64) -> tuple[F64, F64, F64]:
    """Weights (S), means (S + (2,)) and packed centred moments (S + (3,)) of the union of two
    disjoint sets of a Gaussian term's rows (:func:`~gmm_dask.mixture.suffstats.merge_moments`)."""
    n, mean, m2 = _merge_moments(na, ma, m2a, nb, mb, m2b, PAIRS)
    if m2 is None:  # pragma: no cover - merge_moments returns moments when given moments
        raise AssertionError("merge_moments dropped the moments")
    return n, mean, m2


def _copies(layout: Layout) -> tuple[NDArray[np.int64], int]:
    """Per count, the extended-table row of the first bin of its parent-zero copy (−1 without
    a zero parent), and the extended table's size (cells, censoring values, tails, copies)."""
    linked = layout.count_zoff >= 0
    size = np.where(linked, layout.count_nbins, 0)
    base = layout.n_table + layout.n_cens + len(layout.counts)
    return np.where(linked, base + np.cumsum(size) - size, -1).astype(np.int64), base + int(size.sum())


def _n_rows(layout: Layout) -> int:
    return _copies(layout)[1]


def _lay(layout: Layout) -> tuple[NDArray[np.int64], ...]:
    """The ``lay`` tuple of :mod:`._kernel` (censoring rows offset into the extended table)."""
    cens = np.where(layout.count_cens_off >= 0, layout.count_cens_off + layout.n_table, -1)
    tail = layout.n_table + layout.n_cens + np.arange(len(layout.counts), dtype=np.int64)
    arrays = (
        layout.counts, layout.count_off, layout.count_nbins, layout.count_open, layout.count_cap, cens, tail,
        layout.bin_of, layout.bin_of_off, layout.binaries, layout.binary_off,
        layout.terms, layout.term_parent, layout.term_zero_off, layout.count_zpar, layout.count_zoff,
        _copies(layout)[0],
    )  # fmt: skip
    return tuple(np.ascontiguousarray(a, dtype=np.int64) for a in arrays)


def _fold_copies(layout: Layout, S: F64) -> F64:
    """The kernel's sums (extended rows, K) → the table's: a zero-parented count's rows with
    parent 0 and x > 0 sit in its copy; they belong to its bins and to link cell 2, its rows
    with parent > 0 (in its bins) to link cell 0, which also counts the rows with parent 0 and
    x = 0 (link cell 1), as the statistics have it (see :class:`Layout`)."""
    copies, _ = _copies(layout)
    out = S[: layout.n_table + layout.n_cens + len(layout.counts)]
    for c, sl in enumerate(_count_slices(layout)):
        if copies[c] < 0:
            continue
        zo, copy = int(layout.count_zoff[c]), S[copies[c] : copies[c] + sl.stop - sl.start]
        out[zo] = out[zo + 1] + out[sl].sum(axis=0)
        out[zo + 2] = copy.sum(axis=0)
        out[sl] += copy
    return out


def _count_slices(layout: Layout) -> list[slice]:
    return [slice(int(o), int(o + b)) for o, b in zip(layout.count_off, layout.count_nbins, strict=True)]


def censoring(edges: tuple[int, ...], log_theta: F64, log_q: F64) -> tuple[F64, F64, F64]:
    """For censoring values v = 0 … open − 1 of a count with bins ``edges``: log P(Y ≥ v)
    (V, K), the expected bin occupancy of Y given Y ≥ v (V, B, K) and the expected tail excess
    E[(Y − open)·1{Y in the open bin} | Y ≥ v] (V, K). Mass is uniform within a closed bin."""
    e = np.asarray(edges, dtype=np.float64)
    nb, top = len(e), int(e[-1])
    theta = np.exp(log_theta)  # (B, K)
    v = np.arange(top, dtype=np.float64)
    b = np.searchsorted(e, v, side="right") - 1  # every v lies in a closed bin
    frac = (e[b + 1] - v) / (e[b + 1] - e[b])
    occ = np.where((np.arange(nb)[None, :] > b[:, None])[:, :, None], theta[None], 0.0)  # (V, B, K)
    occ[np.arange(top), b, :] = theta[b] * frac[:, None]
    total = occ.sum(axis=1)
    occ /= total[:, None, :]
    mean_excess = np.exp(log_q) / -np.expm1(log_q)
    return np.log(total), occ, occ[:, nb - 1, :] * mean_excess


def kernel_params(structure: Structure, params: BehaviourParams) -> tuple[F64, ...]:
    """The ``par`` tuple of :mod:`._kernel`: the extended log-value table (rows, K) and the
    Gaussian terms' coefficients."""
    layout = layout_of(structure)
    k = params.n_components
    tab = np.zeros((_n_rows(layout), k))
    copies, _ = _copies(layout)
    z = 0
    for c, sl in enumerate(_count_slices(layout)):
        lt = params.count_log_theta[sl]
        tab[sl] = lt - layout.log_width[sl, None]
        if layout.count_zoff[c] >= 0:  # link cells: log 1, log P(0 | parent 0), log P(+ | parent 0)/(1 − θ₀)
            o = int(layout.count_zoff[c])
            tab[o + 1] = params.count_zero_log_p[z, 0]
            tab[o + 2] = params.count_zero_log_p[z, 1] - np.log(-np.expm1(lt[0]))
            z += 1
        tab[sl.stop - 1] = lt[-1] + np.log(-np.expm1(params.count_log_q[c]))
        if copies[c] >= 0:  # parent 0, x > 0: a bin's value and link cell 2's in one lookup
            tab[copies[c] : copies[c] + sl.stop - sl.start] = tab[sl] + tab[int(layout.count_zoff[c]) + 2]
        tab[layout.n_table + layout.n_cens + c] = lt[-1]
        if layout.count_cens_off[c] >= 0:
            logs, _, _ = censoring(structure.edges[int(layout.counts[c])], lt, params.count_log_q[c])
            o = layout.n_table + int(layout.count_cens_off[c])
            tab[o : o + len(logs)] = logs
    nb, na = len(layout.binaries), params.amount_a.shape[0]
    if nb:
        o = int(layout.binary_off[0])
        tab[o : o + 2 * nb] = params.binary_log_p.reshape(2 * nb, k)
    if na:
        o = int(layout.term_zero_off[0])
        tab[o : o + 4 * na] = params.amount_log_pz.reshape(4 * na, k)
    ta = np.concatenate([params.amount_a, params.continuous_mean])
    tb = np.concatenate([params.amount_b, np.zeros_like(params.continuous_mean)])
    var = np.concatenate([params.amount_var, params.continuous_var])
    with np.errstate(divide="ignore"):
        logw = np.log(params.weights)
    par = (logw, tab, params.count_log_q, ta, tb, 1.0 / var, -0.5 * (np.log(var) + LOG_2PI))
    return tuple(np.ascontiguousarray(a, dtype=np.float64) for a in par)


def _centre_terms(mom: F64, shift: F64) -> tuple[F64, F64, F64]:
    """Per-block sums about each block's shift → (n (G, K), means (G, K, 2), m2 (G, K, 3)),
    merged exactly over blocks."""
    n = mom[:, :, 0]  # (blocks, G, K)
    safe = np.where(n > 0, n, 1.0)
    mu, mv = mom[:, :, 1] / safe, mom[:, :, 2] / safe
    m2 = np.stack(
        [mom[:, :, 3] - n * mu * mu, mom[:, :, 4] - n * mu * mv, mom[:, :, 5] - n * mv * mv], axis=-1
    )
    m2[..., 0] = np.maximum(m2[..., 0], 0.0)
    m2[..., 2] = np.maximum(m2[..., 2], 0.0)
    means = np.stack([mu, mv], axis=-1) + shift[:, :, None, :]
    means = np.where((n > 0)[..., None], means, 0.0)
    while n.shape[0] > 1:
        h = n.shape[0] // 2 * 2
        nn, mm, qq = merge_terms(n[0:h:2], means[0:h:2], m2[0:h:2], n[1:h:2], means[1:h:2], m2[1:h:2])
        n, means, m2 = (np.concatenate([a, b[h:]]) for a, b in ((nn, n), (mm, means), (qq, m2)))
    return n[0], means[0], m2[0]


class Run(NamedTuple):
    """What the kernel returns for one partition."""

    loglik: float
    scores: F64  # (n,) log p(x), NaN where a row has no finite score
    n_bad: int
    first_bad: int  # within the partition, −1
    nk: F64
    hard_nk: F64 | None
    acc: tuple[F64, ...]  # (table, censoring values, excess, censored tails) sums
    mom: F64  # Gaussian-term moments per block, about the block's shift
    shift: F64


def _run(
    structure: Structure,
    X: F64,
    w: F64 | None,
    k: int,
    par: tuple[F64, ...],
    resp: F64 | None,
    censor: bool,
    hard_counts: bool,
) -> Run:
    """Run the kernel over one partition."""
    layout = layout_of(structure)
    n = X.shape[0]
    blocks = max(1, -(-n // BLOCK_ROWS))
    nc, ng = len(layout.counts), len(layout.terms)
    S = np.zeros((_n_rows(layout), k))
    EX = np.zeros((nc, k))
    mom = np.zeros((blocks, ng, 6, k))
    shift = np.zeros((blocks, ng, 2))
    scores, nk, hard_nk, bad = np.empty(n), np.zeros(k), np.zeros(k), np.zeros(2, np.int64)
    wv = np.empty(0) if w is None else np.ascontiguousarray(w, dtype=np.float64)
    rv = np.empty((0, k)) if resp is None else np.ascontiguousarray(resp, dtype=np.float64)
    loglik = aot.call(
        "behaviour_estep", X, wv, w is not None, rv, resp is not None, censor, _lay(layout), par, k, BLOCK_ROWS, hard_counts,
        scores, S, EX, mom, shift, nk, hard_nk, bad,
    )  # fmt: skip
    table, cens, tail = np.split(_fold_copies(layout, S), [layout.n_table, layout.n_table + layout.n_cens])
    acc = (table, cens, EX, tail)
    return Run(
        float(loglik), scores, int(bad[0]), int(bad[1]), nk, hard_nk if hard_counts else None, acc, mom, shift
    )


def _expected_censored(
    structure: Structure, params: BehaviourParams, acc: tuple[F64, ...]
) -> tuple[F64, F64]:
    """Table and excess sums with the censored rows' expected occupancy added."""
    layout = layout_of(structure)
    table, cens, excess, cens_tail = (a.copy() for a in acc)
    for c, sl in enumerate(_count_slices(layout)):
        table[sl.stop - 1] += cens_tail[c]
        mean_excess = np.exp(params.count_log_q[c]) / -np.expm1(params.count_log_q[c])
        excess[c] += cens_tail[c] * mean_excess
        if layout.count_cens_off[c] < 0:
            continue
        j = int(layout.counts[c])
        _, occ, exc = censoring(structure.edges[j], params.count_log_theta[sl], params.count_log_q[c])
        o = int(layout.count_cens_off[c])
        rv = cens[o : o + occ.shape[0]]  # (V, K)
        table[sl] += np.einsum("vk,vbk->bk", rv, occ)
        excess[c] += (rv * exc).sum(axis=0)
    return table, excess


def _stats(
    structure: Structure,
    X: F64,
    w: F64 | None,
    k: int,
    run: Run,
    params: BehaviourParams | None,
    row_offset: int,
) -> BehaviourStats:
    acc = run.acc
    table, excess = _expected_censored(structure, params, acc) if params is not None else (acc[0], acc[2])
    if params is None and acc[1].size + acc[3].size and (acc[1].any() or acc[3].any()):  # pragma: no cover
        raise AssertionError("censored rows without parameters")
    term_n, term_mean, term_m2 = _centre_terms(run.mom, run.shift)
    eligible = np.isfinite(run.scores) if run.n_bad else np.ones(X.shape[0], dtype=bool)
    ws, wr, wi = _worst_rows(run.scores, X, eligible if w is None else eligible & (w > 0), row_offset, k)
    return BehaviourStats(
        nk=run.nk, loglik=run.loglik, weight=float(X.shape[0] if w is None else np.sum(w)), n_rows=X.shape[0],
        n_bad=run.n_bad, first_bad=row_offset + run.first_bad if run.n_bad else -1,
        worst_scores=ws, worst_rows=wr, worst_index=wi, hard_nk=run.hard_nk,
        table=table, excess=excess, term_n=term_n, term_mean=term_mean, term_m2=term_m2,
    )  # fmt: skip


def chunk_stats(
    structure: Structure,
    X: F64,
    w: F64 | None,
    params: BehaviourParams,
    *,
    row_offset: int = 0,
    hard_counts: bool = False,
) -> BehaviourStats:
    """E-step statistics of one partition ``X`` (n, D) in original units, weights ``w`` (n,)."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    k = params.n_components
    run = _run(structure, X, w, k, kernel_params(structure, params), None, True, hard_counts)
    return _stats(structure, X, w, k, run, params, row_offset)


def resp_stats(
    structure: Structure,
    X: F64,
    w: F64 | None,
    resp: F64,
    params: BehaviourParams | None = None,
    *,
    row_offset: int = 0,
) -> BehaviourStats:
    """Statistics for given responsibilities ``resp`` (n, K); ``loglik`` and scores are 0.

    Without ``params`` a censored (capped) count is read as observed at its value; with them,
    its expected occupancy under ``params`` is used (EM over the censored values only).
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    k = resp.shape[1]
    par = kernel_params(structure, params) if params is not None else _dummy_par(structure, k)
    run = _run(structure, X, w, k, par, resp, params is not None, False)
    return _stats(structure, X, w, k, run, params, row_offset)


def _dummy_par(structure: Structure, k: int) -> tuple[F64, ...]:
    layout = layout_of(structure)
    nc, ng = len(layout.counts), len(layout.terms)
    shapes = [(k,), (_n_rows(layout), k), (nc, k)] + [(ng, k)] * 4
    return tuple(np.zeros(s) for s in shapes)


def log_prob(structure: Structure, X: F64, params: BehaviourParams) -> F64:
    """(n, K): log πₖ + log pₖ(x) (masses for counts and binaries, densities in original units
    for amounts and continuous features); NaN rows where a value is invalid."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    out = np.empty((X.shape[0], params.n_components))
    aot.call(
        "behaviour_log_prob",
        X,
        _lay(layout_of(structure)),
        kernel_params(structure, params),
        params.n_components,
        out,
    )
    return out


def summary_stats(structure: Structure, params: BehaviourParams, X: F64, Z: F64, w: F64 | None) -> SuffStats:
    """γ of the components on raw rows ``X`` (n, D) and the γ-weighted moments of the same rows'
    model inputs ``Z`` (n, D'): full second moments, summed per block about the partition's mean
    by the compiled kernel, centred per block and merged exactly (as the Gaussian E-step does).
    Rows without a finite log p(x) count in ``n_bad`` and add nothing. Mergeable with
    :func:`gmm_dask.mixture.suffstats.combine_all`; no loglik (0) and no "worst" rows."""
    from gmm_dask.mixture.blocks import Layout as Products
    from gmm_dask.mixture.blocks import centre_blocks, padded
    from gmm_dask.mixture.suffstats import _merge_blocks

    X = np.ascontiguousarray(X, dtype=np.float64)
    Z = np.ascontiguousarray(Z, dtype=np.float64)
    n, d = Z.shape
    k = params.n_components
    prod = Products(d, "full")
    S = np.zeros((max(1, -(-n // BLOCK_ROWS)), *padded(k, prod.f)))
    shift = Z.mean(axis=0) if n else np.zeros(d)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    bad = np.zeros(2, np.int64)
    wv = np.empty(0) if w is None else np.ascontiguousarray(w, dtype=np.float64)
    ia, ja = (np.ascontiguousarray(a, dtype=np.int64) for a in (prod.ia, prod.ja))
    aot.call(
        "behaviour_summary", X, Z, wv, w is not None, _lay(layout_of(structure)), kernel_params(structure, params),
        k, BLOCK_ROWS, shift, ia, ja, S, bad,
    )  # fmt: skip
    nk, mean_c, m2 = _merge_blocks(*centre_blocks(S[:, :k, : prod.f], prod), (prod.ia, prod.ja))
    return SuffStats(
        nk=nk,
        means=mean_c + shift,
        m2=prod.unpack(m2),
        loglik=0.0,
        weight=float(n if w is None else wv.sum()),
        n_rows=n,
        n_bad=int(bad[0]),
        first_bad=int(bad[1]),
        worst_scores=np.zeros(0),
        worst_rows=np.zeros((0, d)),
        worst_index=np.zeros(0, np.int64),
    )
