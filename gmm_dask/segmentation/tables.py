"""The output tables: per-user memberships, per-component segments, per-pair overlaps.

:func:`score_table` is the per-partition kernel: it applies the model to one piece's table and
returns that piece's memberships rows and small aggregates from which :func:`segments_table` and
:func:`overlaps_table` are built on the client (:func:`gmm_dask.app.steps.score_piece` reads the
piece and writes the rows).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from gmm_dask.mixture.arrays import FloatArray, IntArray
from gmm_dask.segmentation.features import prepare_piece
from gmm_dask.segmentation.model import BANDS, SegmentationModel
from gmm_dask.segmentation.specs import EntropyBands, InputColumns

if TYPE_CHECKING:  # imported where a table is built on the driver, not by workers
    import pandas as pd

SCHEMA_VERSION = "1"
SAMPLE_PER_PIECE = 400
SAMPLE_CAP = 4000
ENTROPY_BINS = 50  # equal-width bins of normalised entropy in the report


def membership_schema(id_type: pa.DataType, id_column: str, model_version: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field(id_column, id_type),
            pa.field("segment", pa.int32(), nullable=False),
            pa.field("segment_name", pa.string()),
            pa.field("gamma", pa.list_(pa.float64())),
            pa.field("max_gamma", pa.float64()),
            pa.field("entropy_bits", pa.float64()),
            pa.field("entropy_norm", pa.float64()),
            pa.field("entropy_band", pa.string()),
            pa.field("log_likelihood", pa.float64()),
            pa.field("model_version", pa.string()),
        ],
        metadata=table_metadata("memberships", model_version),
    )


def gamma_matrix(table: pa.Table, column: str = "gamma") -> FloatArray:
    """A memberships table's γ list column as an (n, K) float64 array ((0, 0) without rows)."""
    lists = table.column(column).combine_chunks()
    k = len(lists[0]) if len(lists) else 0
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float64).reshape(-1, k)


#: The key of a table file's metadata that names the model version its rows come from.
MODEL_VERSION_KEY = "gmm_dask.model_version"


def table_metadata(
    table: str, model_version: str, extra: Mapping[str, object] | None = None
) -> dict[bytes, bytes]:
    meta: dict[str, object] = {
        "gmm_dask.table": table,
        "gmm_dask.schema_version": SCHEMA_VERSION,
        MODEL_VERSION_KEY: model_version,
    }
    meta.update(extra or {})
    return {k.encode(): str(v).encode() for k, v in meta.items()}


@dataclass
class PieceResult:
    """Aggregates of one scored piece (small; merged on the client)."""

    n_read: int
    n_written: int
    n_dropped: int
    n_imputed: int
    hard_count: FloatArray  # (K,)
    gamma_sum: FloatArray  # (K,)
    entropy_sum: FloatArray  # (K,) entropy_bits of users hard-assigned to k
    high_count: FloatArray  # (K,)
    raw_gamma_sum: FloatArray  # (K, D) Σ γ x_raw over finite x
    raw_gamma_w: FloatArray  # (K, D) Σ γ over finite x
    overlap_count: FloatArray  # (K, K)
    overlap_gamma: FloatArray  # (K, K) Σ γ_a over users with γ_a, γ_b ≥ threshold
    band_count: FloatArray  # (3,)
    entropy_hist: FloatArray  # (ENTROPY_BINS,) histogram of entropy_norm on [0, 1]
    sample_z: FloatArray  # (m, D) a few model-space rows for the report's 2-D projection
    sample_segment: IntArray  # (m,)

    def __add__(self, other: PieceResult) -> PieceResult:
        merged = copy.copy(self)
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(
                merged, f.name, np.concatenate([a, b])[:SAMPLE_CAP] if f.name.startswith("sample_") else a + b
            )
        return merged


