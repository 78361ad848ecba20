"""What the engine accepts, defined once: covariance types, initialisation methods and the
bounds of the hyper-parameters.

:class:`~gmm_dask.mixture.estimator.GaussianMixture` checks its arguments against these
(:mod:`gmm_dask.mixture.validation`); the pipeline's configuration models import the same names
for their field types and bounds. Only the standard library is imported here, so a config model
can use them without loading NumPy's or Dask's machinery.
"""

from __future__ import annotations

from typing import Final, Literal, TypeGuard, get_args

#: Covariance structure of each component (scikit-learn's names).
CovarianceType = Literal["full", "tied", "diag", "spherical"]
COVARIANCE_TYPES: Final[tuple[CovarianceType, ...]] = get_args(CovarianceType)
DEFAULT_COVARIANCE_TYPE: Final[CovarianceType] = "full"

#: Initialisation methods (see :mod:`gmm_dask.mixture.init`).
InitMethod = Literal["k-means-sample", "k-means||", "k-means++", "random", "random_from_data"]
INIT_METHODS: Final[tuple[InitMethod, ...]] = get_args(InitMethod)
DEFAULT_INIT_METHOD: Final[InitMethod] = "k-means-sample"

#: Second moments a covariance type needs: 'full' (K, D, D) or 'diag' (K, D).
MomentKind = Literal["full", "diag"]

# Bounds of the hyper-parameters. The lower bounds are what the estimator accepts; the upper
# bounds are the pipeline's ceilings (the estimator, like scikit-learn's, has none).
MIN_N_COMPONENTS: Final = 1
MAX_N_COMPONENTS: Final = 256
MIN_N_INIT: Final = 1
MAX_N_INIT: Final = 100
MIN_MAX_ITER: Final = 0  # 0: the initial parameters, no EM iteration
MAX_MAX_ITER: Final = 100_000
MIN_TOL: Final = 0.0
MIN_REG_COVAR: Final = 0.0

DEFAULT_TOL: Final = 1e-3
DEFAULT_REG_COVAR: Final = 1e-6


def is_covariance_type(value: object) -> TypeGuard[CovarianceType]:
    """Whether ``value`` is one of :data:`COVARIANCE_TYPES` (e.g. read from a stored model)."""
    return value in COVARIANCE_TYPES
