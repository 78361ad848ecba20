"""Segment fluidity between two snapshots: how far each user's membership vector moved.

For users present in both snapshots: total variation ½‖γ₁ − γ₂‖₁ and Jensen–Shannon distance
(√JS divergence, base 2, in [0, 1]) between their γ vectors, the segment-to-segment transition
matrix, and the users who moved most. Joins run in pyarrow on the flow's machine: fine for tens
of millions of users; beyond that, partition the dates' memberships by id hash first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import io
from .errors import DataError
from .tables import table_metadata


@dataclass
class FluidityResult:
    from_date: str
    to_date: str
    n_users: int
    n_only_from: int
    n_only_to: int
    transitions: pd.DataFrame  # K×K counts, index = segment_from, columns = segment_to
    top_movers: pd.DataFrame
    summary: dict
    path: str | None = None


def _read_memberships(root: str, date: str, id_column: str, storage_options=None) -> pa.Table:
    return io.read_partition(
        root,
        "memberships",
        date,
        [id_column, "segment", "gamma", "entropy_bits", "model_version"],
        storage_options,
    )


def _gamma(table: pa.Table, column: str) -> np.ndarray:
    lists = table.column(column).combine_chunks()
    k = len(lists[0]) if len(lists) else 0
    return np.asarray(pc.list_flatten(lists).to_numpy(zero_copy_only=False), dtype=float).reshape(-1, k)


def js_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise Jensen–Shannon distance (base 2) between probability vectors."""
    m = 0.5 * (p + q)

    def kl(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(a > 0, a * (np.log2(a) - np.log2(np.where(b > 0, b, 1.0))), 0.0)
        return t.sum(axis=1)

    return np.sqrt(np.clip(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0, 1.0))


def compute_fluidity(
    root: str,
    from_date: str,
    to_date: str,
    id_column: str,
    *,
    top_n: int = 100,
    write: bool = True,
    storage_options: dict | None = None,
) -> FluidityResult:
    """Compare the memberships of two snapshots; optionally write ``<root>/fluidity/dt=<to_date>``."""
    a = _read_memberships(root, from_date, id_column, storage_options)
    b = _read_memberships(root, to_date, id_column, storage_options)
    ka = len(a.column("gamma")[0]) if a.num_rows else 0
    kb = len(b.column("gamma")[0]) if b.num_rows else 0
    if ka != kb:
        raise DataError(
            f"Snapshots {from_date} and {to_date} were segmented with different numbers of components "
            f"({ka} vs {kb}); score both with the same model (backfill mode 'score') or refit with alignment."
        )
    # pyarrow joins cannot carry list columns: join the ids, then gather rows by position
    left = pd.DataFrame({"id": a.column(id_column).to_pandas(), "ia": np.arange(a.num_rows)})
    right = pd.DataFrame({"id": b.column(id_column).to_pandas(), "ib": np.arange(b.num_rows)})
    pos = left.merge(right, on="id", how="inner", sort=True)
    ia, ib = pa.array(pos["ia"].to_numpy()), pa.array(pos["ib"].to_numpy())
    ja, jb = a.take(ia), b.take(ib)
    n = len(pos)
    g1, g2 = _gamma(ja, "gamma"), _gamma(jb, "gamma")
    tv = 0.5 * np.abs(g1 - g2).sum(axis=1) if n else np.zeros(0)
    js = js_distance(g1, g2) if n else np.zeros(0)
    s_from = ja.column("segment").to_numpy()
    s_to = jb.column("segment").to_numpy()
    trans = np.zeros((ka, ka), dtype=np.int64)
    np.add.at(trans, (s_from, s_to), 1)
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
        trans, index=pd.Index(range(ka), name="segment_from"), columns=pd.Index(range(ka), name="segment_to")
    )
    summary = {
        "users_in_both": n,
        "segment_changed_share": float((s_from != s_to).mean()) if n else 0.0,
        "median_tv": float(np.median(tv)) if n else 0.0,
        "p95_tv": float(np.quantile(tv, 0.95)) if n else 0.0,
        "mean_js": float(js.mean()) if n else 0.0,
    }
    path = None
    if write:
        versions = sorted(set(out.column("model_version_to").to_pylist()))
        out = out.replace_schema_metadata(
            table_metadata("fluidity", ",".join(versions), {"gmm_dask.from_date": from_date})
        )
        path = io.write_partition(root, "fluidity", to_date, out, storage_options)
    return FluidityResult(
        from_date, to_date, n, a.num_rows - n, b.num_rows - n, transitions, top, summary, path
    )
