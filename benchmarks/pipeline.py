"""The whole `train` job, phase by phase, against the cost of one pass over the data.

    python -m benchmarks.pipeline '{"n": 2000000}'                       # LocalCluster (2 workers)
    python -m benchmarks.pipeline '{"n": 100000000, "cluster": "processes",
                                    "memory_limit": "1.5GiB", "max_iter": 5}'

Generates one demo snapshot of ``n`` users in pieces (timed), then runs the library's ``train``
job with the default model settings (k-means-sample initialisation, ids checked) on it, streaming
from Parquet (``persist: false``), and reports every phase's seconds and rows/s, the passes the
initialisation and EM made, one streaming E-step pass's time, and these ratios:

- profile / one E-step pass (target ≤ 1.5),
- initialisation passes (target ≤ 6),
- writing the memberships, segments and overlaps / one E-step pass (target ≤ 2),
- the job's wall time / the sum of its EM passes.

``cluster: "processes"`` starts a real ``dask scheduler`` and two ``dask worker`` processes on
127.0.0.1 (``--nthreads 1 --memory-limit <memory_limit>``) and points the job at it by address;
peak RSS of each worker process is sampled every 0.2 s, and a worker that was restarted (a new
process) is reported. Prints one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

DEFAULTS = {
    "n": 2_000_000,
    "cluster": "local",  # local | processes
    "memory_limit": "1.5GiB",
    "max_iter": 200,
    "n_init": 1,
    "block_users": 1_000_000,
    "row_group_rows": 250_000,
    "root": None,  # where data and outputs go (default: a temporary folder, removed after)
    "keep": False,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerWatch:
    """Peak RSS of the ``dask worker`` processes (the workers, not their nannies) and restarts."""

    def __init__(self, nannies: list, interval: float = 0.2):
        import psutil

        self.psutil = psutil
        self.nannies = [psutil.Process(p.pid) for p in nannies]
        self.peak: dict[int, int] = {}
        self.seen: set[int] = set()
        self.first: set[int] | None = None
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _workers(self):
        """The worker processes the nannies started (not their multiprocessing resource trackers)."""
        out = []
        for n in self.nannies:
            with contextlib.suppress(self.psutil.Error):
                for c in n.children(recursive=False):
                    with contextlib.suppress(self.psutil.Error):
                        if "resource_tracker" not in " ".join(c.cmdline()):
                            out.append(c)
        return out

    def _run(self):
        while not self._stop.is_set():
            procs = self._workers()
            pids = {p.pid for p in procs}
            if self.first is None and len(pids) >= len(self.nannies):
                self.first = pids
            self.seen |= pids
            for p in procs:
                with contextlib.suppress(self.psutil.Error):
                    self.peak[p.pid] = max(self.peak.get(p.pid, 0), p.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def restarts(self) -> int:
        return len(self.seen - (self.first or set()))


@contextlib.contextmanager
def process_cluster(n_workers: int, memory_limit: str, workdir: Path):
    """A `dask scheduler` and `dask worker` processes on 127.0.0.1; yields (address, nannies)."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    bindir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = open(workdir / "cluster.log", "w")  # noqa: SIM115 - closed below
    procs = [
        subprocess.Popen(
            [str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", "127.0.0.1:0", "--no-show"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    ]  # fmt: skip
    time.sleep(2.0)
    nannies = [
        subprocess.Popen(
            [str(bindir / "dask"), "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
             "--memory-limit", memory_limit, "--dashboard-address", "127.0.0.1:0",
             "--local-directory", str(workdir / f"worker-{i}")],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        for i in range(n_workers)
    ]  # fmt: skip
    procs += nannies
    try:
        from distributed import Client

        with Client(address, timeout=60) as c:
            c.wait_for_workers(n_workers, timeout=120)
        yield address, nannies
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()


def run(params: dict) -> dict:
    from gmm_dask.app import jobs
    from gmm_dask.app.params import TrainParams
    from gmm_dask.demo import FEATURE_KINDS, FEATURES, DemoSpec, write_demo_dataset

    p = {**DEFAULTS, **params}
    root = Path(p["root"] or tempfile.mkdtemp(prefix="gmm-dask-pipeline-"))
    root.mkdir(parents=True, exist_ok=True)
    spec = DemoSpec(
        n_users=p["n"],
        n_snapshots=1,
        seed=7,
        block_users=p["block_users"],
        row_group_rows=p["row_group_rows"],
    )
    t = time.perf_counter()
    write_demo_dataset(root / "data", spec)
    generation = time.perf_counter() - t
    data_bytes = sum(f.stat().st_size for f in (root / "data" / "snapshots").rglob("*.parquet"))
    cfg = {
        "input": {
            "path": str(root / "data" / "snapshots"),
            "id_column": "user_id",
            "features": [{"name": f, "transform": "log1p", "kind": FEATURE_KINDS[f]} for f in FEATURES],
        },
        "model": {"n_components": 5, "max_iter": p["max_iter"], "n_init": p["n_init"], "persist": False},
        "output": {"root": str(root / "out")},
    }
    out: dict = {"params": p, "generation_seconds": round(generation, 1), "input_bytes": data_bytes}
    with contextlib.ExitStack() as stack:
        watch = None
        if p["cluster"] == "processes":
            address, nannies = stack.enter_context(process_cluster(2, p["memory_limit"], root))
            cfg["cluster"] = {"type": "address", "address": address}
            watch = stack.enter_context(WorkerWatch(nannies))
        else:
            cfg["cluster"] = {"type": "local", "n_workers": 2, "threads_per_worker": 1}
        (root / "job.yaml").write_text(yaml.safe_dump(cfg))
        t = time.perf_counter()
        res = jobs.train(TrainParams(config=str(root / "job.yaml"), publish=True))
        wall = time.perf_counter() - t
    if watch is not None:
        out["worker_peak_rss_mib"] = sorted(round(v / 2**20) for v in watch.peak.values())
        out["worker_restarts"] = watch.restarts
    passes = res.model.metadata.passes
    one_pass = passes["seconds_per_em_pass"]
    phases = {name: round(ph.seconds, 2) for name, ph in res.timings.items()}
    out |= {
        "rows": res.counts["rows_written"],
        "wall_seconds": round(wall, 1),
        "phases": phases,
        "rows_per_second": {name: round(res.counts["rows_read"] / s) for name, s in phases.items() if s > 0},
        "passes": passes,
        "n_iter": res.model.metadata.n_iter,
        "one_em_pass_seconds": one_pass,
        "profile_over_pass": round(phases["profile"] / one_pass, 2),
        "init_passes": passes["init"],
        "write_over_pass": round(phases["write"] / one_pass, 2),
        "wall_over_em": round(wall / passes["em_seconds"], 2),
    }
    if not p["keep"] and not p["root"]:
        shutil.rmtree(root, ignore_errors=True)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    params = json.loads(argv[0]) if argv else {}
    print(json.dumps(run(params)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
