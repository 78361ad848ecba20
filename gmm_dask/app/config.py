"""Job configuration: frozen pydantic models, loaded from YAML with a safe loader.

The loader is ``yaml.SafeLoader`` (plain data, never code) that also refuses a key repeated in a
mapping. Booleans are never numbers (YAML reads ``yes``/``no``/``on``/``off`` as booleans).

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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gmm_dask.app.families import (
    DEFAULT_REFIT_MIN_GAIN,
    FAMILY_DESCRIPTION,
    MAX_REFIT_MIN_GAIN,
    REFIT_MIN_GAIN_DESCRIPTION,
    Family,
    auto_family,
    family_problem,
)
from gmm_dask.app.yaml_safe import DuplicateKeyError, read_yaml
from gmm_dask.errors import ConfigError
from gmm_dask.mixture.options import (
    DEFAULT_COVARIANCE_TYPE,
    DEFAULT_INIT_METHOD,
    DEFAULT_REG_COVAR,
    DEFAULT_TOL,
    MAX_MAX_ITER,
    MAX_N_COMPONENTS,
    MAX_N_INIT,
    MIN_N_COMPONENTS,
    MIN_N_INIT,
    MIN_REG_COVAR,
    MIN_TOL,
    CovarianceType,
    InitMethod,
)
from gmm_dask.segmentation.specs import EntropyBands, FeatureSpec
from gmm_dask.segmentation.specs import Spec as _Model

if TYPE_CHECKING:
    from gmm_dask.storage.io import TableStore

_SECRET_KEYS = re.compile(
    r"(secret|password|token|credential|private|^key$|access_key|account_key|sas)", re.I
)


class DegenerateConfig(_Model):
    """What to do with degenerate components: too small to be a segment, or atoms (a variance at
    the resolution floor in some feature: the component models one exact value there)."""

    min_share: float = Field(
        0.005,
        gt=0,
        lt=1,
        description="Smallest share of rows (soft weight and hard size) a segment may hold.",
    )
    small: Literal["warn", "prune", "error"] = Field(
        "prune",
        description="Components below min_share: prune (refit without them, the default: a scheduled "
        "job must neither fail nor publish a segment of a handful of users), warn (keep and report), "
        "or error.",
    )
    atoms: Literal["warn", "prune", "error"] = Field(
        "warn",
        description="Components at the resolution floor in some feature: warn (keep and report, the "
        "default: a point mass such as users with no purchase is often a real archetype), prune, or error.",
    )


class InputConfig(_Model):
    """Where the date-partitioned snapshots are and which columns to read."""

    path: str = Field(description="Dataset root (local path or fsspec URL: s3://, gs://, abfs://).")
    format: Literal["parquet", "delta"] = Field(
        "parquet",
        description="parquet: Hive-partitioned Parquet directories <partition_key>=YYYY-MM-DD/ under "
        "path; delta: a Delta Lake table at path, partitioned by partition_key (its current version).",
    )
    partition_key: str = Field("dt", description="Hive partition key, e.g. dt=2026-01-31.")
    id_column: str = Field(description="Unique user id column (kept in its original type).")
    features: list[FeatureSpec] = Field(min_length=1, description="Features and transforms.")
    weight_column: str | None = Field(None, description="Optional non-negative row weight.")
    missing: Literal["error", "drop", "impute_mean"] = Field(
        "error", description="What to do with rows that have a null/NaN/inf feature."
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Non-secret fsspec options (e.g. endpoint_url, client_kwargs.region_name) for the "
        "input, the outputs and the registry. Credentials come from the environment.",
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

    n_components: int = Field(4, ge=MIN_N_COMPONENTS, le=MAX_N_COMPONENTS)
    family: Family = Field("auto", description=FAMILY_DESCRIPTION)
    refit_min_gain: float = Field(
        DEFAULT_REFIT_MIN_GAIN,
        ge=0.0,
        le=MAX_REFIT_MIN_GAIN,
        description=REFIT_MIN_GAIN_DESCRIPTION,
    )
    covariance_type: CovarianceType = DEFAULT_COVARIANCE_TYPE
    init_params: InitMethod = DEFAULT_INIT_METHOD
    n_init: int = Field(1, ge=MIN_N_INIT, le=MAX_N_INIT)
    tol: float = Field(DEFAULT_TOL, ge=MIN_TOL)
    max_iter: int = Field(200, ge=1, le=MAX_MAX_ITER)
    reg_covar: float = Field(DEFAULT_REG_COVAR, ge=MIN_REG_COVAR)
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
    degenerate: DegenerateConfig = Field(
        default_factory=DegenerateConfig, description="Detection of and policy for degenerate components."
    )

    @model_validator(mode="after")
    def _names_match(self):
        if self.segment_names is not None and len(self.segment_names) != self.n_components:
            raise ValueError(
                f"segment_names has {len(self.segment_names)} names but n_components is "
                f"{self.n_components}; give one name per component"
            )
        return self


class OutputConfig(_Model):
    root: str = Field(description="Root for the output tables (memberships/, segments/, overlaps/).")
    format: Literal["parquet", "delta"] = Field(
        "parquet",
        description="Table format of the outputs. parquet: Hive-partitioned directories "
        "<table>/dt=YYYY-MM-DD/ (atomic replace on local disks only). delta: Delta Lake tables "
        "partitioned by dt (atomic replace on object stores too, time travel until vacuumed; needs "
        "the deltalake package).",
    )
    registry: str | None = Field(None, description="Model registry location; default <root>/registry.")
    overlap_threshold: float = Field(
        0.25, gt=0, le=0.5, description="γ on both components to count as overlap."
    )
    lock_wait_seconds: float = Field(
        0.0,
        ge=0,
        le=86400,
        description="How long a publishing run waits for a date that another run is publishing "
        "(its publish lock) before it gives up with exit code 75. 0: give up at once.",
    )

    @property
    def registry_path(self) -> str:
        return self.registry or _join(self.root, "registry")


class AudienceConfig(_Model):
    """Who is in each audience (see gmm_dask.segmentation.audiences); written per snapshot by the segment job,
    the backfill and ``gmm-dask audience``."""

    blend_threshold: float | None = Field(
        None,
        gt=0,
        le=0.5,
        description="γ needed on both segments of a pair to be in its blended audience. Empty: "
        "output.overlap_threshold.",
    )
    pairs: list[tuple[int, int]] | None = Field(
        None,
        description="Segment id pairs [a, b] that get a blended audience. Empty: every pair.",
    )
    atypical_quantile: float = Field(
        0.01, gt=0, lt=0.5, description="Share of users with the lowest log-likelihood called atypical."
    )
    mover_min_tv: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Total variation ½‖γ_then − γ‖₁ since mover_snapshots ago from which a user is a mover.",
    )
    mover_snapshots: int = Field(
        3,
        ge=1,
        le=30,
        description="Snapshots over which a mover moved steadily, further at each (a lasting "
        "change, not one jump that stays or comes back); 1: since the previous snapshot.",
    )


class ForecastConfig(_Model):
    """The Markov forecast of next-period segments (see gmm_dask.segmentation.forecast)."""

    counts: Literal["gamma_mass", "n_users"] = Field(
        "gamma_mass", description="gamma_mass: a Markov chain on γ (soft); n_users: on hard segments."
    )
    half_life: float | Literal["auto"] | None = Field(
        "auto",
        description="Recency weighting of past steps, a half-life in snapshots (> 0). auto: chosen on "
        "the history (the one that best forecast its last steps); empty: all steps equal.",
    )
    prior_users: float = Field(
        10.0,
        ge=0,
        description="Pseudo-users who stay, per segment: rows with little data forecast little change.",
    )
    history: int = Field(60, ge=1, le=3650, description="Most past steps (pairs of snapshots) read.")
    holdout: int = Field(2, ge=1, le=365, description="Last snapshots held out in the backtest.")

    @field_validator("half_life")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, float) and not v > 0:
            raise ValueError(f"half_life must be a positive number of snapshots, 'auto' or empty; got {v}")
        return v


class TLSConfig(_Model):
    ca_file: str
    cert_file: str
    key_file: str
    require_encryption: bool = True


# Byte units as Dask's ``parse_bytes`` reads them (case-insensitive; k/M/G... are powers of 1000,
# Ki/Mi/Gi... powers of 1024); parsed here so that loading a config does not import Dask.
_BYTE_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgtp", 1):
    _BYTE_UNITS.update({_p: 1000**_i, _p + "b": 1000**_i, _p + "i": 1024**_i, _p + "ib": 1024**_i})
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")
_MEMORY_HELP = (
    "use 'auto', a number of bytes (e.g. 4000000000), a size such as '4GiB', '1.5 GB' or '800MB', "
    "or a fraction of the machine's memory in (0, 1] such as 0.5"
)


def parse_memory_limit(value: str | int | float) -> int | float | str:
    """Check a per-worker memory limit the way Dask will read it; returns bytes, a fraction or 'auto'.

    >>> parse_memory_limit("4GiB"), parse_memory_limit("1.5 GB"), parse_memory_limit(0.5)
    (4294967296, 1500000000, 0.5)
    """
    if isinstance(value, bool):
        raise ValueError(f"got the boolean {value}; {_MEMORY_HELP}")
    if isinstance(value, str):
        if value.strip() == "auto":
            return "auto"
        m = _SIZE_RE.match(value)
        if not m or m.group(2).lower() not in _BYTE_UNITS:
            raise ValueError(f"cannot read {value!r} as a memory size; {_MEMORY_HELP}")
        number, unit = float(m.group(1)), m.group(2).lower()
        if not unit:
            return parse_memory_limit(number)
        nbytes = int(number * _BYTE_UNITS[unit])
        if nbytes < 1:
            raise ValueError(f"{value!r} is less than one byte; {_MEMORY_HELP}")
        return nbytes
    if not isinstance(value, int | float) or value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"cannot read {value!r} as a memory size; {_MEMORY_HELP}")
    if value <= 0:
        raise ValueError(f"{value!r} is not positive; {_MEMORY_HELP}")
    if value <= 1:  # Dask reads numbers up to 1 as a fraction of the machine's memory
        return float(value)
    return int(value)


_DOTTED_RE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$")
_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?)"
_ADDRESS_RE = re.compile(
    rf"^(?:(?:tcp|tls|ucx)://{_HOST}:(?P<port>[0-9]{{1,5}})|inproc://[^\s/]+(?:/[^\s/]+)*)$"
)


class LocalClusterConfig(_Model):
    type: Literal["local"] = "local"
    n_workers: int = Field(2, ge=1, le=256)
    threads_per_worker: int = Field(1, ge=1, le=256)
    memory_limit: str | int | float = Field(
        "auto",
        description="Per worker: 'auto', bytes, a size like '4GiB' or '800MB', or a fraction in (0, 1].",
    )
    host: str = Field("127.0.0.1", description="Interface the scheduler and workers bind to.")
    dashboard_address: str = Field("127.0.0.1:0", description="Where the dashboard listens.")
    processes: bool = True

    @field_validator("memory_limit")
    @classmethod
    def _memory_limit(cls, v):
        parse_memory_limit(v)  # raises with the accepted forms
        return v.strip() if isinstance(v, str) else v


class AddressClusterConfig(_Model):
    type: Literal["address"] = "address"
    address: str = Field(description="An existing scheduler, e.g. tls://scheduler.internal:8786")
    tls: TLSConfig | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str):
        m = _ADDRESS_RE.match(v.strip())
        if not m or (m.group("port") is not None and not 0 < int(m.group("port")) < 65536):
            raise ValueError(
                f"{v!r} is not a scheduler address; write <protocol>://<host>:<port> with protocol "
                "tcp, tls or ucx (or inproc://...), e.g. tcp://scheduler.internal:8786"
            )
        return v.strip()


class ClassClusterConfig(_Model):
    type: Literal["class"] = "class"
    cluster_class: str = Field(description="Dotted path, e.g. dask_jobqueue.SLURMCluster")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    scale: int | None = Field(None, ge=1, description="Workers to ask for after start.")

    @field_validator("cluster_class")
    @classmethod
    def _dotted_path(cls, v: str):
        if not _DOTTED_RE.match(v):
            raise ValueError(
                f"{v!r} is not a dotted path to a Dask cluster class; write it like "
                "'dask_jobqueue.SLURMCluster' or 'dask_kubernetes.operator.KubeCluster'"
            )
        return v


ClusterConfig = Annotated[
    LocalClusterConfig | AddressClusterConfig | ClassClusterConfig, Field(discriminator="type")
]


class JobConfig(_Model):
    """A whole segmentation job."""

    input: InputConfig
    model: ModelConfig = ModelConfig()
    output: OutputConfig
    entropy_bands: EntropyBands = EntropyBands()
    audiences: AudienceConfig = AudienceConfig()
    forecast: ForecastConfig = ForecastConfig()
    cluster: ClusterConfig = LocalClusterConfig()

    def outputs(self) -> TableStore:
        """The published output tables: ``output.root`` with the storage options and
        ``output.format`` (candidates: ``outputs().candidates(run_id)``)."""
        from gmm_dask.storage.io import TableStore  # pyarrow and fsspec: not to load a config

        return TableStore(self.output.root, dict(self.input.storage_options), self.output.format)

    def with_family(self, kinds: Sequence[str]) -> JobConfig:
        """This config with ``model.family: auto`` replaced by the family it stands for, given
        each feature's kind (:func:`~gmm_dask.app.families.auto_family`)."""
        fam, _ = auto_family(self.model.family, self.input.missing, self.input.feature_names, kinds)
        if fam == self.model.family:
            return self
        return self.model_copy(update={"model": self.model.model_copy(update={"family": fam})})

    def config_hash(self) -> str:
        """Stable hash of the settings that change a fit (not where outputs go)."""
        payload = {
            "input": self.input.model_dump(mode="json", exclude={"format"}),  # same rows either way
            # the default family leaves the hash of a config written before families unchanged
            "model": self.model.model_dump(
                mode="json", exclude={"family"} if self.model.family == "gaussian" else None
            ),
        }
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
        parts = list(e["loc"])
        loc = ".".join(  # drop the union's tag: cluster.local.n_workers -> cluster.n_workers
            str(p)
            for i, p in enumerate(parts)
            if not (i > 0 and parts[i - 1] == "cluster" and p in ("local", "address", "class"))
        )
        if e["type"] == "union_tag_not_found":
            lines.append(f"{source}: missing required key '{loc}.type' (local, address or class)")
        elif e["type"] == "bool_not_number":  # raised for the model, about one of its keys
            loc = ".".join(filter(None, [loc, e["ctx"]["field"]]))
            lines.append(f"{source}: {loc}: {e['msg']}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{loc}' — remove it or check its spelling")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key '{loc}'")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict | list) else f" (got {got!r})"
            msg = e["msg"].removeprefix("Value error, ")
            where = f"{loc}: " if loc else ""  # a model's own rule (k_min <= k_max) has no key
            lines.append(f"{source}: {where}{msg}{got_s}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>", base_dir: Path | None = None) -> JobConfig:
    """Validate a mapping into a :class:`JobConfig`; paths resolved against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        cfg = JobConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None
    problem = family_problem(cfg.model.family, cfg.input.missing)
    if problem:
        raise ConfigError(f"{source}: {problem}")
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
    """Read and validate a YAML config file (safe loader only; a repeated key is an error).

    ``overrides`` maps dotted keys to values, e.g. ``{"model.n_components": 6}``.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file {str(p)!r} does not exist.")
    try:
        data = read_yaml(p.read_text())
    except DuplicateKeyError as err:
        raise ConfigError(
            f"{p}: key '{err.key}' appears twice (lines {err.first_line} and {err.second_line}); "
            "YAML would silently keep only the last one. Remove one of them or merge the two."
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        return parse_config(data, str(p), p.parent.resolve())  # raises the "expected a mapping" error
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_config(data, str(p), p.parent.resolve())


def _check_writable_dir(path: str, key: str) -> None:
    """ConfigError unless ``path`` is a directory, or could be created as one, that we may write to."""
    if path.startswith("file://"):
        path = path[len("file://") :]
    elif _is_url(path):
        return  # object stores: permissions show only on the first write
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(
            f"{key} {path!r} is a file, not a directory. Point {key} at a directory (it is created "
            "if missing), or move the file away."
        )
    parent = p
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(
            f"{key} {path!r} cannot be created: {str(parent)!r} is a file, not a directory. Point "
            f"{key} somewhere else, or move the file away."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        what = "directory" if parent == p else f"nearest existing parent {str(parent)!r}"
        raise ConfigError(
            f"{key} {path!r}: the {what} is not writable by this user. Point {key} at a writable "
            "location or fix the permissions."
        )


def check_output_location(cfg: JobConfig) -> None:
    """Check, before any work, that the output root and the registry can be written (local paths).

    Raises :class:`ConfigError` naming ``output.root`` / ``output.registry`` when the path is a
    file, lies under a file, or its nearest existing directory is not writable. Creates nothing;
    URLs (s3://, gs://, ...) are not checked.
    """
    _check_writable_dir(cfg.output.root, "output.root")
    if cfg.output.registry is not None:
        _check_writable_dir(cfg.output.registry, "output.registry")
    else:
        _check_writable_dir(cfg.output.registry_path, "output.root (its registry/ directory)")
