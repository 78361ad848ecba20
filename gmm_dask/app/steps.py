"""The steps that join storage to the domain's kernels inside Dask tasks.

Each function here reads what one task needs (a piece of a snapshot, a memberships file, two
dates' memberships), hands the tables to a pure function of :mod:`gmm_dask.segmentation`, and
writes what it returns: the domain never sees a path it must open, and storage never computes.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from gmm_dask.mixture.suffstats import SuffStats
from gmm_dask.segmentation.audiences import (
    MEMBERSHIP_COLUMNS,
    AudienceResult,
    AudienceRules,
    audience_rows,
    forecast_piece,
    lowest,
)
from gmm_dask.segmentation.behaviour import BehaviourPart, summary_stats
from gmm_dask.segmentation.features import (
    FeaturePlan,
    Profile,
    columns_to_read,
    fit_arrays,
    prepare_piece,
    profile_table,
)
from gmm_dask.segmentation.model import SegmentationModel
from gmm_dask.segmentation.specs import EntropyBands, InputColumns
from gmm_dask.segmentation.tables import PieceResult, score_table, table_metadata
from gmm_dask.storage import io
from gmm_dask.storage.io import Piece, TableStore

if TYPE_CHECKING:  # pandas is imported where a table is built on the driver, not by workers
    import pandas as pd

    from gmm_dask.segmentation.fluidity import FluidityResult


def tree_reduce(items: Sequence[Any], combine: Callable[[Any, Any], Any], fan_in: int = 8) -> Any:
    """Combine delayed values in a shallow tree of few tasks."""
    import dask

    items = list(items)
    while len(items) > 1:
        items = [
            dask.delayed(functools.reduce, pure=False)(combine, items[i : i + fan_in])
            for i in range(0, len(items), fan_in)
        ]
    return items[0]


# --- snapshot pieces -------------------------------------------------------------------------


def profile_piece(
    piece: Piece, cfg: InputColumns, storage_options: dict | None = None, n_buckets: int = 1
) -> Profile:
    """Read one piece and profile it (:func:`~gmm_dask.segmentation.features.profile_table`)."""
    table = io.read_piece(piece, columns_to_read(cfg), storage_options)
    return profile_table(table, piece.path, piece.index, cfg, n_buckets)


def fit_piece_arrays(
    piece: Piece,
    cfg: InputColumns,
    plan: FeaturePlan,
    storage_options: dict | None = None,
    seed: int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Read one piece: its (model inputs, weights) for the fit
    (:func:`~gmm_dask.segmentation.features.fit_arrays`, dequantised unless ``seed`` is None)."""
    table = io.read_piece(piece, columns_to_read(cfg), storage_options)
    return fit_arrays(table, piece.path, piece.index, cfg, plan, seed)


