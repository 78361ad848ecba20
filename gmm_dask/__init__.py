"""gmm-dask: Gaussian mixture segmentation at warehouse scale, on Dask.

Imports are lazy, so ``import gmm_dask`` (and the CLI's ``--help``) does not load Dask.
"""

from __future__ import annotations

import importlib
from typing import Any

from gmm_dask._version import package_version

__version__ = package_version()

_EXPORTS = {
    "GaussianMixture": "mixture.estimator",
    "SegmentationModel": "segmentation.model",
    "load_model": "storage.registry",
    "ComponentCollapseWarning": "errors",
    "ConvergenceWarning": "errors",
    "FitError": "errors",
    "GMMDaskError": "errors",
    "GMMDaskInputError": "errors",
    "NotFittedError": "errors",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gmm_dask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [*_EXPORTS, "__version__"]
