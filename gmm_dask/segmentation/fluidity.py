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

from gmm_dask.segmentation.tables import gamma_matrix, table_metadata
from gmm_dask.storage import io


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
    transition_table: pd.DataFrame | None = None  # the ``transitions`` rows (hard and soft counts)
    paths: dict[str, str] | None = None  # table -> committed partition
    movers: pa.Table | None = None  # id, segment_from, segment_to, tv_distance of every user in both


def _read_memberships(root: str, date: str, id_column: str, storage_options=None) -> pa.Table:
    return io.read_partition(
        root,
        "memberships",
        date,
        [id_column, "segment", "gamma", "entropy_bits", "model_version"],
        storage_options,
    )


def _segment_ids(root: str, date: str, storage_options=None) -> list[int]:
    return [
        int(x)
        for x in io.read_partition(root, "segments", date, ["segment"], storage_options)
        .column("segment")
        .to_pylist()
    ]


def _expand(g: np.ndarray, ids: list[int], union: list[int]) -> np.ndarray:
    out = np.zeros((len(g), len(union)))
    out[:, [union.index(i) for i in ids]] = g
    return out


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
    from_root: str | None = None,
    out_root: str | None = None,
    table_format: str = "parquet",
) -> FluidityResult:
    """Compare the memberships of two snapshots; optionally write ``<out_root>/fluidity/dt=<to_date>``
    (one row per user in both) and ``<out_root>/transitions/dt=<to_date>`` (one row per pair of
    segments: users hard-assigned to ``segment_from`` then ``segment_to``, and their soft mass
    Σ γ_from ⊗ γ_to), committed together.

    ``to_date`` is read from ``root``, ``from_date`` from ``from_root`` (default ``root``): a
    candidate run compares its own memberships with the published previous snapshot. Output goes
    to ``out_root`` (default ``root``).
    """
    from_root = from_root or root
    out_root = out_root or root
    a = _read_memberships(from_root, from_date, id_column, storage_options)
    b = _read_memberships(root, to_date, id_column, storage_options)
    # γ is ordered by each date's segment ids (the segments table's rows): compare in the union
    # of both dates' ids, so births and deaths between the dates line up
    ids_a = _segment_ids(from_root, from_date, storage_options)
    ids_b = _segment_ids(root, to_date, storage_options)
    union = sorted(set(ids_a) | set(ids_b))
    ka = len(union)
    # pyarrow joins cannot carry list columns: join the ids, then gather rows by position
    left = pd.DataFrame({"id": a.column(id_column).to_pandas(), "ia": np.arange(a.num_rows)})
    right = pd.DataFrame({"id": b.column(id_column).to_pandas(), "ib": np.arange(b.num_rows)})
    pos = left.merge(right, on="id", how="inner", sort=True)
    ia, ib = pa.array(pos["ia"].to_numpy()), pa.array(pos["ib"].to_numpy())
    ja, jb = a.take(ia), b.take(ib)
    n = len(pos)
    g1 = _expand(gamma_matrix(ja), ids_a, union)
    g2 = _expand(gamma_matrix(jb), ids_b, union)
    tv = 0.5 * np.abs(g1 - g2).sum(axis=1) if n else np.zeros(0)
    js = js_distance(g1, g2) if n else np.zeros(0)
    s_from = ja.column("segment").to_numpy()
    s_to = jb.column("segment").to_numpy()
    pos_of = {sid: i for i, sid in enumerate(union)}
    trans = np.zeros((ka, ka), dtype=np.int64)
    if n:
        np.add.at(trans, ([pos_of[x] for x in s_from], [pos_of[x] for x in s_to]), 1)
    soft = g1.T @ g2 if n else np.zeros((ka, ka))
    fi, ti = np.meshgrid(np.arange(ka), np.arange(ka), indexing="ij")
    transition_table = pd.DataFrame(
        {
            "from_date": from_date,
            "to_date": to_date,
            "segment_from": np.asarray(union, dtype=np.int32)[fi.ravel()],
            "segment_to": np.asarray(union, dtype=np.int32)[ti.ravel()],
            "n_users": trans.ravel().astype(np.int64),
            "gamma_mass": soft.ravel(),
        }
    )
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
    summary = {
        "users_in_both": n,
        "segment_changed_share": float((s_from != s_to).mean()) if n else 0.0,
        "median_tv": float(np.median(tv)) if n else 0.0,
        "p95_tv": float(np.quantile(tv, 0.95)) if n else 0.0,
        "mean_js": float(js.mean()) if n else 0.0,
    }
    path, paths = None, None
    if write:
        versions = ",".join(sorted(set(out.column("model_version_to").to_pylist())))
        meta = {"gmm_dask.from_date": from_date}
        with io.StagedPartitions(
            out_root, ["transitions", "fluidity"], to_date, storage_options, table_format
        ) as st:
            st.write(
                "transitions",
                pa.Table.from_pandas(transition_table, preserve_index=False).replace_schema_metadata(
                    table_metadata("transitions", versions, meta)
                ),
            )
            st.write("fluidity", out.replace_schema_metadata(table_metadata("fluidity", versions, meta)))
        paths = st.paths
        path = paths["fluidity"]
    movers = out.select([id_column, "segment_from", "segment_to", "tv_distance"])
    return FluidityResult(
        from_date,
        to_date,
        n,
        a.num_rows - n,
        b.num_rows - n,
        transitions,
        top,
        summary,
        path,
        transition_table,
        paths,
        movers,
    )
