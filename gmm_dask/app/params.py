"""One parameter model per job. The same pydantic models give the CLI its options (with help and
defaults), the Prefect deployment form (descriptions, bounds, enums, defaults), and the
validation of both: nothing about a job's parameters is declared twice.

Every model is frozen and forbids unknown keys; integers are strict (``true`` is not 1). Dates
are ``datetime.date`` (the CLI and the UI give YYYY-MM-DD strings); cross-field rules (``end``
not before ``start``, ``k_min <= k_max``) are model validators, so both surfaces enforce them
before any work starts.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gmm_dask.app.config import JobConfig, ModelConfig, format_validation_error
from gmm_dask.app.families import (
    FAMILY_DESCRIPTION,
    MAX_REFIT_MIN_GAIN,
    REFIT_MIN_GAIN_DESCRIPTION,
    ConcreteFamily,
    Family,
    family_problem,
)
from gmm_dask.app.forms import form_schema, param
from gmm_dask.errors import ConfigError
from gmm_dask.mixture.options import (
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

ConfigPath = Annotated[
    str,
    Field(
        min_length=1,
        description="Path of the job's YAML config (relative paths inside it resolve against its folder), "
        "e.g. configs/demo.yaml.",
    ),
]
SnapshotDate = Annotated[
    dt.date | None,
    param("Date partition to process, YYYY-MM-DD.", empty="the latest snapshot under input.path"),
]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=form_schema)


#: What an empty field of the model override or the audience settings means.
CONFIGS = "the config's value"


class ModelOverride(_Params):
    """Changes to the config's `model` section for this run. Empty fields keep the config's values."""

    model_config = ConfigDict(title="Model override")

    n_components: Annotated[
        int | None,
        param(
            "Number of mixture components K.",
            ge=MIN_N_COMPONENTS,
            le=MAX_N_COMPONENTS,
            empty=CONFIGS,
            strict=True,
            title="Number of components",
        ),
    ] = None
    family: Annotated[Family | None, param(FAMILY_DESCRIPTION, empty=CONFIGS, title="Family")] = None
    refit_min_gain: Annotated[
        float | None,
        param(
            REFIT_MIN_GAIN_DESCRIPTION,
            ge=0.0,
            le=MAX_REFIT_MIN_GAIN,
            empty=CONFIGS,
            title="Least gain of a refit (nats/user)",
        ),
    ] = None
    covariance_type: Annotated[
        CovarianceType | None,
        param("Covariance structure of each component.", empty=CONFIGS, title="Covariance type"),
    ] = None
    init_params: Annotated[
        InitMethod | None, param("Initialisation method.", empty=CONFIGS, title="Initialisation")
    ] = None
    n_init: Annotated[
        int | None,
        param(
            "Initialisations; the best is kept.",
            ge=MIN_N_INIT,
            le=MAX_N_INIT,
            empty=CONFIGS,
            strict=True,
            title="Initialisations",
        ),
    ] = None
    tol: Annotated[
        float | None,
        param("Convergence threshold on the lower bound.", ge=MIN_TOL, empty=CONFIGS, title="Tolerance"),
    ] = None
    max_iter: Annotated[
        int | None,
        param(
            "Most EM iterations per initialisation.",
            ge=1,
            le=MAX_MAX_ITER,
            empty=CONFIGS,
            strict=True,
            title="Most iterations",
        ),
    ] = None
    reg_covar: Annotated[
        float | None,
        param(
            "Added to every covariance's diagonal.", ge=MIN_REG_COVAR, empty=CONFIGS, title="Covariance floor"
        ),
    ] = None
    random_state: Annotated[
        int | None, param("Seed of the initialisation.", ge=0, empty=CONFIGS, strict=True, title="Seed")
    ] = None

    def apply(self, cfg: JobConfig) -> JobConfig:
        """The config with these fields patched into its model section (validated again)."""
        changes = self.model_dump(exclude_none=True)
        if not changes:
            return cfg
        try:
            model = ModelConfig.model_validate({**cfg.model.model_dump(), **changes})
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, "model override")) from None
        out = cfg.model_copy(update={"model": model})
        problem = family_problem(out.model.family, out.input.missing)
        if problem:
            raise ConfigError(f"model override: {problem}")
        return out

    @property
    def is_empty(self) -> bool:
        return not self.model_dump(exclude_none=True)


ModelOverrideParam = Annotated[
    ModelOverride,
    param(
        "Override parts of the config's model section for this run; fields left empty keep the "
        "config's values.",
        title="Model override",
    ),
]  # not optional: a form then validates each nested field by itself (its name and range)


class JobParams(_Params):
    """Parameters every job has."""

    #: Whether a run of this job publishes when its ``publish`` is empty. Train, score and segment
    #: do, unless a model override makes the run exploratory; the others write candidates.
    publish_by_default: ClassVar[bool] = False

    config: ConfigPath

    def publishes(self) -> bool:
        """Whether this run writes the published tables (else candidates): ``publish`` if given,
        else the job's default, which a model override turns off (see :data:`PublishParam`)."""
        explicit = getattr(self, "publish", None)
        if explicit is not None:
            return bool(explicit)
        override = getattr(self, "model", None)
        return self.publish_by_default and (override is None or override.is_empty)


