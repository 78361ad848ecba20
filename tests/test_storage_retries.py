"""One retry policy at every I/O edge, data files included (issue #23).

The store's outage is injected locally (``GMM_DASK_FAULT=transient:write_file:<seconds>``, see
``gmm_dask/storage/_faults.py``): every data-file write of a process fails with a transient
error for that long. An outage shorter than ``GMM_DASK_STORAGE_RETRY_SECONDS`` is bridged, in
Dask worker processes too; a longer one ends the run with one message naming the write and its
URL, exit 75, and no traceback. Behaviour is asserted, never seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gmm_dask.demo import DemoSpec, write_demo_dataset
from gmm_dask.errors import StorageUnavailableError
from gmm_dask.storage import _faults, io

from .pipeline_helpers import make_config

REPO = Path(__file__).resolve().parents[1]
TABLE = pa.table({"user_id": pa.array([1, 2, 3], pa.int64()), "x": pa.array([0.5, 1.5, 2.5])})


@pytest.fixture
def outage(monkeypatch):
    """Set an injected outage of the data-file writes (and the retry budget) for this process
    and the processes it starts."""

    def start(seconds: float, retry_seconds: float) -> None:
        monkeypatch.setenv("GMM_DASK_FAULT", f"transient:write_file:{seconds}")
        monkeypatch.setenv("GMM_DASK_STORAGE_RETRY_SECONDS", str(retry_seconds))
        _faults._OUTAGE_STARTED.clear()

    yield start
    _faults._OUTAGE_STARTED.clear()


def test_a_write_outlasting_the_retries_names_the_write_and_the_url(outage, tmp_path, caplog):
    outage(seconds=600, retry_seconds=1)
    path = str(tmp_path / "part-00000.parquet")
    with pytest.raises(StorageUnavailableError) as err:
        io.write_table_file(TABLE, path)
    msg = str(err.value)
    assert msg.startswith(f"Writing {path!r} failed: the store did not answer for ")
    assert "(InjectedOutage: injected storage outage at write_file" in msg
    assert "GMM_DASK_STORAGE_RETRY_SECONDS=1" in msg
    assert "transient storage error (InjectedOutage" in caplog.text  # it was retried meanwhile
    assert not os.path.exists(path)
    assert not io.is_transient(err.value)  # spent: an outer retry (or a Prefect task) does not start over


def test_a_shorter_outage_is_bridged_in_process_and_csv_too(outage, tmp_path):
    outage(seconds=0.3, retry_seconds=30)
    io.write_table_file(TABLE, str(tmp_path / "a.parquet"))
    io.write_csv_file(TABLE, str(tmp_path / "a.csv"))
    assert pq.read_table(tmp_path / "a.parquet").equals(TABLE)
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == '"user_id","x"'
    assert "write_file" in _faults._OUTAGE_STARTED  # the outage was met


def test_a_shorter_outage_is_bridged_inside_a_dask_task_on_worker_processes(outage, tmp_path):
    from distributed import Client, LocalCluster

    outage(seconds=1, retry_seconds=30)  # before the workers start: they inherit it
    path = str(tmp_path / "part-00000.parquet")
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.submit(io.write_table_file, TABLE, path, pure=False).result()
        met = client.run(lambda: sorted(_faults._OUTAGE_STARTED))  # the worker's own record
    assert list(met.values()) == [["write_file"]]  # the worker met the outage, and wrote after it
    assert pq.read_table(path).equals(TABLE)


def test_the_cli_ends_with_one_message_naming_the_write_exit_75_without_tracebacks(tmp_path):
    spec = DemoSpec(n_users=1500, n_snapshots=1, seed=3, block_users=1500)
    write_demo_dataset(tmp_path / "data", spec)
    cfg = make_config(
        tmp_path,
        tmp_path / "data",
        model={"n_components": 2, "random_state": 0, "tol": 1e-3, "max_iter": 20},
        cluster={"type": "local", "n_workers": 1, "threads_per_worker": 1, "processes": True},
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "GMM_DASK_"))} | {
        "GMM_DASK_FAULT": "transient:write_file:600",
        "GMM_DASK_STORAGE_RETRY_SECONDS": "1",
    }
    out = subprocess.run(
        [sys.executable, "-m", "gmm_dask_cli", "train", "--config", str(cfg), "--snapshot", spec.dates[0]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 75, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    root = str(tmp_path / "out")
    assert last.startswith(f"gmm-dask: storage unavailable: Writing '{root}/"), out.stderr[-3000:]
    assert ".parquet' failed: the store did not answer for " in last
    assert "GMM_DASK_STORAGE_RETRY_SECONDS=1" in last
    assert "transient storage error (InjectedOutage" in out.stderr  # retried before giving up
    assert "Traceback" not in out.stderr
    assert "Compute Failed" not in out.stderr
    assert not list((tmp_path / "out").rglob("memberships/dt=*/*.parquet"))  # nothing committed


def test_a_lock_that_cannot_be_released_does_not_hide_the_error_that_ended_the_run(
    tmp_path, monkeypatch, caplog
):
    from gmm_dask.storage.io import publishing

    def release_fails(fs, path, url):
        raise StorageUnavailableError(f"Releasing {url!r} failed: the store did not answer")

    monkeypatch.setattr(publishing, "_release", release_fails)
    with (
        pytest.raises(StorageUnavailableError, match=r"^Writing 'x' failed"),
        io.publish_lock(str(tmp_path), "2026-01-01"),
    ):
        raise StorageUnavailableError("Writing 'x' failed: the store did not answer")
    assert "Could not release the publish lock" in caplog.text
    released = pytest.raises(StorageUnavailableError, match=r"^Releasing '.*dt=2026-01-02\.lock' failed")
    with released, io.publish_lock(str(tmp_path), "2026-01-02"):
        pass  # nothing else failed: the release's own error is the one reported
