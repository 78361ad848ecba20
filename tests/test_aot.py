"""The kernels built ahead of time (`gmm_dask.mixture.aot`, `python -m gmm_dask.mixture.build_kernels`):
a new process loads them without importing numba and gets numba's results bit for bit; calls
they were not built for, kernels changed since and failed builds fall back to numba's JIT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gmm_dask.mixture import aot

FITS = r"""
import hashlib, json, sys, warnings
import numpy as np
from gmm_dask import GaussianMixture
from gmm_dask.mixture.behaviour.estimator import BehaviourMixture
from gmm_dask.mixture.suffstats import estep_stats

def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float64).tobytes()).hexdigest()

rng = np.random.default_rng(7)
n = 4000
c = rng.poisson(np.where(rng.random(n) < 0.4, 0.3, 4.0)).astype(float)
X = np.column_stack([c, np.where(c > 0, rng.lognormal(1, .5, n), 0.0), rng.integers(0, 2, n).astype(float), rng.normal(size=n)])
out = {}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    g = GaussianMixture(3, covariance_type="full", max_iter=20, random_state=0).fit(X)
    out["gaussian"] = [g.lower_bound_.hex(), digest(g.means_), digest(g.predict_proba(X))]
    d = GaussianMixture(3, covariance_type="diag", max_iter=5, random_state=1).fit(X)
    out["diag"] = [d.lower_bound_.hex(), digest(d.predict_proba(X))]
    s = estep_stats(X, None, g.weights_, g.means_, g.precisions_cholesky_, "full", precision="float32")
    out["float32"] = [digest(s.nk), digest(s.means)]
    b = BehaviourMixture(3, kinds=["count", "amount", "binary", "continuous"], max_iter=10, random_state=0).fit(X)
    out["behaviour"] = [b.lower_bound_.hex(), digest(b.predict_proba(X)), digest(b.score_samples(X))]
