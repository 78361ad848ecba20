"""Workloads for the benchmarks: generated data, shared initial parameters, engines to time.

Each engine runs in its own subprocess (``python -m benchmarks.cases ENGINE JSON``) so that peak
memory is measured for that engine alone (RSS of the process tree, sampled every 20 ms).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time

import numpy as np

from benchmarks.dgemm import run_dgemm


def blobs_block(n: int, d: int, k: int, seed: int, block: int) -> np.ndarray:
    """Rows of a K-blob mixture, deterministic per (seed, block)."""
    centers = np.random.default_rng([seed, 0]).normal(scale=4.0, size=(k, d))
    rng = np.random.default_rng([seed, block + 1])
    labels = rng.integers(0, k, n)
    x = rng.normal(size=(n, d))
    x += centers[labels]  # in place: the generator's temporaries are not the fit's memory
    return x


def blobs(n: int, d: int, k: int, seed: int = 0, block_rows: int = 125_000) -> np.ndarray:
    return np.concatenate(
        [blobs_block(min(block_rows, n - s), d, k, seed, i) for i, s in enumerate(range(0, n, block_rows))]
    )


def lazy_blobs(n: int, d: int, k: int, seed: int):
    """The rows of :func:`blobs` as a dask array generated inside the tasks (125,000-row blocks)."""
    import dask
    import dask.array as da

    gen = 125_000
    parts = [
        da.from_delayed(
            dask.delayed(blobs_block)(min(gen, n - s), d, k, seed, i), shape=(min(gen, n - s), d), dtype=float
        )
        for i, s in enumerate(range(0, n, gen))
    ]
    return da.concatenate(parts)


def local_cluster(workers: int):
    """(cluster, client): ``workers`` single-threaded worker processes on 127.0.0.1, no memory limit."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        memory_limit=0,
        silence_logs=40,
    )
    return cluster, Client(cluster)


def shared_init(X: np.ndarray, k: int, ct: str, seed: int = 0) -> dict:
    """The same starting point for every engine: means at K sampled rows, unit covariances."""
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    means = X[rng.choice(len(X), k, replace=False)]
    prec = {
        "full": np.broadcast_to(np.eye(d), (k, d, d)).copy(),
        "tied": np.eye(d),
        "diag": np.ones((k, d)),
        "spherical": np.ones(k),
    }[ct]
    return {"weights_init": np.full(k, 1.0 / k), "means_init": means, "precisions_init": prec}


def flops_per_iteration(n: int, d: int, k: int, ct: str) -> float:
    """Floating-point operations of one EM iteration (E-step products and M-step scatter)."""
    if ct in ("full", "tied"):
        return 4.0 * n * k * d * d + 10.0 * n * k * d
    return 12.0 * n * k * d


class PeakRSS:
    """Peak resident memory of this process and its children, sampled in a thread."""

    def __init__(self, interval=0.02):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.baseline = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        import psutil

        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.baseline = self._rss()
        self.peak = self.baseline
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


# --- engines (each called in a fresh subprocess) ------------------------------------------


def run_sklearn(p: dict) -> dict:
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    X = blobs(p["n"], p["d"], p["k"], p["seed"])
    init = shared_init(X, p["k"], p["ct"])
    out = {}
    with threadpool_limits(p["blas_threads"], "blas"), PeakRSS() as mem:
        times = {}
        for iters in (p["iters_lo"], p["iters_hi"]):
            best = np.inf
            for _ in range(p["repeats"]):
                gm = GaussianMixture(p["k"], covariance_type=p["ct"], tol=0, max_iter=iters, **init)
                t0 = time.perf_counter()
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    gm.fit(X)
                best = min(best, time.perf_counter() - t0)
                if iters == p["iters_hi"]:
                    out["lower_bound"] = float(gm.lower_bound_)
            times[iters] = best
    out["sec_per_iter"] = (times[p["iters_hi"]] - times[p["iters_lo"]]) / (p["iters_hi"] - p["iters_lo"])
    out["fit_seconds"] = times[p["iters_hi"]]
    out["peak_rss_bytes"] = mem.peak - mem.baseline
    return out


