"""``BehaviourMixture``: the behaviour family behind scikit-learn's mixture interface.

Fits on NumPy, pandas, Dask arrays or Dask DataFrames of *raw* behavioural features (counts,
money amounts, continuous and binary values in their own units: no log1p, no scaling), with
the same distributed EM as :class:`gmm_dask.GaussianMixture` (one pass of the compiled kernel
per iteration, statistics merged exactly).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gmm_dask.errors import ConvergenceWarning, GMMDaskInputError, NotFittedError
from gmm_dask.mixture.arrays import FloatArray, IntArray
from gmm_dask.mixture.behaviour.family import fit_structure_and_init
from gmm_dask.mixture.behaviour.structure import KINDS, Links, check_values, invalid_message
from gmm_dask.mixture.behaviour.values import BehaviourParams
from gmm_dask.mixture.em import IterationInfo, RandomState, fit_family, seed_from
from gmm_dask.mixture.gaussian import entropy_bits, log_responsibilities
from gmm_dask.mixture.runner import ChunkedData, Runner, make_runner
from gmm_dask.mixture.validation import InputData, InputWeights, to_chunked, to_numpy

if TYPE_CHECKING:
    import dask.array as da


def _kind_flags(Xb: FloatArray, wb: FloatArray | None, idx: int, off: int) -> FloatArray:
    """Per column: [all whole numbers, all in {0, 1}, min, any exact zero] of a block."""
    finite = np.isfinite(Xb)
    whole = np.all(~finite | (Xb == np.round(Xb)), axis=0)
    binary = np.all(~finite | (Xb == 0) | (Xb == 1), axis=0)
    low = np.min(np.where(finite, Xb, np.inf), axis=0) if len(Xb) else np.full(Xb.shape[1], np.inf)
    zero = np.any(Xb == 0, axis=0)
    return np.stack([whole, binary, low, zero]).astype(np.float64)


def _merge_flags(parts: list[FloatArray]) -> FloatArray:
    s = np.stack(parts)
    return np.stack([s[:, 0].min(0), s[:, 1].min(0), s[:, 2].min(0), s[:, 3].max(0)])


def infer_kinds(runner: Runner) -> list[str]:
    """One pass: each column's kind — binary (only 0 and 1), count (non-negative whole numbers),
    amount (non-negative with exact zeros), else continuous."""
    whole, binary, low, zero = runner.map_reduce(_kind_flags, _merge_flags)
    kinds = []
    for j in range(len(whole)):
        if binary[j]:
            kinds.append("binary")
        elif whole[j] and low[j] >= 0:
            kinds.append("count")
        elif low[j] >= 0 and zero[j]:
            kinds.append("amount")
        else:
            kinds.append("continuous")
    return kinds


def _first_problem(
    kinds: Sequence[str], names: Sequence[str]
) -> Callable[[FloatArray, FloatArray | None, int, int], str | None]:
    def check(Xb: FloatArray, wb: FloatArray | None, idx: int, off: int) -> str | None:
        return invalid_message(Xb, kinds, names, row_offset=off)

    return check


def _first_of(parts: list[str | None]) -> str | None:
    return next((p for p in parts if p is not None), None)


class BehaviourMixture:
    """A mixture of behaviour components (see :mod:`gmm_dask.mixture.behaviour`), fitted by EM.

    Parameters
    ----------
    n_components : int, default=1
    kinds : sequence of {'count', 'amount', 'continuous', 'binary'}, optional
        Each feature's kind; inferred from the data when absent (one pass).
    tol : float, default=1e-5
        Stop when the mean penalised log-likelihood changes by less.
    max_iter : int, default=300
    n_init : int, default=4
        Starts of the over-cluster-then-merge initialisation (on a sample; the best is kept).
    parents, caps : 'auto', None or dict of feature name -> feature name
        The structure's links (an amount's parent count or a count's zero parent; a count
        capped by another).
    random_state : int, Generator, RandomState or None
    callback : callable, optional
        Called with an :class:`~gmm_dask.mixture.em.IterationInfo` after every EM iteration.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    params_ : BehaviourParams
    structure_ : Structure
    kinds_ : list of str
    converged_, n_iter_, lower_bound_ : bool, int, float
    n_features_in_ : int
    feature_names_in_ : ndarray of str, only when fitted on a DataFrame
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        kinds: Sequence[str] | None = None,
        tol: float = 1e-5,
        max_iter: int = 300,
        n_init: int = 4,
        parents: Links = "auto",
        caps: Links = "auto",
        random_state: RandomState = None,
        callback: Callable[[IterationInfo], None] | None = None,
    ):
        self.n_components = n_components
        self.kinds = kinds
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.parents = parents
        self.caps = caps
        self.random_state = random_state
        self.callback = callback

    def _check_params(self, n_features: int) -> list[str] | None:
        for name, value, low in (("n_components", self.n_components, 1), ("n_init", self.n_init, 1)):
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
                raise GMMDaskInputError(f"{name} must be an integer >= {low}, got {value!r}.")
        if not isinstance(self.max_iter, int | np.integer) or self.max_iter < 0:
            raise GMMDaskInputError(f"max_iter must be an integer >= 0, got {self.max_iter!r}.")
        if not (isinstance(self.tol, int | float) and self.tol >= 0):
            raise GMMDaskInputError(f"tol must be a number >= 0, got {self.tol!r}.")
        if self.kinds is None:
            return None
        kinds = list(self.kinds)
        bad = [k for k in kinds if k not in KINDS]
        if bad or len(kinds) != n_features:
            raise GMMDaskInputError(
                f"kinds must name one of {list(KINDS)} for each of the {n_features} features, got {kinds!r}."
            )
        return kinds

    def fit(
        self, X: InputData, y: object = None, sample_weight: InputWeights | None = None
    ) -> BehaviourMixture:
        """Fit on raw features ``X`` of shape (n, D) (rows with a value invalid for its kind are refused)."""
        data = to_chunked(X, sample_weight)
        kinds = self._check_params(data.n_features)
        names = data.feature_names or [f"x{j}" for j in range(data.n_features)]
        runner = make_runner(data)
        try:
            self._fit(runner, data, kinds, names)
        finally:
            runner.close()
        return self

    def _fit(self, runner: Runner, data: ChunkedData, kinds: list[str] | None, names: list[str]) -> None:
        kinds = kinds if kinds is not None else infer_kinds(runner)
        if data.n_rows < self.n_components:
            raise GMMDaskInputError(
                f"Expected n_samples >= n_components but got n_components = {self.n_components}, "
                f"n_samples = {data.n_rows}. Use fewer components or more rows."
            )
        problem = runner.map_reduce(_first_problem(kinds, names), _first_of)
        if problem is not None:
            raise GMMDaskInputError(problem)
        seed = seed_from(self.random_state)
        family, start = fit_structure_and_init(
            runner, kinds, names, self.n_components, seed, self.n_init, parents=self.parents, caps=self.caps
        )
        res = fit_family(
            runner, family, lambda i: start, 1, tol=self.tol, max_iter=self.max_iter, callback=self.callback
        )
        if not res.converged and self.max_iter > 0:
            warnings.warn("EM did not converge: increase max_iter or tol.", ConvergenceWarning, stacklevel=3)
        self.family_, self.params_, self.structure_, self.kinds_ = family, res.params, family.structure, kinds
        self.weights_ = res.params.weights
        self.converged_, self.n_iter_, self.lower_bound_ = res.converged, res.n_iter, res.lower_bound
        self.lower_bounds_ = res.lower_bounds
        self.n_features_in_ = data.n_features
        self.n_samples_fit_ = data.n_rows
        self.sample_weight_sum_ = res.weight
        self.final_log_likelihood_ = res.final_loglik / res.weight
        if data.feature_names is not None:
            self.feature_names_in_ = np.asarray(data.feature_names, dtype=object)

    # --- prediction -------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise NotFittedError(
                "This BehaviourMixture instance is not fitted yet. Call 'fit' with appropriate "
                "arguments before using this estimator."
            )

    def _prepare(self, X: InputData) -> FloatArray | da.Array:
        import pandas as pd

        self._check_fitted()
        names = getattr(self, "feature_names_in_", None)
        if isinstance(X, pd.DataFrame) and names is not None:
            missing = [c for c in names if c not in X.columns]
            if missing:
                raise GMMDaskInputError(f"X lacks the columns {missing} seen in fit.")
            X = X[list(names)]
        out = to_numpy(X) if isinstance(X, np.ndarray | list | pd.DataFrame) else to_chunked(X).X
        if out.shape[1] != self.n_features_in_:
            raise GMMDaskInputError(
                f"X has {out.shape[1]} features, but BehaviourMixture is expecting {self.n_features_in_}."
            )
        if isinstance(out, np.ndarray):
            problem = check_values(out, self.structure_)
            if problem is not None:
                raise GMMDaskInputError(problem)
        return out

    def _log_resp(self, X: FloatArray) -> tuple[FloatArray, FloatArray]:
        """(log p(x), log γ) of rows ``X``."""
        return log_responsibilities(
            self.family_.log_prob(np.ascontiguousarray(X, dtype=np.float64), self.params_)
        )

    def _apply(self, X: InputData, what: str) -> Any:
        Xp = self._prepare(X)
        k = self.n_components

        def block(b: FloatArray) -> FloatArray | IntArray:
            lp, log_resp = self._log_resp(b)
            if what == "proba":
                return np.exp(log_resp)
            if what == "predict":
                return np.asarray(log_resp.argmax(axis=1), dtype=np.intp)
            if what == "entropy":
                return entropy_bits(log_resp)
            return lp

        if isinstance(Xp, np.ndarray):
            return block(Xp)
        import dask.array as da

        if what == "proba":
            return da.map_blocks(block, Xp, chunks=(Xp.chunks[0], (k,)), dtype=np.float64)  # type: ignore[no-untyped-call]  # dask: unannotated
        dtype = np.intp if what == "predict" else np.float64
        return da.map_blocks(block, Xp, drop_axis=1, chunks=(Xp.chunks[0],), dtype=dtype)  # type: ignore[no-untyped-call]  # dask: unannotated

    def predict_proba(self, X: InputData) -> Any:
        """γ, shape (n, n_components): posterior probability of each component."""
        return self._apply(X, "proba")

    def predict(self, X: InputData) -> Any:
        """The most probable component of each row."""
        return self._apply(X, "predict")

    def score_samples(self, X: InputData) -> Any:
        """log p(x) of each row (masses for counts and binaries, densities in original units else)."""
        return self._apply(X, "score")

    def entropy(self, X: InputData) -> Any:
        """Entropy of γ in bits, per row."""
        return self._apply(X, "entropy")

    def score(self, X: InputData, y: object = None) -> float:
        """Mean log p(x)."""
        return float(np.mean(np.asarray(self.score_samples(X))))

    def _n_parameters(self) -> int:
        return self.family_.n_parameters(self.params_)

    def bic(self, X: InputData) -> float:
        """Bayesian information criterion on ``X`` (lower is better)."""
        n = np.asarray(self.score_samples(X))
        return -2 * float(n.sum()) + self._n_parameters() * math.log(len(n))

    def aic(self, X: InputData) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        return -2 * float(np.asarray(self.score_samples(X)).sum()) + 2 * self._n_parameters()

    def bic_fit(self) -> float:
        """BIC of the fit on its training data (no pass over the data)."""
        self._check_fitted()
        n = self.sample_weight_sum_
        return -2 * self.final_log_likelihood_ * n + self._n_parameters() * math.log(n)


__all__ = ["BehaviourMixture", "BehaviourParams", "infer_kinds"]
