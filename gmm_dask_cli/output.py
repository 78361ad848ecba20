"""What the CLI prints for people: run summaries, backfill and model selection tables."""

from __future__ import annotations

import sys

from gmm_dask.segmentation.fit_record import promotion_like


def _w(stream=None):
    return (stream or sys.stdout).write


def print_phases(timings: dict, stream=None) -> None:
    if timings:
        w = _w(stream)
        w("Phases: " + "; ".join(ph.summary() for ph in timings.values()) + "\n")


def print_result(res, stream=None) -> None:
    """A short human summary of a :class:`~gmm_dask.app.jobs.RunResult`."""
    import pandas as pd

    w = _w(stream)
    if getattr(res, "unchanged", False):
        w(
            f"\nSnapshot {res.snapshot}: unchanged, nothing written: its published tables (model "
            f"{res.model_version}) were written for the same data, config and model settings "
            "(--force writes them again).\n"
        )
        return
    what = (
        f"model {res.model_version} trained and registered"
        if res.trained
        else f"scored with model {res.model_version}"
    )
    w(
        f"\nSnapshot {res.snapshot}: {what}; "
        f"{res.counts['rows_written']:,} users written ({res.counts['rows_dropped']:,} dropped, "
        f"{res.counts['rows_imputed']:,} imputed) in {res.seconds:.1f} s\n"
    )
    if getattr(res, "published", True) and getattr(res, "report", None) is not None:
        from gmm_dask.report.data import publish_sentence

        w(publish_sentence(res.report) + "\n")
    if getattr(res, "kept", None):
        w(f"Refit not needed: {res.kept}\n")
    if res.trained:
        f = res.fit
        w(
            f"EM: {f.get('n_iter')} iterations, converged={f.get('converged')}, "
            f"log-likelihood {f.get('log_likelihood', float('nan')):.6f}, BIC {f.get('bic', float('nan')):,.1f}\n"
        )
        shift = promotion_like(f)
        if shift is not None:
            w(f"WARNING: {shift}\n")
    print_phases(res.timings, stream)
    seg = res.segments
    cols = ["segment", "name", "weight", "size", "mean_entropy_bits", "high_entropy_share"]
    feats = [c for c in seg.columns if c.startswith("mean_") and c != "mean_entropy_bits"]
    table = seg[cols + feats].rename(columns={c: c[5:] for c in feats})
    with pd.option_context(
        "display.width", 200, "display.max_columns", 30, "display.float_format", "{:,.3f}".format
    ):
        w("\nSegments (feature means in original units):\n")
        w(table.to_string(index=False) + "\n")
    for r in seg.itertuples():
        if isinstance(r.degenerate, str):
            w(f"  degenerate: {r.name}: {r.degenerate}\n")
    reseeded = res.fit.get("reseeded_components") if res.trained else None
    if reseeded:
        w(f"  re-seeded during the fit (iteration, component): {reseeded}\n")
    pruned = (res.fit.get("degenerate") or {}).get("pruned") if res.trained else None
    if pruned:
        w(
            "  pruned and refitted without: "
            + "; ".join(f"{p['name']} ({p['reason']})" for p in pruned)
            + "\n"
        )
    bands = ", ".join(f"{k} {v:,}" for k, v in res.band_count.items())
    w(f"\nEntropy bands: {bands}\n")
    if getattr(res, "analysis", None) is not None:
        print_analysis(res.analysis, stream)
    if res.overlaps is not None and len(res.overlaps):
        top = res.overlaps.sort_values("n_users", ascending=False).head(3)
        pairs = "; ".join(f"{r.name_a} + {r.name_b}: {r.n_users:,}" for r in top.itertuples())
        w(f"Most blended pairs (γ ≥ {res.overlaps['threshold'].iloc[0]} on both): {pairs}\n")
    if getattr(res, "published", True):
        w("\nTables (published):\n")
    else:
        w(
            f"\nTables (candidate run {res.run_id}; `gmm-dask promote --run-id {res.run_id}` publishes them):\n"
        )
    for name, path in res.tables.items():
        w(f"  {name:<16} {path}\n")
    if res.report_path:
        w(f"  {'report':<16} {res.report_path}\n")


def print_analysis(a, stream=None) -> None:
    """Audience sizes, fluidity against the previous snapshot, the forecast and its backtest."""
    w = _w(stream)
    if a.fluidity is not None:
        f = a.fluidity.summary
        w(
            f"Since {a.previous}: {f['segment_changed_share']:.1%} of {f['users_in_both']:,} users changed "
            f"segment; median membership shift (TV) {f['median_tv']:.3f}\n"
        )
    sizes = a.audiences.sizes
    w("Audiences:\n")
    for r in sizes.itertuples(index=False):
        w(f"  {r.audience_key:<18} {r.n_users:>10,}  {r.definition}\n")
    fc, bt = a.forecast, a.backtest
    if fc is not None and fc.reason is None:
        moves = ", ".join(
            f"{getattr(r, 'name', r.segment)} {r.now:.1%} -> {r.forecast:.1%}"
            for r in fc.shares.itertuples(index=False)
        )
        what = (
            f"Markov on γ, {fc.n_steps} steps" if fc.method == "markov" else "persistence: shares unchanged"
        )
        w(f"Forecast of the next snapshot's shares ({what}): {moves}\n")
        if fc.method_reason:
            w(f"  Chose {fc.method_reason}\n")
    elif fc is not None:
        w(f"Forecast: none ({fc.reason})\n")
    if bt is not None and bt.reason is None:
        print_backtest(bt.summary(), stream)


