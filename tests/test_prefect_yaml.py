"""`prefect.yaml` from a fresh clone, exactly as its header says: a real `prefect server`, `prefect
deploy --all`, a process worker; two runs of the daily deployment for one date both complete, one
after the other (the deployment's concurrency limit queues the second)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from gmm_dask.demo import DemoSpec, write_demo_dataset

from .prefect_servers import prefect_server, stop, wait

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SPEC = DemoSpec(n_users=3000, n_snapshots=2, seed=4, block_users=3000)


def _api(api: str, path: str, body: dict) -> list[dict]:
    req = urllib.request.Request(
        f"{api}/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _runs(api: str, date: str) -> list[dict]:
    """The flow runs of ``date`` (not the daily schedule's future runs)."""
    runs = _api(api, "flow_runs/filter", {"sort": "EXPECTED_START_TIME_ASC"})
    return [r for r in runs if r["parameters"].get("snapshot") == date]


def test_prefect_yaml_deploys_from_a_fresh_clone_and_queues_two_daily_runs_of_a_date(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    write_demo_dataset(clone / "data" / "demo", SPEC)  # where configs/demo.yaml reads
    extra = {"PREFECT_WORKER_QUERY_SECONDS": "1"}
    with prefect_server(tmp_path, **extra) as server, (tmp_path / "worker.log").open("w") as worker_log:
        env, api = {k: v for k, v in server.env.items() if k != "GMM_DASK_REPO"}, server.api
        prefect = [sys.executable, "-m", "prefect"]

        def cli(*args: str) -> str:
            out = subprocess.run(
                [*prefect, *args], env=env, cwd=clone, capture_output=True, text=True, timeout=300
            )
            assert out.returncode == 0, out.stdout + out.stderr
            return out.stdout

        cli("work-pool", "create", "gmm-dask", "--type", "process")
        cli("--no-prompt", "deploy", "--all")
        worker = subprocess.Popen(
            [*prefect, "worker", "start", "--pool", "gmm-dask"],
            env=env,
            cwd=clone,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
        try:
            date = SPEC.dates[-1]
            for _ in range(2):
                cli("deployment", "run", "segment/daily", "--param", f"snapshot={date}")

            def finished() -> bool:
                runs = _runs(api, date)
                return len(runs) == 2 and all(
                    r["state_type"] in ("COMPLETED", "FAILED", "CRASHED") for r in runs
                )

            wait(finished, 480, "both daily runs", worker)
            first, second = sorted(_runs(api, date), key=lambda r: r["start_time"])
        finally:
            stop(worker)
    log = (tmp_path / "worker.log").read_text()[-4000:]
    assert first["state_type"] == "COMPLETED", log
    assert second["state_type"] == "COMPLETED", log
    assert second["start_time"] >= first["end_time"]  # one after the other
    assert (clone / "out" / "demo" / "memberships" / f"dt={date}").is_dir()
