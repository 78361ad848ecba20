"""gmm-dask on a real S3 server (SeaweedFS, started here on 127.0.0.1): both table formats, the
registry, concurrent and killed writers, transient and permanent storage errors.

No mock of S3 anywhere in this file: every read and write goes over HTTP to ``weed server -s3``
(see ``tests/s3server.py``), with the credentials in the environment only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from gmm_dask.app import jobs
from gmm_dask.app.params import ScoreParams, TrainParams
from gmm_dask.demo import FEATURES, DemoSpec, write_demo_dataset
from gmm_dask.errors import ExclusiveWriteUnsupported, PublishConflictError
from gmm_dask.storage import io

from .s3server import SECRET_KEY, SeaweedS3

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SPEC = DemoSpec(n_users=2400, n_snapshots=3, seed=5, block_users=1200, row_group_rows=600)
D = SPEC.dates


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A SeaweedFS S3 server with a ``data`` bucket holding the demo snapshots twice: as Hive
    Parquet directories (``s3://data/snapshots``) and as a Delta table partitioned by ``dt``
    (``s3://data/snapshots-delta``). Credentials are set in os.environ for the module."""
    import s3fs
    from deltalake import WriterProperties, write_deltalake

    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        server.create_bucket("data")
        server.create_bucket("out")
        local = tmp_path_factory.mktemp("demo")
        write_demo_dataset(local, SPEC)
        fs = s3fs.S3FileSystem(endpoint_url=server.endpoint)
        fs.put(str(local / "snapshots"), "data/snapshots", recursive=True)
        for d in D:
            t = pq.read_table(local / "snapshots" / f"dt={d}")
            t = t.append_column("dt", pa.array([d] * t.num_rows, pa.string()))
            write_deltalake(
                "s3://data/snapshots-delta",
                t,
                mode="append",
                partition_by=["dt"],
                storage_options={"AWS_ENDPOINT_URL": server.endpoint, "AWS_ALLOW_HTTP": "true"},
                writer_properties=WriterProperties(max_row_group_size=SPEC.row_group_rows),
            )
        server.fs = fs
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_PREFIXES = iter(range(1000))


def _config(tmp: Path, s3, *, fmt="delta", input_fmt="parquet", bucket="out", **output) -> Path:
    """A job config on the S3 server, writing under a fresh prefix of ``bucket``."""
    cfg = {
        "input": {
            "path": "s3://data/snapshots" + ("-delta" if input_fmt == "delta" else ""),
            "format": input_fmt,
            "id_column": "user_id",
            "features": [{"name": f, "transform": "log1p"} for f in FEATURES],
            "storage_options": s3.storage_options(),
        },
        "model": {"n_components": 3, "random_state": 0, "tol": 1e-3, "max_iter": 60},
        "output": {"root": f"s3://{bucket}/run{next(_PREFIXES)}", "format": fmt, **output},
        "cluster": {"type": "local", "n_workers": 1, "threads_per_worker": 2, "processes": False},
    }
    path = tmp / f"job{next(_PREFIXES)}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args, env=None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gmm_dask_cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _run(*args, env=None, timeout=300) -> tuple[int, str]:
    p = _cli(*args, env=env)
    out = p.communicate(timeout=timeout)[0]
    return p.returncode, out


def _delta(s3, root: str, table: str, version: int | None = None):
    from deltalake import DeltaTable

    opts = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_ALLOW_HTTP": "true"}
    return DeltaTable(f"{root}/{table}", version=version, storage_options=opts)


def _no_secret_under(s3, root: str) -> None:
    leaked = [k for k in s3.fs.find(root.removeprefix("s3://")) if SECRET_KEY.encode() in s3.fs.cat(k)]
    assert leaked == []  # tables, model files, aliases, locks, reports, manifests, Delta logs


