"""Where one partition's E-step time goes, phase by phase, on one core.

    python -m benchmarks.phases '{"n": 125000, "d": 16, "k": 8, "ct": "full"}'

Times the phases of the compiled kernel (:mod:`gmm_dask.mixture._kernels`, what
:func:`gmm_dask.mixture.suffstats.estep_stats` runs) one at a time over the same tiles (224 rows) of one
partition, with the library's own coefficients: centre (transpose the tile and subtract the
mixture mean), products (``xᵢxⱼ``), ``A @ f`` (log-densities), softmax (of which exp), ``R @ fᵀ``
(moments), and the whole ``estep_stats`` call. Each phase is looped over the tiles inside
compiled code, as in the kernel, so no Python call is timed per tile. Alongside: the GEMM-only
lower bound (the two products' flops at this machine's one-thread DGEMM rate, measured in the same
run) and, under ``numpy``, the same phases of the NumPy path (two BLAS GEMMs per 3,000-row block).
Prints one JSON line of milliseconds. Run with one BLAS thread (``benchmarks.run`` does).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def _best(fn, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000.0 * min(times)


def _problem(n: int, d: int, k: int, ct: str, seed: int):
    from gmm_dask.mixture import blocks
    from gmm_dask.mixture import suffstats as ss
    from gmm_dask.mixture.gaussian import compute_precision_cholesky

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    weights = np.full(k, 1.0 / k)
    means = rng.standard_normal((k, d))
    cov = {
        "full": np.broadcast_to(np.eye(d), (k, d, d)).copy(),
        "tied": np.eye(d),
        "diag": np.ones((k, d)),
        "spherical": np.ones(k),
    }[ct]
    prec_chol = compute_precision_cholesky(cov, ct)
    layout = blocks.Layout(d, ss.moment_kind(ct))
    shift = weights @ means
    A = blocks.log_density_coefficients(layout, weights, means, prec_chol, ct).A
    return X, weights, means, prec_chol, layout, shift, A


def _drivers():
    """Compiled loops over the tiles, one per phase (so no Python call per tile is timed)."""
    from numba import njit

    from gmm_dask.mixture import _kernels as kk

    @njit(cache=False, nogil=True)
    def centre(X, tile, n_tiles, shift, t, f):
        for s in range(n_tiles):
            kk._centre(X, s * tile, tile, shift, t, f)

    @njit(cache=False, nogil=True)
    def density(A, f, L, tile, n_tiles, ia, ja):
        for _ in range(n_tiles):
            kk._density(A, f, L, tile, ia, ja)

    @njit(cache=False, nogil=True)
    def softmax(L, R, k, tile, n_tiles, amax, safe, tot, lpn):
        for _ in range(n_tiles):
            kk._softmax(L, R, k, tile, amax, safe, tot, lpn)

    @njit(cache=False, nogil=True)
    def exp(x, out, n_tiles):
        for _ in range(n_tiles):
            for c in range(x.shape[0]):
                kk.exp_into(x[c], out[c])

    @njit(cache=False, nogil=True)
    def moments(R, f, S, tile, n_tiles):
        for _ in range(n_tiles):
            kk._moments(R, f, S, tile)

    return centre, density, softmax, exp, moments


def measure(n: int, d: int, k: int, ct: str, seed: int = 0) -> dict:
    from benchmarks.dgemm import run_dgemm
    from gmm_dask.mixture import blocks
    from gmm_dask.mixture import suffstats as ss

    X, weights, means, prec_chol, layout, shift, A = _problem(n, d, k, ct, seed)
    t, F = layout.t, layout.f
    tile = blocks.COMPILED_TILE_ROWS
    n_tiles = n // tile
    rows = n_tiles * tile
    kp, pp = blocks.padded(k, F)
    Ap = np.zeros((kp, pp))
    Ap[:k, :F] = A
    ia = np.ascontiguousarray(layout.ia, dtype=np.int64)
    ja = np.ascontiguousarray(layout.ja, dtype=np.int64)
    no_pairs = np.zeros(0, dtype=np.int64)
    f = np.zeros((pp, tile))
    f[t + d] = 1.0
    L = np.zeros((kp, tile))
    R = np.zeros((kp, tile))
    S = np.zeros((kp, pp))
    amax, safe, tot, lpn = (np.empty(tile) for _ in range(4))
    centre, density, softmax, exp, moments = _drivers()

    centre(X, tile, 1, shift, t, f)
    density(Ap, f, L, tile, 1, ia, ja)  # L: log-densities of a real tile, reused by the softmax
    softmax(L, R, k, tile, 1, amax, safe, tot, lpn)
    shifted = L[:k] - L[:k].max(axis=0)  # what the softmax exponentiates
    e_out = np.empty_like(shifted)
    exp(shifted, e_out, 1)
    moments(R, f, S, tile, 1)

    with_products = _best(lambda: density(Ap, f, L, tile, n_tiles, ia, ja))
    f_saved = f.copy()
    gemm_density = _best(lambda: density(Ap, f, L, tile, n_tiles, no_pairs, no_pairs))
    np.copyto(f, f_saved)
    out = {
        "rows": rows,
        "block_rows": tile,
        "F": F,
        "F_padded": pp,
        "centre_ms": _best(lambda: centre(X, tile, n_tiles, shift, t, f)),
        "products_ms": max(with_products - gemm_density, 0.0),
        "gemm_density_ms": gemm_density,
        "softmax_ms": _best(lambda: softmax(L, R, k, tile, n_tiles, amax, safe, tot, lpn)),
        "exp_ms": _best(lambda: exp(shifted, e_out, n_tiles)),
        "gemm_moments_ms": _best(lambda: moments(R, f, S, tile, n_tiles)),
    }
    Xp = X[:rows]
    out["kernel_ms"] = _best(lambda: ss.estep_stats(Xp, None, weights, means, prec_chol, ct))
    flops = 2.0 * kp * pp * rows  # each of the two products, padding included
    out["gemm_density_gflops"] = flops / out["gemm_density_ms"] / 1e6
    out["gemm_moments_gflops"] = flops / out["gemm_moments_ms"] / 1e6
    dgemm = run_dgemm({"size": 1024})["gflops_1"]
    out["dgemm_gflops_1"] = dgemm
    out["gemm_bound_ms"] = 2 * 2.0 * k * F * rows / dgemm / 1e6
    out["numpy"] = _numpy_phases(X[:rows], weights, means, prec_chol, ct, layout, shift, A)
    return out


def _numpy_phases(X, weights, means, prec_chol, ct, layout, shift, A) -> dict:
    """The same phases for the NumPy path (``kernel='numpy'``): BLAS GEMMs per 3,000-row block."""
    from gmm_dask.mixture import blocks
    from gmm_dask.mixture import suffstats as ss

    n, d = X.shape
    k = A.shape[0]
    t, F = layout.t, layout.f
    b = blocks.default_block_rows(F)
    starts = range(0, n - b + 1, b)
    f = np.empty((F, b))
    f[F - 1] = 1.0
    r = np.empty((k, b))

    def centre():
        for s in starts:
            np.subtract(X[s : s + b].T, shift[:, None], out=f[t : t + d])

    def products():
        for _ in starts:
            layout.fill(f)

    def gemm_density():
        for _ in starts:
            np.matmul(A, f, out=r)

    centre()
    products()
    np.matmul(A, f, out=r)
    r0 = r.copy()

    def restore():
        for _ in starts:
            np.copyto(r, r0)

    def softmax():
        for _ in starts:
            np.copyto(r, r0)
            amax = r.max(axis=0)
            r.__isub__(amax)
            np.exp(r, out=r)
            tot = r.sum(axis=0)
            np.log(tot)
            r.__itruediv__(tot)

    def gemm_moments():
        for _ in starts:
            r @ f.T

    rows = len(starts) * b
    out = {
        "rows": rows,
        "block_rows": b,
        "centre_ms": _best(centre),
        "products_ms": _best(products),
        "gemm_density_ms": _best(gemm_density),
        "gemm_moments_ms": _best(gemm_moments),
        "softmax_ms": _best(softmax) - _best(restore),
    }
    Xp = X[:rows]
    out["kernel_ms"] = _best(lambda: ss.estep_stats(Xp, None, weights, means, prec_chol, ct, kernel="numpy"))
    flops = 2.0 * k * F * rows
    out["gemm_density_gflops"] = flops / out["gemm_density_ms"] / 1e6
    out["gemm_moments_gflops"] = flops / out["gemm_moments_ms"] / 1e6
    return out


if __name__ == "__main__":
    params = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    print(json.dumps(measure(**{"n": 125_000, "d": 16, "k": 8, "ct": "full", **params})))
