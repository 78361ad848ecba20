"""The domain's value types: what a feature is, the entropy bands, and the columns an input has.

Frozen pydantic models (unknown keys are errors; booleans are never numbers, since YAML reads
``yes``/``no``/``on``/``off`` as booleans). The job configuration (:mod:`gmm_dask.app.config`)
builds on them; the domain's functions take these, never a path or a whole configuration.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Annotated, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

TRANSFORMS = ("none", "log1p", "sqrt", "asinh")


def _is_number_type(annotation: object) -> bool:
    """Whether a field's type is (or includes) int or float, but not bool."""
    if annotation in (int, float):
        return True
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _is_number_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_is_number_type(a) for a in typing.get_args(annotation))
    return False


class Spec(BaseModel):
    """Base of every configuration model: frozen, unknown keys refused, no booleans for numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: object) -> object:
        """YAML reads yes/no/on/off/true/false as booleans, which pydantic would take as 1 and 0."""
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                if isinstance(value, bool) and field is not None and _is_number_type(field.annotation):
                    raise PydanticCustomError(
                        "bool_not_number",
                        "expected a number, got the boolean {value} (YAML reads yes/no/on/off/true/false "
                        "as booleans); write a number",
                        {"field": key, "value": "true" if value else "false"},
                    )
        return data


class FeatureSpec(Spec):
    """One behavioural feature: a numeric column and the transform applied before fitting."""

    name: str = Field(min_length=1, description="Column name in the snapshot.")
    transform: Literal["none", "log1p", "sqrt", "asinh"] = Field(
        default="none",
        description="log1p/sqrt for non-negative heavy-tailed counts, asinh for signed amounts.",
    )
    kind: Literal["count", "amount", "continuous", "binary"] | None = Field(
        default=None,
        description="count (integers), amount (money, durations: often exactly 0), continuous, or "
        "binary (0/1). Counts and amounts are not resolved finer than `resolution`, which floors every "
        "component's variance in this feature (Sheppard's Δ²/12 through the transform and scaling); "
        "the Gaussian family treats a binary as a count of resolution 1, the behaviour family fits it "
        "as a Bernoulli. Empty: inferred from the data (all values whole numbers: count; "
        "non-negative with exact zeros: amount; else continuous).",
    )
    resolution: float | None = Field(
        default=None,
        gt=0,
        description="Smallest meaningful step in the raw units. Default: 1 for counts, 1 currency "
        "unit for amounts, none for continuous features.",
    )

    @model_validator(mode="after")
    def _resolution_needs_discrete(self) -> Self:
        if self.resolution is not None and self.kind in ("continuous", "binary"):
            raise ValueError("resolution applies to counts and amounts; remove it or set kind: count/amount")
        return self


class EntropyBands(Spec):
    """Thresholds on normalised entropy (entropy / log₂K ∈ [0, 1]).

    ``low`` below ``low_max``, ``moderate`` below ``moderate_max``, ``high`` otherwise.
    """

    low_max: float = Field(default=0.25, gt=0, lt=1)
    moderate_max: float = Field(default=0.6, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.low_max < self.moderate_max:
            raise ValueError(f"low_max ({self.low_max}) must be below moderate_max ({self.moderate_max})")
        return self


class InputColumns(Protocol):
    """What the domain reads of an input's description (the job's ``input`` config satisfies it)."""

    @property
    def id_column(self) -> str: ...
    @property
    def features(self) -> Sequence[FeatureSpec]: ...
    @property
    def weight_column(self) -> str | None: ...
    @property
    def missing(self) -> Literal["error", "drop", "impute_mean"]: ...
    @property
    def feature_names(self) -> list[str]: ...