# --- 1. both formats end to end: train, score, backfill, select-k --------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_delta_tables_on_s3_end_to_end_from_a_delta_input(s3, tmp_path):
    """train and score (CLI), backfill and select-k (flows) on s3://, input from a Delta table,
    outputs as Delta tables: each partition read back whole by deltalake and pyarrow, the
    previous version readable (time travel), model and schema version in the commit metadata."""
    from flows import backfill, select_k

    cfg = _config(tmp_path, s3, fmt="delta", input_fmt="delta")
    root = yaml.safe_load(cfg.read_text())["output"]["root"]
    rc, out = _run("train", "--config", str(cfg), "--snapshot", D[0])
    assert rc == 0, out[-3000:]
    assert "v0001 trained and registered" in out
    rc, out2 = _run("score", "--config", str(cfg), "--snapshot", D[1])
    assert rc == 0, out2[-3000:]
    assert SECRET_KEY not in out + out2

    m = _delta(s3, root, "memberships")
    before = m.version()
    d0 = m.to_pyarrow_table(filters=[("dt", "=", D[0])])
    assert d0.num_rows == SPEC.n_users == len(np.unique(d0.column("user_id").to_numpy()))

    # backfill (score mode, forced) replaces every date; the analysis writes the other tables
    res = backfill(start=D[0], end=D[2], mode="score", config=str(cfg), force=True, publish=True)
    assert [r["snapshot"] for r in res] == D
    m = _delta(s3, root, "memberships")
    assert m.version() > before
    full = m.to_pandas()
    assert full.groupby("dt")["user_id"].nunique().to_dict() == dict.fromkeys(D, SPEC.n_users)
    assert len(full) == SPEC.n_users * len(D)
    # time travel: the version before the backfill still holds the first two dates as written
    old = _delta(s3, root, "memberships", version=before).to_pyarrow_table()
    assert sorted(set(old.column("dt").to_pylist())) == D[:2]
    assert old.num_rows == 2 * SPEC.n_users
    # metadata: the Delta schema, and the model and schema version of each commit
    assert "gamma" in m.schema().to_arrow().names
    commits = [h for h in m.history() if h.get("operation") == "WRITE"]
    assert commits
    assert all(h["gmm_dask.model_version"] == "v0001" for h in commits)
    assert all(h["gmm_dask.schema_version"] and h["gmm_dask.table"] == "memberships" for h in commits)
    # every table of the daily run is a Delta table; pyarrow reads the current files too
    for table in ("segments", "overlaps", "transitions", "fluidity", "audiences", "forecast"):
        dates = {p["dt"] for p in _delta(s3, root, table).partitions()}
        assert dates >= set(D[1:]), table  # the first date has no previous one to compare with
    files = io.partition_files(root, "memberships", D[2], s3.storage_options())
    assert pq.ParquetDataset(files, filesystem=s3.fs).read().num_rows == SPEC.n_users
    assert (
        io.read_partition(root, "memberships", D[2], ["user_id"], s3.storage_options()).num_rows
        == SPEC.n_users
    )

    out = select_k(k_min=2, k_max=3, covariance_types=["diag"], config=str(cfg), snapshot=D[2])
    assert out["selected"]["n_components"] in (2, 3)
    registry = io.list_names(f"{root}/registry/versions", s3.storage_options())
    assert registry == ["v0001", "v0002"]  # the trained model, then the grid's best
    _no_secret_under(s3, root)
    _no_secret_in_prefect_database()