PublishParam = Annotated[
    bool | None,
    Field(
        description="Write the published tables (and move the `latest` alias for a fitted model). Empty: "
        "yes for a plain train, score or segment run; no for select-k, backfills and runs with a model "
        "override, which write candidates under output.root/_candidates/RUN_ID/ (see `promote`)."
    ),
]

ForceParam = Annotated[
    bool,
    Field(
        description="Write the tables even when the published ones were written for the same data, config "
        "and model settings (without it such a re-run writes nothing and says the date is unchanged)."
    ),
]


class TrainParams(JobParams):
    """Fit a model on a snapshot, register it and write the tables."""

    publish_by_default = True

    snapshot: SnapshotDate = None
    model: ModelOverrideParam = ModelOverride()  # frozen: one shared empty override
    publish: PublishParam = None
    force: ForceParam = False


class ScoreParams(JobParams):
    """Apply a registered model to a snapshot and write the tables."""

    publish_by_default = True

    snapshot: SnapshotDate = None
    model_version: Annotated[
        str, Field(min_length=1, description="Registered model to apply: a version vNNNN or an alias.")
    ] = "latest"
    publish: PublishParam = None
    force: ForceParam = False


class SegmentParams(JobParams):
    """The daily job: fit on the snapshot (or score it with a pinned model), write tables and a report."""

    publish_by_default = True

    snapshot: SnapshotDate = None
    model_version: Annotated[
        str | None,
        param("Score with this registered version or alias instead of fitting.", empty="fit"),
    ] = None
    model: ModelOverrideParam = ModelOverride()  # frozen: one shared empty override
    publish: PublishParam = None
    force: ForceParam = False

    @model_validator(mode="after")
    def _pinned_or_override(self):
        if self.model_version and self.model is not None and not self.model.is_empty:
            raise ValueError(
                "give either model_version (score with a stored model) or a model override (fit), not both"
            )
        return self


class BackfillParams(JobParams):
    """Segment every snapshot in [start, end]."""

    start: Annotated[dt.date, Field(description="First date of the range, YYYY-MM-DD.")]
    end: Annotated[dt.date, Field(description="Last date of the range (inclusive), YYYY-MM-DD.")]
    mode: Annotated[
        Literal["score", "refit"],
        Field(
            description="score: apply one model to every date. refit: fit each date warm-started from the "
            "previous date's model, components aligned so segment ids keep their meaning."
        ),
    ] = "score"
    model_version: Annotated[
        str | None,
        param(
            "Model to score with (score mode) or to start from (refit mode).",
            empty="'latest' in score mode; in refit mode, the published model if any",
        ),
    ] = None
    force: Annotated[bool, Field(description="Redo dates whose tables already exist.")] = False
    max_concurrency: Annotated[
        int, param("Dates scored at the same time (score mode).", ge=1, le=32, strict=True)
    ] = 2
    analyse: Annotated[
        bool,
        Field(
            description="Also write each date's fluidity, transitions, forecast and audiences (against "
            "the date before it), as the daily segment run does."
        ),
    ] = True
    publish: PublishParam = None

    @model_validator(mode="after")
    def _ordered(self):
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) is before start ({self.start}); give end >= start")
        return self


#: The families select-k compares.
SelectFamily = ConcreteFamily
FAMILIES: tuple[SelectFamily, ...] = ("gaussian", "behaviour")


class SelectKParams(JobParams):
    """Fit a grid of families, component counts and covariance types on one snapshot; pick by BIC
    or AIC on one likelihood scale."""

    k_min: Annotated[int, param("Smallest number of components.", ge=1, le=64, strict=True)] = 2
    k_max: Annotated[int, param("Largest number of components.", ge=1, le=64, strict=True)] = 8
    families: Annotated[
        list[SelectFamily] | None,
        param(
            "Mixture families to compare, on one likelihood scale (see the README's select-k part): "
            "gaussian, behaviour. The behaviour family needs input.missing 'drop' or 'error'.",
            empty="both where the data allows (gaussian alone under input.missing: impute_mean)",
            min_length=1,
        ),
    ] = None
    covariance_types: Annotated[
        list[CovarianceType],
        Field(min_length=1, description="Covariance types to try (the Gaussian family's)."),
    ] = ["full"]
    criterion: Annotated[Literal["bic", "aic"], Field(description="Information criterion to minimise.")] = (
        "bic"
    )
    snapshot: SnapshotDate = None
    max_concurrency: Annotated[
        int, param("Candidate models fitted at the same time.", ge=1, le=64, strict=True)
    ] = 4
    publish: PublishParam = None

    @model_validator(mode="after")
    def _ordered(self):
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must be <= k_max ({self.k_max})")
        return self

    def family_configs(self, cfg: JobConfig) -> dict[str, JobConfig]:
        """The config each family's candidates are fitted with (its ``model.family`` set), in the
        order given; by default every family the data allows. A family given here that the
        config's input cannot use is a :class:`ConfigError` naming ``families``."""
        wanted = list(dict.fromkeys(self.families or FAMILIES))
        out: dict[str, JobConfig] = {}
        for family in wanted:
            fam_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"family": family})})
            problem = family_problem(family, cfg.input.missing)
            if problem is None:
                out[family] = fam_cfg
            elif self.families is not None:
                raise ConfigError(
                    f"families: {family!r} cannot run on this input ({problem}). Remove it from families, "
                    "or leave families empty to compare every family the data allows."
                )
        return out


