"""The segmentation model: a fitted mixture plus the feature plan that turns raw columns into its
inputs, its segment names and metadata. Plain data and pure functions: storing it is the
registry's job (:mod:`gmm_dask.storage.registry`), scoring a warehouse snapshot the pipeline's.

Scoring new data outside the pipeline::

    from gmm_dask import load_model

    model = load_model("out/demo/registry")            # alias 'latest', or 'v0007'
    scored = model.score(users_df)                      # raw feature columns, found by name

The stored transforms and scaler are applied exactly as at training time, so a raw column
passed where a transformed one was expected cannot slip through: columns are matched by
name, never by position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
from numpy.typing import NDArray

from gmm_dask.errors import DataError, RegistryError
from gmm_dask.mixture.arrays import BoolArray, FloatArray, IntArray
from gmm_dask.mixture.options import COVARIANCE_TYPES, CovarianceType, is_covariance_type
from gmm_dask.segmentation.behaviour import FAMILY, BehaviourPart, stored_part
from gmm_dask.segmentation.features import _DOMAIN, FeaturePlan, _domain_bad, apply_transforms
from gmm_dask.segmentation.fit_record import FitRecord
from gmm_dask.segmentation.specs import EntropyBands, FeatureSpec

if TYPE_CHECKING:
    import pandas as pd

    from gmm_dask.mixture.estimator import GaussianMixture

BANDS = ("low", "moderate", "high")

#: A stored model: plain JSON values (see :meth:`SegmentationModel.to_payload`).
Payload = dict[str, Any]


class Memberships(TypedDict):
    """What :meth:`SegmentationModel.memberships` computes for n rows."""

    gamma: FloatArray  # (n, K)
    component: IntArray  # (n,) most probable component
    segment: NDArray[np.int32]  # (n,) its segment id
    entropy_bits: FloatArray  # (n,)
    entropy_norm: FloatArray  # (n,) entropy / log2 K, in [0, 1]
    entropy_band: NDArray[np.object_]  # (n,) 'low', 'moderate' or 'high'
    band_index: NDArray[np.int8]  # (n,) 0 low, 1 moderate, 2 high (BANDS order)
    log_likelihood: FloatArray  # (n,)


@dataclass(frozen=True)
class SegmentationModel:
    """A fitted mixture with everything needed to score new snapshots.

    Attributes
    ----------
    plan : FeaturePlan
        Transforms, scaler and imputation values of the D features.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    weights : ndarray of shape (K,)
    means : ndarray of shape (K, D), in model space (transformed and standardised)
    covariances, precisions_cholesky : ndarray
        Shapes by ``covariance_type`` (see :mod:`gmm_dask.mixture.gaussian`).
    segment_names : list of str, length K
    id_column, weight_column : the input columns the model was trained with
    metadata : FitRecord
        Snapshot, row counts, lower bound, BIC/AIC, seed, config hash, alignment, ...
    version : str or None
        Registry version (``vNNNN``) once registered.
    behaviour : BehaviourPart or None
        For a model of the behaviour family: its structure and parameters, which score users on
        their raw features; ``weights`` … ``precisions_cholesky`` are then each component's
        moment-matched Gaussian summary in model space (full covariances), which describes it.
    """

    plan: FeaturePlan
    covariance_type: CovarianceType
    weights: FloatArray
    means: FloatArray
    covariances: FloatArray
    precisions_cholesky: FloatArray
    segment_names: list[str]
    id_column: str
    weight_column: str | None = None
    metadata: FitRecord = field(default_factory=FitRecord)
    version: str | None = None
    segment_ids: list[int] | None = None  # stable ids across refits (default 0..K-1)
    behaviour: BehaviourPart | None = None

    @property
    def n_components(self) -> int:
        return len(self.weights)

    @property
    def ids(self) -> list[int]:
        """The segment id of each component (what the tables call ``segment``)."""
        return list(self.segment_ids) if self.segment_ids is not None else list(range(self.n_components))

    @property
    def feature_names(self) -> list[str]:
        return self.plan.names

    def full_covariances(self) -> FloatArray:
        """Covariances as (K, D, D) whatever the covariance type."""
        k, d = self.means.shape
        c = self.covariances
        if self.covariance_type == "full":
            return c
        if self.covariance_type == "tied":
            return np.broadcast_to(c, (k, d, d))
        if self.covariance_type == "diag":
            return np.stack([np.diag(v) for v in c])
        return np.stack([np.eye(d) * v for v in c])

    def mixture(self) -> GaussianMixture:
        """A fitted :class:`gmm_dask.GaussianMixture` with these parameters (model space: pass
        inputs already transformed with ``plan.transform``, or use :meth:`score`)."""
        from gmm_dask.mixture.estimator import GaussianMixture
        from gmm_dask.mixture.gaussian import precisions_from_cholesky

        gm = GaussianMixture(self.n_components, covariance_type=self.covariance_type)
        gm.weights_, gm.means_, gm.covariances_ = self.weights, self.means, self.covariances
        gm.precisions_cholesky_ = self.precisions_cholesky
        gm.precisions_ = precisions_from_cholesky(self.precisions_cholesky, self.covariance_type)
        gm.n_features_in_ = self.means.shape[1]
        gm.converged_ = self.metadata.converged
        gm.n_iter_ = self.metadata.n_iter
        gm.lower_bound_ = self.metadata.lower_bound
        return gm

    # --- scoring --------------------------------------------------------------------------

    def memberships(
        self, Z: FloatArray, bands: EntropyBands | None = None, X_raw: FloatArray | None = None
    ) -> Memberships:
        """γ, hard segment, entropies, band and log p(x) for model inputs ``Z`` of shape (n, D);
        a behaviour model scores the same rows' raw features ``X_raw`` (n, D) instead."""
        from gmm_dask.mixture import gaussian

        bands = bands or EntropyBands()
        if self.behaviour is not None:
            if X_raw is None:
                raise DataError("A behaviour-family model scores raw features: pass X_raw.")
            wlp = self.behaviour.weighted_log_prob(X_raw)
        else:
            wlp = gaussian.estimate_weighted_log_prob(
                Z, self.weights, self.means, self.precisions_cholesky, self.covariance_type
            )
        lpn, log_resp = gaussian.log_responsibilities(wlp)
        gamma = np.exp(log_resp)
        ent = gaussian.entropy_bits(log_resp, gamma)
        k = self.n_components
        norm = np.clip(ent / np.log2(k), 0.0, 1.0) if k > 1 else np.zeros_like(ent)
        idx = (norm >= bands.low_max).astype(np.int8) + (norm >= bands.moderate_max)
        comp = log_resp.argmax(axis=1) if len(Z) else np.zeros(0, np.intp)
        return {
            "gamma": gamma,
            "component": comp,
            "segment": np.asarray(self.ids, dtype=np.int32)[comp],
            "entropy_bits": ent,
            "entropy_norm": norm,
            "entropy_band": np.asarray(BANDS, dtype=object)[idx],
            "band_index": idx,  # 0 low, 1 moderate, 2 high (BANDS order)
            "log_likelihood": lpn,
        }

    def score(self, frame: pd.DataFrame, *, bands: EntropyBands | None = None) -> pd.DataFrame:
        """Score users given their *raw* feature columns (a pandas DataFrame).

        The model's features are taken from ``frame`` by name (other columns are ignored and
        the id column, if present, is kept); the stored transforms, scaling and missing-value
        policy are applied as at training time. Under ``missing: drop`` rows with a missing
        feature are left out of the result (the index tells which rows remain).

        Parameters
        ----------
        frame : pandas.DataFrame
            One row per user, with (at least) the columns ``self.feature_names``.
        bands : EntropyBands, optional

        Returns
        -------
        pandas.DataFrame
            Indexed like ``frame``: the id column if present, ``segment``, ``segment_name``,
            ``gamma`` (one list of K floats per row), ``gamma_<k>`` columns, ``max_gamma``,
            ``entropy_bits``, ``entropy_norm``, ``entropy_band``, ``log_likelihood``.
        """
        import pandas as pd

        if not isinstance(frame, pd.DataFrame):
            raise DataError(
                f"SegmentationModel.score takes a pandas DataFrame with the raw feature columns "
                f"{self.feature_names} (matched by name), got {type(frame).__name__}. Build one with "
                "pd.DataFrame(values, columns=model.feature_names)."
            )
        cols = [str(c) for c in frame.columns]
        missing = [f for f in self.feature_names if f not in cols]
        if missing:
            raise DataError(
                f"The DataFrame has no column(s) {missing}; model {self.version or '(unregistered)'} was "
                f"trained on the raw features {self.feature_names} (it has {cols[:20]}). Pass those "
                "columns untransformed: the model applies its own transforms."
            )
        bad_types = [f for f in self.feature_names if not pd.api.types.is_numeric_dtype(frame[f].dtype)] + [
            f for f in self.feature_names if pd.api.types.is_bool_dtype(frame[f].dtype)
        ]
        if bad_types:
            raise DataError(f"Feature column(s) {sorted(set(bad_types))} must be numeric (not bool/text).")
        X_raw = frame[self.feature_names].to_numpy(dtype=np.float64, na_value=np.nan)
        Z, keep = self.prepare(X_raw, where="the DataFrame")
        m = self.memberships(Z, bands, X_raw[keep])
        index = frame.index[keep]
        out = pd.DataFrame(index=index)
        if self.id_column in cols:
            out[self.id_column] = frame[self.id_column].to_numpy()[keep]
        names = np.asarray(self.segment_names, dtype=object)
        out["segment"] = m["segment"]
        out["segment_name"] = names[m["component"]] if len(index) else []
        out["gamma"] = list(m["gamma"])
        for j in range(self.n_components):
            out[f"gamma_{j}"] = m["gamma"][:, j]
        out["max_gamma"] = m["gamma"].max(axis=1) if len(index) else []
        for c in ("entropy_bits", "entropy_norm", "entropy_band", "log_likelihood"):
            out[c] = m[c]
        return out

    def prepare(self, X_raw: FloatArray, *, where: str = "input") -> tuple[FloatArray, BoolArray]:
        """Raw features (n, D) → (model inputs of the kept rows, boolean mask of kept rows),
        applying the plan's missing-value policy; raises on values outside a transform's domain."""
        plan = self.plan
        dom = _domain_bad(X_raw, plan.features)
        if dom.any():
            r, c = (int(v[0]) for v in np.nonzero(dom))
            f = plan.features[c]
            raise DataError(
                f"{where}: row {r}, column {f.name!r} has value {float(X_raw[r, c])!r} outside the domain "
                f"of its {f.transform} transform (needs values {_DOMAIN[f.transform][1]}). Fix the value."
            )
        T = apply_transforms(X_raw + plan.half_step, plan.features)
        bad = ~np.isfinite(T)
        rows_bad: BoolArray = np.any(bad, axis=1)
        keep: BoolArray = np.ones(len(T), dtype=bool)
        if rows_bad.any():
            if plan.missing == "error":
                r = int(np.flatnonzero(rows_bad)[0])
                raise DataError(
                    f"{where}: {int(rows_bad.sum())} row(s) have null, NaN or infinite features (first: "
                    f"row {r}, column {plan.names[int(np.flatnonzero(bad[r])[0])]!r}); the model's policy "
                    "is missing: error. Impute or drop them first."
                )
            if plan.missing == "drop":
                keep = ~rows_bad
                T = T[keep]
            else:
                T = np.where(bad, plan.impute_values[None, :], T)
        return (T - plan.mean) / plan.scale, keep

    # --- serialisation (plain JSON values; storage is the registry's) ------------------------

    def to_payload(self) -> Payload:
        family = (
            {} if self.behaviour is None else {"family": FAMILY, "behaviour": self.behaviour.to_payload()}
        )
        return {
            "covariance_type": self.covariance_type,
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covariances.tolist(),
            "precisions_cholesky": self.precisions_cholesky.tolist(),
            "segment_names": list(self.segment_names),
            "segment_ids": self.ids,
            "id_column": self.id_column,
            "weight_column": self.weight_column,
            "features": [f.model_dump() for f in self.plan.features],
            "missing": self.plan.missing,
            "scaler_mean": self.plan.mean.tolist(),
            "scaler_scale": self.plan.scale.tolist(),
            "impute_values": self.plan.impute_values.tolist(),
            "kinds": list(self.plan.kinds),
            "resolution": [None if not np.isfinite(r) else float(r) for r in self.plan.resolution]
            if self.plan.resolution is not None
            else None,
            "low": self.plan.low.tolist() if self.plan.low is not None else None,
            "metadata": self.metadata.to_json(),
            **family,
        }


