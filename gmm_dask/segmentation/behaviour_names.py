"""Segment names in the behaviour family's own terms: how often a segment's users have any of a
count or amount, and how much when they do.

Per component and feature the family's parameters give two figures in original units
(:func:`family_figures`): the *share* of users with x > 0 (a binary's x = 1) — the zero links
followed, a capped count zero when its count or its cap is — and the *typical positive value*,
the median of the count's histogram above zero, or an amount's log-normal median
``exp(a + b·log parent)`` at its parent's typical value (a continuous feature: its mean).

Which features a name mentions, and in what order, is the Gaussian family's rule
(:mod:`gmm_dask.segmentation.naming`): the features where the component's moment-matched summary
stands furthest from the population (|z| in model space), the first one always — a behaviour
name is never "typical user". Each term reads ``high purchases (40 %, ~3)``: the z-score's
word, the label, the share with any (left out when ≥ 98 %) and the typical value when any;
``no purchases`` when under 2 % have any. A component with (almost) no count, amount or binary
activity at all is :data:`~gmm_dask.segmentation.naming.DORMANT`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gmm_dask.mixture.arrays import FloatArray
from gmm_dask.segmentation.naming import (
    DORMANT,
    MIN_Z,
    TERMS,
    component_variances,
    feature_labels,
    profile_z,
    unique,
)

if TYPE_CHECKING:
    from gmm_dask.mixture.behaviour import BehaviourParams, Structure

#: A share of users with any of a feature below this reads "no …"; at or above 1 − NONE it is
#: left out of the term (everyone has some).
NONE = 0.02


def _median_positive(edges: tuple[int, ...], theta: FloatArray, log_q: FloatArray) -> FloatArray:
    """Median of a count above zero from its bins' probabilities ``theta`` (B, K): mass uniform
    over a closed bin's integers, the open bin's tail geometric with ratio exp(``log_q``)."""
    e = np.asarray(edges, dtype=np.float64)
    k = theta.shape[1]
    pos = theta[1:] / np.maximum(theta[1:].sum(axis=0), 1e-300)  # (B − 1, K), bins above zero
    cum = np.cumsum(pos, axis=0)
    out = np.empty(k)
    for c in range(k):
        b = int(np.searchsorted(cum[:, c], 0.5))  # bin b + 1 holds the median
        before = cum[b - 1, c] if b > 0 else 0.0
        frac = (0.5 - before) / max(pos[b, c], 1e-300)
        lo = e[b + 1]
        if b + 2 < len(e):  # a closed bin [lo, next edge)
            out[c] = lo + np.floor(frac * (e[b + 2] - lo))
        else:  # the open bin: P(Y ≥ lo + t | open) = q^t
            q = float(np.exp(log_q[c]))
            out[c] = lo + (np.floor(np.log1p(-frac) / np.log(q)) if 0 < q < 1 else 0.0)
    return out


def family_figures(structure: Structure, params: BehaviourParams) -> tuple[FloatArray, FloatArray]:
    """Per component and feature, shape (K, D) each: the share with x > 0 (a continuous
    feature: 1) and the typical value when positive, in original units (see the module)."""
    kinds, d, k = structure.kinds, structure.n_features, params.n_components
    share, typical = np.ones((d, k)), np.zeros((d, k))
    p_zero = np.zeros((d, k))
    counts = [j for j in range(d) if kinds[j] == "count"]
    amounts = [j for j in range(d) if kinds[j] == "amount"]
    zero_linked = [j for j in counts if structure.parent[j] >= 0]
    offsets = np.cumsum([0] + [len(structure.edges[j]) for j in counts])
    order = _parents_first(structure)
    for j in order:
        kind = kinds[j]
        if kind == "count":
            c = counts.index(j)
            theta = np.exp(params.count_log_theta[offsets[c] : offsets[c + 1]])
            p0 = theta[0]
            if structure.cap[j] >= 0:  # x = min(Y, cap): zero when Y or its cap is
                p0 = 1 - (1 - p0) * (1 - p_zero[structure.cap[j]])
            elif structure.parent[j] >= 0:
                z = np.exp(params.count_zero_log_p[zero_linked.index(j), 0])
                p0 = p_zero[structure.parent[j]] * z + (1 - p_zero[structure.parent[j]]) * p0
            p_zero[j] = p0
            typical[j] = _median_positive(structure.edges[j], theta, params.count_log_q[c])
        elif kind == "amount":
            a, parent = amounts.index(j), structure.parent[j]
            pz = np.exp(params.amount_log_pz[a])  # [parent zero s, child zero z]
            pp0 = p_zero[parent] if parent >= 0 else np.zeros(k)
            p_zero[j] = pp0 * pz[1, 1] + (1 - pp0) * pz[0, 1]
            log_parent = np.log(np.maximum(typical[parent], 1.0)) if parent >= 0 else 0.0
            typical[j] = np.exp(params.amount_a[a] + params.amount_b[a] * log_parent)
        elif kind == "binary":
            b = [i for i in range(d) if kinds[i] == "binary"].index(j)
            p_zero[j] = np.exp(params.binary_log_p[b, 0])
            typical[j] = 1.0
        else:
            n = [i for i in range(d) if kinds[i] == "continuous"].index(j)
            typical[j] = params.continuous_mean[n]
        if kind != "continuous":
            share[j] = 1 - p_zero[j]
    return share.T.copy(), typical.T.copy()


def _parents_first(structure: Structure) -> list[int]:
    """Feature indices with every parent and cap before the features that depend on them."""
    done: list[int] = []
    while len(done) < structure.n_features:
        for j in range(structure.n_features):
            links = [i for i in (structure.parent[j], structure.cap[j]) if i >= 0]
            if j not in done and all(i in done for i in links):
                done.append(j)
    return done


def _figure(value: float, kind: str) -> str:
    if kind == "count":
        return f"~{max(round(value), 1)}"
    if abs(value) >= 1000:
        return f"~{value / 1000:.3g}k"
    return f"~{value:.3g}"


def behaviour_term(label: str, kind: str, z: float, share: float, typical: float) -> str:
    """One feature's words: ``high purchases (40 %, ~3)``, ``no spend``, ``newsletter (80 %)``."""
    if kind in ("count", "amount", "binary") and share < NONE and z < 0:
        return f"no {label}"
    word = "very high" if z >= 1.5 else "high" if z > 0 else "low"
    figures = []
    if kind != "continuous" and share < 1 - NONE:
        figures.append(f"{round(100 * share)} %")
    if kind != "binary":
        figures.append(_figure(typical, kind))
    return f"{word} {label} ({', '.join(figures)})" if figures else f"{word} {label}"