def print_backtest(s: dict, stream=None) -> None:
    """A backtest's summary in the report's words and units: the MAE of the forecast share against
    the actual (membership) share in percentage points, Markov vs persistence, and the user Brier."""
    from gmm_dask.report.terms import FORECAST_SHARE, counts_basis_term

    def pp(v) -> str:
        return "–" if v is None else f"{100 * v:.2f} pp"

    def num(v) -> str:
        return "–" if v is None else f"{v:.4f}"

    w = _w(stream)
    n = len(s["held_out"])
    markov, persistence, imp = s["markov"], s["persistence"], s["improvement"]
    w(
        f"Backtest: errors of the {FORECAST_SHARE} against the actual {counts_basis_term(s['counts'])}, "
        f"mean over {n} held-out snapshot{'s' if n != 1 else ''} ({', '.join(s['held_out'])}):\n"
        f"  MAE {pp(markov['share_mae'])} (Markov) vs {pp(persistence['share_mae'])} (persistence)"
        f"{_relative(imp['share_mae'])}\n"
        f"  user Brier {num(markov['user_brier'])} (Markov) vs {num(persistence['user_brier'])} "
        f"(persistence){_relative(imp['user_brier'])}\n"
    )


def _relative(improvement: float | None) -> str:
    """', Markov 12% better' (improvement = 1 − Markov / persistence), '' where unknown."""
    if improvement is None:
        return ""
    if improvement == 0:
        return ", the same"
    return f", Markov {abs(improvement):.0%} {'better' if improvement > 0 else 'worse'}"


def print_audience(res, stream=None) -> None:
    w = _w(stream)
    w(f"\nSnapshot {res.snapshot} (model {res.model_version}):\n")
    print_analysis(res.analysis, stream)
    if res.published:
        w("\nTables (published):\n")
    else:
        w(
            f"\nTables (candidate run {res.run_id}; `gmm-dask promote --run-id {res.run_id}` publishes them):\n"
        )
    for name, path in res.tables.items():
        w(f"  {name:<16} {path}\n")


def print_backfill(dates: list[dict], stream=None) -> None:
    w = _w(stream)
    for r in dates:
        if r.get("error"):
            state = "FAILED (see below)"
        elif r.get("skipped"):
            state = "skipped (already done)"
        else:
            state = f"{r['counts']['rows_written']:,} users in {r.get('seconds', 0):.1f} s"
        w(f"  {r['snapshot']}  model {r.get('model_version') or '-':<8} {state}\n")
    run = sum(1 for r in dates if not r.get("skipped") and not r.get("error"))
    skipped = sum(1 for r in dates if r.get("skipped"))
    failed = sum(1 for r in dates if r.get("error"))
    w(f"{run} date(s) run, {skipped} skipped, {failed} failed\n")
    last = [r for r in dates if r.get("latest")]
    if last:
        from gmm_dask.report.data import latest_phrase

        la = last[-1]["latest"]
        w(f"`latest` {latest_phrase(la['version'], la['snapshot'], la['moved'], last[-1]['snapshot'])}\n")
    cand = {r["run_id"] for r in dates if r.get("published") is False and r.get("run_id")}
    for run_id in sorted(cand):
        w(f"Written as candidate run {run_id}; `gmm-dask promote --run-id {run_id}` publishes it.\n")


def print_selection(out: dict, stream=None) -> None:
    w = _w(stream)
    crit = out["criterion"]
    w(f"{'family':<10} {'K':>3} {'covariance':<10} {crit.upper():>14} {'loglik/user':>12} {'iter':>5}\n")
    rows = sorted(out["table"], key=lambda r: (r.get("family", ""), r["covariance_type"], r["n_components"]))
    for r in rows:
        mark = "  <- selected" if r["selected"] else ""
        w(
            f"{r.get('family', 'gaussian'):<10} {r['n_components']:>3} {r['covariance_type']:<10} "
            f"{r[crit]:>14,.1f} {r['log_likelihood']:>12.4f} {r['n_iter']:>5}{mark}\n"
        )
    if not out.get("published", True):
        w(
            f"Written as candidate run {out['run_id']}; `gmm-dask promote --run-id {out['run_id']}` publishes it.\n"
        )
    sel = out["selected"]
    family = sel.get("family", "gaussian")
    ct = "" if family == "behaviour" else f" ({sel['covariance_type']})"
    w(
        f"Selected {family} K={sel['n_components']}{ct}, registered as {sel['model_version']}; "
        f"report: {out['report']}\n"
    )
    la = out.get("latest")
    if la:
        from gmm_dask.report.data import latest_phrase

        w(f"`latest` {latest_phrase(la['version'], la['snapshot'], la['moved'], out.get('snapshot'))}\n")
    if out.get("warning"):
        w(f"Note: {out['warning']}\n")


def print_fluidity(out: dict, stream=None) -> None:
    w = _w(stream)
    w(f"Fluidity {out['from_date']} -> {out['to_date']}: written to {out['path']}\n")
    for k, v in out.items():
        if k not in ("from_date", "to_date", "path"):
            w(f"  {k.replace('_', ' ')}: {v:,.4g}\n")
