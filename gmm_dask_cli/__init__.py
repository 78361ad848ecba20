"""The ``gmm-dask`` command line, on top of the library (``gmm_dask``) and the flows (``flows``).

Each job command's options are generated from the job's parameter model, so they match the
Prefect form. Every command checks its arguments, config, paths, snapshots and model version
before it starts Prefect or Dask: bad input exits 2 within seconds, with one message and no
traceback (``-v`` adds it). ``train`` and ``score`` run without Prefect; ``segment``,
``backfill``, ``select-k``, ``fluidity`` and ``audience`` run their flows (Prefect's temporary local API when
PREFECT_API_URL is unset). Exit codes: 0 done, 2 bad input or configuration, 75 retry later
(another run is publishing the date, or the store did not answer for
GMM_DASK_STORAGE_RETRY_SECONDS), 1 internal failure.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import MutableMapping, Sequence

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
EXIT_CONFLICT = 75  # another run is publishing the same date: retry later (EX_TEMPFAIL)
EXIT_UNAVAILABLE = 75  # the store did not answer for GMM_DASK_STORAGE_RETRY_SECONDS: retry later
DEFAULT_DEMO_CONFIG = "configs/demo.yaml"
EXIT_CODES_HELP = (
    f"Exit codes: {EXIT_OK} done; {EXIT_BAD_INPUT} bad input or configuration (nothing written); "
    f"{EXIT_CONFLICT} retry later (another run is publishing the same date, or the store did not "
    f"answer for GMM_DASK_STORAGE_RETRY_SECONDS); {EXIT_FAILURE} internal failure."
)


def _version() -> str:
    from gmm_dask._version import package_version

    return package_version()


# --- commands -----------------------------------------------------------------------------------


def _display():
    from .display import make_display

    return make_display()


def _load_config(path: str):
    """The job config, read before the jobs are imported: a bad config fails (exit 2) having
    imported only pydantic and YAML, not pandas, pyarrow, the domain modules, Dask or Prefect."""
    from gmm_dask.app.config import load_config

    return load_config(path)


@contextlib.contextmanager
def _plan_ahead(p):
    """``jobs.plan_ahead(p)`` (every check that needs no cluster; the job run inside takes this
    plan), after the config is read (the planner reads it again: milliseconds)."""
    _load_config(p.config)
    from gmm_dask.app import jobs

    with jobs.plan_ahead(p) as plan:
        yield plan


def _run_job(name: str, params):
    """Run the job ``name`` without Prefect, after its plan."""
    with _plan_ahead(params):
        from gmm_dask.app import jobs, progress

        with _display() as sink, progress.use(sink):
            return getattr(jobs, name)(params)


def cmd_train(p, args) -> int:
    from .output import print_result

    print_result(_run_job("train", p))
    return EXIT_OK


def cmd_score(p, args) -> int:
    from .output import print_result

    print_result(_run_job("score", p))
    return EXIT_OK


class _NoInputTracebacks(logging.Filter):
    """Drop log records that carry a bad-input error or a store that did not answer: the CLI
    prints it once, as one message."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _exit_code(exc)[1] in ("error", "storage unavailable"):
            return False
        if record.name.startswith("prefect"):  # "Finished in state Failed('DataError: ...')"
            msg = record.getMessage()
            return not any(f"{name}:" in msg for name in _input_error_names())
        return True


def _input_error_names() -> set[str]:
    from gmm_dask.errors import GMMDaskInputError, StorageUnavailableError, error_names

    return error_names(GMMDaskInputError, StorageUnavailableError) | {"ParameterTypeError"}


def _quiet_prefect(verbose: int) -> None:
    """Prefect's console shows warnings only (our display shows progress), and never the
    traceback of a bad-input error that we print as one clear message (unless -v)."""
    if verbose:
        return
    for h in logging.getLogger("prefect").handlers:
        h.setLevel(logging.WARNING)
        h.addFilter(_NoInputTracebacks())


def _run_flow(name: str, p, verbose: int, announce: str | None = None):
    """Run a job's flow; ``announce`` is printed first when the flow runs (not when the plan
    finds nothing to write and the job runs alone, without Prefect or Dask)."""
    # every check that needs no cluster, before Prefect starts; the flow's job takes this plan
    with _plan_ahead(p) as plan:
        from gmm_dask.app import jobs, progress

        if getattr(plan, "nothing_to_do", False):  # nothing to write: the job alone, no Prefect, no Dask
            res = getattr(jobs, name)(p)
            return res.dates if isinstance(res, jobs.BackfillResult) else res
        if announce:
            print(announce)
        import flows

        _quiet_prefect(verbose)
        flow = getattr(flows, name)
        with _display() as sink, progress.use(sink):
            return flow(**p.model_dump(exclude_none=True))


