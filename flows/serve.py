"""Deployments kept in the repository, and a ``serve`` entry point that runs them locally.

``gmm-dask serve`` (or ``python -m flows.serve``) registers the deployments with the Prefect API
in PREFECT_API_URL and executes their runs in this process until interrupted: the daily
``segment`` run on a cron schedule, and parameterised ``backfill``, ``select-k``, ``fluidity``,
``train`` and ``score`` deployments that analysts trigger from the UI.
"""

from __future__ import annotations

import argparse

from prefect import serve
from prefect.schedules import Cron

from .backfill import backfill
from .common import DEFAULT_CONFIG
from .fluidity import fluidity
from .segment import score, segment, train
from .select_k import select_k

DAILY_CRON = "0 3 * * *"


def deployments(
    config: str = DEFAULT_CONFIG, *, cron: str = DAILY_CRON, timezone: str = "UTC", schedule: bool = True
):
    """The repository's deployments (the same set prefect.yaml declares for workers)."""
    params = {"config": config}
    tags = ["gmm-dask"]
    return [
        segment.to_deployment(
            name="daily",
            schedule=Cron(cron, timezone=timezone) if schedule else None,
            parameters=params,
            tags=tags,
            description="Daily segmentation of the latest snapshot.",
        ),
        train.to_deployment(name="train", parameters=params, tags=tags),
        score.to_deployment(name="score", parameters=params, tags=tags),
        backfill.to_deployment(name="backfill", parameters=params, tags=tags),
        select_k.to_deployment(name="select-k", parameters=params, tags=tags),
        fluidity.to_deployment(name="fluidity", parameters=params, tags=tags),
    ]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Serve gmm-dask deployments from this process.")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--cron", default=DAILY_CRON)
    p.add_argument("--timezone", default="UTC")
    p.add_argument(
        "--no-schedule", action="store_true", help="register the daily deployment without its schedule"
    )
    a = p.parse_args(argv)
    serve(*deployments(a.config, cron=a.cron, timezone=a.timezone, schedule=not a.no_schedule))


if __name__ == "__main__":  # pragma: no cover
    main()