def describe_behaviour(
    structure: Structure, z: FloatArray, share: FloatArray, typical: FloatArray, n_terms: int = TERMS
) -> list[str]:
    """A name per component from its summary z-scores and family figures, each (K, D)."""
    k, d = z.shape
    labels = feature_labels(structure.names)
    active = [j for j in range(d) if structure.kinds[j] != "continuous"]
    names = []
    for c in range(k):
        if len(active) == d and all(share[c, j] < NONE for j in active):
            names.append(DORMANT)
            continue
        order = sorted(range(d), key=lambda j: (-abs(z[c, j]), j))
        strong = [j for j in order if abs(z[c, j]) >= MIN_Z][:n_terms] or order[:1]
        chosen = strong if n_terms <= TERMS else order[:n_terms]  # lengthened: next-furthest too
        kinds = structure.kinds
        names.append(
            ", ".join(
                behaviour_term(labels[j], kinds[j], z[c, j], share[c, j], typical[c, j]) for j in chosen
            )
        )
    return names


def behaviour_names(
    structure: Structure,
    params: BehaviourParams,
    summary_weights: FloatArray,
    summary_means: FloatArray,
    summary_covariances: FloatArray,
    ids: list[int] | None = None,
) -> list[str]:
    """Unique names for the components of a behaviour model: terms chosen by the moment-matched
    summary's z-scores (model space, full covariances (K, D, D)), worded with the family's
    figures; a name shared by several components takes more terms, then the segment id."""
    k, d = summary_means.shape
    ids = list(range(k)) if ids is None else list(ids)
    variances = component_variances(summary_covariances, "full", k, d)
    z = profile_z(summary_weights, summary_means, variances)
    share, typical = family_figures(structure, params)
    names = describe_behaviour(structure, z, share, typical)
    for extra in range(TERMS + 1, d + 1):  # lengthen only the names that collide
        dup = {n for n in names if names.count(n) > 1}
        if not dup:
            break
        longer = describe_behaviour(structure, z, share, typical, n_terms=extra)
        names = [longer[i] if n in dup else n for i, n in enumerate(names)]
    return unique(names, ids)


__all__ = ["behaviour_names", "behaviour_term", "describe_behaviour", "family_figures"]
