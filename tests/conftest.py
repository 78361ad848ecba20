"""Shared fixtures: one real 2-process LocalCluster on 127.0.0.1 for the whole session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from gmm_dask_cli import no_usage_data

# Property tests draw the same examples on every run of the default test command, so a CI run
# is reproducible; GMM_DASK_HYPOTHESIS=explore draws fresh ones (a fuzzing session).
settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("GMM_DASK_HYPOTHESIS", "repeatable"))
# retried I/O steps wait 0.5 s instead of 5 s in the tests (read when flows/tasks.py is imported)
os.environ.setdefault("GMM_DASK_RETRY_DELAY", "0.5")
# the temporary Prefect APIs and servers the tests start send no telemetry, whatever the
# directory pytest runs from (pyproject.toml's setting holds only in the repository root)
no_usage_data(os.environ)


CHROMIUM = os.environ.get("GMM_DASK_CHROMIUM", "/usr/bin/chromium")
#: Chromium's switches for the browser tests: headless, no sandbox, nothing fetched but the page.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium (Playwright drives it; its own browser builds are never downloaded)."""
    path = shutil.which(CHROMIUM) or (CHROMIUM if Path(CHROMIUM).is_file() else None)
    why = f"no Chromium at {CHROMIUM} (./dev test installs Debian's chromium when it can: apt-get, as root)"
    if path:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            path, why = None, "Playwright's Python package is not installed"
    if path:
        return path
    if os.environ.get("GMM_DASK_REQUIRE_BROWSER") == "1":
        pytest.fail(why + "; GMM_DASK_REQUIRE_BROWSER=1 makes it required")
    pytest.skip(why)


def rel_err(a, b) -> float:
    """max |a − b| / max |b|: the relative error of an array as a whole."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def assert_rel(a, b, rtol, what=""):
    err = rel_err(a, b)
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"


@pytest.fixture(scope="session")
def dask_cluster():
    """A ``distributed.LocalCluster`` with 2 worker processes bound to 127.0.0.1."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    )
    yield cluster
    cluster.close()


@pytest.fixture
def dask_client(dask_cluster):
    """A client to the session cluster, made the default for the test's duration."""
    from distributed import Client

    with Client(dask_cluster, set_as_default=True) as client:
        yield client


def blobs(n=3000, k=4, d=3, sep=8.0, seed=0):
    """Well-separated Gaussian blobs with known labels and parameters."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=sep, size=(k, d))
    labels = rng.integers(0, k, n)
    scales = rng.uniform(0.5, 1.5, size=(k, d))
    X = means[labels] + rng.normal(size=(n, d)) * scales[labels]
    return X, labels, means


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for every flow test in the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
