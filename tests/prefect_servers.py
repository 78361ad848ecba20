"""A real `prefect server` on 127.0.0.1 for the end-to-end and browser tests, and the process
helpers they share (free port, wait for a condition, stop a process)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout, what, proc=None):
    """Poll ``predicate`` (exceptions count as not yet) until true; fail after ``timeout`` seconds
    or as soon as ``proc`` exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited early with {proc.returncode}")
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen, timeout=30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass(frozen=True)
class Server:
    base: str  # the UI's address
    api: str
    env: dict[str, str]  # for clients: PREFECT_API_URL is this server


@contextlib.contextmanager
def prefect_server(tmp: Path, **extra_env: str) -> Iterator[Server]:
    """`prefect server start` on a free loopback port, its home under ``tmp``, its log in
    ``tmp/server.log``, its UI talking to its own API; stopped on exit."""
    port = free_port()
    base, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": api,  # else the UI calls the default port, 4200
        **extra_env,
    }
    env.pop("PREFECT_API_URL", None)
    with (tmp / "server.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait(
                lambda: urllib.request.urlopen(f"{api}/health", timeout=2).status == 200,
                150,
                "prefect server",
                server,
            )
            yield Server(base, api, {**env, "PREFECT_API_URL": api})
        finally:
            stop(server)


@contextlib.contextmanager
def serving(server: Server, config: Path, log: Path) -> Iterator[subprocess.Popen]:
    """`gmm-dask serve --config <config> --no-schedule` against ``server`` (output in ``log``);
    stopped on exit."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gmm_dask_cli", "serve", "--config", str(config), "--no-schedule"],
            env=server.env,
            cwd=Path(__file__).resolve().parents[1],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            stop(proc)
