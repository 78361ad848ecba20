"""select-k compares the Gaussian and behaviour families on one likelihood scale: the Gaussian's
density of transformed, standardised, dequantised inputs read as the behaviour family's masses
(counts, binaries, zero amounts) and densities in original units (positive amounts, continuous)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from gmm_dask.app import jobs
from gmm_dask.app.config import load_config
from gmm_dask.app.jobs.select_k import plan_select_k
from gmm_dask.app.params import SelectKParams
from gmm_dask.demo import DemoSpec
from gmm_dask.errors import ConfigError
from gmm_dask.segmentation.comparable import behaviour_scale
from gmm_dask.segmentation.features import FeaturePlan, apply_transforms
from gmm_dask.segmentation.specs import FeatureSpec
from tests.pipeline_helpers import demo_data, make_config

TRANSFORMS = ["none", "log1p", "sqrt", "asinh"]
M, S = 0.8, 1.3  # the plan's standardisation: z = (T(y) − M)/S


def _plan(transform: str, kind: str, step: float) -> FeaturePlan:
    f = FeatureSpec(name="x", transform=transform)
    return FeaturePlan(
        (f,), "drop", np.array([M]), np.array([S]), np.zeros(1), (kind,), np.array([step]), np.zeros(1)
    )


def _z(y: np.ndarray, transform: str) -> np.ndarray:
    return (
        apply_transforms(np.reshape(y, (-1, 1)).astype(float), [FeatureSpec(name="x", transform=transform)])
        - M
    ) / S


def _gaussian_in_behaviour_units(plan: FeaturePlan, y: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    """The Gaussian N(mu, sigma²) in model space, its log-density of the inputs at raw points ``y``
    carried to the behaviour family's units."""
    Z = _z(y, plan.features[0].transform)
    return norm.logpdf(Z[:, 0], mu, sigma) + behaviour_scale(plan, Z)