def _arr(payload: Payload, key: str, where: str, ndim: int) -> FloatArray:
    try:
        a = np.asarray(payload[key], dtype=np.float64)
    except KeyError:
        raise RegistryError(f"{where}: missing field {key!r}.") from None
    except (TypeError, ValueError):
        raise RegistryError(f"{where}: field {key!r} is not an array of numbers.") from None
    if a.ndim != ndim or not np.all(np.isfinite(a)):
        raise RegistryError(f"{where}: field {key!r} must be a finite {ndim}-D array, got shape {a.shape}.")
    return a


def model_from_payload(payload: Payload, where: str, version: str | None = None) -> SegmentationModel:
    """Validate a payload into a model (never executes anything)."""
    from gmm_dask.mixture.gaussian import compute_precision_cholesky

    ct = payload.get("covariance_type")
    if not is_covariance_type(ct):
        raise RegistryError(f"{where}: covariance_type {ct!r} is not one of {COVARIANCE_TYPES}.")
    weights = _arr(payload, "weights", where, 1)
    means = _arr(payload, "means", where, 2)
    k, d = means.shape
    cov_ndim = {"full": 3, "tied": 2, "diag": 2, "spherical": 1}[ct]
    cov = _arr(payload, "covariances", where, cov_ndim)
    pc = _arr(payload, "precisions_cholesky", where, cov_ndim)
    shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[ct]
    if weights.shape != (k,) or cov.shape != shape or pc.shape != shape:
        raise RegistryError(f"{where}: parameter shapes disagree (K={k}, D={d}, covariance_type={ct!r}).")
    if np.any(weights < 0) or abs(weights.sum() - 1.0) > 1e-8:
        raise RegistryError(f"{where}: weights must be >= 0 and sum to 1 (they sum to {weights.sum():.12g}).")
    if ct in ("full", "tied"):
        mats = cov if ct == "full" else cov[None]
        if not np.allclose(mats, mats.transpose(0, 2, 1), rtol=1e-10, atol=1e-12):
            raise RegistryError(f"{where}: covariances are not symmetric.")
    try:
        expected = compute_precision_cholesky(cov, ct)
    except Exception:
        raise RegistryError(f"{where}: covariances are not positive definite.") from None
    if not np.allclose(expected, pc, rtol=1e-8, atol=1e-10):
        raise RegistryError(f"{where}: precisions_cholesky does not match the covariances.")
    try:
        features = tuple(FeatureSpec.model_validate(f) for f in payload["features"])
        names = [str(n) for n in payload["segment_names"]]
        kinds = tuple(str(k) for k in payload.get("kinds") or ())
        if any(k not in ("count", "amount", "continuous", "binary") for k in kinds):
            raise ValueError(f"unknown feature kind in {kinds}")
        res = payload.get("resolution")
        resolution = None if res is None else np.array([np.nan if r is None else float(r) for r in res])
        low = None if payload.get("low") is None else _arr(payload, "low", where, 1)
        plan = FeaturePlan(
            features,
            str(payload["missing"]),
            _arr(payload, "scaler_mean", where, 1),
            _arr(payload, "scaler_scale", where, 1),
            _arr(payload, "impute_values", where, 1),
            kinds,
            resolution,
            low,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise RegistryError(f"{where}: invalid feature specification ({err}).") from None
    if len(features) != d or plan.mean.shape != (d,) or plan.scale.shape != (d,) or len(names) != k:
        raise RegistryError(
            f"{where}: {len(features)} features / {len(names)} names for a model with D={d}, K={k}."
        )
    if np.any(plan.scale <= 0):
        raise RegistryError(f"{where}: scaler_scale must be positive.")
    ids = payload.get("segment_ids")
    if ids is not None and (
        len(ids) != k or len(set(ids)) != k or not all(isinstance(i, int) and i >= 0 for i in ids)
    ):
        raise RegistryError(f"{where}: segment_ids must be {k} distinct non-negative integers.")
    part = stored_part(payload, where, k, plan.names)
    return SegmentationModel(
        plan,
        ct,
        weights,
        means,
        cov,
        pc,
        names,
        str(payload["id_column"]),
        payload.get("weight_column"),
        FitRecord.from_json(dict(payload.get("metadata", {}))),
        version,
        None if ids is None else [int(i) for i in ids],
        part,
    )


__all__ = ["SegmentationModel", "model_from_payload"]
