"""Segment fluidity between two snapshots: how far each user's membership vector moved.

For users present in both snapshots: total variation ½‖γ₁ − γ₂‖₁ and Jensen–Shannon distance
(√JS divergence, base 2, in [0, 1]) between their γ vectors, the segment-to-segment transition
matrix, and the users who moved most. Joins run in pyarrow on the flow's machine: fine for tens
of millions of users; beyond that, partition the dates' memberships by id hash first. Reading the
two dates and committing the tables is :func:`gmm_dask.app.steps.compute_fluidity`'s.

Movers over several snapshots (:func:`steady_move`, :func:`steady_movers`): a user whose membership
moved away from where it was ``s`` snapshots ago and got further from there at every one of the
``s`` snapshots — a lasting change of behaviour, not one redrawn window that stays or comes back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import pandas as pd
import pyarrow as pa

from gmm_dask.mixture.arrays import BoolArray, FloatArray, Int64Array
from gmm_dask.segmentation.tables import gamma_matrix


class FluiditySummary(TypedDict):
    """How much the users present on both dates moved."""

    users_in_both: int
    segment_changed_share: float
    median_tv: float
    p95_tv: float
    mean_js: float


@dataclass
class FluidityResult:
    from_date: str
    to_date: str
    n_users: int
    n_only_from: int
    n_only_to: int
    transitions: pd.DataFrame  # K×K counts, index = segment_from, columns = segment_to
    top_movers: pd.DataFrame
    summary: FluiditySummary
    path: str | None = None
    transition_table: pd.DataFrame | None = None  # the ``transitions`` rows (hard and soft counts)
    paths: dict[str, str] | None = None  # table -> committed partition
    movers: pa.Table | None = None  # id, segment_from, segment_to, tv_distance of every user in both


def _expand(g: FloatArray, ids: list[int], union: list[int]) -> FloatArray:
    out = np.zeros((len(g), len(union)))
    out[:, [union.index(i) for i in ids]] = g
    return out


def _kl_bits(a: FloatArray, b: FloatArray) -> FloatArray:
    """Row-wise Kullback–Leibler divergence (base 2), with 0·log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(a > 0, a * (np.log2(a) - np.log2(np.where(b > 0, b, 1.0))), 0.0)
    kl: FloatArray = t.sum(axis=1)
    return kl


def js_distance(p: FloatArray, q: FloatArray) -> FloatArray:
    """Row-wise Jensen–Shannon distance (base 2) between probability vectors."""
    m = 0.5 * (p + q)
    return np.sqrt(np.clip(0.5 * _kl_bits(p, m) + 0.5 * _kl_bits(q, m), 0.0, 1.0))


def _users_in_both(a: pa.Table, b: pa.Table, id_column: str) -> tuple[pa.Table, pa.Table]:
    """The rows of ``a`` and of ``b`` of the users in both, in the same order (sorted by id)."""
    # pyarrow joins cannot carry list columns: join the ids, then gather rows by position
    left = pd.DataFrame({"id": a.column(id_column).to_pandas(), "ia": np.arange(a.num_rows)})
    right = pd.DataFrame({"id": b.column(id_column).to_pandas(), "ib": np.arange(b.num_rows)})
    pos = left.merge(right, on="id", how="inner", sort=True)
    return a.take(pa.array(pos["ia"].to_numpy())), b.take(pa.array(pos["ib"].to_numpy()))


def _transition_rows(
    union: list[int],
    s_from: Int64Array,
    s_to: Int64Array,
    g1: FloatArray,
    g2: FloatArray,
    from_date: str,
    to_date: str,
) -> tuple[Int64Array, pd.DataFrame]:
    """The hard K×K transition counts over ``union``, and the ``transitions`` rows (one per pair
    of segments: hard counts and soft mass Σ γ_from ⊗ γ_to)."""
    n, ka = len(s_from), len(union)
    pos_of = {sid: i for i, sid in enumerate(union)}
    trans = np.zeros((ka, ka), dtype=np.int64)
    if n:
        np.add.at(trans, ([pos_of[x] for x in s_from], [pos_of[x] for x in s_to]), 1)
    soft = g1.T @ g2 if n else np.zeros((ka, ka))
    fi, ti = np.meshgrid(np.arange(ka), np.arange(ka), indexing="ij")
    table = pd.DataFrame(
        {
            "from_date": from_date,
            "to_date": to_date,
            "segment_from": np.asarray(union, dtype=np.int32)[fi.ravel()],
            "segment_to": np.asarray(union, dtype=np.int32)[ti.ravel()],
            "n_users": trans.ravel().astype(np.int64),
            "gamma_mass": soft.ravel(),
        }
    )
    return trans, table


def _summary(s_from: Int64Array, s_to: Int64Array, tv: FloatArray, js: FloatArray) -> FluiditySummary:
    n = len(tv)
    return {
        "users_in_both": n,
        "segment_changed_share": float((s_from != s_to).mean()) if n else 0.0,
        "median_tv": float(np.median(tv)) if n else 0.0,
        "p95_tv": float(np.quantile(tv, 0.95)) if n else 0.0,
        "mean_js": float(js.mean()) if n else 0.0,
    }


