"""The repository's deployments, and serving them from one process (``gmm-dask serve``).

Serving registers the deployments with the Prefect API in PREFECT_API_URL and executes their
runs in this process until interrupted: the daily ``segment`` run on a cron schedule, and
parameterised ``backfill``, ``select-k``, ``fluidity``, ``audience``, ``train`` and ``score`` deployments that
analysts trigger from the UI. ``prefect.yaml`` declares the same set for a work pool.
"""

from __future__ import annotations

from prefect import serve as prefect_serve
from prefect.schedules import Cron

from gmm_dask.app.forms import with_config_values
from gmm_dask.app.params import ServeParams

from .audience import audience
from .backfill import backfill
from .fluidity import fluidity
from .segment import score, segment, train
from .select_k import select_k


def deployments(p: ServeParams):
    """The repository's deployments (the same set prefect.yaml declares for workers); their forms
    say the config's value where an empty field means it."""
    made = _deployments(p)
    sections = _config_sections(p.config)
    for d in made:
        schema = d._parameter_openapi_schema  # the form's schema, sent when the deployment is registered
        with_config_values({"properties": schema.properties, "definitions": schema.definitions}, sections)
    return made


def _config_sections(config: str) -> dict[str, dict]:
    from gmm_dask.app.config import load_config

    cfg = load_config(config)
    return {"model": cfg.model.model_dump(mode="json"), "audiences": cfg.audiences.model_dump(mode="json")}


def _deployments(p: ServeParams):
    params = {"config": p.config}
    tags = ["gmm-dask"]
    return [
        segment.to_deployment(
            name="daily",
            schedule=Cron(p.cron, timezone=p.timezone) if p.schedule else None,
            parameters=params,
            tags=tags,
            description="Daily segmentation of the latest snapshot.",
            concurrency_limit=1,  # one publishing run at a time; the publish lock guards each date too
        ),
        train.to_deployment(name="train", parameters=params, tags=tags),
        score.to_deployment(name="score", parameters=params, tags=tags),
        backfill.to_deployment(name="backfill", parameters=params, tags=tags, concurrency_limit=1),
        select_k.to_deployment(name="select-k", parameters=params, tags=tags),
        fluidity.to_deployment(name="fluidity", parameters=params, tags=tags),
        audience.to_deployment(name="audience", parameters=params, tags=tags),
    ]


def serve(p: ServeParams) -> None:
    """Serve the deployments until interrupted."""
    prefect_serve(*deployments(p))
