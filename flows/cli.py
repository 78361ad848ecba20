"""The CLI commands that run flows: segment, backfill, select-k, fluidity, serve."""

from __future__ import annotations


def _print_json(obj) -> None:
    import json

    print(json.dumps(obj, indent=2, default=str))


def cmd_segment(args) -> int:
    from gmm_dask.cli import print_result

    from .segment import segment

    res = segment(config=args.config, snapshot=args.snapshot, model_version=args.model_version)
    print_result(res)
    return 0


def cmd_backfill(args) -> int:
    from .backfill import backfill

    out = backfill(
        start=args.start,
        end=args.end,
        mode=args.mode,
        model_version=args.model_version,
        force=args.force,
        max_concurrency=args.max_concurrency,
        config=args.config,
    )
    for r in out:
        state = "skipped (already done)" if r.get("skipped") else f"{r['counts']['rows_written']:,} users"
        print(f"  {r['snapshot']}  model {r.get('model_version')}  {state}")
    print(f"{sum(not r['skipped'] for r in out)} date(s) run, {sum(r['skipped'] for r in out)} skipped")
    return 0


def cmd_select_k(args) -> int:
    from .select_k import select_k

    out = select_k(
        k_min=args.k_min,
        k_max=args.k_max,
        covariance_types=args.covariance_types,
        criterion=args.criterion,
        snapshot=args.snapshot,
        config=args.config,
    )
    print(f"{'K':>3} {'covariance':<10} {out['criterion'].upper():>14} {'iter':>5}")
    for r in sorted(out["table"], key=lambda r: (r["covariance_type"], r["n_components"])):
        mark = "  <- selected" if r["selected"] else ""
        print(
            f"{r['n_components']:>3} {r['covariance_type']:<10} {r[out['criterion']]:>14,.1f} {r['n_iter']:>5}{mark}"
        )
    sel = out["selected"]
    print(
        f"Selected K={sel['n_components']} ({sel['covariance_type']}), registered as {sel['model_version']}; report: {out['report']}"
    )
    return 0


def cmd_fluidity(args) -> int:
    from .fluidity import fluidity

    out = fluidity(from_date=args.from_date, to_date=args.to_date, top_n=args.top_n, config=args.config)
    _print_json(out)
    return 0


def cmd_serve(args) -> int:
    from .serve import main

    main(["--config", args.config] + (["--no-schedule"] if args.no_schedule else []))
    return 0


def add_flow_commands(sub) -> None:
    from .common import DEFAULT_CONFIG

    s = sub.add_parser("segment", help="run the segment flow (fit, or score with --model-version)")
    s.add_argument("--config", default=DEFAULT_CONFIG)
    s.add_argument("--snapshot", help="YYYY-MM-DD (default: latest)")
    s.add_argument("--model-version")
    s.set_defaults(func=cmd_segment)

    b = sub.add_parser("backfill", help="run the backfill flow over [start, end]")
    b.add_argument("--config", default=DEFAULT_CONFIG)
    b.add_argument("--start", required=True)
    b.add_argument("--end", required=True)
    b.add_argument("--mode", choices=["score", "refit"], default="score")
    b.add_argument("--model-version")
    b.add_argument("--force", action="store_true")
    b.add_argument("--max-concurrency", type=int, default=2)
    b.set_defaults(func=cmd_backfill)

    k = sub.add_parser("select-k", help="run the model selection flow")
    k.add_argument("--config", default=DEFAULT_CONFIG)
    k.add_argument("--k-min", type=int, default=2)
    k.add_argument("--k-max", type=int, default=8)
    k.add_argument(
        "--covariance-types", nargs="+", default=["full"], choices=["full", "tied", "diag", "spherical"]
    )
    k.add_argument("--criterion", choices=["bic", "aic"], default="bic")
    k.add_argument("--snapshot")
    k.set_defaults(func=cmd_select_k)

    f = sub.add_parser("fluidity", help="run the fluidity flow between two snapshots")
    f.add_argument("--config", default=DEFAULT_CONFIG)
    f.add_argument("--from-date", required=True)
    f.add_argument("--to-date", required=True)
    f.add_argument("--top-n", type=int, default=100)
    f.set_defaults(func=cmd_fluidity)

    v = sub.add_parser("serve", help="serve the deployments from this process (Ctrl-C to stop)")
    v.add_argument("--config", default=DEFAULT_CONFIG)
    v.add_argument("--no-schedule", action="store_true")
    v.set_defaults(func=cmd_serve)


__all__ = ["add_flow_commands"]
