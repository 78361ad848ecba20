"""Where one partition's E-step time goes, phase by phase, on one core.

    python -m benchmarks.phases '{"n": 125000, "d": 16, "k": 8, "ct": "full"}'

Runs the phases of :func:`gmm_dask.suffstats.estep_stats` (per in-cache block: centre, build the
packed products, ``A @ f``, softmax, ``R @ fᵀ``) one at a time over the same blocks, with the
library's own layout and coefficients, and times the whole kernel on the same partition. Prints
one JSON line of milliseconds. Run with one BLAS thread (``benchmarks.run`` does).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def _best(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000.0 * min(times)


def measure(n: int, d: int, k: int, ct: str, seed: int = 0) -> dict:
    from gmm_dask import suffstats as ss
    from gmm_dask.gaussian import compute_precision_cholesky

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    weights = np.full(k, 1.0 / k)
    means = rng.standard_normal((k, d))
    kind = ss.moment_kind(ct)
    cov = np.broadcast_to(np.eye(d), (k, d, d)) if kind == "full" else np.ones((k, d))
    if ct == "tied":
        cov = np.eye(d)
    elif ct == "spherical":
        cov = np.ones(k)
    prec_chol = compute_precision_cholesky(np.array(cov), ct)
    layout = ss._Layout(d, kind)
    t, F = layout.t, layout.f
    shift = weights @ means
    A, _, _ = ss._log_density_coefficients(layout, weights, means - shift, prec_chol, ct)
    b = ss.default_block_rows(F)
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

    np.matmul(A, f, out=r)
    r0 = r.copy()  # log-densities of the last block: each timed softmax starts from them

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

    shifted = r0 - r0.max(axis=0)  # what the softmax exponentiates

    def exp_only():
        for _ in starts:
            np.exp(shifted, out=r)

    def gemm_moments():
        for _ in starts:
            r @ f.T

    centre()
    products()
    out = {
        "rows": len(starts) * b,
        "block_rows": b,
        "F": F,
        "centre_ms": _best(centre),
        "products_ms": _best(products),
        "gemm_density_ms": _best(gemm_density),
        "exp_ms": _best(exp_only),
        "gemm_moments_ms": _best(gemm_moments),
    }
    out["softmax_ms"] = _best(softmax) - _best(restore)
    Xp = X[: out["rows"]]
    out["kernel_ms"] = _best(lambda: ss.estep_stats(Xp, None, weights, means, prec_chol, ct))
    flops = 2.0 * k * F * out["rows"]
    out["gemm_density_gflops"] = flops / out["gemm_density_ms"] / 1e6
    out["gemm_moments_gflops"] = flops / out["gemm_moments_ms"] / 1e6
    return out


if __name__ == "__main__":
    params = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    print(json.dumps(measure(**{"n": 125_000, "d": 16, "k": 8, "ct": "full", **params})))
