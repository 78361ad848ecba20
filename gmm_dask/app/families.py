"""The mixture families a job can fit (``model.family``) and when the daily job refits
(``model.refit_min_gain``): their names, descriptions and the rules that pick one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

Family = Literal["auto", "gaussian", "behaviour"]
ConcreteFamily = Literal["gaussian", "behaviour"]

#: Nats per user a warm refit must gain over the model before it to replace it (model.refit_min_gain).
DEFAULT_REFIT_MIN_GAIN: Final = 0.05
MAX_REFIT_MIN_GAIN: Final = 100.0
REFIT_MIN_GAIN_DESCRIPTION = (
    "The daily job and refit backfills start each fit from the model before; they keep that "
    "model (and score the snapshot with it) unless the new fit explains the snapshot better by "
    "at least this mean log-likelihood per user, in nats (0.05: the average user's data about "
    "5 % more likely). Unchanged users keep their segment while the model still explains the "
    "data. 0 refits every date; train always refits."
)

FAMILY_DESCRIPTION = (
    "Mixture family. auto (default): behaviour when any feature is a count or an amount "
    "(declared or inferred) and input.missing is not impute_mean, else gaussian. gaussian: "
    "Gaussians on the transformed, standardised features. behaviour: per-feature components by "
    "kind (count histogram, amount hurdle + log-normal, continuous Gaussian, binary Bernoulli) "
    "fitted on the RAW values after the missing-value policy, so a feature's transform and "
    "model.standardize only shape the moment-matched Gaussian summary that names and describes "
    "each component; covariance_type, init_params and degenerate.atoms are ignored (the summary "
    "is full), and n_init counts starts on a 5,000-row sample (at least 4). Every kind works, "
    "declared or inferred; a declared kind's values must fit it (counts whole ≥ 0, amounts ≥ 0, "
    "binaries 0/1). Refused with it: input.missing: impute_mean (a mean is no count)."
)


def family_problem(family: str, missing: str) -> str | None:
    """Why ``model.family`` cannot run with ``input.missing``, or None."""
    if family == "behaviour" and missing == "impute_mean":
        return (
            "model.family: behaviour fits raw counts and amounts, which have no mean to impute; set "
            "input.missing to 'drop' or 'error', or use model.family: gaussian"
        )
    return None


def auto_family(
    family: Family, missing: str, features: Sequence[str], kinds: Sequence[str]
) -> tuple[ConcreteFamily, str]:
    """The family ``model.family: auto`` stands for, given each feature's kind (declared or
    inferred) and the missing-value policy, and why; a concrete family stands for itself."""
    if family != "auto":
        return family, "configured"
    discrete = [f for f, k in zip(features, kinds, strict=True) if k in ("count", "amount")]
    if not discrete:
        return "gaussian", "every feature is continuous"
    if missing == "impute_mean":
        return "gaussian", "input.missing is impute_mean (the behaviour family fits raw values)"
    return "behaviour", f"counts/amounts: {', '.join(discrete)}"
