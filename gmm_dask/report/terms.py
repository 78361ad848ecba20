"""One word per quantity: the report, the Prefect summary and the README call each segment
quantity by one name, defined once (:func:`legend`). Nothing else in their tables says "share"
or "weight": a fraction of something else is written as "% of …"."""

from __future__ import annotations

from gmm_dask.report.data import ReportData, forecast_method, has_rows

WEIGHT = "weight"
SHARE = "share"
MEMBERSHIP_SHARE = "membership share"
FORECAST_SHARE = "forecast share"

#: The basis of a forecast on hard segments (``forecast.counts: n_users``), as the report names it.
HARD_BASIS = "hard segments"


def counts_basis_term(counts: str) -> str:
    """The quantity a forecast fitted on ``forecast.counts`` works on: the share (``n_users``,
    hard segments) or the membership share (``gamma_mass``, mean γ)."""
    return SHARE if counts == "n_users" else MEMBERSHIP_SHARE


def forecast_basis_term(d: ReportData) -> str:
    """The quantity the forecast works on: the share (hard segments) or the membership share (γ)."""
    return SHARE if d.forecast_basis == HARD_BASIS else MEMBERSHIP_SHARE


def legend(d: ReportData) -> list[tuple[str, str]]:
    """(term, definition) for each quantity the run's tables show, in the order they appear."""
    out = [
        (
            WEIGHT,
            "the mixture's πₖ: the model's prior probability of the segment, fitted by EM on the "
            "snapshot the model was trained on (the weights add up to 1).",
        ),
        (
            SHARE,
            "the fraction of this snapshot's users whose most likely segment (highest γ) it is: its "
            "users ÷ all users.",
        ),
    ]
    if has_rows(d.forecast) or has_rows(d.backtest_scores):
        basis = forecast_basis_term(d)
        if basis == MEMBERSHIP_SHARE:
            out.append(
                (
                    MEMBERSHIP_SHARE,
                    "the mean membership γ of this snapshot's users in the segment (each user counts "
                    "in part towards every segment): what the forecast works on.",
                )
            )
        if forecast_method(d) == "persistence":
            text = (
                f"the forecast of the segment's {basis} on the next snapshot: persistence (this "
                f"snapshot's {basis}, unchanged), as the Markov forecast has not beaten it in the "
                f"backtest, which scores both against the actual {basis} (errors in percentage points, pp)."
            )
        else:
            text = (
                f"the Markov forecast of the segment's {basis} on the next snapshot; the backtest "
                f"scores it against the actual {basis} (errors in percentage points, pp)."
            )
        out.append((FORECAST_SHARE, text))
    return out


def forecast_method_text(d: ReportData) -> str | None:
    """Which forecast the run published, and why (the backtest's figures): 'The forecast share is
    persistence (…): the Markov forecast's backtest share MAE 7.11 pp was worse than …'; None
    without a forecast or a method."""
    method = forecast_method(d)
    if method is None:
        return None
    basis = forecast_basis_term(d)
    what = (
        "the Markov forecast"
        if method == "markov"
        else f"persistence (the {basis} of {d.snapshot}, unchanged)"
    )
    why = d.forecast_method_reason or ""
    why = why.split(": ", 1)[1] if why.startswith(f"{method}: ") else why
    return f"The {FORECAST_SHARE} is {what}" + (f": {why}." if why else ".")
