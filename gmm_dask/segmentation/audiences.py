"""Audiences: the users behind the ideas of soft segmentation, as files activation tools take.

Per snapshot, from its memberships (and, for movers, from its fluidity against the previous
snapshot), one row per (user, audience):

``high_entropy``
    users whose normalised entropy is in the ``high`` band (no segment explains them: hybrids of
    several segments, fluid identities, anomalies);
``blended``
    users with γ_a ≥ t and γ_b ≥ t for a pair of segments (a, b) — every pair unless the config
    lists some — the cross-segment targets (``audience_key`` = ``blended_<a>_<b>``);
``atypical``
    users in the lowest ``atypical_quantile`` of log-likelihood under the model (the threshold is
    the exact k-th smallest log-likelihood of the snapshot, k = ⌈q·N⌉; ties at it are included);
``mover``
    users whose membership moved by a total variation ½‖γ_then − γ‖₁ ≥ ``mover_min_tv`` since
    ``mover_snapshots`` snapshots ago, steadily: further from where it was then at every one of
    those snapshots (:func:`gmm_dask.segmentation.fluidity.steady_move`); with
    ``mover_snapshots = 1``, any such move since the previous snapshot.

Columns: the id column, ``audience``, ``audience_key``, ``reason`` (why this user is in it, in
words), ``segment``, ``segment_name``, ``max_gamma``, ``entropy_bits``, ``entropy_band``,
``log_likelihood``, one ``gamma_<segment id>`` column per segment, ``snapshot`` and
``model_version``. Written as Parquet (``audiences/dt=<date>/``) and as CSV with a header, one
file per audience key and piece (``audiences_csv/dt=<date>/<audience_key>-part-NNNNN.csv``).

Each worker reads its memberships files and writes its own output files
(:func:`gmm_dask.app.steps.write_audiences`); nothing but counts (and, for the atypical threshold,
at most k log-likelihoods per merge) comes back to the client. This module selects the rows.
When a transition matrix is given, the same pass writes each user's next-period segment
distribution (``forecast/dt=<date>/``: γ·T, the most likely next segment and the probability of
staying).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gmm_dask.mixture.arrays import FloatArray, IntArray
from gmm_dask.segmentation.tables import gamma_matrix, table_metadata

if TYPE_CHECKING:  # imported where a table is built on the driver, not by workers
    import pandas as pd

KINDS = ("high_entropy", "blended", "atypical", "mover")
MEMBERSHIP_COLUMNS = (
    "segment",
    "segment_name",
    "gamma",
    "max_gamma",
    "entropy_bits",
    "entropy_norm",
    "entropy_band",
    "log_likelihood",
    "model_version",
)


@dataclass(frozen=True)
class AudienceRules:
    """Resolved audience settings for one snapshot."""

    blend_threshold: float
    pairs: tuple[tuple[int, int], ...]  # segment id pairs
    atypical_quantile: float
    atypical_threshold: float | None  # log-likelihood at or below which a user is atypical
    mover_min_tv: float
    high_min: float  # normalised entropy from which a user is in the high band
    from_date: str | None = None  # the snapshot movers are measured from
    mover_snapshots: int = 3  # snapshots over which a mover moved steadily

    def definitions(self, names: dict[int, str]) -> dict[str, tuple[str, str]]:
        """audience_key -> (audience, definition in words)."""
        out = {
            "high_entropy": (
                "high_entropy",
                f"normalised entropy ≥ {self.high_min:g} (the high band): no segment explains the user",
            )
        }
        for a, b in self.pairs:
            out[f"blended_{a}_{b}"] = (
                "blended",
                f"γ ≥ {self.blend_threshold:g} on both {names.get(a, a)} ({a}) and {names.get(b, b)} ({b})",
            )
        if self.atypical_threshold is not None:
            out["atypical"] = (
                "atypical",
                f"log-likelihood ≤ {self.atypical_threshold:.6g}, the lowest {self.atypical_quantile:.2%} "
                "of the snapshot",
            )
        if self.from_date is not None:
            steadily = f" steadily (further at each of {self.mover_snapshots} snapshots)"
            out["mover"] = (
                "mover",
                f"membership moved{steadily if self.mover_snapshots > 1 else ''} by total variation "
                f"≥ {self.mover_min_tv:g} since {self.from_date}",
            )
        return out


def lowest(values: FloatArray, k: int) -> FloatArray:
    return values if len(values) <= k else np.partition(values, k - 1)[:k]


def _fmt_name(names: dict[int, str], sid: int) -> str:
    return f"{names.get(sid, sid)} ({sid})"


class _Selection(NamedTuple):
    """The users of one audience key: their rows in the memberships table, and why each is in."""

    audience: str
    key: str
    rows: IntArray
    reasons: list[str]


def _high_entropy(rules: AudienceRules, norm: FloatArray, bits: FloatArray) -> _Selection:
    rows = np.flatnonzero(norm >= rules.high_min)
    reasons = [
        f"entropy {bits[r]:.2f} bits = {norm[r]:.2f} of the maximum (high band ≥ {rules.high_min:g})"
        for r in rows
    ]
    return _Selection("high_entropy", "high_entropy", rows, reasons)


def _blended(rules: AudienceRules, g: FloatArray, ids: list[int], names: dict[int, str]) -> list[_Selection]:
    pos = {sid: j for j, sid in enumerate(ids)}
    thr = rules.blend_threshold
    out = []
    for a, b in rules.pairs:
        if a not in pos or b not in pos:
            continue
        ga, gb = g[:, pos[a]], g[:, pos[b]]
        rows = np.flatnonzero((ga >= thr) & (gb >= thr))
        reasons = [
            f"γ {ga[r]:.2f} on {_fmt_name(names, a)} and {gb[r]:.2f} on {_fmt_name(names, b)}, both ≥ {thr:g}"
            for r in rows
        ]
        out.append(_Selection("blended", f"blended_{a}_{b}", rows, reasons))
    return out


def _atypical(rules: AudienceRules, threshold: float, ll: FloatArray) -> _Selection:
    rows = np.flatnonzero(ll <= threshold)
    reasons = [
        f"log-likelihood {ll[r]:.2f} ≤ {threshold:.2f} (lowest {rules.atypical_quantile:.2%} of the snapshot)"
        for r in rows
    ]
    return _Selection("atypical", "atypical", rows, reasons)


def _movers(
    t: pa.Table, seg: IntArray, movers: pa.Table, id_column: str, rules: AudienceRules, names: dict[int, str]
) -> _Selection:
    moved = movers.filter(pc.greater_equal(movers.column("tv_distance"), rules.mover_min_tv))
    hit = pc.index_in(t.column(id_column), value_set=moved.column(id_column)).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(~np.isnan(hit.astype(float)))
    at = hit[rows].astype(np.int64)
    s_from = moved.column("segment_from").to_numpy()[at]
    tv = moved.column("tv_distance").to_numpy()[at]
    how = f" over {rules.mover_snapshots} snapshots, further at each" if rules.mover_snapshots > 1 else ""
    reasons = [
        f"moved from {_fmt_name(names, int(a))} on {rules.from_date} to {_fmt_name(names, int(seg[r]))}"
        f"{how}: total variation {d:.2f} ≥ {rules.mover_min_tv:g}"
        for r, a, d in zip(rows, s_from, tv, strict=True)
    ]
    return _Selection("mover", "mover", rows, reasons)


def _audience_part(
    t: pa.Table, sel: _Selection, g: FloatArray, ids: list[int], id_column: str, snapshot: str
) -> pa.Table:
    """The rows of one audience key, in :func:`audience_schema`'s columns (before the cast)."""
    rows, n = sel.rows, len(sel.rows)
    sub = t.take(pa.array(rows, pa.int64()))
    return pa.table(
        {
            id_column: sub.column(id_column),
            "audience": pa.array([sel.audience] * n, pa.string()),
            "audience_key": pa.array([sel.key] * n, pa.string()),
            "reason": pa.array(sel.reasons, pa.string()),
            "segment": sub.column("segment"),
            "segment_name": sub.column("segment_name"),
            "max_gamma": sub.column("max_gamma"),
            "entropy_bits": sub.column("entropy_bits"),
            "entropy_band": sub.column("entropy_band"),
            "log_likelihood": sub.column("log_likelihood"),
            **{f"gamma_{sid}": pa.array(g[rows, j]) for j, sid in enumerate(ids)},
            "snapshot": pa.array([snapshot] * n, pa.string()),
            "model_version": sub.column("model_version"),
        }
    )


