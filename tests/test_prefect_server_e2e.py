"""End to end against a real Prefect server on 127.0.0.1: serve the deployments, trigger a run
with a parameter override through the Prefect client (as the UI does), check what it wrote."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gmm_dask.demo import DemoSpec, write_demo_dataset

from .pipeline_helpers import make_config, read_partition

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout, what, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited early with {proc.returncode}")
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(proc: subprocess.Popen, timeout=30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_served_deployment_runs_with_ui_style_parameter_override(tmp_path):
    spec = DemoSpec(n_users=3000, n_snapshots=2, seed=9, block_users=3000)
    write_demo_dataset(tmp_path / "data", spec)
    cfg = make_config(tmp_path, tmp_path / "data")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    env.pop("PREFECT_API_URL", None)
    logs = (tmp_path / "server.log").open("w"), (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=logs[0], stderr=subprocess.STDOUT,
    )
    served = None
    try:
        _wait(lambda: urllib.request.urlopen(f"{api}/health", timeout=2).status == 200, 150, "prefect server", server)
        client_env = {**env, "PREFECT_API_URL": api}
        served = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "--config", str(cfg), "--no-schedule"],
            env=client_env, cwd=REPO, stdout=logs[1], stderr=subprocess.STDOUT,
        )
        trigger = subprocess.run(
            [sys.executable, "-c", _TRIGGER, spec.dates[0]],
            env=client_env, cwd=REPO, capture_output=True, text=True, timeout=400,
        )
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr + (tmp_path / "serve.log").read_text()[-3000:]
        assert "state=COMPLETED" in trigger.stdout, trigger.stdout
        mem = read_partition(tmp_path / "out", "memberships", spec.dates[0])
        assert mem.num_rows == spec.n_users
        segs = read_partition(tmp_path / "out", "segments", spec.dates[0])
        assert segs.num_rows == 3  # the override reached the run: model.n_components = 3
        assert not (tmp_path / "out" / "memberships" / f"dt={spec.dates[1]}").exists()
    finally:
        if served is not None:
            _stop(served)
        _stop(server)
        for f in logs:
            f.close()


# Runs in a separate process with PREFECT_API_URL pointing at the test server.
_TRIGGER = r"""
import sys, time, asyncio
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

async def wait_for_deployment():
    async with get_client() as client:
        for _ in range(120):
            try:
                return await client.read_deployment_by_name("segment/daily")
            except Exception:
                await asyncio.sleep(1)
    raise SystemExit("deployment never appeared")

asyncio.run(wait_for_deployment())
run = run_deployment(
    "segment/daily",
    parameters={"snapshot": sys.argv[1], "model": {"n_components": 3, "covariance_type": "full", "random_state": 1}},
    timeout=360,
    poll_interval=2,
)
print(f"state={run.state.type.name} name={run.name}")
"""
