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

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
from typing import Any

from gmm_dask._version import package_version
from gmm_dask.errors import ModelNotFoundError, RegistryError
from gmm_dask.segmentation.model import SegmentationModel, model_from_payload
from gmm_dask.storage import io

logger = logging.getLogger(__name__)

FORMAT = "gmm-dask-model"
FORMAT_VERSION = 1
VERSION_RE = re.compile(r"^v\d{4,}$")


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, allow_nan=False).encode()).hexdigest()


class ModelRegistry:
    """Versions under a root directory or URL (all file access through :mod:`gmm_dask.storage.io`)."""

    def __init__(self, root: str, storage_options: io.StorageOptions | None = None) -> None:
        self.root = root.rstrip("/")
        self.storage_options = storage_options

    def _version_dir(self, version: str) -> str:
        return f"{self.root}/versions/{version}"

    def versions(self) -> list[str]:
        names = io.list_names(f"{self.root}/versions", self.storage_options)
        return sorted((n for n in names if VERSION_RE.match(n)), key=lambda n: int(n[1:]))

    def _next_version(self) -> str:
        existing = self.versions()
        return f"v{(int(existing[-1][1:]) + 1) if existing else 1:04d}"

    def register(self, model: SegmentationModel, *, alias: str | None = "latest") -> SegmentationModel:
        """Store ``model`` as a new immutable version (and point ``alias`` at it, if given).

        The version is claimed by creating its ``model.json`` exclusively (a hard link on local
        disks, a conditional PUT with ``If-None-Match: *`` on S3): two concurrent trainings get
        two versions, and a store that cannot do this refuses with a clear error.
        Returns the model as stored: its ``version`` and final metadata set (no read-back).
        """
        created_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        for _ in range(1000):
            version = self._next_version()
            meta = model.metadata.replace(
                created_at=model.metadata.created_at or created_at,
                package_version=model.metadata.package_version or package_version(),
                version=version,
            )
            stored = dataclasses.replace(model, metadata=meta, version=version)
            payload = stored.to_payload()
            doc = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "payload": payload,
                "sha256": _digest(payload),
            }
            text = json.dumps(doc, indent=1, allow_nan=False)
            if io.create_exclusive(f"{self._version_dir(version)}/model.json", text, self.storage_options):
                break
            logger.info("Model version %s was taken by a concurrent run; trying the next one", version)
        else:
            raise RegistryError(f"Could not claim a new version under {self.root!r}.")
        if alias:
            self.set_alias(alias, version)
        logger.info("Registered model %s in %s", version, self.root)
        return stored

    def set_alias(self, alias: str, version: str) -> None:
        if not re.match(r"^[A-Za-z][A-Za-z0-9_-]*$", alias) or VERSION_RE.match(alias):
            raise RegistryError(
                f"Invalid alias {alias!r}: use letters, digits, '-' or '_', not v0001-style names."
            )
        io.write_text_atomic(
            f"{self.root}/aliases/{alias}.json", json.dumps({"version": version}), self.storage_options
        )

    def resolve(self, ref: str | None) -> str:
        """A version name from a version or alias (default ``latest``)."""
        ref = ref or "latest"
        if VERSION_RE.match(ref):
            if not io.exists(f"{self._version_dir(ref)}/model.json", self.storage_options):
                known = self.versions()
                raise ModelNotFoundError(
                    f"Model version {ref!r} does not exist in registry {self.root!r} "
                    f"(available: {', '.join(known[-10:]) or 'none'})."
                )
            return ref
        path = f"{self.root}/aliases/{ref}.json"
        if not io.exists(path, self.storage_options):
            raise ModelNotFoundError(
                f"Model alias {ref!r} does not exist in registry {self.root!r}: train a model first "
                "(gmm-dask train) or pass --model-version vNNNN."
            )
        try:
            version = json.loads(io.read_text(path, self.storage_options))["version"]
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
            doc = json.loads(io.read_text(path, self.storage_options))
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


def load_model(
    registry: str, ref: str | None = None, storage_options: io.StorageOptions | None = None
) -> SegmentationModel:
    """Load a registered model (a version ``vNNNN`` or an alias, default ``latest``), validated.

    Parameters
    ----------
    registry : str
        The registry root (``output.registry``, default ``<output.root>/registry``); a local
        path or an fsspec URL.
    """
    return ModelRegistry(registry, storage_options).load(ref)