def audience_rows(
    t: pa.Table,
    path: str,
    id_column: str,
    snapshot: str,
    ids: list[int],
    names: dict[int, str],
    rules: AudienceRules,
    movers: pa.Table | None,
) -> tuple[Counter[str], list[tuple[str, pa.Table]], pa.Table, FloatArray]:
    """The audiences of one memberships table ``t`` (read from ``path``, named in messages):
    users per audience key, the rows of each non-empty audience key, all of them in one table of
    :func:`audience_schema`, and ``t``'s γ matrix."""
    g = gamma_matrix(t)
    n, k = len(t), len(ids)
    if n and g.shape[1] != k:
        raise ValueError(f"{path}: γ has {g.shape[1]} entries but the snapshot has {k} segments")
    seg = t.column("segment").to_numpy()
    norm = t.column("entropy_norm").to_numpy()
    ll = t.column("log_likelihood").to_numpy()
    bits = t.column("entropy_bits").to_numpy()
    selections = [_high_entropy(rules, norm, bits), *_blended(rules, g, ids, names)]
    if rules.atypical_threshold is not None:
        selections.append(_atypical(rules, rules.atypical_threshold, ll))
    if movers is not None and n:
        selections.append(_movers(t, seg, movers, id_column, rules, names))
    counts: Counter[str] = Counter()
    parts = []
    for sel in selections:
        counts[sel.key] = len(sel.rows)
        if len(sel.rows):
            parts.append((sel.key, _audience_part(t, sel, g, ids, id_column, snapshot)))
    version = t.column("model_version")[0].as_py() if n else "unregistered"
    schema = audience_schema(t.schema.field(id_column).type, id_column, ids, version)
    out = pa.concat_tables([p.cast(schema) for _, p in parts]) if parts else schema.empty_table()
    return counts, parts, out, g


