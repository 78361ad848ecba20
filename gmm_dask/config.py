"""Job configuration: frozen pydantic models, loaded from YAML with ``yaml.safe_load``.

The same models are the Prefect flows' parameter types, so the UI renders them as forms and
rejects bad values before any work starts. Unknown keys are errors. Relative local paths in a
file are resolved against the directory of that file, so a config runs from any working
directory. Credentials never belong here: they come from the environment (or Prefect blocks).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

TRANSFORMS = ("none", "log1p", "sqrt", "asinh")
SNAPSHOT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SECRET_KEYS = re.compile(
    r"(secret|password|token|credential|private|^key$|access_key|account_key|sas)", re.I
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Model):
    """One behavioural feature: a numeric column and the transform applied before fitting."""

    name: str = Field(min_length=1, description="Column name in the snapshot.")
    transform: Literal["none", "log1p", "sqrt", "asinh"] = Field(
        "none",
        description="log1p/sqrt for non-negative heavy-tailed counts, asinh for signed amounts.",
    )


class InputConfig(_Model):
    """Where the date-partitioned snapshots are and which columns to read."""

    path: str = Field(description="Dataset root (local path or fsspec URL: s3://, gs://, abfs://).")
    partition_key: str = Field("dt", description="Hive partition key, e.g. dt=2026-01-31.")
    id_column: str = Field(description="Unique user id column (kept in its original type).")
    features: list[FeatureSpec] = Field(min_length=1, description="Features and transforms.")
    weight_column: str | None = Field(None, description="Optional non-negative row weight.")
    missing: Literal["error", "drop", "impute_mean"] = Field(
        "error", description="What to do with rows that have a null/NaN/inf feature."
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Non-secret fsspec options (e.g. endpoint_url). Credentials come from the environment.",
    )

    @field_validator("features", mode="before")
    @classmethod
    def _names_as_specs(cls, v):
        if isinstance(v, list):
            return [{"name": f} if isinstance(f, str) else f for f in v]
        return v

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, v):
        bad = [k for k in v if _SECRET_KEYS.search(str(k))]
        if bad:
            raise ValueError(
                f"storage_options must not hold credentials ({', '.join(bad)}); set them in the "
                "environment (e.g. AWS_ACCESS_KEY_ID) or a Prefect block instead"
            )
        return v

    @model_validator(mode="after")
    def _distinct_columns(self):
        names = [f.name for f in self.features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"features lists {dup} more than once")
        if self.id_column in names:
            raise ValueError(f"id_column {self.id_column!r} is also listed as a feature")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


class ModelConfig(_Model):
    """Mixture settings (scikit-learn's names)."""

    n_components: int = Field(4, ge=1, le=256)
    covariance_type: Literal["full", "tied", "diag", "spherical"] = "full"
    init_params: Literal["k-means||", "k-means++", "random", "random_from_data"] = "k-means||"
    n_init: int = Field(1, ge=1, le=100)
    tol: float = Field(1e-3, ge=0)
    max_iter: int = Field(200, ge=1, le=100_000)
    reg_covar: float = Field(1e-6, ge=0)
    random_state: int = Field(0, ge=0, description="Seed for initialisation; fits are reproducible.")
    standardize: bool = Field(True, description="Scale transformed features to mean 0, variance 1.")
    persist: bool = Field(
        True,
        description="Hold the prepared snapshot in cluster memory for the fit (fastest). False "
        "re-reads it from Parquet every EM iteration: memory bounded by the piece size, for "
        "snapshots larger than the cluster's memory.",
    )
    segment_names: list[str] | None = Field(
        None, description="One name per component, e.g. Creators, Consistent users, Ghosts."
    )

    @model_validator(mode="after")
    def _names_match(self):
        if self.segment_names is not None and len(self.segment_names) != self.n_components:
            raise ValueError(
                f"segment_names has {len(self.segment_names)} names but n_components is "
                f"{self.n_components}; give one name per component"
            )
        return self


class EntropyBands(_Model):
    """Thresholds on normalised entropy (entropy / log₂K ∈ [0, 1]).

    ``low`` below ``low_max``, ``moderate`` below ``moderate_max``, ``high`` otherwise.
    """

    low_max: float = Field(0.25, gt=0, lt=1)
    moderate_max: float = Field(0.6, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low_max < self.moderate_max:
            raise ValueError(f"low_max ({self.low_max}) must be below moderate_max ({self.moderate_max})")
        return self


class OutputConfig(_Model):
    root: str = Field(description="Root for the output tables (memberships/, segments/, overlaps/).")
    registry: str | None = Field(None, description="Model registry location; default <root>/registry.")
    overlap_threshold: float = Field(
        0.25, gt=0, le=0.5, description="γ on both components to count as overlap."
    )

    @property
    def registry_path(self) -> str:
        return self.registry or _join(self.root, "registry")


class TLSConfig(_Model):
    ca_file: str
    cert_file: str
    key_file: str
    require_encryption: bool = True


class LocalClusterConfig(_Model):
    type: Literal["local"] = "local"
    n_workers: int = Field(2, ge=1, le=256)
    threads_per_worker: int = Field(1, ge=1, le=256)
    memory_limit: str = Field("auto", description="Per worker, e.g. '4GiB', or 'auto'.")
    host: str = Field("127.0.0.1", description="Interface the scheduler and workers bind to.")
    dashboard_address: str = Field("127.0.0.1:0", description="Where the dashboard listens.")
    processes: bool = True


class AddressClusterConfig(_Model):
    type: Literal["address"] = "address"
    address: str = Field(description="An existing scheduler, e.g. tls://scheduler.internal:8786")
    tls: TLSConfig | None = None


class ClassClusterConfig(_Model):
    type: Literal["class"] = "class"
    cluster_class: str = Field(description="Dotted path, e.g. dask_jobqueue.SLURMCluster")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    scale: int | None = Field(None, ge=1, description="Workers to ask for after start.")


ClusterConfig = Annotated[
    LocalClusterConfig | AddressClusterConfig | ClassClusterConfig, Field(discriminator="type")
]


class JobConfig(_Model):
    """A whole segmentation job."""

    input: InputConfig
    model: ModelConfig = ModelConfig()
    output: OutputConfig
    entropy_bands: EntropyBands = EntropyBands()
    cluster: ClusterConfig = LocalClusterConfig()

    def config_hash(self) -> str:
        """Stable hash of the settings that change a fit (not where outputs go)."""
        payload = {"input": self.input.model_dump(mode="json"), "model": self.model.model_dump(mode="json")}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def _is_url(path: str) -> bool:
    return "://" in path


def _resolve(path: str, base: Path) -> str:
    if _is_url(path) or os.path.isabs(path):
        return path
    return str((base / path).resolve())


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(
            str(p) for p in e["loc"] if not (isinstance(p, str) and p in ("local", "address", "class"))
        )
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{loc}' — remove it or check its spelling")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key '{loc}'")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"{source}: {loc}: {e['msg']}{got_s}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>", base_dir: Path | None = None) -> JobConfig:
    """Validate a mapping into a :class:`JobConfig`; paths resolved against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        cfg = JobConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None
    if base_dir is not None:
        cfg = cfg.model_copy(
            update={
                "input": cfg.input.model_copy(update={"path": _resolve(cfg.input.path, base_dir)}),
                "output": cfg.output.model_copy(
                    update={
                        "root": _resolve(cfg.output.root, base_dir),
                        "registry": None
                        if cfg.output.registry is None
                        else _resolve(cfg.output.registry, base_dir),
                    }
                ),
            }
        )
    return cfg


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> JobConfig:
    """Read and validate a YAML config file (safe loader only).

    ``overrides`` maps dotted keys to values, e.g. ``{"model.n_components": 6}``.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file {str(p)!r} does not exist.")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_config(data, str(p), p.parent.resolve())


def validate_snapshot(value: str | None, name: str = "snapshot") -> str | None:
    """Check a YYYY-MM-DD date string (the Prefect server does not enforce date formats)."""
    if value is None:
        return None
    import datetime as _dt

    if not isinstance(value, str) or not SNAPSHOT_RE.match(value):
        raise ConfigError(f"Invalid {name} {value!r}: expected a date as YYYY-MM-DD, e.g. 2026-01-31.")
    try:
        _dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"Invalid {name} {value!r}: not a real calendar date.") from None
    return value