def _flow_command(flow_name: str, printer: str):
    """A command that runs the flow ``flow_name`` and prints its result with ``output.<printer>``."""

    def command(p, args) -> int:
        from . import output

        getattr(output, printer)(_run_flow(flow_name, p, args.verbose))
        return EXIT_OK

    return command


cmd_segment = _flow_command("segment", "print_result")
cmd_backfill = _flow_command("backfill", "print_backfill")
cmd_select_k = _flow_command("select_k", "print_selection")
cmd_fluidity = _flow_command("fluidity", "print_fluidity")
cmd_audience = _flow_command("audience", "print_audience")


def cmd_promote(p, args) -> int:
    with _plan_ahead(p):
        from gmm_dask.app import jobs

        out = jobs.promote(p)
    for date in out.dates:
        print(f"  {date}: published " + ", ".join(sorted(out.tables[date])))
    from gmm_dask.report.data import latest_phrase

    la = out.latest
    what = (
        f"`latest` {latest_phrase(la.version, la.snapshot, la.moved, max(out.dates, default=None))}"
        if la is not None
        else "`latest` unchanged (the candidate trained no model)"
    )
    print(f"Promoted candidate {out.run_id}: {len(out.dates)} date(s); {what}")
    return EXIT_OK


def cmd_vacuum(p, args) -> int:
    with _plan_ahead(p):
        from gmm_dask.app import jobs

        out = jobs.vacuum(p)
    verb = "would delete" if out.dry_run else "deleted"
    for table, files in out.tables.items():
        print(f"  {table}: {verb} {len(files)} file(s)")
    total = sum(len(f) for f in out.tables.values())
    print(
        f"Vacuumed {len(out.tables)} Delta table(s): {verb} {total} file(s) no version younger than "
        f"{out.retention_hours} h references."
    )
    return EXIT_OK


def cmd_serve(p, args) -> int:
    cfg = _load_config(p.config)
    from gmm_dask.app import jobs

    jobs.check_job(cfg)
    from flows.serve import serve

    serve(p)
    return EXIT_OK


