"""The analyst step of a segmented snapshot: fluidity and transitions against the previous
snapshot, the forecast with its backtest, and the audiences (one step of the jobs, after the
tables are written).

Reads: the snapshot's memberships and segments (from ``out_root``, where the run wrote them),
the previous segmented snapshot (from ``out_root`` if the run wrote it, else from the published
tables), and past ``transitions`` partitions (the run's own first, then the published ones).
Writes under ``out_root``: ``fluidity`` and ``transitions`` (when there is a previous snapshot),
``audiences``, ``audiences_csv`` and ``forecast`` (when there is a transition history).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from gmm_dask.app.config import JobConfig
from gmm_dask.app.steps import atypical_threshold, write_audiences
from gmm_dask.segmentation.audiences import AudienceResult, AudienceRules
from gmm_dask.storage.io import TableStore

if TYPE_CHECKING:
    from gmm_dask.segmentation.fluidity import FluidityResult
    from gmm_dask.segmentation.forecast import Backtest, Forecast

logger = logging.getLogger(__name__)


@dataclass
class Analysis:
    """What the analyst step wrote and found for one snapshot."""

    snapshot: str
    previous: str | None
    audiences: AudienceResult
    fluidity: FluidityResult | None = None
    forecast: Forecast | None = None
    backtest: Backtest | None = None
    previous_segments: pd.DataFrame | None = None
    tables: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        out: dict = {
            "previous_snapshot": self.previous,
            "audiences": {
                r.audience_key: int(r.n_users) for r in self.audiences.sizes.itertuples(index=False)
            },
        }
        if self.fluidity is not None:
            out["fluidity"] = self.fluidity.summary
        if self.forecast is not None:
            out["forecast"] = (
                {"reason": self.forecast.reason}
                if self.forecast.reason
                else {
                    "method": self.forecast.method,
                    "method_reason": self.forecast.method_reason,
                    "steps": self.forecast.n_steps,
                    "shares": {
                        int(r.segment): round(float(r.forecast), 6)
                        for r in self.forecast.shares.itertuples(index=False)
                    },
                }
            )
        if self.backtest is not None:
            out["backtest"] = self.backtest.summary()
        return out


def _dates_with(table: str, stores: list[TableStore]) -> dict[str, TableStore]:
    """date -> the first store (in order) that has a committed partition of ``table`` for it."""
    found: dict[str, TableStore] = {}
    for store in stores:
        for d in store.dates(table):
            found.setdefault(d, store)
    return found


def share_series(segments: pd.DataFrame, counts: str) -> pd.Series:
    """The shares a forecast works on, by segment id: mean γ (``soft_share``) for a chain on γ
    (``gamma_mass``), the hard shares for a chain on hard segments (``n_users``) — a chain
    reproduces the shares of the counts it was fitted on. Tables written before ``soft_share``
    existed give their hard shares."""
    col = "soft_share" if counts == "gamma_mass" and "soft_share" in segments else "share"
    return pd.Series(
        segments[col].to_numpy(dtype=float), index=pd.Index(segments["segment"].astype(int), name="segment")
    )


def analyse_snapshot(
    cfg: JobConfig, date: str, out: TableStore, segments: pd.DataFrame, source: TableStore | None = None
) -> Analysis:
    """Fluidity/transitions vs the previous snapshot, forecast + backtest, audiences of ``date``,
    whose memberships are in ``source`` (default ``out``); writes into ``out``."""
    from gmm_dask.app.steps import compute_fluidity, compute_movers

    source = source or out
    published = cfg.outputs()
    stores = [out] if out.root == published.root else [out, published]
    tables: dict[str, str] = {}
    segmented = _dates_with("memberships", stores)
    read = _SegmentsByDate(segmented, {date: segments})
    earlier = sorted(d for d in segmented if d < date)
    previous = earlier[-1] if earlier else None
    fl = prev_segments = None
    if previous is not None:
        fl = compute_fluidity(
            source, previous, date, cfg.input.id_column, from_store=segmented[previous], out=out
        )
        tables.update(fl.paths or {})
        prev_segments = read(previous)[["segment", "name", "size", "share"]]
    forecast, bt, transition = _forecast(cfg, date, segments, _transition_history(cfg, stores, date), read)
    span = cfg.audiences.mover_snapshots
    since = earlier[-span] if len(earlier) >= span else None
    movers = fl.movers if fl is not None and span == 1 else None
    if since is not None and span > 1:
        chain = [(segmented[d], d) for d in earlier[-span:]] + [(source, date)]
        movers = compute_movers(chain, cfg.input.id_column)
    elif since is None and earlier:
        logger.info(
            "Snapshot %s: no mover audience: it needs %d earlier snapshots, %d exist",
            date,
            span,
            len(earlier),
        )
    rules = _audience_rules(cfg, date, segments, source, since)
    aud = write_audiences(
        source, out, date, cfg.input.id_column, segments, rules, movers=movers, transition=transition
    )
    tables.update(aud.paths)
    logger.info("Snapshot %s: audiences: %s", date, aud.brief())
    return Analysis(date, previous, aud, fl, forecast, bt, prev_segments, tables)


@dataclass
class _SegmentsByDate:
    """Each segmented date's segments table, read once (from the store that has it)."""

    segmented: dict[str, TableStore]  # date -> store
    read: dict[str, pd.DataFrame]

    def __call__(self, d: str) -> pd.DataFrame:
        if d not in self.read:
            self.read[d] = self.segmented[d].read("segments", d).to_pandas()
        return self.read[d]


