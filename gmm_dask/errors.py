"""The exceptions and warnings gmm-dask raises.

Every error a user can fix by changing their input, parameters or configuration derives from
:class:`GMMDaskInputError`, which is also a :class:`ValueError` so that code written for
scikit-learn's ``GaussianMixture`` keeps catching it. The CLI maps these to exit code 2.
"""

from __future__ import annotations


class GMMDaskError(Exception):
    """Base class of every exception raised by gmm-dask."""


class GMMDaskInputError(GMMDaskError, ValueError):
    """Bad input, parameter or configuration: the message says what, where, and how to fix it."""


class NotFittedError(GMMDaskInputError, AttributeError):
    """A model method that needs fitted parameters was called before ``fit``."""


class FitError(GMMDaskInputError):
    """Fitting cannot proceed on this data with these settings (e.g. a singular covariance)."""


class ConfigError(GMMDaskInputError):
    """A configuration file or value is invalid."""


class DataError(GMMDaskInputError):
    """An input table, file, column or row is invalid."""


class RegistryError(GMMDaskInputError):
    """A stored model version is missing, unreadable or fails validation."""


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the lower bound changed by less than ``tol``."""


class ComponentCollapseWarning(UserWarning):
    """A mixture component lost (almost) all its weight and was re-seeded."""
