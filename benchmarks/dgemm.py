"""The machine's float64 matrix-multiply rate: the yardstick the kernel benchmarks are read against."""

from __future__ import annotations

import time

import numpy as np


def run_dgemm(p: dict) -> dict:
    """Measured float64 matrix-multiply rate (GFLOP/s) with 1 and 2 BLAS threads."""
    from threadpoolctl import threadpool_limits

    n = p.get("size", 2048)
    a = np.random.default_rng(0).normal(size=(n, n))
    b = np.random.default_rng(1).normal(size=(n, n))
    out = {}
    for threads in (1, 2):
        with threadpool_limits(threads, "blas"):
            a @ b
            best = np.inf
            for _ in range(5):
                t0 = time.perf_counter()
                a @ b
                best = min(best, time.perf_counter() - t0)
        out[f"gflops_{threads}"] = 2 * n**3 / best / 1e9
    return out
