"""``promote``: publish a candidate run's tables and move ``latest`` to its model."""

from __future__ import annotations

import json
from dataclasses import dataclass

from gmm_dask.app.config import JobConfig, check_output_location
from gmm_dask.app.params import PromoteParams
from gmm_dask.errors import DataError
from gmm_dask.storage import io

from .core import (
    MANIFEST,
    STEPS,
    Steps,
    Target,
    load_job,
    logger,
    made_ahead,
    move_latest,
    planner,
    run_owner,
)
from .results import Latest


@dataclass
class PromotePlan:
    cfg: JobConfig
    target: Target  # the candidate's namespace
    manifest: dict  # its candidate.json


@dataclass
class PromoteResult:
    run_id: str
    dates: list[str]
    tables: dict[str, dict[str, str]]  # date -> table -> published path
    latest: Latest | None  # where `latest` points after; None where the candidate trained no model


@planner(PromoteParams)
def plan_promote(p: PromoteParams, steps: Steps = STEPS) -> PromotePlan:
    cfg = load_job(p.config)
    check_output_location(cfg)
    io.check_storage(cfg)
    target = Target(False, p.run_id)
    candidate = target.store(cfg)
    if not candidate.exists(MANIFEST):
        known = cfg.outputs().list_names("_candidates")
        raise DataError(
            f"run_id: no candidate run {p.run_id!r} under {cfg.output.root!r} (candidates: "
            f"{', '.join(sorted(known)[-10:]) or 'none'})."
        )
    manifest = json.loads(candidate.read_text(MANIFEST))
    return PromotePlan(cfg, target, manifest)


def promote(p: PromoteParams, *, steps: Steps = STEPS) -> PromoteResult:
    """Publish a candidate run: each date's partitions are copied into the published tables and
    committed together (each atomically) under that date's publish lock; ``latest`` then points
    at the model of the candidate's most recent trained date."""
    plan = made_ahead(p, PromotePlan) or plan_promote(p, steps)
    cfg, target, manifest = plan.cfg, plan.target, plan.manifest
    published = cfg.outputs()
    out: dict[str, dict[str, str]] = {}
    for date, info in sorted(manifest["dates"].items()):
        owner = run_owner(f"promote {p.run_id}")
        with published.lock(date, owner=owner, wait_seconds=cfg.output.lock_wait_seconds):
            out[date] = published.copy_from(target.store(cfg), info["tables"], date)
    trained = [info["model_version"] for _, info in sorted(manifest["dates"].items()) if info.get("trained")]
    latest = move_latest(cfg, steps.load_model(cfg, trained[-1]), steps) if trained else None
    logger.info(
        "Promoted candidate %s: %d date(s), latest %s",
        p.run_id,
        len(out),
        "unchanged" if latest is None else f"{'->' if latest.moved else 'stays'} {latest.version}",
    )
    return PromoteResult(p.run_id, sorted(out), out, latest)