def _no_secret_in_prefect_database() -> None:
    """Flow and task logs, artifacts and parameters of this session's Prefect API."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    url = PREFECT_API_DATABASE_CONNECTION_URL.value() or ""
    db = Path(url.split(":///", 1)[-1])
    assert url.startswith("sqlite"), url
    assert db.exists(), db
    for f in db.parent.glob(db.name + "*"):  # the database and its write-ahead log
        assert SECRET_KEY.encode() not in f.read_bytes()


def test_delta_input_is_read_in_pieces_with_only_the_needed_columns(s3, tmp_path):
    """A Delta input snapshot streams like a Parquet one: cut into pieces by row groups, each
    piece read with only the configured columns."""
    from gmm_dask.app.config import load_config

    cfg = load_config(_config(tmp_path, s3, input_fmt="delta")).input
    assert io.list_snapshots(cfg) == D
    snap = io.open_snapshot(cfg, D[1], piece_rows=SPEC.row_group_rows)
    assert len(snap.pieces) == SPEC.n_users // SPEC.row_group_rows
    assert snap.n_rows == SPEC.n_users
    assert all(p.path.startswith(f"s3://data/snapshots-delta/dt={D[1]}/") for p in snap.pieces)
    t = io.read_piece(snap.pieces[1], ["user_id", FEATURES[0]], cfg.storage_options)
    assert t.column_names == ["user_id", FEATURES[0]]
    assert t.num_rows == snap.pieces[1].n_rows == SPEC.row_group_rows


def test_parquet_layout_on_s3_reads_back_with_pandas_pyarrow_and_duckdb(s3, tmp_path):
    """The default Hive-partitioned Parquet layout on s3://: pandas, pyarrow and DuckDB read it."""
    import duckdb
    import pyarrow.dataset as ds

    cfg = _config(tmp_path, s3, fmt="parquet")
    root = yaml.safe_load(cfg.read_text())["output"]["root"]
    jobs.train(TrainParams(config=str(cfg), snapshot=D[0]))
    jobs.score(ScoreParams(config=str(cfg), snapshot=D[1]))
    so = s3.storage_options()
    df = pd.read_parquet(f"{root}/memberships", storage_options=so)
    assert len(df) == 2 * SPEC.n_users
    dataset = ds.dataset(f"{root.removeprefix('s3://')}/segments", filesystem=s3.fs, partitioning="hive")
    assert dataset.to_table().num_rows == 2 * 3
    con = duckdb.connect()
    con.register_filesystem(s3.fs)
    n, users, dates = con.execute(
        f"SELECT count(*), count(DISTINCT user_id), count(DISTINCT dt) FROM "
        f"read_parquet('{root}/memberships/*/*.parquet', hive_partitioning = true)"
    ).fetchone()
    assert (n, users, dates) == (2 * SPEC.n_users, SPEC.n_users, 2)
    meta = io.partition_metadata(root, "memberships", D[1], so)
    assert meta["gmm_dask.model_version"] == "v0001"
    staging = s3.fs.find(f"{root.removeprefix('s3://')}/_staging")
    assert not [f for f in staging if f.endswith(".parquet")]  # staging cleaned up


# --- 2. killed and concurrent writers ----------------------------------------------------------


def _wait_for(proc: subprocess.Popen, line: str, timeout=240) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = proc.stdout.readline()
        if not text and proc.poll() is not None:
            break
        seen.append(text)
        if line in text:
            return "".join(seen)
    raise AssertionError(f"never printed {line!r}:\n" + "".join(seen)[-3000:])


def test_writer_killed_mid_commit_leaves_the_previous_delta_partition_whole(s3, tmp_path):
    """kill -9 after every file is staged, before the commit: readers keep the previous
    partition, whole; the next run takes over the dead run's lock and commits; vacuum
    removes the dead run's files."""
    cfg = _config(tmp_path, s3, fmt="delta")
    root = yaml.safe_load(cfg.read_text())["output"]["root"]
    jobs.train(TrainParams(config=str(cfg), snapshot=D[0]))
    first = _delta(s3, root, "memberships").to_pyarrow_table().sort_by("user_id")
    version = _delta(s3, root, "memberships").version()

    p = _cli("score", "--config", str(cfg), "--snapshot", D[0], env={"GMM_DASK_FAULT": "before_commit:120"})
    _wait_for(p, "GMM_DASK_FAULT reached before_commit")
    staged = [f for f in s3.fs.find(root.removeprefix("s3://") + "/memberships") if "/run-" in f]
    p.kill()
    p.communicate(timeout=30)
    assert staged  # the killed run had written its files into the table directory...
    m = _delta(s3, root, "memberships")
    assert m.version() == version  # ...but never committed them
    assert m.to_pyarrow_table().sort_by("user_id").equals(first)
    assert io.read_partition(root, "memberships", D[0], None, s3.storage_options()).num_rows == SPEC.n_users

    jobs.score(ScoreParams(config=str(cfg), snapshot=D[0]))  # the dead run's lock is taken over
    m = _delta(s3, root, "memberships")
    assert m.version() == version + 1
    assert m.to_pyarrow_table().num_rows == SPEC.n_users
    orphans = io.delta_vacuum(f"{root}/memberships", s3.storage_options(), retention_hours=0, dry_run=False)
    assert any(Path(s).name == Path(staged[0]).name for s in orphans)
    assert _delta(s3, root, "memberships").to_pyarrow_table().num_rows == SPEC.n_users