def raw_piece_arrays(
    piece: Piece, cfg: InputColumns, plan: FeaturePlan, storage_options: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read one piece: its (raw features after the missing-value policy, weights), what the
    behaviour family fits (no transform, no scaling, no dequantisation)."""
    table = io.read_piece(piece, columns_to_read(cfg), storage_options)
    _, X_raw, _, w, _, _ = prepare_piece(table, cfg, plan, piece.path)
    return np.ascontiguousarray(X_raw), (np.ones(len(X_raw)) if w is None else w)


def summary_piece(
    piece: Piece,
    cfg: InputColumns,
    plan: FeaturePlan,
    part: BehaviourPart,
    storage_options: dict | None = None,
) -> SuffStats:
    """Read one piece: its share of the behaviour components' Gaussian summary
    (:func:`~gmm_dask.segmentation.behaviour.summary_stats`)."""
    table = io.read_piece(piece, columns_to_read(cfg), storage_options)
    _, X_raw, Z, w, _, _ = prepare_piece(table, cfg, plan, piece.path)
    return summary_stats(X_raw, Z, w, part)


def score_piece(
    piece: Piece,
    cfg: InputColumns,
    model: SegmentationModel,
    out_file: str | None,
    bands: EntropyBands,
    overlap_threshold: float,
    id_type: pa.DataType,
    storage_options: dict | None = None,
) -> PieceResult:
    """Score one piece; write its memberships to ``out_file`` (if given); return aggregates."""
    table = io.read_piece(piece, columns_to_read(cfg), storage_options)
    rows, agg = score_table(
        table,
        piece.path,
        piece.index,
        cfg,
        model,
        bands,
        overlap_threshold,
        id_type,
        rows=out_file is not None,
    )
    if out_file is not None and rows is not None:
        io.write_table_file(rows, out_file, storage_options)
    return agg


# --- fluidity between two dates --------------------------------------------------------------


def _read_memberships(store: TableStore, date: str, id_column: str) -> pa.Table:
    return store.read("memberships", date, [id_column, "segment", "gamma", "entropy_bits", "model_version"])


def _segment_ids(store: TableStore, date: str) -> list[int]:
    return [int(x) for x in store.read("segments", date, ["segment"]).column("segment").to_pylist()]


def compute_movers(snapshots: Sequence[tuple[TableStore, str]], id_column: str) -> pa.Table:
    """The steady movers over consecutive segmented ``snapshots`` ((store, date), oldest first):
    see :func:`~gmm_dask.segmentation.fluidity.steady_movers`."""
    tables = [store.read("memberships", d, [id_column, "segment", "gamma"]) for store, d in snapshots]
    from gmm_dask.segmentation.fluidity import steady_movers

    return steady_movers(tables, [_segment_ids(store, d) for store, d in snapshots], id_column)


def compute_fluidity(
    store: TableStore,
    from_date: str,
    to_date: str,
    id_column: str,
    *,
    top_n: int = 100,
    write: bool = True,
    from_store: TableStore | None = None,
    out: TableStore | None = None,
) -> FluidityResult:
    """Compare the memberships of two snapshots; optionally write ``<out_root>/fluidity/dt=<to_date>``
    (one row per user in both) and ``<out_root>/transitions/dt=<to_date>`` (one row per pair of
    segments; see :func:`~gmm_dask.segmentation.fluidity.fluidity_between`), committed together.

    ``to_date`` is read from ``store``, ``from_date`` from ``from_store`` (default ``store``): a
    candidate run compares its own memberships with the published previous snapshot. Output goes
    to ``out`` (default ``store``).
    """
    from gmm_dask.segmentation.fluidity import fluidity_between

    from_store = from_store or store
    out = out or store
    a = _read_memberships(from_store, from_date, id_column)
    b = _read_memberships(store, to_date, id_column)
    ids_a = _segment_ids(from_store, from_date)
    ids_b = _segment_ids(store, to_date)
    result, rows = fluidity_between(a, b, ids_a, ids_b, from_date, to_date, id_column, top_n=top_n)
    if write:
        versions = ",".join(sorted(set(rows.column("model_version_to").to_pylist())))
        meta = {"gmm_dask.from_date": from_date}
        transitions = result.transition_table
        assert transitions is not None
        with out.stage(["transitions", "fluidity"], to_date) as st:
            st.write(
                "transitions",
                pa.Table.from_pandas(transitions, preserve_index=False).replace_schema_metadata(
                    table_metadata("transitions", versions, meta)
                ),
            )
            st.write("fluidity", rows.replace_schema_metadata(table_metadata("fluidity", versions, meta)))
        result.paths = st.paths
        result.path = st.paths["fluidity"]
    return result


# --- audiences --------------------------------------------------------------------------------


def _piece_lowest(path: str, k: int, storage_options: dict | None) -> np.ndarray:
    ll = io.read_table_file(path, ["log_likelihood"], storage_options).column("log_likelihood").to_numpy()
    return lowest(np.asarray(ll, dtype=np.float64), k)


def atypical_threshold(
    files: list[str], n_rows: int, quantile: float, storage_options: dict | None = None
) -> float | None:
    """The exact k-th smallest log-likelihood over ``files`` (k = ⌈quantile·n_rows⌉), computed by
    keeping at most k values per task and merge (a tree of few tasks), or None without rows."""
    import dask

    if n_rows == 0:
        return None
    k = max(1, math.ceil(quantile * n_rows))
    parts = [dask.delayed(_piece_lowest, pure=False)(f, k, storage_options) for f in files]
    low = dask.compute(tree_reduce(parts, lambda a, b: lowest(np.concatenate([a, b]), k)))[0]
    return float(np.sort(low)[min(k, len(low)) - 1])


def audience_piece(
    path: str,
    index: int,
    id_column: str,
    snapshot: str,
    ids: list[int],
    names: dict[int, str],
    rules: AudienceRules,
    movers: pa.Table | None,
    out_parquet: str,
    out_csv_dir: str,
    transition: tuple[list[int], np.ndarray] | None = None,
    out_forecast: str | None = None,
    storage_options: dict | None = None,
) -> Counter:
    """Audiences (and the forecast) of one memberships file; returns users per audience key."""
    t = io.read_table_file(path, [id_column, *MEMBERSHIP_COLUMNS], storage_options)
    counts, parts, out, g = audience_rows(t, path, id_column, snapshot, ids, names, rules, movers)
    for key, part in parts:
        io.write_csv_file(part, f"{out_csv_dir}/{key}-part-{index:05d}.csv", storage_options)
    io.write_table_file(out, out_parquet, storage_options)
    if transition is not None and out_forecast is not None:
        version = t.column("model_version")[0].as_py() if len(t) else "unregistered"
        io.write_table_file(
            forecast_piece(t, g, id_column, ids, names, transition, version), out_forecast, storage_options
        )
    return counts


def write_audiences(
    source: TableStore,
    out: TableStore,
    date: str,
    id_column: str,
    segments: pd.DataFrame,
    rules: AudienceRules,
    *,
    movers: pa.Table | None = None,
    transition: tuple[list[int], np.ndarray] | None = None,
) -> AudienceResult:
    """Write the ``audiences`` (+ ``audiences_csv``, + ``forecast`` when ``transition`` is given)
    partitions of ``date`` into ``out`` from the memberships in ``source``, in one pass on the
    cluster, committed together."""
    import dask

    ids = [int(s) for s in segments["segment"]]
    names = dict(zip(ids, segments["name"], strict=True))
    files = source.files("memberships", date)
    tables = ["audiences", "audiences_csv"] + (["forecast"] if transition is not None else [])
    with out.stage(tables, date) as st:
        mv = dask.delayed(movers) if movers is not None else None
        csv_dir = st.directory("audiences_csv")
        tasks = [
            dask.delayed(audience_piece, pure=False)(
                f,
                i,
                id_column,
                date,
                ids,
                names,
                rules,
                mv,
                st.file("audiences", f"part-{i:05d}.parquet"),
                csv_dir,
                transition,
                st.file("forecast", f"part-{i:05d}.parquet") if transition is not None else None,
                source.storage_options,
            )
            for i, f in enumerate(files)
        ]
        counts: Counter[str] = sum(dask.compute(*tasks), Counter())
    import pandas as pd

    defs = rules.definitions(names)
    sizes = pd.DataFrame(
        [
            {"audience": aud, "audience_key": key, "definition": text, "n_users": int(counts.get(key, 0))}
            for key, (aud, text) in defs.items()
        ],
        columns=["audience", "audience_key", "definition", "n_users"],
    )
    return AudienceResult(sizes, st.paths, rules)
