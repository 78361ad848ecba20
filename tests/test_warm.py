"""`mixture.warm.warm_up` loads every compiled kernel of both families, so ``client.run(warm_up)``
leaves no kernel for a worker's first fit to load (checked in a fresh process, under numba's JIT:
after it, fits of both families compile or load nothing more). With the kernels built ahead of
time there is nothing to load: tests/test_aot.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = r"""
import importlib, json, pkgutil, warnings
import numpy as np
import gmm_dask.mixture
from numba.core.registry import CPUDispatcher
from gmm_dask import GaussianMixture
from gmm_dask.mixture.behaviour.estimator import BehaviourMixture
from gmm_dask.mixture.warm import warm_up

names = [m.name for m in pkgutil.walk_packages(gmm_dask.mixture.__path__, "gmm_dask.mixture.")]
mods = list(map(importlib.import_module, names))
def loaded():
    return {f"{m.__name__}.{k}": len(v.signatures) for m in mods for k, v in vars(m).items() if isinstance(v, CPUDispatcher)}
warm_up()
after_warm = loaded()
rng = np.random.default_rng(1)
n = 3000
c = rng.poisson(3.0, n).astype(float)
X = np.column_stack([c, np.where(c > 0, rng.lognormal(1, .5, n), 0.0), rng.integers(0, 2, n).astype(float), rng.normal(size=n)])
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    BehaviourMixture(3, kinds=["count", "amount", "binary", "continuous"], max_iter=3, random_state=0).fit(X).predict_proba(X)
    GaussianMixture(3, max_iter=3, random_state=0).fit(X).predict_proba(X)
print(json.dumps({"warm": after_warm, "fits": loaded()}))
"""


def test_after_warm_up_fits_of_both_families_load_no_more_kernels():
    env = {**os.environ, "GMM_DASK_KERNELS": "jit"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=600, check=True, env=env
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["warm"]["gmm_dask.mixture._kernels.estep_tiles"] > 0  # the Gaussian kernel...
    assert any(".behaviour." in k and n > 0 for k, n in seen["warm"].items())  # ...and the behaviour one
    assert seen["fits"] == seen["warm"]  # the fits found every kernel they call loaded already
