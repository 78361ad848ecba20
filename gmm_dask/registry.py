"""Model registry: immutable versions stored as checksummed JSON, and atomically moved aliases.

Layout (local path or fsspec URL)::

    <registry>/versions/v0001/model.json
    <registry>/aliases/latest.json         {"version": "v0001"}

A model file holds parameters, the feature plan (transforms, scaler, imputation values) and
metadata, all as plain JSON numbers (Python's float repr round-trips float64 exactly, so a
loaded model scores bit-identically). Loading never executes code: no pickle anywhere. The
file carries a SHA-256 of its payload; a changed file is refused, as is one whose parameters
fail validation (shapes, finite values, weights summing to 1, symmetric positive-definite
covariances).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._version import package_version
from .config import FeatureSpec
from .errors import RegistryError
from .features import FeaturePlan
from .gaussian import COVARIANCE_TYPES, compute_precision_cholesky, precisions_from_cholesky
from .io import filesystem

logger = logging.getLogger(__name__)

FORMAT = "gmm-dask-model"
FORMAT_VERSION = 1
VERSION_RE = re.compile(r"^v\d{4,}$")


@dataclass(frozen=True)
class SegmentationModel:
    """A fitted mixture with everything needed to score new snapshots."""

    plan: FeaturePlan
    covariance_type: str
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray
    segment_names: list[str]
    id_column: str
    weight_column: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    version: str | None = None

    @property
    def n_components(self) -> int:
        return len(self.weights)

    def mixture(self):
        """A fitted :class:`gmm_dask.GaussianMixture` with these parameters."""
        from .mixture import GaussianMixture

        gm = GaussianMixture(len(self.weights), covariance_type=self.covariance_type)
        gm.weights_, gm.means_, gm.covariances_ = self.weights, self.means, self.covariances
        gm.precisions_cholesky_ = self.precisions_cholesky
        gm.precisions_ = precisions_from_cholesky(self.precisions_cholesky, self.covariance_type)
        gm.n_features_in_ = self.means.shape[1]
        gm.feature_names_in_ = np.asarray(self.plan.names, dtype=object)
        gm.converged_ = bool(self.metadata.get("converged", True))
        gm.n_iter_ = int(self.metadata.get("n_iter", 0))
        gm.lower_bound_ = float(self.metadata.get("lower_bound", np.nan))
        return gm

    def to_payload(self) -> dict:
        return {
            "covariance_type": self.covariance_type,
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covariances.tolist(),
            "precisions_cholesky": self.precisions_cholesky.tolist(),
            "segment_names": list(self.segment_names),
            "id_column": self.id_column,
            "weight_column": self.weight_column,
            "features": [f.model_dump() for f in self.plan.features],
            "missing": self.plan.missing,
            "scaler_mean": self.plan.mean.tolist(),
            "scaler_scale": self.plan.scale.tolist(),
            "impute_values": self.plan.impute_values.tolist(),
            "metadata": self.metadata,
        }


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, allow_nan=False).encode()).hexdigest()


def _arr(payload, key, where, ndim):
    try:
        a = np.asarray(payload[key], dtype=np.float64)
    except KeyError:
        raise RegistryError(f"{where}: missing field {key!r}.") from None
    except (TypeError, ValueError):
        raise RegistryError(f"{where}: field {key!r} is not an array of numbers.") from None
    if a.ndim != ndim or not np.all(np.isfinite(a)):
        raise RegistryError(f"{where}: field {key!r} must be a finite {ndim}-D array, got shape {a.shape}.")
    return a


def model_from_payload(payload: dict, where: str, version: str | None = None) -> SegmentationModel:
    """Validate a payload into a model (never executes anything)."""
    ct = payload.get("covariance_type")
    if ct not in COVARIANCE_TYPES:
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
        names = list(payload["segment_names"])
        plan = FeaturePlan(
            features,
            str(payload["missing"]),
            _arr(payload, "scaler_mean", where, 1),
            _arr(payload, "scaler_scale", where, 1),
            _arr(payload, "impute_values", where, 1),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise RegistryError(f"{where}: invalid feature specification ({err}).") from None
    if len(features) != d or plan.mean.shape != (d,) or plan.scale.shape != (d,) or len(names) != k:
        raise RegistryError(
            f"{where}: {len(features)} features / {len(names)} names for a model with D={d}, K={k}."
        )
    if np.any(plan.scale <= 0):
        raise RegistryError(f"{where}: scaler_scale must be positive.")
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
        dict(payload.get("metadata", {})),
        version,
    )


class ModelRegistry:
    """Versions under a root directory or URL."""

    def __init__(self, root: str, storage_options: dict | None = None):
        self.root = root.rstrip("/")
        self.fs, self.path = filesystem(self.root, storage_options)
        self.path = self.path.rstrip("/")

    def _version_dir(self, version: str) -> str:
        return f"{self.path}/versions/{version}"

    def versions(self) -> list[str]:
        base = f"{self.path}/versions"
        if not self.fs.exists(base):
            return []
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in self.fs.ls(base, detail=False)]
        return sorted((n for n in names if VERSION_RE.match(n)), key=lambda n: int(n[1:]))

    def _claim_version(self) -> str:
        """Create the next version's directory; exclusive on local disks (mkdir fails if taken)."""
        self.fs.makedirs(f"{self.path}/versions", exist_ok=True)
        for _ in range(1000):
            existing = self.versions()
            nxt = f"v{(int(existing[-1][1:]) + 1) if existing else 1:04d}"
            try:
                self.fs.mkdir(self._version_dir(nxt), create_parents=False)
                if not self.fs.exists(self._version_dir(nxt)):  # object stores: mkdir is a no-op
                    self.fs.makedirs(self._version_dir(nxt), exist_ok=True)
                return nxt
            except FileExistsError:
                continue
        raise RegistryError(f"Could not claim a new version under {self.root!r}.")

    def _write_atomic(self, path: str, text: str) -> None:
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with self.fs.open(tmp, "w") as f:
            f.write(text)
        self.fs.mv(tmp, path)

    def register(self, model: SegmentationModel, *, alias: str = "latest") -> str:
        """Store ``model`` as a new immutable version and point ``alias`` at it."""
        version = self._claim_version()
        meta = dict(model.metadata)
        meta.setdefault("created_at", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        meta.setdefault("package_version", package_version())
        meta["version"] = version
        payload = model.to_payload() | {"metadata": meta}
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "payload": payload,
            "sha256": _digest(payload),
        }
        self._write_atomic(
            f"{self._version_dir(version)}/model.json", json.dumps(doc, indent=1, allow_nan=False)
        )
        self.set_alias(alias, version)
        logger.info("Registered model %s in %s", version, self.root)
        return version

    def set_alias(self, alias: str, version: str) -> None:
        if not re.match(r"^[A-Za-z][A-Za-z0-9_-]*$", alias) or VERSION_RE.match(alias):
            raise RegistryError(
                f"Invalid alias {alias!r}: use letters, digits, '-' or '_', not v0001-style names."
            )
        self.fs.makedirs(f"{self.path}/aliases", exist_ok=True)
        self._write_atomic(f"{self.path}/aliases/{alias}.json", json.dumps({"version": version}))

    def resolve(self, ref: str | None) -> str:
        """A version name from a version or alias (default ``latest``)."""
        ref = ref or "latest"
        if VERSION_RE.match(ref):
            if not self.fs.exists(f"{self._version_dir(ref)}/model.json"):
                known = self.versions()
                raise RegistryError(
                    f"Model version {ref!r} does not exist in registry {self.root!r} "
                    f"(available: {', '.join(known[-10:]) or 'none'})."
                )
            return ref
        path = f"{self.path}/aliases/{ref}.json"
        if not self.fs.exists(path):
            raise RegistryError(
                f"Model alias {ref!r} does not exist in registry {self.root!r}: train a model first "
                "(gmm-dask train) or pass --model-version vNNNN."
            )
        try:
            with self.fs.open(path, "r") as f:
                version = json.load(f)["version"]
        except (ValueError, KeyError, TypeError):
            raise RegistryError(
                f"Alias file {path!r} is damaged; re-point it with a new training run."
            ) from None
        return self.resolve(str(version)) if VERSION_RE.match(str(version)) else self.resolve("v-invalid")

    def load(self, ref: str | None = None) -> SegmentationModel:
        """Load and validate a version (or alias); refuses tampered or malformed files."""
        version = self.resolve(ref)
        path = f"{self._version_dir(version)}/model.json"
        where = f"Model {version} ({path})"
        try:
            with self.fs.open(path, "r") as f:
                doc = json.load(f)
        except ValueError as err:
            raise RegistryError(f"{where} is not valid JSON ({err}); the file is damaged.") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise RegistryError(f"{where} is not a gmm-dask model file.")
        if doc.get("format_version") != FORMAT_VERSION:
            raise RegistryError(
                f"{where} has format version {doc.get('format_version')}; this gmm-dask reads {FORMAT_VERSION}."
            )
        payload = doc.get("payload")
        if not isinstance(payload, dict) or doc.get("sha256") != _digest(payload):
            raise RegistryError(
                f"{where} failed its checksum: the file was modified after it was written. Refusing to "
                "load it; retrain or restore the file."
            )
        return model_from_payload(payload, where, version)