def score_table(
    table: pa.Table,
    path: str,
    index: int,
    cfg: InputColumns,
    model: SegmentationModel,
    bands: EntropyBands,
    overlap_threshold: float,
    id_type: pa.DataType,
    *,
    rows: bool = True,
) -> tuple[pa.Table | None, PieceResult]:
    """Score one piece's table: its memberships rows (when ``rows``) and its aggregates."""
    ids, X_raw, Z, _w, n_dropped, n_imputed = prepare_piece(table, cfg, model.plan, path)
    m = model.memberships(Z, bands, X_raw)
    gamma = m["gamma"]
    n, k = gamma.shape
    version = model.version or "unregistered"
    seg = m["component"]
    out = None
    if rows:
        # strings by index into a few values (in Arrow, no Python string per row)
        def repeated(values: Sequence[str], index: IntArray | NDArray[np.int8]) -> pa.Array:
            return pc.take(pa.array(values, pa.string()), pa.array(index))

        out = pa.table(
            {
                cfg.id_column: ids.cast(id_type) if isinstance(ids, pa.ChunkedArray) else ids,
                "segment": pa.array(m["segment"], pa.int32()),
                "segment_name": repeated(model.segment_names, seg),
                "gamma": pa.ListArray.from_arrays(
                    np.arange(0, n * k + 1, k, dtype=np.int32), pa.array(gamma.ravel())
                ),
                "max_gamma": gamma[np.arange(n), seg],
                "entropy_bits": m["entropy_bits"],
                "entropy_norm": m["entropy_norm"],
                "entropy_band": repeated(BANDS, m["band_index"]),
                "log_likelihood": m["log_likelihood"],
                "model_version": repeated([version], np.zeros(n, np.int8)),
            },
            schema=membership_schema(id_type, cfg.id_column, version),
        )
    band = m["band_index"]
    high = band == 2
    finite = np.isfinite(X_raw)
    Xf = X_raw if finite.all() else np.where(finite, X_raw, 0.0)
    over = gamma >= overlap_threshold
    overf = over.astype(np.float64)
    pick = np.sort(np.random.default_rng(index).choice(n, size=min(n, SAMPLE_PER_PIECE), replace=False))
    return out, PieceResult(
        n_read=table.num_rows,
        n_written=n,
        n_dropped=n_dropped,
        n_imputed=n_imputed,
        hard_count=np.bincount(seg, minlength=k).astype(np.float64),
        gamma_sum=gamma.sum(axis=0),
        # numpy's stub types bincount as integer; with weights it returns float64
        entropy_sum=np.bincount(seg, weights=m["entropy_bits"], minlength=k),  # type: ignore[arg-type]
        high_count=np.bincount(seg, weights=high, minlength=k),  # type: ignore[arg-type]
        raw_gamma_sum=gamma.T @ Xf,
        raw_gamma_w=gamma.T @ finite.astype(float),
        overlap_count=overf.T @ overf,
        overlap_gamma=(gamma * overf).T @ overf,
        band_count=np.bincount(band, minlength=len(BANDS)).astype(np.float64),
        entropy_hist=np.bincount(
            np.minimum((m["entropy_norm"] * ENTROPY_BINS).astype(np.intp), ENTROPY_BINS - 1),
            minlength=ENTROPY_BINS,
        ).astype(np.float64),
        sample_z=Z[pick],
        sample_segment=seg[pick],
    )


def segments_table(model: SegmentationModel, agg: PieceResult) -> pd.DataFrame:
    """One row per component: name, weight, size, feature means in original units, covariance, entropy."""
    import pandas as pd

    k = model.n_components
    size = agg.hard_count
    with np.errstate(invalid="ignore", divide="ignore"):
        raw_means = np.where(agg.raw_gamma_w > 0, agg.raw_gamma_sum / agg.raw_gamma_w, np.nan)
        mean_entropy = np.where(size > 0, agg.entropy_sum / size, np.nan)
        high_share = np.where(size > 0, agg.high_count / size, np.nan)
    cov = model.covariances
    if model.covariance_type == "tied":
        cov = np.broadcast_to(cov, (k, *cov.shape))
    elif model.covariance_type == "diag":
        cov = np.stack([np.diag(c) for c in cov])
    elif model.covariance_type == "spherical":
        cov = np.stack([np.eye(model.means.shape[1]) * c for c in cov])
    df = pd.DataFrame(
        {
            "segment": np.asarray(model.ids, dtype=np.int32),
            "name": model.segment_names,
            "weight": model.weights,
            "size": size.astype(np.int64),
            "share": size / max(size.sum(), 1),
            "soft_share": agg.gamma_sum / max(agg.gamma_sum.sum(), 1e-300),
        }
    )
    for j, f in enumerate(model.plan.names):
        df[f"mean_{f}"] = raw_means[:, j]
    reasons = model.metadata.degenerate.get("components") or {}
    df["degenerate"] = pd.array([reasons.get(n) for n in model.segment_names], dtype="string")
    df["mean_entropy_bits"] = mean_entropy
    df["high_entropy_share"] = high_share
    df["covariance"] = [c.ravel().tolist() for c in cov]
    df["model_version"] = model.version or "unregistered"
    return df


def overlaps_table(model: SegmentationModel, agg: PieceResult, threshold: float) -> pd.DataFrame:
    """One row per pair of components: users carrying γ ≥ threshold on both, their mean γ on each."""
    import pandas as pd

    rows = []
    k = model.n_components
    for a in range(k):
        for b in range(a + 1, k):
            n = agg.overlap_count[a, b]
            rows.append(
                {
                    "segment_a": model.ids[a],
                    "segment_b": model.ids[b],
                    "name_a": model.segment_names[a],
                    "name_b": model.segment_names[b],
                    "threshold": threshold,
                    "n_users": int(n),
                    "mean_gamma_a": agg.overlap_gamma[a, b] / n if n else np.nan,
                    "mean_gamma_b": agg.overlap_gamma[b, a] / n if n else np.nan,
                    "model_version": model.version or "unregistered",
                }
            )
    df = pd.DataFrame(
        rows,
        columns=[
            "segment_a",
            "segment_b",
            "name_a",
            "name_b",
            "threshold",
            "n_users",
            "mean_gamma_a",
            "mean_gamma_b",
            "model_version",
        ],
    )
    return df.astype({"segment_a": np.int32, "segment_b": np.int32, "n_users": np.int64})