def audience_schema(id_type: pa.DataType, id_column: str, ids: list[int], version: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field(id_column, id_type),
            pa.field("audience", pa.string()),
            pa.field("audience_key", pa.string()),
            pa.field("reason", pa.string()),
            pa.field("segment", pa.int32()),
            pa.field("segment_name", pa.string()),
            pa.field("max_gamma", pa.float64()),
            pa.field("entropy_bits", pa.float64()),
            pa.field("entropy_band", pa.string()),
            pa.field("log_likelihood", pa.float64()),
            *[pa.field(f"gamma_{sid}", pa.float64()) for sid in ids],
            pa.field("snapshot", pa.string()),
            pa.field("model_version", pa.string()),
        ],
        metadata=table_metadata("audiences", version),
    )


def forecast_piece(
    t: pa.Table,
    g: FloatArray,
    id_column: str,
    ids: list[int],
    names: dict[int, str],
    transition: tuple[list[int], FloatArray],
    version: str,
) -> pa.Table:
    """Each user's next-period segment distribution γ·T over ``ids`` (T given over ``ids``)."""
    t_ids, T = transition
    order = [t_ids.index(s) for s in ids]
    P = T[np.ix_(order, order)]
    nxt = g @ P if len(g) else np.zeros((0, len(ids)))
    n, k = nxt.shape
    best = nxt.argmax(axis=1) if n else np.zeros(0, dtype=int)
    cur = np.asarray([ids.index(s) for s in t.column("segment").to_pylist()], dtype=int)
    id_arr = np.asarray(ids, dtype=np.int32)
    name_arr = np.asarray([names.get(s, str(s)) for s in ids], dtype=object)
    return pa.table(
        {
            id_column: t.column(id_column),
            "segment": t.column("segment"),
            "next_segment": pa.array(id_arr[best] if n else [], pa.int32()),
            "next_segment_name": pa.array(name_arr[best] if n else [], pa.string()),
            "stay_probability": nxt[np.arange(n), cur] if n else np.zeros(0),
            "next_gamma": pa.ListArray.from_arrays(
                np.arange(0, n * k + 1, k, dtype=np.int32), pa.array(nxt.ravel())
            ),
        }
    ).replace_schema_metadata(table_metadata("forecast", version))


@dataclass
class AudienceResult:
    sizes: pd.DataFrame  # audience, audience_key, definition, n_users
    paths: dict[str, str]  # table -> committed partition
    rules: AudienceRules

    def brief(self) -> str:
        """Users per audience kind in one line (blended pairs summed)."""
        by_kind = self.sizes.groupby("audience", sort=False)["n_users"].agg(["sum", "size"])
        return ", ".join(
            f"{kind} {int(r['sum']):,}" + (f" ({int(r['size'])} pairs)" if kind == "blended" else "")
            for kind, r in by_kind.iterrows()
        )


__all__ = ["KINDS", "AudienceResult", "AudienceRules", "audience_rows", "forecast_piece", "lowest"]
