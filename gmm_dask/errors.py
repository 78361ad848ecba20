"""The exceptions and warnings gmm-dask raises.

Every error a user can fix by changing their input, parameters or configuration derives from
:class:`GMMDaskInputError`, which is also a :class:`ValueError` so that code written for
scikit-learn's ``GaussianMixture`` keeps catching it. The CLI maps exception *classes* to exit
codes (``gmm_dask_cli.EXIT_CODES``): input errors 2, :class:`PublishConflictError` and
:class:`StorageUnavailableError` 75, anything else 1. Every class gmm-dask raises is defined here.
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


class ModelNotFoundError(RegistryError):
    """The registry has no model of that version or alias (e.g. ``latest`` before the first publish)."""


class ExclusiveWriteUnsupported(ConfigError):
    """The store can neither create a file exclusively nor write conditionally."""


class BackfillError(DataError):
    """Some dates of a backfill had bad input; the others were completed. ``result`` has both."""

    def __init__(self, message: str, result: object):
        super().__init__(message)
        self.result = result


class PublishConflictError(GMMDaskError):
    """Another run is publishing the same snapshot date right now (not bad input: retry later)."""


class StorageUnavailableError(GMMDaskError):
    """The store kept failing with transient errors (connection refused, timeouts, 5xx) for the
    whole of ``GMM_DASK_STORAGE_RETRY_SECONDS``: the message names the operation and the URL
    (not bad input: retry later)."""


class ConcurrentCommitError(GMMDaskError):
    """Another writer committed a conflicting change to the same Delta partition first."""


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the lower bound changed by less than ``tol``."""


class ComponentCollapseWarning(UserWarning):
    """A mixture component lost (almost) all its weight and was re-seeded."""


def error_names(*roots: type[BaseException]) -> set[str]:
    """The class names of ``roots`` and all their subclasses (how an error reads in a message
    such as Prefect's "Finished in state Failed('DataError: ...')")."""
    names: set[str] = set()
    todo = list(roots)
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names