def _models(store: io.TableStore, date: str, tables) -> dict[str, set[str]]:
    return {
        t: set(store.read(t, date, ["model_version"]).column("model_version").to_pylist()) for t in tables
    }


def test_a_run_killed_between_two_table_commits_leaves_the_date_whole_on_s3(s3, tmp_path):
    """kill -9 after each of a date's table commits (Delta on S3): gmm-dask's readers and a
    reader following the date's record both read one model across the tables; the next run of
    the date puts the previous partitions back and publishes whole."""
    import json

    tables = ("segments", "overlaps", "memberships")  # in commit order
    cfg = _config(tmp_path, s3, fmt="delta")
    root = yaml.safe_load(cfg.read_text())["output"]["root"]
    store = io.TableStore(root, s3.storage_options(), "delta")
    record_key = root.removeprefix("s3://") + f"/_published/dt={D[0]}.json"

    def from_record() -> dict[str, set[str]]:
        record = json.loads(s3.fs.cat(record_key))
        return {
            t: set(
                _delta(s3, root, t, record["tables"][t]["version"])
                .to_pyarrow_table(filters=[("dt", "=", D[0])], columns=["model_version"])
                .column("model_version")
                .to_pylist()
            )
            for t in tables
        }

    jobs.train(TrainParams(config=str(cfg), snapshot=D[0]))
    for t in tables:
        before = _models(store, D[0], tables)
        assert len(set.union(*before.values())) == 1
        p = _cli(
            "train",
            "--force",
            "--config",
            str(cfg),
            "--snapshot",
            D[0],
            env={"GMM_DASK_FAULT": f"committed_{t}:120"},
        )
        _wait_for(p, f"GMM_DASK_FAULT reached committed_{t}")
        p.kill()
        p.communicate(timeout=30)
        assert store.pending(D[0])
        assert _models(store, D[0], tables) == before, t
        assert from_record() == before, t
        jobs.train(TrainParams(config=str(cfg), snapshot=D[0], force=True))  # takes over the lock, repairs
        after = _models(store, D[0], tables)
        assert len(set.union(*after.values())) == 1, (t, after)
        assert after != before
        assert from_record() == after
        assert not store.pending(D[0])
        assert store.read("memberships", D[0], ["user_id"]).num_rows == SPEC.n_users


def test_two_writers_of_one_date_exactly_one_commits_whole(s3, tmp_path):
    """Two writers of one Delta partition that overlap in time: the first commit wins whole, the
    other fails with a clear conflict (its files never become visible); writers of other dates
    are not affected. Across processes, the publish lock (a conditional PUT) makes the second
    run stop before it writes."""
    cfg = _config(tmp_path, s3, fmt="delta")
    root = yaml.safe_load(cfg.read_text())["output"]["root"]
    so = s3.storage_options()

    def table(tag, n):
        return pa.table({"user_id": pa.array(range(n), pa.int64()), "tag": pa.array([tag] * n)})

    io.write_partition(root, "t", D[0], table("initial", 5), so, "delta")
    a = io.StagedPartitions(root, ["t"], D[0], so, "delta").__enter__()
    b = io.StagedPartitions(root, ["t"], D[0], so, "delta").__enter__()
    other = io.StagedPartitions(root, ["t"], D[1], so, "delta").__enter__()
    a.write("t", table("a", 7))
    b.write("t", table("b", 9))
    other.write("t", table("other", 3))
    a.__exit__(None, None, None)
    with pytest.raises(PublishConflictError, match=r"t dt=\S+: another run replaced this partition"):
        b.__exit__(None, None, None)
    other.__exit__(None, None, None)  # another date: no conflict
    t = io.read_partition(root, "t", D[0], None, so)
    assert t.column("tag").to_pylist() == ["a"] * 7
    assert io.read_partition(root, "t", D[1], None, so).num_rows == 3
    assert not [f for f in s3.fs.find(root.removeprefix("s3://") + "/t") if b.writers["t"].run in f]

    # two `score` runs of one date at once: one publishes, the other stops having written nothing
    jobs.train(TrainParams(config=str(cfg), snapshot=D[0]))
    first = _cli("score", "--config", str(cfg), "--snapshot", D[1], env={"GMM_DASK_FAULT": "before_commit:6"})
    _wait_for(first, "GMM_DASK_FAULT reached before_commit")
    with pytest.raises(PublishConflictError, match=f"Snapshot {D[1]} is being published by another run"):
        jobs.score(ScoreParams(config=str(cfg), snapshot=D[1]))
    out = first.communicate(timeout=120)[0]
    assert first.returncode == 0, out[-3000:]
    m = io.read_partition(root, "memberships", D[1], ["user_id"], so)
    assert m.num_rows == SPEC.n_users == len(np.unique(m.column("user_id").to_numpy()))