def cmd_demo(p, args) -> int:
    import time

    cfg = _load_config(p.config)
    from gmm_dask.app.params import BackfillParams, SegmentParams
    from gmm_dask.demo import DemoSpec, write_demo_dataset

    from .output import print_backfill, print_result

    # a two-day promotion (most users' activity jumps, then returns) in the middle of the history
    promo = (p.snapshots // 2, 2) if p.snapshots >= 5 else (None, 0)
    spec = DemoSpec(
        n_users=p.users,
        n_snapshots=p.snapshots,
        seed=p.seed,
        promotion_start=promo[0],
        promotion_days=promo[1],
    )
    root = os.path.dirname(cfg.input.path.rstrip("/"))
    t0 = time.perf_counter()
    print(f"Demo data: {spec.n_users:,} users x {spec.n_snapshots} daily snapshots under {root}")
    write_demo_dataset(root, spec)
    print(f"  ready in {time.perf_counter() - t0:.1f} s")
    latest = (p.snapshot.isoformat() if p.snapshot else None) or spec.dates[-1]
    history = [d for d in spec.dates if d < latest]
    if history:  # the history the fluidity, forecast and report compare with (done dates are skipped)
        announce = (
            f"Running the `backfill` flow over the history {history[0]}..{history[-1]} (refit, published; "
            "Prefect starts a temporary local API if PREFECT_API_URL is unset) ..."
        )
        bf = BackfillParams(config=p.config, start=history[0], end=history[-1], mode="refit", publish=True)
        print_backfill(_run_flow("backfill", bf, args.verbose, announce))
    seg = SegmentParams(config=p.config, snapshot=latest)
    print_result(_run_flow("segment", seg, args.verbose, f"Running the daily `segment` flow on {latest} ..."))
    return EXIT_OK


def _commands():
    """(name, parameter model, help, handler) of every command."""
    from gmm_dask.app import params

    from .demo import DemoParams

    return [
        (
            "train",
            params.TrainParams,
            "fit on a snapshot, register the model, write the tables (no Prefect)",
            cmd_train,
        ),
        (
            "score",
            params.ScoreParams,
            "apply a registered model to a snapshot, write the tables (no Prefect)",
            cmd_score,
        ),
        (
            "segment",
            params.SegmentParams,
            "run the daily segment flow: fit (or score with --model-version), tables, report",
            cmd_segment,
        ),
        ("backfill", params.BackfillParams, "run the backfill flow over [start, end]", cmd_backfill),
        ("select-k", params.SelectKParams, "run the model selection flow", cmd_select_k),
        ("fluidity", params.FluidityParams, "run the fluidity flow between two snapshots", cmd_fluidity),
        (
            "audience",
            params.AudienceParams,
            "run the audience flow: high-entropy, blended, atypical users and movers (Parquet + CSV)",
            cmd_audience,
        ),
        ("promote", params.PromoteParams, "publish a candidate run's tables and model", cmd_promote),
        (
            "vacuum",
            params.VacuumParams,
            "delete the files of the Delta output tables that no recent version references",
            cmd_vacuum,
        ),
        ("serve", params.ServeParams, "serve the deployments from this process (Ctrl-C to stop)", cmd_serve),
        (
            "demo",
            DemoParams,
            "generate demo data if absent, backfill its history and segment the latest day",
            cmd_demo,
        ),
    ]


def build_parser() -> argparse.ArgumentParser:
    from .options import add_options

    p = argparse.ArgumentParser(
        prog="gmm-dask", description="Gaussian mixture user segmentation on Dask.", epilog=EXIT_CODES_HELP
    )
    p.add_argument("--version", action="version", version=f"gmm-dask {_version()}")
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more logging and tracebacks (-vv for Dask's logs too)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, model, help_text, handler in _commands():
        sp = sub.add_parser(
            name, help=help_text, description=(model.__doc__ or help_text).strip(), epilog=EXIT_CODES_HELP
        )
        add_options(sp, model)
        sp.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sp.set_defaults(func=handler, _params=model)
    return p


def no_usage_data(environ: MutableMapping[str, str]) -> None:
    """The project sends no usage data, wherever it runs from (pyproject.toml's setting holds only
    in the repository root): Prefect's temporary local API sends no telemetry — off the network
    it logged "Failed to send telemetry" as an ERROR — and the client shows no notice. A value
    the user set wins."""
    environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    environ.setdefault("DO_NOT_TRACK", "1")


def _configure_logging(verbose: int) -> None:
    # Before Dask is imported: distributed configures its loggers from this at import time, in
    # this process and in the worker processes it starts. Below -vv, a task's error is not
    # logged by the worker ("Compute Failed" and its traceback): the CLI prints it once.
    if not any(k == "DASK_LOGGING" or k.startswith("DASK_LOGGING__") for k in os.environ):
        dask_levels = (
            {"distributed": "info"}
            if verbose >= 2
            else {"distributed": "warning", "distributed.worker": "critical"}
        )
        os.environ["DASK_LOGGING"] = repr(dask_levels)
    no_usage_data(os.environ)
    level = logging.WARNING - 10 * min(verbose, 2)
    from .display import CLOCK

    # the progress lines' clock: one time format on stderr
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt=CLOCK,
        stream=sys.stderr,
    )
    for h in logging.getLogger().handlers:  # also gets Prefect's records, which propagate here
        h.setLevel(level)
        if verbose == 0:
            h.addFilter(_NoInputTracebacks())
    for noisy in ("distributed", "tornado", "bokeh", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose >= 2 else logging.WARNING)
    logging.getLogger("distributed.worker").setLevel(logging.INFO if verbose >= 2 else logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["--version"], ["-V"]):  # answered without importing anything else
        print(f"gmm-dask {_version()}")
        return EXIT_OK
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    from gmm_dask.errors import GMMDaskInputError

    from .options import params_from_args

    try:
        params = params_from_args(args._params, args, args.command)
        return args.func(params, args)
    except GMMDaskInputError as err:
        from .output import print_backfill

        result = getattr(err, "result", None)
        if result is not None:  # a backfill: the good dates were written
            print_backfill(result.dates)
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"gmm-dask: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("gmm-dask: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        code, label = _exit_code(err)
        if code == EXIT_FAILURE:
            print(
                f"gmm-dask: internal failure: {type(err).__name__}: {err} (rerun with -v for details)",
                file=sys.stderr,
            )
            if args.verbose:
                import traceback

                traceback.print_exc()
        else:
            if args.verbose and label == "storage unavailable":
                import traceback

                traceback.print_exc()
            print(f"gmm-dask: {label}: {err}", file=sys.stderr)  # the last line
        return code


def _parameter_type_error() -> type[BaseException] | None:
    """Prefect's bad-parameter error class, where Prefect was imported (else None)."""
    exceptions = sys.modules.get("prefect.exceptions")
    return getattr(exceptions, "ParameterTypeError", None)


def _exit_code(err: BaseException) -> tuple[int, str]:
    """The exit code of an exception, by its class (:data:`EXIT_CODES`), and the word the
    message starts with."""
    from gmm_dask.errors import GMMDaskInputError, PublishConflictError, StorageUnavailableError

    classes: list[tuple[type[BaseException], int, str]] = [
        (GMMDaskInputError, EXIT_BAD_INPUT, "error"),
        (PublishConflictError, EXIT_CONFLICT, "conflict"),
        (StorageUnavailableError, EXIT_UNAVAILABLE, "storage unavailable"),
    ]
    prefect_bad_parameter = _parameter_type_error()
    if prefect_bad_parameter is not None:
        classes.append((prefect_bad_parameter, EXIT_BAD_INPUT, "error"))
    for cls, code, label in classes:
        if isinstance(err, cls):
            return code, label
    return EXIT_FAILURE, "internal failure"


__all__ = ["main"]
