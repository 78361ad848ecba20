"""gmm-dask: Gaussian mixture segmentation at warehouse scale, on Dask."""

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    ComponentCollapseWarning,
    ConvergenceWarning,
    FitError,
    GMMDaskError,
    GMMDaskInputError,
    NotFittedError,
)
from .mixture import GaussianMixture

try:
    __version__ = version("gmm-dask")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "ComponentCollapseWarning",
    "ConvergenceWarning",
    "FitError",
    "GMMDaskError",
    "GMMDaskInputError",
    "GaussianMixture",
    "NotFittedError",
    "__version__",
]
