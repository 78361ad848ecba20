"""Realistic behavioural snapshots for demos, tests and benchmarks, deterministic from a seed.

Each user belongs to a named archetype (or is a hybrid between two, or drifts from one to
another across the snapshots). Features are heavy-tailed and positive, like warehouse
aggregates; an archetype is a Gaussian in log1p space, so a ``log1p`` transform makes the
mixture structure visible. Users are generated in blocks, each from its own seeded stream, so
millions of users stream to Parquet in bounded memory, and any block can be regenerated alone.

Layout written by :func:`write_demo_dataset`::

    <root>/snapshots/dt=YYYY-MM-DD/part-00000.parquet   user_id + features (what the job reads)
    <root>/truth/dt=YYYY-MM-DD/part-00000.parquet       user_id, archetype, kind (stable|hybrid|drifter)
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

FEATURES = (
    "sessions_per_week",
    "active_days_per_week",
    "items_created_per_week",
    "purchases_per_month",
    "spend_per_month",
    "minutes_per_session",
)

# Mean of each feature in log1p space, and its spread, per archetype.
ARCHETYPES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "Creators": ((2.8, 1.7, 2.5, 0.6, 2.0, 3.2), (0.30, 0.15, 0.35, 0.25, 0.45, 0.25)),
    "Consistent users": ((2.6, 2.0, 0.5, 1.0, 3.2, 2.3), (0.25, 0.08, 0.20, 0.25, 0.40, 0.25)),
    "Ghosts": ((0.5, 0.4, 0.2, 0.25, 0.5, 1.0), (0.15, 0.10, 0.05, 0.06, 0.12, 0.30)),
    "Shoppers": ((1.6, 1.2, 0.2, 2.2, 5.4, 1.8), (0.25, 0.20, 0.10, 0.30, 0.50, 0.25)),
    "Browsers": ((1.8, 1.1, 0.3, 0.3, 1.0, 2.6), (0.25, 0.18, 0.15, 0.15, 0.35, 0.20)),
}
ARCHETYPE_NAMES = tuple(ARCHETYPES)
# Hybrids blend these two archetypes; drifters move from the first to the second.
HYBRID_PAIR = ("Consistent users", "Shoppers")
DRIFT_PAIR = ("Browsers", "Creators")


@dataclass(frozen=True)
class DemoSpec:
    """What to generate."""

    n_users: int = 20_000
    n_snapshots: int = 3
    start: str = "2026-01-01"
    seed: int = 7
    n_archetypes: int = 5
    hybrid_share: float = 0.05
    drift_share: float = 0.05
    daily_noise: float = 0.04
    block_users: int = 100_000
    row_group_rows: int = 50_000

    @property
    def dates(self) -> list[str]:
        d0 = dt.date.fromisoformat(self.start)
        return [(d0 + dt.timedelta(days=i)).isoformat() for i in range(self.n_snapshots)]


def _block_users(spec: DemoSpec, block: int) -> dict[str, np.ndarray]:
    """The fixed latent state of one block of users (identical for every snapshot)."""
    start = block * spec.block_users
    n = min(spec.block_users, spec.n_users - start)
    rng = np.random.default_rng([spec.seed, block, 0])
    names = ARCHETYPE_NAMES[: spec.n_archetypes]
    arche = rng.integers(0, len(names), n)
    u = rng.random(n)
    kind = np.where(u < spec.hybrid_share, 1, np.where(u < spec.hybrid_share + spec.drift_share, 2, 0))
    mu = np.array([ARCHETYPES[a][0] for a in names])
    sd = np.array([ARCHETYPES[a][1] for a in names])
    z = mu[arche] + rng.normal(size=(n, len(FEATURES))) * sd[arche]
    # a second latent position, used by hybrids (as the other parent) and drifters (as the target)
    pair = np.array([names.index(p) if p in names else 0 for p in HYBRID_PAIR])
    drift = np.array([names.index(p) if p in names else 0 for p in DRIFT_PAIR])
    hyb = kind == 1
    dri = kind == 2
    arche[hyb] = pair[0]
    arche[dri] = drift[0]
    z[hyb] = mu[pair[0]] + rng.normal(size=(hyb.sum(), len(FEATURES))) * sd[pair[0]]
    z[dri] = mu[drift[0]] + rng.normal(size=(dri.sum(), len(FEATURES))) * sd[drift[0]]
    other = np.zeros_like(z)
    other[hyb] = mu[pair[1]] + rng.normal(size=(hyb.sum(), len(FEATURES))) * sd[pair[1]]
    other[dri] = mu[drift[1]] + rng.normal(size=(dri.sum(), len(FEATURES))) * sd[drift[1]]
    blend = rng.uniform(0.35, 0.65, n)
    return {
        "user_id": np.arange(start, start + n, dtype=np.int64) + 1_000_000,
        "archetype": arche,
        "kind": kind,
        "z": z,
        "other": other,
        "blend": blend,
        "target": np.where(dri, drift[1], np.where(hyb, pair[1], arche)),
    }


def snapshot_block(spec: DemoSpec, block: int, day: int) -> tuple[pa.Table, pa.Table]:
    """Features and ground truth of one block of users on snapshot ``day`` (0-based)."""
    s = _block_users(spec, block)
    rng = np.random.default_rng([spec.seed, block, day + 1])
    z = s["z"].copy()
    hyb = s["kind"] == 1
    dri = s["kind"] == 2
    z[hyb] = s["blend"][hyb, None] * z[hyb] + (1 - s["blend"][hyb, None]) * s["other"][hyb]
    lam = day / max(spec.n_snapshots - 1, 1)
    z[dri] = (1 - lam) * z[dri] + lam * s["other"][dri]
    z += rng.normal(scale=spec.daily_noise, size=z.shape)
    x = np.expm1(np.maximum(z, 0.0))
    names = ARCHETYPE_NAMES[: spec.n_archetypes]
    current = np.where(dri & (lam >= 0.5), s["target"], s["archetype"])
    feats = pa.table({"user_id": s["user_id"], **{f: x[:, j] for j, f in enumerate(FEATURES)}})
    truth = pa.table(
        {
            "user_id": s["user_id"],
            "archetype": pa.array(np.asarray(names, dtype=object)[current]),
            "kind": pa.array(np.array(["stable", "hybrid", "drifter"])[s["kind"]]),
        }
    )
    return feats, truth


def write_demo_dataset(root: str | Path, spec: DemoSpec = DemoSpec(), *, overwrite: bool = False) -> Path:
    """Write every snapshot of ``spec`` under ``root``; returns the snapshots directory.

    Existing complete snapshots are kept unless ``overwrite``; each file is written to a
    temporary name and renamed into place, so an interrupted run never leaves a partial file.
    """
    root = Path(root)
    snap_dir = root / "snapshots"
    n_blocks = max(1, -(-spec.n_users // spec.block_users))
    for day, date in enumerate(spec.dates):
        for sub in ("snapshots", "truth"):
            (root / sub / f"dt={date}").mkdir(parents=True, exist_ok=True)
        for block in range(n_blocks):
            name = f"part-{block:05d}.parquet"
            targets = [root / "snapshots" / f"dt={date}" / name, root / "truth" / f"dt={date}" / name]
            if not overwrite and all(t.exists() for t in targets):
                continue
            tables = snapshot_block(spec, block, day)
            for table, target in zip(tables, targets, strict=True):
                tmp = target.with_name(f".{target.name}.tmp")
                pq.write_table(table, tmp, row_group_size=spec.row_group_rows)
                tmp.replace(target)
        logger.info("demo snapshot %s written (%d users)", date, spec.n_users)
    return snap_dir


def read_truth(root: str | Path, date: str):
    """Ground truth of one snapshot as a pandas DataFrame (user_id, archetype, kind)."""
    return pq.read_table(Path(root) / "truth" / f"dt={date}").to_pandas()