class FluidityParams(JobParams):
    """Per-user membership shift between two segmented snapshots."""

    from_date: Annotated[dt.date, Field(description="Earlier snapshot (already segmented), YYYY-MM-DD.")]
    to_date: Annotated[dt.date, Field(description="Later snapshot (already segmented), YYYY-MM-DD.")]
    top_n: Annotated[
        int, param("Users who moved most, listed in the summary.", ge=1, le=100_000, strict=True)
    ] = 100

    @model_validator(mode="after")
    def _distinct(self):
        if self.from_date == self.to_date:
            raise ValueError("from_date and to_date are the same day; pick two different snapshots")
        return self


class AudienceParams(JobParams):
    """Write the audiences of a segmented snapshot: high-entropy, blended, atypical users and movers
    (Parquet and CSV), with the fluidity against the previous snapshot and the forecast."""

    snapshot: Annotated[
        dt.date | None,
        param("Segmented snapshot, YYYY-MM-DD.", empty="the latest with published memberships"),
    ] = None
    blend_threshold: Annotated[
        float | None,
        param(
            "γ needed on both segments of a pair.",
            gt=0,
            le=0.5,
            empty="the config's audiences.blend_threshold",
        ),
    ] = None
    atypical_quantile: Annotated[
        float | None,
        param(
            "Share of users with the lowest log-likelihood.",
            gt=0,
            lt=0.5,
            empty="the config's audiences.atypical_quantile",
        ),
    ] = None
    mover_min_tv: Annotated[
        float | None,
        param(
            "Total variation from the membership mover_snapshots snapshots ago.",
            gt=0,
            le=1,
            empty="the config's audiences.mover_min_tv",
        ),
    ] = None
    mover_snapshots: Annotated[
        int | None,
        param(
            "Snapshots over which a mover moved steadily (1: since the previous snapshot).",
            ge=1,
            le=30,
            strict=True,
            empty="the config's audiences.mover_snapshots",
        ),
    ] = None
    publish: Annotated[
        bool,
        Field(
            description="Replace the published audiences; otherwise write a candidate under "
            "output.root/_candidates/RUN_ID/ (see `promote`)."
        ),
    ] = False

    def apply(self, cfg: JobConfig) -> JobConfig:
        """The config with this run's audience settings patched in."""
        changes = self.model_dump(
            include={"blend_threshold", "atypical_quantile", "mover_min_tv", "mover_snapshots"},
            exclude_none=True,
        )
        if not changes:
            return cfg
        return cfg.model_copy(update={"audiences": cfg.audiences.model_copy(update=changes)})


def parse_params(cls: type[_Params], values: dict, source: str) -> _Params:
    """Validate parameters into ``cls``; a :class:`ConfigError` naming each bad parameter."""
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def date_str(value: dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


__all__ = [
    "AudienceParams",
    "BackfillParams",
    "FluidityParams",
    "ModelOverride",
    "ScoreParams",
    "SegmentParams",
    "SelectKParams",
    "TrainParams",
    "VacuumParams",
    "parse_params",
]


class PromoteParams(JobParams):
    """Publish a candidate run's tables (each date's partitions committed together, atomically)
    and point `latest` at its model."""

    run_id: Annotated[
        str,
        Field(
            min_length=1,
            description="The candidate run to publish (its folder under output.root/_candidates/).",
        ),
    ]


class VacuumParams(JobParams):
    """Delete the files of the published Delta tables that no table version younger than the
    retention references (replaced partitions, files of killed writers). Versions older than
    the retention stop being readable (time travel reaches back as far as the retention)."""

    retention_hours: Annotated[
        int,
        param(
            "Keep what every version younger than this many hours needs. Under 24 the job "
            "refuses while any date's publish lock is held: a run still writing has files no commit "
            "references yet.",
            ge=0,
        ),
    ] = 168
    dry_run: Annotated[bool, Field(description="List the files that would be deleted; delete nothing.")] = (
        False
    )


class ServeParams(JobParams):
    """Serve the deployments from this process (Ctrl-C to stop); runs use this config by default."""

    cron: Annotated[
        str, Field(min_length=1, description="Schedule of the daily segment run (cron syntax).")
    ] = "0 3 * * *"
    timezone: Annotated[str, Field(min_length=1, description="Time zone of the cron schedule.")] = "UTC"
    schedule: Annotated[bool, Field(description="Attach the schedule to the daily deployment.")] = True