def _bin_mass(edges: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    """N(mu, sigma²)'s mass between consecutive ``edges``, from the nearer tail (no cancellation)."""
    lo, hi = edges[:-1], edges[1:]
    upper = norm.sf(lo, mu, sigma) - norm.sf(hi, mu, sigma)
    return np.where(lo > mu, upper, norm.cdf(hi, mu, sigma) - norm.cdf(lo, mu, sigma))


@pytest.mark.parametrize(("transform", "step"), [*((t, 1.0) for t in TRANSFORMS), ("log1p", 5.0)])
def test_a_counts_adjusted_gaussian_log_likelihood_is_the_log_mass_of_its_bin(transform, step):
    """Averaged over the dequantisation offset, the adjusted log-density of a count is the log of
    the mass the Gaussian gives its bin [x, x + Δ) (its CDF at the bin's edges, no Jacobian
    involved) less Jensen's gap: never above it, whatever the spread, and for a Gaussian spread
    over several bins short of it by under 0.05 nats per row on average. Δ is the count's
    resolution (5: a count recorded in fives)."""
    x = np.arange(0, 60.0) * step
    u = (np.arange(2000) + 0.5) / 2000 * step  # the offset, integrated by the midpoint rule
    plan = _plan(transform, "count", step)
    for mu, sigma in ((1.0, 1.5), (0.3, 0.4), (-0.5, 0.25)):
        edges = _z(np.concatenate([x, [x[-1] + step]]), transform)[:, 0]
        mass = _bin_mass(edges, mu, sigma)
        est = _gaussian_in_behaviour_units(plan, (x[:, None] + u[None, :]).ravel(), mu, sigma)
        est = est.reshape(len(x), -1).mean(axis=1)
        seen = mass > 1e-300  # bins the Gaussian gives a mass a float can hold
        gap = np.log(mass[seen]) - est[seen]
        assert (gap >= -1e-9).all(), (mu, sigma)
        if sigma > 1:
            assert (mass[seen] * gap).sum() < 0.05


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("kind", ["continuous", "amount"])
def test_continuous_values_and_positive_amounts_become_densities_in_original_units(transform, kind):
    """d/dy of the Gaussian's CDF in original units, P(T(Y) ≤ T(y)), by a central difference."""
    plan = _plan(transform, kind, 1.0 if kind == "amount" else np.nan)
    y = np.array([1.5, 2.2, 3.0, 4.5])
    h = 1e-5

    def cdf(v: np.ndarray) -> np.ndarray:
        return norm.cdf(_z(v, transform)[:, 0], 0.2, 0.9)

    density = (cdf(y + h) - cdf(y - h)) / (2 * h)
    np.testing.assert_allclose(_gaussian_in_behaviour_units(plan, y, 0.2, 0.9), np.log(density), rtol=1e-6)


def test_zero_amounts_are_masses_of_the_first_step_and_positive_ones_densities():
    """An amount recorded in steps of 10: a zero (dequantised into [0, 10)) gets log 10, a
    positive amount none — the behaviour family's mass at zero and density above it."""
    plan = _plan("none", "amount", 10.0)
    Z = _z(np.array([0.0, 4.0, 9.99, 10.0, 55.0]), "none")
    np.testing.assert_allclose(
        behaviour_scale(plan, Z), -np.log(S) + np.array([1, 1, 1, 0, 0]) * np.log(10.0)
    )


def test_the_adjustment_sums_features_and_undoes_the_standardisation():
    feats = (FeatureSpec(name="a", transform="log1p"), FeatureSpec(name="b", transform="none"))
    plan = FeaturePlan(
        feats, "drop", np.array([0.5, 1.0]), np.array([2.0, 4.0]), np.zeros(2), ("count", "binary"),
        np.array([1.0, 1.0]), np.zeros(2),
    )  # fmt: skip
    Z = np.array([[0.1, -0.25], [1.3, 0.0]])
    t = Z * plan.scale + plan.mean
    np.testing.assert_allclose(behaviour_scale(plan, Z), -t[:, 0] - math.log(2.0) - math.log(4.0))


# --- the job -----------------------------------------------------------------------------------

SPEC = DemoSpec(n_users=3000, n_snapshots=1, seed=5, hybrid_share=0.0, drift_share=0.0, n_archetypes=4)


@pytest.fixture(scope="module")
def selection(tmp_path_factory):
    root = demo_data(tmp_path_factory.mktemp("selk-fam"), SPEC)
    cfg = make_config(tmp_path_factory.mktemp("selk-fam-out"), root, model={"max_iter": 100, "tol": 1e-3})
    return jobs.select_k(SelectKParams(config=str(cfg), k_min=3, k_max=5), report=False), cfg


def test_select_k_compares_both_families_on_one_scale_and_picks_behaviour(selection):
    out, _ = selection
    table = out.table
    assert sorted(zip(table.family, table.n_components, table.covariance_type, strict=True)) == sorted(
        [("behaviour", k, "—") for k in (3, 4, 5)] + [("gaussian", k, "full") for k in (3, 4, 5)]
    )
    assert out.selected["family"] == "behaviour"
    assert bool(table.loc[table.bic.idxmin(), "selected"])
    # the criterion is computed from the comparable log-likelihood and the parameter count
    weight = SPEC.n_users
    np.testing.assert_allclose(
        table.bic, -2 * table.log_likelihood * weight + table.n_parameters * math.log(weight), rtol=1e-10
    )
    # the behaviour family's figures are its own; every Gaussian candidate moves by the same amount
    beh, gau = table[table.family == "behaviour"], table[table.family == "gaussian"]
    np.testing.assert_allclose(beh.log_likelihood, beh.native_log_likelihood, rtol=1e-12)
    shift = gau.log_likelihood - gau.native_log_likelihood
    np.testing.assert_allclose(shift, shift.iloc[0], rtol=1e-10)
    assert (shift < 0).all()  # a density of standardised log1p values is far above a mass


def test_the_selected_model_keeps_its_own_log_likelihood_in_its_record(selection):
    from gmm_dask.app import pipeline

    out, cfg = selection
    row = out.table[out.table.selected].iloc[0]
    model = pipeline.load_model(load_config(str(cfg)), out.run.model_version)
    assert model.metadata.family == "behaviour"
    assert model.metadata.log_likelihood == pytest.approx(row.native_log_likelihood, rel=1e-12)
    assert model.metadata.selected_by == "bic"


def test_a_family_the_input_cannot_use_is_refused_naming_the_keys(tmp_path):
    cfg = make_config(tmp_path, tmp_path / "nodata", input={"missing": "impute_mean"})
    with pytest.raises(ConfigError) as err:
        plan_select_k(SelectKParams(config=str(cfg), families=["behaviour"]))
    assert "families" in str(err.value)
    assert "input.missing" in str(err.value)
    # left empty, families are those the data allows: the Gaussian alone here
    p = SelectKParams(config=str(cfg))
    assert list(p.family_configs(load_config(str(cfg)))) == ["gaussian"]
