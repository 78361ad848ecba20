"""Prefect 3 flows that orchestrate gmm-dask. They wrap the library's jobs; they compute nothing."""

from .audience import audience
from .backfill import backfill
from .fluidity import fluidity
from .segment import score, segment, train
from .select_k import select_k

__all__ = ["audience", "backfill", "fluidity", "score", "segment", "select_k", "train"]