out["numba_imported"] = "numba" in sys.modules
out["aot_loaded"] = __import__("gmm_dask.mixture.aot", fromlist=["loaded"]).loaded()
print(json.dumps(out))
"""


def _run(code: str, **env: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env={**os.environ, **env}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kernels built into a directory of this test's own (as ``./dev`` builds them)."""
    where = tmp_path_factory.mktemp("kernels")
    proc = subprocess.run(
        [sys.executable, "-m", "gmm_dask.mixture.build_kernels", "--dir", str(where)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(where.glob("gmm_dask_kernels_*.json"))) == 1
    return where


def test_a_new_process_fits_with_the_built_kernels_without_numba_bit_for_bit_as_the_jit(built: Path) -> None:
    ahead = _run(FITS, GMM_DASK_KERNEL_DIR=str(built))
    jit = _run(FITS, GMM_DASK_KERNEL_DIR=str(built), GMM_DASK_KERNELS="jit")
    assert ahead["aot_loaded"] is True
    assert ahead["numba_imported"] is False
    assert jit["aot_loaded"] is False
    assert jit["numba_imported"] is True
    for what in ("gaussian", "diag", "float32", "behaviour"):
        assert ahead[what] == jit[what], what


def test_calls_the_module_was_not_built_for_go_to_the_jit(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GMM_DASK_KERNEL_DIR", str(built))
    aot._load.cache_clear()
    try:
        n, d = 10, 2
        X = np.zeros((n, d))
        ia, ja = (np.asarray(v, dtype=np.int64) for v in np.triu_indices(d))
        args = (
            X, np.empty(0), False, np.zeros(d), np.zeros((4, 8)), ia, ja, 1, 256, 1, False,
            np.empty(n), np.zeros((1, 4, 8)), np.zeros(1),
        )  # fmt: skip
        assert aot.loaded()
        built_module = aot._load()[0]  # type: ignore[index]
        assert aot.kernel("estep_tiles", args) is built_module.estep_tiles_0
        fortran = (np.asfortranarray(np.zeros((n, d))), *args[1:])
        assert aot.kernel("estep_tiles", fortran) is aot.jit_kernel("estep_tiles")
        as_int = (X.astype(np.int64), *args[1:])
        assert aot.kernel("estep_tiles", as_int) is aot.jit_kernel("estep_tiles")
        monkeypatch.setenv("GMM_DASK_KERNELS", "jit")
        assert not aot.loaded()
        assert aot.kernel("estep_tiles", args) is aot.jit_kernel("estep_tiles")
    finally:
        aot._load.cache_clear()


def test_a_changed_kernel_has_another_key_so_its_old_module_is_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies = []
    for src in aot.SOURCES:
        dst = tmp_path / src.name
        dst.write_bytes(src.read_bytes())
        copies.append(dst)
    monkeypatch.setattr(aot, "SOURCES", tuple(copies))
    aot.key.cache_clear()
    try:
        before = aot.key()
        aot.key.cache_clear()
        copies[0].write_text(copies[0].read_text() + "\n# changed\n")
        assert aot.key() != before
    finally:
        aot.key.cache_clear()


def test_a_failed_build_says_why_exits_1_and_leaves_no_module(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gmm_dask.mixture.build_kernels", "--dir", str(tmp_path), "--force"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "CC": "/bin/false"},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Could not build gmm-dask's kernels" in proc.stderr
    assert "Fits still run" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def _worker_modules() -> list[str]:
    return sorted(sys.modules)


def test_dask_workers_fit_both_families_without_importing_numba_pandas_or_scipy(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh worker's first fit pays for no import it does not use (the cold start)."""
    import warnings

    import dask.array as da
    from distributed import Client, LocalCluster

    from gmm_dask import GaussianMixture
    from gmm_dask.mixture.behaviour.estimator import BehaviourMixture

    monkeypatch.setenv("GMM_DASK_KERNEL_DIR", str(built))  # the workers inherit it
    rng = np.random.default_rng(3)
    n = 6000
    c = rng.poisson(2.0, n).astype(float)
    X = np.column_stack([c, np.where(c > 0, rng.lognormal(1, 0.5, n), 0.0), rng.normal(size=n)])
    Xd = da.from_array(X, chunks=(1500, -1))
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster,
        Client(cluster) as client,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        BehaviourMixture(2, kinds=["count", "amount", "continuous"], max_iter=3, random_state=0).fit(Xd)
        GaussianMixture(2, max_iter=3, random_state=0).fit(Xd)
        (modules,) = client.run(_worker_modules).values()
    assert aot.module_name() in modules  # the E-steps ran on the built kernels
    for heavy in ("numba", "pandas", "scipy"):
        assert heavy not in modules, heavy


def test_a_train_job_on_a_cluster_loads_neither_numba_nor_scipy_in_its_workers(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's worker tasks (profile, fit, summary, scoring) import only what they use."""
    import yaml
    from distributed import Client, LocalCluster

    from gmm_dask.app import jobs
    from gmm_dask.app.params import TrainParams
    from gmm_dask.demo import FEATURE_KINDS, FEATURES, DemoSpec, write_demo_dataset

    monkeypatch.setenv("GMM_DASK_KERNEL_DIR", str(built))  # the workers inherit it
    write_demo_dataset(tmp_path / "data", DemoSpec(n_users=4000, n_snapshots=1))
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        cfg = {
            "input": {
                "path": str(tmp_path / "data" / "snapshots"),
                "id_column": "user_id",
                "features": [{"name": f, "kind": FEATURE_KINDS[f]} for f in FEATURES],
            },
            "model": {"n_components": 3, "max_iter": 5},
            "output": {"root": str(tmp_path / "out")},
            "cluster": {"type": "address", "address": cluster.scheduler_address},
        }
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
        res = jobs.train(TrainParams(config=str(tmp_path / "job.yaml"), publish=True))
        (modules,) = client.run(_worker_modules).values()
    assert res.counts["rows_written"] == 4000  # the job ran its tasks on this cluster
    assert aot.module_name() in modules
    assert "numba" not in modules
    assert "scipy" not in modules


GIL_PROBE = r"""
import json, threading, time
import numpy as np
from gmm_dask.mixture import aot

n, d, k = 600_000, 16, 8
rng = np.random.default_rng(0)
X = rng.normal(size=(n, d))
ia, ja = (np.asarray(v, dtype=np.int64) for v in np.triu_indices(d))
pp = -(-(len(ia) + d + 1) // 4) * 4
args = (X, np.empty(0), False, np.zeros(d), rng.normal(size=(k, pp)) * 1e-3, ia, ja, k, 224, 10**9, False,
        np.empty(n), np.zeros((1, k, pp)), np.zeros(k))
kernel = aot.kernel("estep_tiles", args)
kernel(*args)  # loaded
done = threading.Event()
def run():
    kernel(*args)
    done.set()
def spin(until):
    count = 0
    while not until():
        count += 1
    return count
t0 = time.perf_counter(); rate = spin(lambda: time.perf_counter() - t0 > 0.05) / 0.05
thread = threading.Thread(target=run)
t0 = time.perf_counter()
thread.start()
count = spin(done.is_set)
took = time.perf_counter() - t0
thread.join()
print(json.dumps({"loaded": aot.loaded(), "share": count / (rate * took), "took": took}))
"""


def test_the_built_kernels_let_other_threads_run_meanwhile(built: Path) -> None:
    """As numba's ``nogil=True`` does: a worker with several threads runs their kernels at once."""
    out = _run(GIL_PROBE, GMM_DASK_KERNEL_DIR=str(built))
    assert out["loaded"] is True
    # with the GIL held this thread would wait out the whole call (a share near 0)
    assert out["share"] > 0.3, out


def test_a_process_finds_the_module_beside_the_package_or_in_its_users_cache(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built at install beside a package other users cannot write to, or by a user in their cache."""
    import shutil

    monkeypatch.delenv("GMM_DASK_KERNEL_DIR", raising=False)
    package, cache = tmp_path / "package", tmp_path / "cache"
    (package / "__pycache__").mkdir(parents=True)
    monkeypatch.setattr(aot, "HERE", package)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    aot._load.cache_clear()
    try:
        assert not aot.loaded()
        for where in (cache / "gmm-dask" / "kernels", package / "__pycache__"):
            where.mkdir(parents=True, exist_ok=True)
            for f in built.glob(f"{aot.module_name()}*"):
                shutil.copy(f, where / f.name)
            aot._load.cache_clear()
            assert aot.loaded(), where
            shutil.rmtree(where)
    finally:
        aot._load.cache_clear()