def test_concurrent_trainings_register_distinct_versions(s3, tmp_path):
    """Two `train` runs at once (candidates of one snapshot) register two versions; 6 threads
    registering at once get 6 distinct versions: claims are conditional PUTs."""
    from gmm_dask.storage.registry import ModelRegistry

    from .test_registry_config import _model

    cfg = _config(tmp_path, s3, fmt="delta")
    root = yaml.safe_load(cfg.read_text())["output"]["root"]
    procs = [_cli("train", "--config", str(cfg), "--snapshot", D[0], "--no-publish") for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    versions = sorted(re.search(r"model (v\d+) trained and registered", o).group(1) for o in outs)
    assert versions == ["v0001", "v0002"]

    reg = ModelRegistry(f"{root}/registry", s3.storage_options())
    got: list[str] = []
    barrier = threading.Barrier(6)

    def register():
        barrier.wait()
        got.append(reg.register(_model(), alias=None).version)

    threads = [threading.Thread(target=register) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [f"v{i:04d}" for i in range(3, 9)]
    assert all(reg.load(v).version == v for v in got)


# --- 3. transient and permanent storage errors ---------------------------------------------------


def test_store_down_for_a_moment_is_retried_and_the_run_succeeds(s3, tmp_path):
    cfg = _config(tmp_path, s3, fmt="delta")
    root = yaml.safe_load(cfg.read_text())["output"]["root"]
    jobs.train(TrainParams(config=str(cfg), snapshot=D[0]))
    s3.stop()
    try:
        # botocore's own retries off, so that gmm-dask's retry is what bridges the outage
        p = _cli("score", "--config", str(cfg), "--snapshot", D[1], env={"AWS_MAX_ATTEMPTS": "1"})
        seen = _wait_for(p, "transient storage error", timeout=120)  # it met the outage
    finally:
        s3.start()
    out = seen + p.communicate(timeout=300)[0]
    assert p.returncode == 0, out[-3000:]
    assert re.search(r"transient storage error \(EndpointConnectionError.*\); retrying in", out), out[-3000:]
    assert (
        io.read_partition(root, "memberships", D[1], ["user_id"], s3.storage_options()).num_rows
        == SPEC.n_users
    )
    assert SECRET_KEY not in out


def test_missing_bucket_and_bad_credentials_exit_2_naming_the_url_without_credentials(s3, tmp_path):
    cfg = _config(tmp_path, s3, bucket="no-such-bucket")
    rc, out = _run("train", "--config", str(cfg), "--snapshot", D[0])
    assert rc == 2, out[-3000:]
    assert re.search(r"output.root 's3://no-such-bucket/run\d+': bucket 'no-such-bucket' does not exist", out)
    assert "Traceback" not in out

    cfg = _config(tmp_path, s3)
    wrong = "gmmdask-wrong-secret-8c1f0a"
    rc, out = _run("score", "--config", str(cfg), "--snapshot", D[0], env={"AWS_SECRET_ACCESS_KEY": wrong})
    assert rc == 2, out[-3000:]
    # a HEAD request's 403 has no body: the code is the HTTP status
    assert re.search(r"input.path 's3://data/snapshots': access denied \((403|SignatureDoesNotMatch)\)", out)
    assert wrong not in out
    assert SECRET_KEY not in out
    assert "Traceback" not in out


def test_a_store_without_exclusive_writes_is_refused_clearly(tmp_path):
    """Where gmm-dask cannot create a file exclusively, the registry refuses instead of risking
    two trainings sharing a version."""
    from gmm_dask.storage.registry import ModelRegistry

    from .test_registry_config import _model

    with pytest.raises(
        ExclusiveWriteUnsupported, match=r"'memory://reg/versions/v0001/model.json': .*memory://"
    ):
        ModelRegistry("memory://reg").register(_model())
