"""Each job sequenced once: train, score, segment, backfill, select-k, fluidity, audience,
promote, vacuum.

A job is a function of its parameter model (:mod:`gmm_dask.app.params`) and of the *steps* it is
made of (:class:`Steps`, by default the plain functions of :mod:`gmm_dask.app.pipeline`). The Prefect
flows call the same functions with every step wrapped as a task, so a job cannot drift between
the CLI, the library and the UI.

Every job first *plans* without Dask or Prefect — config, paths, snapshots and their footers,
the model version — so bad input fails in a second, before a cluster starts; then it runs its
steps on the configured cluster (the active Dask client if there is one, so a flow or a
backfill starts it once). A job with nothing to do starts nothing.

One module per job family, each registering its planner with :func:`core.planner`: a new job
is a new module here (plus its parameter model, flow and CLI entry), with no table to edit.
"""

from .audience import AudienceRunResult, audience
from .backfill import BackfillResult, backfill
from .core import STEPS, Steps, check_job, load_job, plan, plan_ahead, run_label
from .fluidity import fluidity
from .promote import PromoteResult, promote
from .results import RunResult
from .select_k import SelectKResult, select_k
from .snapshot import score, segment, train
from .vacuum import VacuumResult, vacuum

__all__ = [
    "STEPS",
    "AudienceRunResult",
    "BackfillResult",
    "PromoteResult",
    "RunResult",
    "SelectKResult",
    "Steps",
    "VacuumResult",
    "audience",
    "backfill",
    "check_job",
    "fluidity",
    "load_job",
    "plan",
    "plan_ahead",
    "promote",
    "run_label",
    "score",
    "segment",
    "select_k",
    "train",
    "vacuum",
]
