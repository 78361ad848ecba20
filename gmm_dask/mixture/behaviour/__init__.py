"""The behaviour mixture family: counts, money amounts, continuous and binary features.

Behavioural data (counts and amounts, mostly zeros, heavy tails, one feature bounding another)
put a Gaussian's components on the wrong segments. Here each component is a product over
features, except for three kinds of declared or detected links:

==========  ===========================================================================
count       histogram: one bin per integer 0…7, then bins growing by 1.3 up to the
            sample's 99.5 % quantile (uniform mass within a bin), an open last bin with a
            geometric tail (1 − q)·q^(x − L). Zero is its own bin (the hurdle is built in).
            *Capped* by another count c (x ≤ c, often x = c: active days ≤ sessions):
            x = min(Y, c) with Y the histogram; rows with x ≥ c are right-censored,
            P = P(Y ≥ x), and EM fills in Y's expected bin.
            With a *zero parent*, another count c whose zeros x's follow (page views ← sessions:
            x = 0 whenever c = 0, bar a few rows): P(x = 0 | c = 0) is its own probability,
            P(x | c = 0, x > 0) the histogram's positive part renormalised, P(x | c > 0) the
            histogram (the M-step stays closed form: θ = (θ₀, (1 − θ₀)·φ) separates). A
            count is capped or zero-parented, not both (a cap already bounds its zeros).
amount      hurdle with a *parent* count (spend ← purchases): P(x = 0 | parent zero or not),
            and log x | log parent ~ N(a + b·log parent, var) for x > 0 (b = 0 without a
            parent; a positive amount whose parent is 0 is read with log parent = 0).
continuous  Gaussian.
binary      Bernoulli.
==========  ===========================================================================

The :class:`Structure` (bins, parents, caps) is read once from a sample
(:func:`infer_structure`) and kept fixed across fits and days.

Likelihood conventions
----------------------
``log_prob`` and ``loglik`` are log masses for counts and binaries, and log densities **in
original units** for amounts (Jacobian −log x included) and continuous features. ``loglik`` is
Σ w·log p(x) without the prior; EM is monotone in ``loglik + log_prior(params)`` (Dirichlet /
inverse-gamma pseudo-counts, :class:`Prior`), which keeps every probability positive.

Choosing K: BIC = −2·loglik + n_parameters·log(Σw) compares fits of this family with the same
structure (proto21: minimum at the true K = 5 on the demo). To compare with the Gaussian family
fitted on log1p features, first put the Gaussian on the same scale with
:func:`gaussian_log1p_as_mass` (counts as masses over their log1p bin width, amounts with the
log1p Jacobian −log(1 + x), minus Σ log of the standardisation scales); the raw Gaussian density
on log1p features is not comparable and rewards spikes at small integers without bound.

Statistics are sums (categorical cells, tail excesses) and centred moments merged exactly
(Chan et al.), so ``combine_all`` is associative and partition-invariant; ``chunk_stats`` runs a
compiled (numba) kernel, one pass over the rows of a partition.
"""

from gmm_dask.mixture.behaviour.compare import gaussian_log1p_as_mass
from gmm_dask.mixture.behaviour.family import BehaviourFamily, fit_structure_and_init
from gmm_dask.mixture.behaviour.structure import KINDS, Structure, check_values, infer_structure
from gmm_dask.mixture.behaviour.values import BehaviourParams, BehaviourStats, Prior

__all__ = [
    "KINDS",
    "BehaviourFamily",
    "BehaviourParams",
    "BehaviourStats",
    "Prior",
    "Structure",
    "check_values",
    "fit_structure_and_init",
    "gaussian_log1p_as_mass",
    "infer_structure",
]