def _import_library() -> None:
    import gmm_dask.mixture.em
    import gmm_dask.mixture.suffstats  # noqa: F401
    from gmm_dask.mixture import _kernels

    _kernels.warm_up()  # load (or compile) the E-step kernel before the baseline and the timings


def run_gmm_dask(p: dict) -> dict:
    import warnings

    from gmm_dask import GaussianMixture

    n, d, k = p["n"], p["d"], p["k"]
    X_np = blobs(n, d, k, p["seed"])  # for the shared init only; the engine reads its own copy
    init = shared_init(X_np, k, p["ct"])
    del X_np
    X = lazy_blobs(n, d, k, p["seed"]).rechunk((p.get("chunk_rows", 125_000), d))
    source = p.get("source", "memory")
    if source == "parquet":
        X = _parquet_array(p, X)
    cluster = client = None
    if p["workers"]:
        cluster, client = local_cluster(p["workers"])
        # Imports are not the fit: load the library in every worker before the memory baseline
        # (numpy/pandas/scipy/dask take ~90 MiB per process whatever the data size).
        client.run(_import_library)
    try:
        with PeakRSS() as mem:
            runs = []
            for _ in range(p["repeats"]):
                secs = []
                gm = GaussianMixture(
                    k,
                    covariance_type=p["ct"],
                    tol=0,
                    max_iter=p["iters_hi"],
                    persist=p.get("persist", True),
                    callback=lambda info, secs=secs: secs.append(info.seconds),
                    **init,
                )
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    gm.fit(X)
                runs.append((time.perf_counter() - t0, secs, gm.lower_bound_))
        fit_seconds = min(r[0] for r in runs)
        per_iter = float(np.median([s for r in runs for s in r[1][1:]]))  # first iteration warms caches
        return {
            "sec_per_iter": per_iter,
            "fit_seconds": fit_seconds,
            "lower_bound": float(runs[-1][2]),
            "peak_rss_bytes": mem.peak - mem.baseline,
        }
    finally:
        if client is not None:
            client.close()
            cluster.close()


def _parquet_array(p, X):
    """Write X to Parquet (one file per chunk) and return a Dask array that re-reads it."""
    import dask
    import dask.array as da
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = os.path.join(p["workdir"], f"parquet-{p['n']}-{p['d']}")
    os.makedirs(root, exist_ok=True)
    names = [f"f{j}" for j in range(p["d"])]
    paths, lengths = [], []
    for i, blk in enumerate(X.to_delayed().ravel()):
        path = os.path.join(root, f"part-{i:05d}.parquet")
        if not os.path.exists(path):
            arr = dask.compute(blk)[0]
            pq.write_table(
                pa.table({nm: arr[:, j] for j, nm in enumerate(names)}), path, row_group_size=125_000
            )
        paths.append(path)
        lengths.append(pq.ParquetFile(path).metadata.num_rows)

    def read(path):
        t = pq.read_table(path)
        return np.column_stack([t.column(c).to_numpy() for c in t.column_names])

    return da.concatenate(
        [
            da.from_delayed(dask.delayed(read)(pth), shape=(m, p["d"]), dtype=float)
            for pth, m in zip(paths, lengths, strict=True)
        ]
    )


def run_phases(p: dict) -> dict:
    """Milliseconds per E-step phase of one partition (see benchmarks/phases.py)."""
    from benchmarks.phases import measure

    return measure(p["n"], p["d"], p["k"], p["ct"])


ENGINES = {"sklearn": run_sklearn, "gmm_dask": run_gmm_dask, "dgemm": run_dgemm, "phases": run_phases}

if __name__ == "__main__":
    engine, params = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(ENGINES[engine](params)))
