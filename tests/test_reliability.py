"""Faults that really happen, on real processes bound to 127.0.0.1, each bounded in time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from fsspec.implementations.local import LocalFileSystem

from gmm_dask import GaussianMixture
from gmm_dask.app import jobs
from gmm_dask.app.params import TrainParams
from gmm_dask.demo import DemoSpec, write_demo_dataset

from .conftest import assert_rel
from .pipeline_helpers import make_config, read_partition

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _clustered(n=40_000, d=3, chunk=2_000):
    """Data made by tasks (so lost partitions can be recomputed), with 4 clusters."""
    rng = da.random.default_rng(42)
    base = rng.normal(size=(n, d), chunks=(chunk, d))
    offset = rng.integers(0, 4, size=(n, 1), chunks=(chunk, 1)) * 6.0
    return base + offset


def _stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::gmm_dask.ConvergenceWarning")
def test_worker_killed_mid_fit_finishes_on_the_survivor_with_the_same_result(tmp_path):
    from distributed import Client

    sched_file = tmp_path / "scheduler.json"
    common = ["--dashboard-address", "127.0.0.1:0"]
    procs = [
        subprocess.Popen(
            [
                BIN / "dask",
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--scheduler-file",
                sched_file,
                *common,
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        deadline = time.time() + 60
        while not sched_file.exists():
            assert time.time() < deadline, "scheduler did not start"
            time.sleep(0.2)
        workers = [
            subprocess.Popen(
                [
                    BIN / "dask",
                    "worker",
                    "--scheduler-file",
                    sched_file,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--host",
                    "127.0.0.1",
                    *common,
                ],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        procs += workers
        with Client(scheduler_file=str(sched_file), timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            assert all(a.startswith("tcp://127.0.0.1:") for a in client.scheduler_info()["workers"])
            X = _clustered()
            ref = GaussianMixture(4, random_state=0, tol=0, max_iter=12).fit(X)

            def kill_one(info):
                if info.n_iter == 4:
                    workers[0].kill()
                    workers[0].wait(timeout=10)

            gm = GaussianMixture(4, random_state=0, tol=0, max_iter=12, callback=kill_one).fit(X)
            assert workers[0].poll() is not None
            assert len(client.scheduler_info()["workers"]) == 1
        for attr in ("weights_", "means_", "covariances_"):
            assert_rel(getattr(gm, attr), getattr(ref, attr), 1e-9, attr)
        assert gm.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-9)
    finally:
        for p in reversed(procs):
            _stop(p)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_overlapping_backfills_at_once_leave_one_complete_partition_per_date(tmp_path):
    spec = DemoSpec(n_users=3000, n_snapshots=5, seed=21, block_users=1000)
    write_demo_dataset(tmp_path / "data", spec)
    cfg_path = make_config(tmp_path, tmp_path / "data")
    jobs.train(TrainParams(config=str(cfg_path), snapshot=spec.dates[0]))
    d = spec.dates
    runs = []
    for start, end in [(d[0], d[3]), (d[1], d[4])]:
        from prefect.settings import PREFECT_API_URL

        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the session's Prefect API
        runs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gmm_dask_cli",
                    "backfill",
                    "--config",
                    str(cfg_path),
                    "--start",
                    start,
                    "--end",
                    end,
                    "--force",
                    "--publish",
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = [p.communicate(timeout=400)[0] for p in runs]
    # a date both runs reached at once is published by one; the other says so and moves on
    assert all(p.returncode in (0, 2) for p in runs), "\n".join(o[-3000:] for o in outs)
    for p, o in zip(runs, outs, strict=True):
        if p.returncode == 2:
            assert "is being published by another run" in o, o[-3000:]
    root = tmp_path / "out"
    for date in d:
        assert len(list((root / "memberships").glob(f"dt={date}"))) == 1
        ids = read_partition(root, "memberships", date).column("user_id").to_numpy()
        assert len(ids) == len(np.unique(ids)) == spec.n_users
        for table in ("segments", "overlaps"):
            assert (root / table / f"dt={date}").is_dir()
    assert not any((root / "_staging").rglob("*.parquet"))
    assert len(pd.read_parquet(root / "memberships")) == spec.n_users * len(d)


class FlakyFS(LocalFileSystem):
    """A local filesystem whose first ``fails_left`` opens of a Parquet file fail."""

    protocol = ("flaky",)
    fails_left = 0
    opens = 0
    _lock = threading.Lock()

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith("flaky://"):
            path = path[len("flaky://") :]
        return super()._strip_protocol(path)

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode and str(path).endswith(".parquet"):
            with FlakyFS._lock:
                FlakyFS.opens += 1
                if FlakyFS.fails_left > 0:
                    FlakyFS.fails_left -= 1
                    raise ConnectionError("simulated storage outage")
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def flaky_config(tmp_path):
    import fsspec

    fsspec.register_implementation("flaky", FlakyFS, clobber=True)
    spec = DemoSpec(n_users=2000, n_snapshots=1, seed=4, block_users=2000)
    write_demo_dataset(tmp_path / "data", spec)
    cfg = make_config(
        tmp_path, tmp_path / "data", input={"path": f"flaky://{tmp_path / 'data' / 'snapshots'}"}
    )
    FlakyFS.opens = 0
    yield str(cfg), spec
    FlakyFS.fails_left = 0


@pytest.mark.usefixtures("prefect_harness")
def test_transient_read_failure_is_retried_and_the_run_succeeds(flaky_config, tmp_path):
    from flows import segment

    cfg, spec = flaky_config
    FlakyFS.fails_left = 1
    res = segment(config=cfg)
    assert FlakyFS.fails_left == 0
    assert read_partition(tmp_path / "out", "memberships", spec.dates[0]).num_rows == spec.n_users
    assert res.counts["rows_written"] == spec.n_users


@pytest.mark.usefixtures("prefect_harness")
def test_permanent_read_failure_is_a_clear_error_and_writes_nothing(flaky_config, tmp_path):
    from flows import segment

    cfg, _ = flaky_config
    FlakyFS.fails_left = 10**9
    with pytest.raises(
        OSError, match=r"Opening Parquet file '.*part-00000\.parquet' failed: simulated storage outage"
    ):
        segment(config=cfg)
    assert FlakyFS.opens == 3  # the first try and two retries
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.parquet"))


def test_embedded_cluster_binds_to_loopback_only():
    import psutil

    from gmm_dask.app.cluster import dask_client
    from gmm_dask.app.config import LocalClusterConfig

    with dask_client(LocalClusterConfig(n_workers=2)) as client:
        info = client.scheduler_info()
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in info["workers"])
        assert "127.0.0.1" in client.dashboard_link
        me = psutil.Process()
        listening = [
            c.laddr.ip
            for p in [me, *me.children(recursive=True)]
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
    assert listening
    assert set(listening) <= {"127.0.0.1", "::1"}, listening


def test_remote_scheduler_over_tls_from_config(tmp_path):
    from distributed import LocalCluster
    from distributed.security import Security

    from gmm_dask.app.cluster import dask_client
    from gmm_dask.app.config import parse_config

    sec = Security.temporary()
    files = {}
    for name, pem in (
        ("ca_file", sec.tls_ca_file),
        ("cert_file", sec.tls_client_cert),
        ("key_file", sec.tls_client_key),
    ):
        files[name] = str(tmp_path / f"{name}.pem")
        Path(files[name]).write_text(pem)
    with LocalCluster(
        n_workers=1,
        processes=False,
        protocol="tls",
        security=sec,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        cfg = parse_config(
            {
                "input": {"path": "x", "id_column": "u", "features": ["a"]},
                "output": {"root": "o"},
                "cluster": {"type": "address", "address": cluster.scheduler_address, "tls": files},
            }
        )
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        with dask_client(cfg.cluster) as client:
            assert client.scheduler.address.startswith("tls://")
            X = np.random.default_rng(0).normal(size=(500, 2))
            gm = GaussianMixture(2, random_state=0).fit(da.from_array(X, chunks=(100, -1)))
            assert np.isfinite(gm.lower_bound_)


@pytest.mark.slow
def test_credentials_from_the_environment_never_reach_logs_or_outputs(tmp_path):
    secret = "gmmdask-test-credential-7f3a9c1e"
    spec = DemoSpec(n_users=1500, n_snapshots=1, seed=2, block_users=1500)
    write_demo_dataset(tmp_path / "data", spec)
    cfg = make_config(tmp_path, tmp_path / "data")
    env = {
        **os.environ,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ACCESS_KEY_ID": secret + "-id",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_LOGGING_LEVEL": "DEBUG",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "gmm_dask_cli", "-vv", "segment", "--config", str(cfg)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert secret not in out.stdout + out.stderr
    leaked = [
        str(p)
        for p in tmp_path.rglob("*")
        if p.is_file() and "data" not in p.parts and secret.encode() in p.read_bytes()
    ]
    assert leaked == []  # outputs, model registry, report, Prefect's database (logs and artifacts)