def _transition_history(cfg: JobConfig, stores: list[TableStore], date: str) -> pd.DataFrame:
    """The transition history up to ``date`` (the run's own partitions first)."""
    have = _dates_with("transitions", stores)
    steps = sorted(d for d in have if d <= date)[-cfg.forecast.history :]
    if not steps:
        return pd.DataFrame(
            columns=["from_date", "to_date", "segment_from", "segment_to", "n_users", "gamma_mass"]
        )
    return pd.concat(
        [have[d].read("transitions", d).to_pandas() for d in steps],
        ignore_index=True,
    )


def _forecast(
    cfg: JobConfig,
    date: str,
    segments: pd.DataFrame,
    history: pd.DataFrame,
    read: _SegmentsByDate,
) -> tuple[Forecast | None, Backtest | None, tuple[list[int], np.ndarray] | None]:
    """The next snapshot's forecast from ``history`` (persistence unless its backtest beat
    persistence: :func:`~gmm_dask.segmentation.forecast.choose_forecast`), its backtest, and the
    fitted transition matrix over today's ids (for the movers' audience); Nones without a history."""
    from gmm_dask.segmentation.forecast import backtest, choose_forecast, forecast_next

    if not len(history):
        return None, None, None
    f = cfg.forecast
    ids = [int(s) for s in segments["segment"]]
    names = dict(zip(ids, segments["name"], strict=True))
    now = share_series(segments, f.counts)
    forecast = forecast_next(
        now, history, names=names, counts=f.counts, half_life=f.half_life, prior_users=f.prior_users
    )
    transition = None
    if forecast.reason is None:
        transition = (ids, forecast.matrix.reindex(index=ids, columns=ids).to_numpy())
    dates = sorted({*history["from_date"], *history["to_date"]} | {date})
    shares_by_date: dict[str, pd.Series] = {}
    known: dict[int, str] = {}
    for d in dates:
        if d in read.segmented:
            seg_d = read(d)
            shares_by_date[d] = share_series(seg_d, f.counts)
            known.update(zip(seg_d["segment"].astype(int), seg_d["name"], strict=True))
    bt = backtest(
        shares_by_date,
        history,
        f.holdout,
        names={**known, **names},
        counts=f.counts,
        half_life=f.half_life,
        prior_users=f.prior_users,
    )
    return choose_forecast(forecast, bt), bt, transition


def _audience_rules(
    cfg: JobConfig, date: str, segments: pd.DataFrame, source: TableStore, since: str | None
) -> AudienceRules:
    a = cfg.audiences
    ids = [int(s) for s in segments["segment"]]
    files = source.files("memberships", date)
    n_rows = int(segments["size"].sum())
    return AudienceRules(
        blend_threshold=a.blend_threshold or cfg.output.overlap_threshold,
        pairs=tuple((x, y) for x, y in a.pairs) if a.pairs else tuple(itertools.combinations(ids, 2)),
        atypical_quantile=a.atypical_quantile,
        atypical_threshold=atypical_threshold(files, n_rows, a.atypical_quantile, source.storage_options),
        mover_min_tv=a.mover_min_tv,
        high_min=cfg.entropy_bands.moderate_max,
        from_date=since,
        mover_snapshots=a.mover_snapshots,
    )


__all__ = ["Analysis", "analyse_snapshot"]
