"""The ``gmm-dask`` command line: prints for people; exit 0 done, 2 bad input or config, 1 failure."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence

from .errors import GMMDaskInputError

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_DEMO_ROOT = "data/demo"
DEFAULT_DEMO_CONFIG = "configs/demo.yaml"


class _Progress:
    """EM progress on stderr: one updating line on a terminal, a line every 10 iterations otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def __call__(self, info) -> None:
        line = (
            f"  EM init {info.init + 1} iteration {info.n_iter:>4}/{info.max_iter}  "
            f"lower bound {info.lower_bound:.8f}  change {info.change:+.2e}  ({info.seconds:.2f} s)"
        )
        if self.tty:
            self.stream.write("\r" + line)
            self.stream.flush()
        elif info.n_iter == 1 or info.n_iter % 10 == 0:
            self.stream.write(line + "\n")

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")


def print_result(res, stream=None) -> None:
    """A short human summary of a :class:`~gmm_dask.pipeline.RunResult`."""
    import pandas as pd

    w = (stream or sys.stdout).write
    verb = "trained and registered" if res.trained else "scored with"
    w(
        f"\nSnapshot {res.snapshot}: model {res.model_version} {verb}; "
        f"{res.counts['rows_written']:,} users written ({res.counts['rows_dropped']:,} dropped, "
        f"{res.counts['rows_imputed']:,} imputed) in {res.seconds:.1f} s\n"
    )
    if res.trained:
        f = res.fit
        w(
            f"EM: {f.get('n_iter')} iterations, converged={f.get('converged')}, "
            f"log-likelihood {f.get('log_likelihood', float('nan')):.6f}, BIC {f.get('bic', float('nan')):,.1f}\n"
        )
    seg = res.segments
    cols = ["segment", "name", "weight", "size", "mean_entropy_bits", "high_entropy_share"]
    feats = [c for c in seg.columns if c.startswith("mean_") and c != "mean_entropy_bits"]
    table = seg[cols + feats].rename(columns={c: c[5:] for c in feats})
    with pd.option_context(
        "display.width", 200, "display.max_columns", 30, "display.float_format", "{:,.3f}".format
    ):
        w("\nSegments (feature means in original units):\n")
        w(table.to_string(index=False) + "\n")
    bands = ", ".join(f"{k} {v:,}" for k, v in res.band_count.items())
    w(f"\nEntropy bands: {bands}\n")
    if res.overlaps is not None and len(res.overlaps):
        top = res.overlaps.sort_values("n_users", ascending=False).head(3)
        pairs = "; ".join(f"{r.name_a} + {r.name_b}: {r.n_users:,}" for r in top.itertuples())
        w(f"Most blended pairs (γ ≥ {res.overlaps['threshold'].iloc[0]} on both): {pairs}\n")
    w("\nTables:\n")
    for name, path in res.tables.items():
        w(f"  {name:<12} {path}\n")
    report = getattr(res, "report_path", None)
    if report:
        w(f"  {'report':<12} {report}\n")


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("distributed", "tornado", "bokeh", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING if verbose < 2 else logging.INFO))


def _run_with_cluster(cfg, fn: Callable):
    from .cluster import dask_client

    with dask_client(cfg.cluster):
        return fn()


def cmd_train(args) -> int:
    from . import pipeline
    from .config import load_config, validate_snapshot

    cfg = load_config(args.config)
    snapshot = validate_snapshot(args.snapshot)
    progress = _Progress()
    res = _run_with_cluster(cfg, lambda: pipeline.train(cfg, snapshot, callback=progress))
    progress.done()
    print_result(res)
    return EXIT_OK


def cmd_score(args) -> int:
    from . import pipeline
    from .config import load_config, validate_snapshot

    cfg = load_config(args.config)
    snapshot = validate_snapshot(args.snapshot)
    res = _run_with_cluster(cfg, lambda: pipeline.score(cfg, snapshot, args.model_version))
    print_result(res)
    return EXIT_OK


def cmd_demo(args) -> int:
    from .config import load_config
    from .demo import DemoSpec, write_demo_dataset

    cfg = load_config(args.config)
    spec = DemoSpec(n_users=args.users, n_snapshots=args.snapshots, seed=args.seed)
    t0 = time.perf_counter()
    root = os.path.dirname(cfg.input.path.rstrip("/"))
    print(f"Demo data: {spec.n_users:,} users x {spec.n_snapshots} daily snapshots under {root}")
    write_demo_dataset(root, spec)
    print(f"  ready in {time.perf_counter() - t0:.1f} s")
    from flows.segment import segment

    print(
        "Running the `segment` flow (Prefect; a temporary local API starts if PREFECT_API_URL is unset) ..."
    )
    res = segment(config=args.config, snapshot=args.snapshot)
    print_result(res)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="gmm-dask", description="Gaussian mixture user segmentation on Dask.")
    p.add_argument("--version", action="version", version=f"gmm-dask {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for Dask's too)")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fit on a snapshot, register the model, write the tables")
    t.add_argument("--config", required=True, help="job config YAML")
    t.add_argument("--snapshot", help="YYYY-MM-DD (default: latest partition)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("score", help="apply a registered model to a snapshot and write the tables")
    s.add_argument("--config", required=True)
    s.add_argument("--snapshot", required=True, help="YYYY-MM-DD")
    s.add_argument("--model-version", help="vNNNN or an alias (default: latest)")
    s.set_defaults(func=cmd_score)

    d = sub.add_parser("demo", help="generate demo data if absent and run the segmentation flow on it")
    d.add_argument("--config", default=DEFAULT_DEMO_CONFIG)
    d.add_argument("--users", type=int, default=50_000)
    d.add_argument("--snapshots", type=int, default=7)
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--snapshot", help="YYYY-MM-DD (default: latest)")
    d.set_defaults(func=cmd_demo)

    try:
        from flows.cli import add_flow_commands
    except ImportError:  # pragma: no cover - flows ship with the package
        pass
    else:
        add_flow_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return args.func(args)
    except GMMDaskInputError as err:
        print(f"gmm-dask: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("gmm-dask: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # internal failure: say so, keep the traceback for -v
        if type(err).__name__ in (
            "ParameterTypeError",
            "SignatureMismatchError",
        ):  # Prefect's bad-parameter errors
            print(f"gmm-dask: error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        logging.getLogger("gmm_dask").debug("internal failure", exc_info=True)
        print(
            f"gmm-dask: internal failure: {type(err).__name__}: {err} (rerun with -v for details)",
            file=sys.stderr,
        )
        if args.verbose:
            import traceback

            traceback.print_exc()
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