def steady_move(gammas: Sequence[FloatArray]) -> tuple[FloatArray, BoolArray]:
    """How far each user moved from the first membership to the last, and whether the move was steady.

    Parameters
    ----------
    gammas : sequence of s + 1 arrays of shape (n, K)
        The memberships of the same n users at s + 1 consecutive snapshots, oldest first, their
        columns over the same segments.

    Returns
    -------
    tv : ndarray of shape (n,)
        Total variation ½‖γ_first − γ_last‖₁.
    steady : ndarray of shape (n,), bool
        True where the distance from the first membership grew strictly at every snapshot: a jump
        that stays put (or comes back) at a later snapshot is not steady. With s = 1 every user
        who moved at all is steady.
    """
    if len(gammas) < 2:
        msg = f"steady_move needs the memberships of at least 2 snapshots, got {len(gammas)}"
        raise ValueError(msg)
    first = gammas[0]
    steady = np.ones(len(first), dtype=bool)
    previous = np.zeros(len(first))
    for g in gammas[1:]:
        distance = 0.5 * np.abs(g - first).sum(axis=1)
        steady &= distance > previous
        previous = distance
    return previous, steady


def steady_movers(tables: Sequence[pa.Table], ids: Sequence[list[int]], id_column: str) -> pa.Table:
    """The users present in every memberships table of ``tables`` (consecutive snapshots, oldest
    first, γ ordered by each snapshot's segment ids ``ids``) whose move was steady
    (:func:`steady_move`): id, ``segment_from`` (at the first snapshot), ``segment_to`` (at the
    last) and ``tv_distance`` from the first to the last, sorted by id."""
    union = sorted(set().union(*ids))
    frame = pd.DataFrame({"id": tables[0].column(id_column).to_pandas(), "i0": np.arange(tables[0].num_rows)})
    for j, t in enumerate(tables[1:], start=1):
        right = pd.DataFrame({"id": t.column(id_column).to_pandas(), f"i{j}": np.arange(t.num_rows)})
        frame = frame.merge(right, on="id", how="inner", sort=True)
    rows = [t.take(pa.array(frame[f"i{j}"].to_numpy(), pa.int64())) for j, t in enumerate(tables)]
    if len(frame):
        tv, steady = steady_move([_expand(gamma_matrix(r), i, union) for r, i in zip(rows, ids, strict=True)])
    else:
        tv, steady = np.zeros(0), np.zeros(0, dtype=bool)
    keep = pa.array(np.flatnonzero(steady), pa.int64())
    return pa.table(
        {
            id_column: rows[-1].column(id_column).take(keep),
            "segment_from": rows[0].column("segment").take(keep),
            "segment_to": rows[-1].column("segment").take(keep),
            "tv_distance": pa.array(tv[steady], pa.float64()),
        }
    )


def fluidity_between(
    a: pa.Table,
    b: pa.Table,
    ids_a: list[int],
    ids_b: list[int],
    from_date: str,
    to_date: str,
    id_column: str,
    *,
    top_n: int = 100,
) -> tuple[FluidityResult, pa.Table]:
    """Compare the memberships ``a`` (of ``from_date``) and ``b`` (of ``to_date``), whose γ are
    ordered by the segment ids ``ids_a`` and ``ids_b``: the result, and the ``fluidity`` rows
    (one per user in both). The result's ``transition_table`` holds the ``transitions`` rows (one
    per pair of segments: users hard-assigned to ``segment_from`` then ``segment_to``, and their
    soft mass Σ γ_from ⊗ γ_to).
    """
    # γ is ordered by each date's segment ids (the segments table's rows): compare in the union
    # of both dates' ids, so births and deaths between the dates line up
    union = sorted(set(ids_a) | set(ids_b))
    ja, jb = _users_in_both(a, b, id_column)
    n = ja.num_rows
    g1 = _expand(gamma_matrix(ja), ids_a, union)
    g2 = _expand(gamma_matrix(jb), ids_b, union)
    tv = 0.5 * np.abs(g1 - g2).sum(axis=1) if n else np.zeros(0)
    js = js_distance(g1, g2) if n else np.zeros(0)
    s_from = ja.column("segment").to_numpy()
    s_to = jb.column("segment").to_numpy()
    trans, transition_table = _transition_rows(union, s_from, s_to, g1, g2, from_date, to_date)
    out = pa.table(
        {
            id_column: ja.column(id_column),
            "from_date": pa.array([from_date] * n, pa.string()),
            "segment_from": ja.column("segment"),
            "segment_to": jb.column("segment"),
            "segment_changed": pa.array(s_from != s_to),
            "tv_distance": tv,
            "js_distance": js,
            "entropy_from": ja.column("entropy_bits"),
            "entropy_to": jb.column("entropy_bits"),
            "model_version_from": ja.column("model_version"),
            "model_version_to": jb.column("model_version"),
        }
    )
    order = np.argsort(-tv, kind="stable")[:top_n]
    top = (
        out.take(pa.array(order))
        .select([id_column, "segment_from", "segment_to", "tv_distance", "js_distance"])
        .to_pandas()
    )
    transitions = pd.DataFrame(
        trans, index=pd.Index(union, name="segment_from"), columns=pd.Index(union, name="segment_to")
    )
    movers = out.select([id_column, "segment_from", "segment_to", "tv_distance"])
    result = FluidityResult(
        from_date,
        to_date,
        n,
        a.num_rows - n,
        b.num_rows - n,
        transitions,
        top,
        _summary(s_from, s_to, tv, js),
        None,
        transition_table,
        None,
        movers,
    )
    return result, out
