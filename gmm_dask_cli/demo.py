"""Parameters of ``gmm-dask demo`` (a CLI convenience, not a job: data generation + the segment flow)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class DemoParams(BaseModel):
    """Demo data, then the flows an analyst runs on it: generate --snapshots daily snapshots of
    --users users (kept if already there) -> the `backfill` flow (refit, published) over every
    date before the one segmented, by default the first --snapshots - 1 (dates already done are
    skipped) -> the daily `segment` flow on --snapshot, by default the latest (tables, summary and
    report under the config's output.root)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: Annotated[
        str, Field(min_length=1, description="Job config whose input.path receives the data.")
    ] = "configs/demo.yaml"
    users: Annotated[int, Field(ge=100, le=100_000_000, strict=True, description="Users per snapshot.")] = (
        50_000
    )
    snapshots: Annotated[int, Field(ge=1, le=3650, strict=True, description="Daily snapshots.")] = 7
    seed: Annotated[int, Field(ge=0, strict=True, description="Seed of the generator.")] = 7
    snapshot: Annotated[
        dt.date | None, Field(description="Snapshot to segment, YYYY-MM-DD. Empty: the latest.")
    ] = None
