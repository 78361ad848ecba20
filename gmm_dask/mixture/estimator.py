"""The scikit-learn-style facade: :class:`GaussianMixture` fitted by distributed EM."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Self, cast, overload

import dask.array as da
import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from gmm_dask.errors import ConvergenceWarning, GMMDaskInputError, NotFittedError
from gmm_dask.mixture import gaussian
from gmm_dask.mixture.arrays import FloatArray, IntArray
from gmm_dask.mixture.em import IterationInfo, RandomState, fit_mixture, seed_from
from gmm_dask.mixture.gaussian import MixtureParams
from gmm_dask.mixture.options import (
    DEFAULT_COVARIANCE_TYPE,
    DEFAULT_INIT_METHOD,
    DEFAULT_REG_COVAR,
    DEFAULT_TOL,
    CovarianceType,
    InitMethod,
)
from gmm_dask.mixture.runner import make_runner
from gmm_dask.mixture.validation import (
    InputData,
    InputWeights,
    check_estimator_params,
    check_init_arrays,
    check_int,
    check_predict_values,
    check_reg_covar,
    to_chunked,
    to_numpy,
    validate_values,
)

if TYPE_CHECKING:
    import dask.dataframe as dd
    from sklearn.utils import Tags

#: What a prediction method computes for every row.
Output = Literal["proba", "predict", "score_samples", "entropy"]

logger = logging.getLogger(__name__)


# --- per-block prediction kernels (pure, used for NumPy and inside map_blocks) --------------


def _log_resp_block(
    X: FloatArray,
    weights: FloatArray,
    means: FloatArray,
    prec_chol: FloatArray,
    covariance_type: CovarianceType,
) -> tuple[FloatArray, FloatArray]:
    wlp = gaussian.estimate_weighted_log_prob(X, weights, means, prec_chol, covariance_type)
    return gaussian.log_responsibilities(wlp)


def _predict_block(
    X: FloatArray,
    *,
    what: Output,
    weights: FloatArray,
    means: FloatArray,
    prec_chol: FloatArray,
    covariance_type: CovarianceType,
) -> FloatArray | IntArray:
    lpn, log_resp = _log_resp_block(X, weights, means, prec_chol, covariance_type)
    if what == "proba":
        return np.exp(log_resp)
    if what == "predict":
        labels: IntArray = log_resp.argmax(axis=1)
        return labels
    if what == "score_samples":
        return lpn
    if what == "entropy":
        return gaussian.entropy_bits(log_resp)
    raise ValueError(what)


class GaussianMixture:
    """Gaussian mixture fitted by Expectation–Maximization over partitioned data.

    The parameters and fitted attributes are those of scikit-learn's
    ``sklearn.mixture.GaussianMixture``, so code and results can be compared; it is a
    scikit-learn estimator (``get_params``/``set_params``, ``clone``, ``Pipeline``,
    ``GridSearchCV``, ``sample``) without importing scikit-learn. ``fit`` runs on the
    active ``distributed.Client`` if there is one (each worker reduces the partitions it holds to
    sufficient statistics, one small task per worker per iteration), otherwise on Dask's local
    scheduler. It never starts a cluster.

    Parameters
    ----------
    n_components : int, default=1
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
    tol : float, default=1e-3
        Convergence threshold on the change of the mean log-likelihood lower bound.
    reg_covar : float or array of shape (D,), default=1e-6
        Added to the diagonal of every covariance; a vector gives each feature its own.
    max_iter : int, default=100
    n_init : int, default=1
        Number of initialisations; the one with the best lower bound is kept.
    init_params : {'k-means-sample', 'k-means||', 'k-means++', 'random', 'random_from_data'}, default='k-means-sample'
        'k-means-sample': k-means on a sample drawn in one pass, then a few Lloyd passes (at most
        6 passes over the data); 'k-means||': scalable k-means++ on the full data (~15–40 passes).
        See :mod:`gmm_dask.mixture.init`.
    weights_init : array of shape (K,), optional
    means_init : array of shape (K, D), optional
    precisions_init : array, optional
        Shape (K, D, D), (D, D), (K, D) or (K,) by ``covariance_type``.
    random_state : int, numpy Generator or RandomState, optional
    warm_start : bool, default=False
        If True, a second ``fit`` continues from the fitted parameters (with ``n_init=1``).
    callback : callable, optional
        Called with an :class:`~gmm_dask.mixture.em.IterationInfo` after every EM iteration.
    persist : bool, default=True
        Persist Dask input once; False re-reads it every iteration (streaming, bounded memory).

    Attributes
    ----------
    weights_ : ndarray of shape (K,)
    means_ : ndarray of shape (K, D)
    covariances_, precisions_, precisions_cholesky_ : ndarray
        Shapes by ``covariance_type``.
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Mean (sample-weighted) log-likelihood of the best initialisation.
    lower_bounds_ : list of float
    final_log_likelihood_ : float
        Mean log-likelihood of the returned parameters on the training data.
    n_features_in_ : int
    feature_names_in_ : ndarray of str, only when fitted on a DataFrame
    reseeded_components_ : list of (iteration, component)
        Components that collapsed and were re-seeded during the best run.
    """

    weights_: FloatArray
    means_: FloatArray
    covariances_: FloatArray
    precisions_: FloatArray
    precisions_cholesky_: FloatArray
    converged_: bool
    n_iter_: int
    lower_bound_: float
    lower_bounds_: list[float]
    final_log_likelihood_: float
    n_features_in_: int
    feature_names_in_: NDArray[np.object_]
    reseeded_components_: list[tuple[int, int]]
    n_samples_fit_: int
    sample_weight_sum_: float

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: CovarianceType = DEFAULT_COVARIANCE_TYPE,
        tol: float = DEFAULT_TOL,
        reg_covar: ArrayLike = DEFAULT_REG_COVAR,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: InitMethod = DEFAULT_INIT_METHOD,
        weights_init: ArrayLike | None = None,
        means_init: ArrayLike | None = None,
        precisions_init: ArrayLike | None = None,
        random_state: RandomState = None,
        warm_start: bool = False,
        callback: Callable[[IterationInfo], None] | None = None,
        persist: bool = True,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.callback = callback
        self.persist = persist

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(n_components={self.n_components}, "
            f"covariance_type={self.covariance_type!r}, init_params={self.init_params!r})"
        )

    # --- the scikit-learn estimator protocol (scikit-learn itself is not imported) ---------

    @classmethod
    def _get_param_names(cls) -> list[str]:
        """The constructor's parameter names, sorted (as ``sklearn.base.BaseEstimator``)."""
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values() if p.name != "self")

    def get_params(self, deep: bool = True) -> dict[str, object]:
        """The constructor parameters and their current values.

        ``deep`` is accepted for scikit-learn's API; no parameter is itself an estimator.
        """
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params: object) -> Self:
        """Set constructor parameters (checked at the next ``fit``, as in scikit-learn)."""
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise GMMDaskInputError(
                    f"Invalid parameter {name!r} for estimator {self!r}. Valid parameters are: {valid!r}."
                )
            setattr(self, name, value)
        return self

    def __sklearn_tags__(self) -> Tags:
        """scikit-learn's estimator tags: a density estimator on 2-D float input, no target.

        Only scikit-learn calls this, so it imports scikit-learn here and nowhere else.
        """
        from sklearn.utils import Tags, TargetTags

        tags: Tags = Tags(estimator_type="density_estimator", target_tags=TargetTags(required=False))
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "means_")

    # --- fitting --------------------------------------------------------------------------

    def fit(self, X: InputData, y: object = None, sample_weight: InputWeights | None = None) -> Self:
        """Estimate the mixture parameters with EM.

        Parameters
        ----------
        X : ndarray, dask.array.Array, pandas.DataFrame or dask.dataframe.DataFrame
            Shape (n_samples, n_features), numeric. Dask arrays must be chunked by rows only.
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative row weights; a weight of 2 equals the row appearing twice.

        Returns
        -------
        self
        """
        check_estimator_params(self)
        data = to_chunked(X, sample_weight)
        reg_covar = check_reg_covar(self.reg_covar, data.n_features)
        runner = make_runner(data, persist=self.persist)
        try:
            report = validate_values(runner, data.feature_names)
            k, d = self.n_components, data.n_features
            if report.n_rows < k:
                raise GMMDaskInputError(
                    f"Expected n_samples >= n_components but got n_components = {k}, "
                    f"n_samples = {report.n_rows}. Use fewer components or more rows."
                )
            weights0, means0, precisions0 = check_init_arrays(self, d)
            warm = self.warm_start and hasattr(self, "converged_")
            if warm and self.n_features_in_ != d:
                raise GMMDaskInputError(
                    f"warm_start: X has {d} features, but the model was fitted with {self.n_features_in_}."
                )
            result = fit_mixture(
                runner,
                n_components=k,
                covariance_type=self.covariance_type,
                tol=self.tol,
                reg_covar=reg_covar,
                max_iter=self.max_iter,
                n_init=self.n_init,
                init_params=self.init_params,
                seed=seed_from(self.random_state),
                data_variance=report.mean_variance,
                init=(
                    MixtureParams(self.weights_, self.means_, self.covariances_, self.precisions_cholesky_)
                    if warm
                    else None
                ),
                weights_init=weights0,
                means_init=means0,
                precisions_init=precisions0,
                prev_lower_bound=self.lower_bound_ if warm else -np.inf,
                callback=self.callback,
            )
        finally:
            runner.close()
        if not result.converged and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=2,
            )
        self._set_fitted_params(result.params)
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        self.lower_bound_ = result.lower_bound
        self.lower_bounds_ = result.lower_bounds
        self.reseeded_components_ = result.reseeded
        self.n_features_in_ = data.n_features
        if data.feature_names is not None:
            self.feature_names_in_ = np.asarray(data.feature_names, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self.n_samples_fit_ = report.n_rows
        self.sample_weight_sum_ = report.weight_sum
        self.final_log_likelihood_ = result.final_loglik / result.weight
        return self

    def bic_fit(self) -> float:
        """BIC of the fitted parameters on the training data (no pass over the data).

        With ``sample_weight``, n is the total weight (a weight counts as that many rows).
        """
        self._check_fitted()
        n = self.sample_weight_sum_
        return -2 * self.final_log_likelihood_ * n + self._n_parameters() * math.log(n)

    def aic_fit(self) -> float:
        """AIC of the fitted parameters on the training data (no pass over the data)."""
        self._check_fitted()
        return -2 * self.final_log_likelihood_ * self.sample_weight_sum_ + 2 * self._n_parameters()

    def _set_fitted_params(self, params: MixtureParams) -> None:
        ct = self.covariance_type
        self.weights_ = params.weights
        self.means_ = params.means
        self.precisions_cholesky_ = params.precisions_cholesky
        self.covariances_ = (
            params.covariances
            if params.covariances is not None
            else gaussian.covariances_from_cholesky(params.precisions_cholesky, ct)
        )
        self.precisions_ = gaussian.precisions_from_cholesky(params.precisions_cholesky, ct)

    # --- prediction -----------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise NotFittedError(
                "This GaussianMixture instance is not fitted yet. Call 'fit' with appropriate "
                "arguments before using this estimator."
            )

    def _prepare(self, X: InputData) -> FloatArray | da.Array:
        """Validated float64 NumPy or row-chunked Dask array with the fitted feature layout."""
        self._check_fitted()
        names = getattr(self, "feature_names_in_", None)
        if (isinstance(X, pd.DataFrame) or hasattr(X, "npartitions")) and names is not None:
            frame = cast("pd.DataFrame | dd.DataFrame", X)  # a pandas or Dask DataFrame
            cols = [str(c) for c in frame.columns]
            missing = [c for c in names if c not in cols]
            extra = [c for c in cols if c not in set(names)]
            if missing or extra:
                raise GMMDaskInputError(
                    "X's columns differ from those seen in fit: "
                    f"missing {missing}, unexpected {extra}. Pass the columns {list(names)}."
                )
            X = frame[list(names)]
        out = to_numpy(X) if isinstance(X, np.ndarray | list | pd.DataFrame) else to_chunked(X).X
        if out.shape[1] != self.n_features_in_:
            raise GMMDaskInputError(
                f"X has {out.shape[1]} features, but GaussianMixture is expecting "
                f"{self.n_features_in_} features as input (the number it was fitted with)."
            )
        return out

    @overload
    def _apply(self, X: InputData, what: Literal["predict"]) -> IntArray | da.Array: ...
    @overload
    def _apply(
        self, X: InputData, what: Literal["proba", "score_samples", "entropy"]
    ) -> FloatArray | da.Array: ...
    def _apply(self, X: InputData, what: Output) -> FloatArray | IntArray | da.Array:
        Xp = self._prepare(X)
        fn = functools.partial(
            _predict_block,
            what=what,
            weights=self.weights_,
            means=self.means_,
            prec_chol=self.precisions_cholesky_,
            covariance_type=self.covariance_type,
        )
        out: da.Array
        if isinstance(Xp, da.Array):
            if what == "proba":
                out = da.map_blocks(fn, Xp, chunks=(Xp.chunks[0], (self.n_components,)), dtype=np.float64)  # type: ignore[no-untyped-call]  # dask: unannotated
                return out
            dtype = np.int64 if what == "predict" else np.float64
            out = da.map_blocks(fn, Xp, drop_axis=1, chunks=(Xp.chunks[0],), dtype=dtype)  # type: ignore[no-untyped-call]  # dask: unannotated
            return out
        check_predict_values(Xp)
        return fn(Xp)

    def predict_proba(self, X: InputData) -> FloatArray | da.Array:
        """Membership γ of every row: shape (n_samples, K), rows sum to 1."""
        return self._apply(X, "proba")

    def predict(self, X: InputData) -> IntArray | da.Array:
        """Most probable component of every row: shape (n_samples,)."""
        return self._apply(X, "predict")

    def score_samples(self, X: InputData) -> FloatArray | da.Array:
        """log p(x) of every row: shape (n_samples,)."""
        return self._apply(X, "score_samples")

    def entropy(self, X: InputData) -> FloatArray | da.Array:
        """Membership entropy −Σₖ γₖ log₂ γₖ of every row (bits): shape (n_samples,)."""
        return self._apply(X, "entropy")

    def score(self, X: InputData, y: object = None) -> float:
        """Mean log-likelihood of X."""
        s = self.score_samples(X)
        return float(s.mean().compute() if isinstance(s, da.Array) else s.mean())  # type: ignore[no-untyped-call]  # dask: unannotated

    def _n_parameters(self) -> int:
        k, d = self.means_.shape
        return gaussian.n_parameters(k, d, self.covariance_type)

    def _n_rows(self, X: InputData) -> int:
        if hasattr(X, "npartitions"):
            return len(cast("dd.DataFrame", X))
        return int(cast("FloatArray | pd.DataFrame | da.Array", X).shape[0])

    def bic(self, X: InputData) -> float:
        """Bayesian information criterion on X (lower is better)."""
        n = self._n_rows(X)
        return -2 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X: InputData) -> float:
        """Akaike information criterion on X (lower is better)."""
        n = self._n_rows(X)
        return -2 * self.score(X) * n + 2 * self._n_parameters()

    def fit_predict(
        self, X: InputData, y: object = None, sample_weight: InputWeights | None = None
    ) -> IntArray | da.Array:
        """Fit, then return the most probable component of every row."""
        return self.fit(X, sample_weight=sample_weight).predict(X)

    def sample(self, n_samples: int = 1) -> tuple[FloatArray, IntArray]:
        """Draw rows from the fitted mixture, as scikit-learn's ``GaussianMixture.sample``.

        The counts per component are multinomial on ``weights_``, then each component's rows
        are drawn from its Gaussian; rows come grouped by component. ``random_state`` seeds the
        draw as in scikit-learn (an int gives the same rows on every call, None the global
        NumPy state; a ``Generator`` or ``RandomState`` is used as it is), so an int seed gives
        exactly scikit-learn's rows for the same parameters.

        Parameters
        ----------
        n_samples : int, default=1

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            The component each row was drawn from.
        """
        self._check_fitted()
        n_samples = check_int("n_samples", n_samples, 1)
        rs = self.random_state
        rng: np.random.Generator | np.random.RandomState
        if rs is None:
            rng = np.random.mtrand._rand  # the global state, as sklearn's check_random_state(None)
        elif isinstance(rs, np.random.Generator | np.random.RandomState):
            rng = rs
        else:
            rng = np.random.RandomState(rs)
        counts = rng.multinomial(n_samples, self.weights_)
        ct, d = self.covariance_type, self.means_.shape[1]
        parts = []
        for j, (mean, count) in enumerate(zip(self.means_, counts, strict=True)):
            if ct in ("full", "tied"):
                cov = self.covariances_[j] if ct == "full" else self.covariances_
                parts.append(rng.multivariate_normal(mean, cov, int(count)))
            else:
                parts.append(mean + rng.standard_normal(size=(count, d)) * np.sqrt(self.covariances_[j]))
        labels = np.concatenate([np.full(count, j, dtype=int) for j, count in enumerate(counts)])
        return np.vstack(parts), labels


__all__ = ["GaussianMixture"]
