"""End to end against a real Prefect server on 127.0.0.1 with the repository's deployments served:
a run triggered with a parameter override through the Prefect client (as the UI does), and a run
cancelled mid-fit. One server and one `serve` process for the module; both are stopped after."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from gmm_dask.demo import DemoSpec, write_demo_dataset

from .pipeline_helpers import make_config, read_partition
from .prefect_servers import prefect_server, serving, wait

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(api_url, env, tmp): a Prefect server plus `python -m flows.serve`, both on 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("e2e")
    spec = DemoSpec(n_users=3000, n_snapshots=2, seed=9, block_users=3000)
    write_demo_dataset(tmp / "data", spec)
    cfg = make_config(tmp, tmp / "data")
    with (
        prefect_server(tmp, PREFECT_LOGGING_LEVEL="INFO") as server,
        serving(server, cfg, tmp / "serve.log") as serve,
    ):
        yield {"env": server.env, "tmp": tmp, "spec": spec, "serve": serve}


def _client_script(served, script: str, *args, timeout=400) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _PRELUDE + script, *args],
        env=served["env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout + out.stderr + (served["tmp"] / "serve.log").read_text()[-3000:]
    return out.stdout


def test_served_deployment_runs_with_ui_style_parameter_override(served):
    spec, tmp = served["spec"], served["tmp"]
    out = _client_script(served, _TRIGGER, spec.dates[0])
    assert "state=COMPLETED" in out, out
    # a run with a model override writes a candidate; the published tables are untouched
    assert not (tmp / "out" / "memberships").exists()
    (cand,) = (tmp / "out" / "_candidates").iterdir()
    mem = read_partition(cand, "memberships", spec.dates[0])
    assert mem.num_rows == spec.n_users
    segs = read_partition(cand, "segments", spec.dates[0])
    assert segs.num_rows == 3  # the override reached the run: model.n_components = 3


def test_cancelling_a_run_mid_fit_stops_the_dask_work_and_writes_nothing(served, tmp_path):
    spec = DemoSpec(n_users=20000, n_snapshots=1, seed=13, block_users=5000)
    write_demo_dataset(tmp_path / "data", spec)
    cfg = make_config(
        tmp_path,
        tmp_path / "data",
        cluster={"type": "local", "n_workers": 2, "threads_per_worker": 1, "processes": True},
    )
    before = {p.pid for p in psutil.Process(served["serve"].pid).children(recursive=True)}
    out = _client_script(served, _CANCEL, str(cfg), spec.dates[0], str(served["serve"].pid))
    assert "cancelled-state=CANCELLED" in out, out
    assert "saw-workers=2" in out, out

    def run_processes_gone():
        now = {p.pid for p in psutil.Process(served["serve"].pid).children(recursive=True)}
        return not (now - before)

    wait(run_processes_gone, 60, "the cancelled run's processes (flow run and Dask workers) to exit")
    root = tmp_path / "out"
    assert not (root / "memberships").exists() or not any((root / "memberships").iterdir())
    assert not any(root.rglob("*.parquet")) if root.exists() else True
    assert not (root / "registry" / "versions").exists() or not any(
        (root / "registry" / "versions").iterdir()
    )


_PRELUDE = r"""
import sys, time, asyncio
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

def wait_for_deployment(name):
    async def go():
        async with get_client() as client:
            for _ in range(120):
                try:
                    return await client.read_deployment_by_name(name)
                except Exception:
                    await asyncio.sleep(1)
        raise SystemExit("deployment never appeared")
    return asyncio.run(go())
"""

_TRIGGER = r"""
wait_for_deployment("segment/daily")
run = run_deployment(
    "segment/daily",
    parameters={"snapshot": sys.argv[1], "model": {"n_components": 3, "covariance_type": "full", "random_state": 1}},
    timeout=360,
    poll_interval=2,
)
print(f"state={run.state.type.name} name={run.name}")
"""

_CANCEL = r"""
import psutil
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.states import Cancelling

wait_for_deployment("segment/daily")
run = run_deployment(
    "segment/daily",
    parameters={"config": sys.argv[1], "snapshot": sys.argv[2], "model": {"n_components": 6, "tol": 0, "max_iter": 100000}},
    timeout=0,
)

async def main():
    async with get_client() as client:
        deadline = time.time() + 240
        while time.time() < deadline:  # wait until EM iterations are being logged: mid-fit
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            if sum("EM init 1 iteration" in l.message for l in logs) >= 3:
                break
            await asyncio.sleep(1)
        else:
            raise SystemExit("the fit never started")
        # only the Dask worker processes this run started: descendants of the serve process
        serve = psutil.Process(int(sys.argv[3]))
        workers = [p for p in serve.children(recursive=True) if any("spawn_main" in c for c in p.cmdline())]
        print(f"saw-workers={len(workers)}")
        await client.set_flow_run_state(run.id, Cancelling(), force=True)
        for _ in range(120):
            fr = await client.read_flow_run(run.id)
            if fr.state.type.name in ("CANCELLED", "FAILED", "CRASHED", "COMPLETED"):
                break
            await asyncio.sleep(1)
        print(f"cancelled-state={fr.state.type.name}")

asyncio.run(main())
"""
