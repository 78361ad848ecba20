"""The family's values: its prior, parameters and mergeable statistics (plain frozen arrays)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class Prior:
    """Pseudo-counts that keep every probability positive and every variance floored.

    ``alpha`` is added to every categorical cell (mixture weights, count bins, binary cells,
    amount zero cells, count zero-link cells) and to the geometric tail (α units of excess over 2α rows); variances
    get the inverse-gamma-type term −α/2·log s² − α·``var_floor``/(2 s²) and are floored at
    ``var_floor``. EM is monotone in log-likelihood + :meth:`BehaviourFamily.log_prior`.
    """

    alpha: float = 1e-2
    var_floor: float = 1e-4


DEFAULT_PRIOR = Prior()


@dataclass(frozen=True)
class BehaviourParams:
    """Parameters of a K-component behaviour mixture (component axis last).

    Attributes
    ----------
    weights : (K,)
    count_log_theta : (ΣB, K) log bin probabilities, the counts' bins stacked in feature order
    count_log_q : (C, K) log ratio of each count's geometric tail
    count_zero_log_p : (Z, 2, K) per count with a zero parent (in feature order): log P(x = 0 |
        parent = 0), log P(x > 0 | parent = 0); where the parent is > 0, x follows the histogram
    amount_log_pz : (A, 2, 2, K) log P(child zero z | parent zero s), indexed [a, s, z]
    amount_a, amount_b, amount_var : (A, K) log x | log parent ~ N(a + b·log parent, var)
    continuous_mean, continuous_var : (N, K)
    binary_log_p : (NB, 2, K) log P(x = 0), log P(x = 1)
    """

    weights: F64
    count_log_theta: F64
    count_log_q: F64
    count_zero_log_p: F64
    amount_log_pz: F64
    amount_a: F64
    amount_b: F64
    amount_var: F64
    continuous_mean: F64
    continuous_var: F64
    binary_log_p: F64

    @property
    def n_components(self) -> int:
        return int(self.weights.shape[0])

    def to_arrays(self) -> dict[str, F64]:
        """The parameters as named arrays (for an ``.npz``)."""
        return {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, NDArray[np.float64]]) -> BehaviourParams:
        missing = [f.name for f in fields(cls) if f.name not in arrays]
        if missing:
            raise ValueError(f"behaviour parameters lack {', '.join(missing)}")
        return cls(**{f.name: np.asarray(arrays[f.name], dtype=np.float64) for f in fields(cls)})

    def take(self, idx: NDArray[np.intp]) -> BehaviourParams:
        """The components ``idx`` (in that order), weights renormalised."""
        arrays = {k: v[..., idx] for k, v in self.to_arrays().items()}
        arrays["weights"] = arrays["weights"] / arrays["weights"].sum()
        return BehaviourParams.from_arrays(arrays)


@dataclass(frozen=True)
class BehaviourStats:
    """Mergeable statistics of a set of rows (component axis last where there is one).

    Attributes
    ----------
    nk : (K,) Σ w·γ
    loglik : float, Σ w·log p(x) over rows with a finite score (no prior)
    weight : float, Σ w
    n_rows, n_bad, first_bad : as :class:`~gmm_dask.mixture.suffstats.SuffStats`
    worst_scores, worst_rows, worst_index : (m,), (m, D), (m,) the m ≤ K lowest-scoring rows
    hard_nk : (K,) or None, Σ w over rows whose most probable component is k
    table : (T, K) Σ w·γ per categorical cell (count bins, binary cells, amount zero cells,
        count zero-link cells); a censored (capped) count row adds its expected bin occupancy;
        a zero-parented count's row with parent = 0 and x = 0 goes to its link cell, not to
        the zero bin
    excess : (C, K) Σ w·γ·(x − open edge) over each count's open bin (expected when censored)
    term_n : (G, K) weight of the rows in each Gaussian term (amounts: x > 0; continuous: all)
    term_mean : (G, K, 2) weighted means of (u, v) = (log parent or 0, log x) or (0, x)
    term_m2 : (G, K, 3) centred moments (uu, uv, vv)
    """

    nk: F64
    loglik: float
    weight: float
    n_rows: int
    n_bad: int
    first_bad: int
    worst_scores: F64
    worst_rows: F64
    worst_index: NDArray[np.int64]
    hard_nk: F64 | None
    table: F64
    excess: F64
    term_n: F64
    term_mean: F64
    term_m2: F64
