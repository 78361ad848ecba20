"""``vacuum``: delete the files of the Delta output tables that no recent version references."""

from __future__ import annotations

from dataclasses import dataclass

from gmm_dask.app.config import JobConfig, check_output_location
from gmm_dask.app.params import VacuumParams
from gmm_dask.errors import ConfigError, PublishConflictError
from gmm_dask.storage import io

from .core import STEPS, Steps, load_job, logger, made_ahead, planner

#: Below this retention a run still writing could lose its not-yet-committed files.
VACUUM_SAFE_HOURS = 24


@dataclass
class VacuumResult:
    tables: dict[str, list[str]]  # table -> files deleted (or that would be, on a dry run)
    retention_hours: int
    dry_run: bool


@planner(VacuumParams)
def plan_vacuum(p: VacuumParams, steps: Steps = STEPS) -> JobConfig:
    cfg = load_job(p.config)
    if cfg.output.format != "delta":
        raise ConfigError(
            f"output.format is {cfg.output.format!r}: there is nothing to vacuum — only Delta tables keep "
            "the files of replaced partitions (the Parquet layout replaces them in place)."
        )
    check_output_location(cfg)
    io.check_storage(cfg)
    return cfg


def vacuum(p: VacuumParams, *, steps: Steps = STEPS) -> VacuumResult:
    """Vacuum every Delta table under ``output.root`` (the published ones; candidates live under
    ``_candidates/`` and are removed with their folder)."""
    cfg = made_ahead(p, JobConfig) or plan_vacuum(p, steps)
    store = cfg.outputs()
    root = cfg.output.root.rstrip("/")
    if p.retention_hours < VACUUM_SAFE_HOURS:
        held = store.held_locks()
        if held:
            raise PublishConflictError(
                f"retention_hours {p.retention_hours} is under {VACUUM_SAFE_HOURS} and a run holds "
                f"{', '.join(held)} under {store.locks_dir}: its files are not committed yet and "
                "would be deleted. Vacuum when it has finished (or remove a lock its dead run left)."
            )
    torn = store.pending_dates()
    if torn:
        raise PublishConflictError(
            f"Snapshot(s) {', '.join(torn)} under {root} are being published, or a run died while "
            "publishing them: readers read them at the table versions before that run, which a vacuum "
            "could delete. Vacuum when the run has finished, or re-run those dates first (the next "
            "publishing run of a date puts its previous tables back)."
        )
    tables = {}
    for name in store.delta_tables():
        tables[name] = store.vacuum(name, p.retention_hours, p.dry_run)
        logger.info(
            "%s %d file(s) of %s/%s",
            "Would delete" if p.dry_run else "Deleted",
            len(tables[name]),
            root,
            name,
        )
    return VacuumResult(tables, p.retention_hours, p.dry_run)
