"""Cold start: the first fit on a fresh cluster against a second fit on the same cluster, with the
kernels built ahead of time (:mod:`gmm_dask.mixture.aot`, as ``./dev`` installs them) and with
numba's JIT only (``GMM_DASK_KERNELS=jit``: each worker imports numba and loads the kernels from
numba's cache on its first E-step), and scikit-learn's fit from the same initialisation, in one
run (#23 items 5 and 7).

``python -m benchmarks.coldstart [--rounds 3] [--n 1000000]`` — N × 16 blobs, K = 8, full
covariance, 10 EM iterations, tol 0; a fresh 2-process LocalCluster (1 thread each) per round
and variant, the data generated inside the fit (as a job reads it); scikit-learn with the same
2 cores (BLAS threads 2). Writes ``benchmarks/COLDSTART.md`` and ``coldstart.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.cases import blobs, lazy_blobs, local_cluster, shared_init

HERE = Path(__file__).resolve().parent
D, K, ITERS, CT = 16, 8, 10, "full"


def _fit(X, init: dict) -> float:
    from gmm_dask import GaussianMixture

    gm = GaussianMixture(K, covariance_type=CT, tol=0, max_iter=ITERS, **init)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(X)
    return time.perf_counter() - t0


def _numba_imported() -> bool:
    return "numba" in sys.modules


def _round(n: int, init: dict, kernels: str) -> dict:
    os.environ["GMM_DASK_KERNELS"] = kernels  # the workers inherit it
    try:
        t0 = time.perf_counter()
        cluster, client = local_cluster(2)
        started = time.perf_counter() - t0
    finally:
        os.environ.pop("GMM_DASK_KERNELS")
    try:
        first = _fit(lazy_blobs(n, D, K, 0), init)
        second = _fit(lazy_blobs(n, D, K, 0), init)
        numba = any(client.run(_numba_imported).values())
    finally:
        client.close()
        cluster.close()
    return {"cluster_start": started, "first": first, "second": second, "numba_in_workers": numba}


def _sklearn(X: np.ndarray, init: dict) -> float:
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    with threadpool_limits(2, "blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        GaussianMixture(K, covariance_type=CT, tol=0, max_iter=ITERS, **init).fit(X)
        return time.perf_counter() - t0


BUILT, JIT = "built ahead of time", "numba's JIT only (GMM_DASK_KERNELS=jit)"


def measure(n: int = 1_000_000, rounds: int = 3) -> dict:
    """The A/B rounds (kernels built ahead of time, numba's JIT only) and scikit-learn's fits."""
    from gmm_dask.mixture import aot

    if not aot.loaded():
        raise SystemExit("no kernels built for this machine: run python -m gmm_dask.mixture.build_kernels")
    X = blobs(n, D, K, 0)
    init = shared_init(X, K, CT)
    variants = {BUILT: "auto", JIT: "jit"}
    rows: dict[str, list[dict]] = {v: [] for v in variants}
    sk = []
    for _ in range(rounds):  # A, B, sklearn, A, B, sklearn, ...: load drifts evenly
        for variant, kernels in variants.items():
            rows[variant].append(_round(n, init, kernels))
        sk.append(_sklearn(X, init))
    return {"n": n, "d": D, "k": K, "iters": ITERS, "rounds": rows, "sklearn": sk, "machine": platform.node()}


def medians(out: dict, variant: str) -> dict[str, float]:
    """Median seconds of a variant's rounds: cluster start, first fit and second fit."""
    rs = out["rounds"][variant]
    return {key: float(np.median([r[key] for r in rs])) for key in ("cluster_start", "first", "second")}


def lines(out: dict) -> list[str]:
    """The cold-start table (Markdown), as COLDSTART.md and RESULTS.md show it."""
    best_sk = min(out["sklearn"])
    text = [
        f"N = {out['n']:,}, D = {D}, K = {K}, full, {ITERS} iterations, tol 0; fresh 2-process LocalCluster (1 "
        "thread each) per round and variant, the data generated in the workers inside each fit; scikit-learn with "
        f"2 BLAS threads from the same init; {len(out['sklearn'])} rounds alternating (built, JIT, scikit-learn); "
        "medians, seconds. `python -m benchmarks.coldstart`. Targets (#23): first fit ≤ 1.10 × second (item 5); "
        "scikit-learn / second ≥ 15 (item 7).",
        "",
        "| kernels | cluster start | first fit | second fit | first / second | scikit-learn / second | scikit-learn / first | numba imported in workers |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for variant, rs in out["rounds"].items():
        med = medians(out, variant)
        ratios = ", ".join(f"{r['first'] / r['second']:.2f}" for r in rs)
        text.append(
            f"| {variant} | {med['cluster_start']:.2f} | {med['first']:.2f} | {med['second']:.2f} | "
            f"{med['first'] / med['second']:.2f} (rounds: {ratios}) | {best_sk / med['second']:.1f} | "
            f"{best_sk / med['first']:.1f} | {'yes' if any(r['numba_in_workers'] for r in rs) else 'no'} |"
        )
    return [*text, "", f"scikit-learn: best {best_sk:.2f} s, median {np.median(out['sklearn']):.2f} s."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=1_000_000)
    args = ap.parse_args()
    out = measure(args.n, args.rounds)
    (HERE / "coldstart.json").write_text(json.dumps(out, indent=1))
    text = ["# Cold start: the first fit on a fresh cluster vs the second (#23 items 5, 7)", "", *lines(out)]
    (HERE / "COLDSTART.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
