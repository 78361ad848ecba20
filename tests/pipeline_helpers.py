"""Helpers shared by the pipeline and flow tests: small demo datasets and configs in tmp dirs."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import yaml

from gmm_dask.app import cluster, pipeline
from gmm_dask.demo import FEATURES, DemoSpec, write_demo_dataset

SMALL = DemoSpec(n_users=6000, n_snapshots=3, seed=11, block_users=2500, row_group_rows=1000)


def make_config(tmp: Path, data_root: Path, **sections) -> Path:
    """Write a job config for demo data under ``data_root``; ``sections`` override whole sections."""
    cfg = {
        "input": {
            "path": str(data_root / "snapshots"),
            "id_column": "user_id",
            "features": [{"name": f, "transform": "log1p"} for f in FEATURES],
            "missing": "error",
        },
        "model": {"n_components": 5, "random_state": 0, "tol": 1e-4, "max_iter": 200},
        "output": {"root": str(tmp / "out")},
        "cluster": {"type": "local", "n_workers": 1, "threads_per_worker": 2, "processes": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def demo_data(root: Path, spec: DemoSpec = SMALL) -> Path:
    write_demo_dataset(root, spec)
    return root


def read_partition(root: Path, table: str, date: str):
    return ds.dataset(root / table / f"dt={date}", format="parquet").to_table()


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (relative names)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def gamma_matrix(table) -> np.ndarray:
    return np.asarray(table.column("gamma").to_pylist(), dtype=float)


def flow_schema(flow_name: str) -> tuple[dict, type]:
    """The Prefect parameter schema of a flow (what its UI form is built from) and the job's
    parameter model it is generated from."""
    from prefect.utilities.callables import parameter_schema

    import flows
    from gmm_dask.app import params

    models = {
        "segment": params.SegmentParams,
        "train": params.TrainParams,
        "score": params.ScoreParams,
        "backfill": params.BackfillParams,
        "select_k": params.SelectKParams,
        "fluidity": params.FluidityParams,
        "audience": params.AudienceParams,
    }
    return parameter_schema(getattr(flows, flow_name).fn).model_dump_for_openapi(), models[flow_name]


def forbid_starts(monkeypatch) -> None:
    """Fail on any attempt to start Prefect (import ``flows``) or a Dask cluster or client."""

    def refuse(*args, **kwargs):
        raise AssertionError("a cluster was started")

    monkeypatch.setitem(sys.modules, "flows", None)  # `import flows` raises ImportError
    monkeypatch.setattr(pipeline, "cluster", refuse)
    monkeypatch.setattr(cluster, "dask_client", refuse)
    import distributed

    # the classes themselves stay (Dask asks ``Client.current()`` whether one is active)
    monkeypatch.setattr(distributed.Client, "__init__", refuse)
    monkeypatch.setattr(distributed.LocalCluster, "__init__", refuse)


def kill_at_fault(argv: list[str], point: str, before_kill=None, timeout: float = 180) -> None:
    """Run ``gmm-dask <argv>`` with ``GMM_DASK_FAULT=<point>:120`` and ``kill -9`` it once it
    reaches ``point`` (after calling ``before_kill()``, if given, at that moment)."""
    import os
    import signal
    import subprocess
    import time

    env = {**os.environ, "GMM_DASK_FAULT": f"{point}:120"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gmm_dask_cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        deadline = time.time() + timeout
        assert proc.stdout is not None
        for line in proc.stdout:
            if f"GMM_DASK_FAULT reached {point}" in line:
                break
            assert time.time() < deadline, f"the run never reached {point}"
        else:
            raise AssertionError(f"the run ended before {point}")
        if before_kill is not None:
            before_kill()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
