"""Behavioural snapshots shaped like a warehouse's, for demos, tests and benchmarks.

Each user belongs to a named archetype, is a *hybrid* whose behaviour blends two archetypes, or
*drifts* from one archetype to another across the snapshots. Features are what a warehouse
aggregates per user over a trailing window: integer counts (sessions, active days, items
created, purchases) and money amounts (spend in cents, minutes per session in tenths), heavy
tailed and zero-inflated — most users made no purchase in the window, and ghosts show no
activity at all.

Generative model of one user in one snapshot (all draws independent given the latent state)::

    sessions          ~ Poisson(exp(ℓ_s)),              ℓ_s ~ N(μ_s, σ_s)          (per user)
    active_days       = min(Binomial(30, expit(ℓ_a)), sessions)
    items_created     = 0 w.p. z_i, else Poisson(exp(ℓ_i))
    purchases         = 0 w.p. z_p, else 1 + Poisson(exp(ℓ_p))
    spend             = round(purchases · exp(ℓ_b), cents)   (0 without purchases)
    minutes/session   = round(exp(ℓ_m), 0.1)                  (0 without sessions)

with (μ, σ, z) per archetype (:data:`ARCHETYPES`). A hybrid with share s between archetypes a
and b draws each latent ℓ as s·ℓ⁽ᵃ⁾ + (1−s)·ℓ⁽ᵇ⁾ and each zero probability as s·z⁽ᵃ⁾ + (1−s)·z⁽ᵇ⁾,
so every feature mixes both behaviours and its true posterior is split. A drifter is a hybrid
of :data:`DRIFT_PAIR` whose share of the first archetype moves from 1 to 0 in its own time: it
starts at an onset day drawn uniformly over the history (one per user, so drifters do not all
move on the same day) and moves linearly over ``drift_days`` snapshots,
``share = clip(1 − (day − onset) / drift_days, 0, 1)``; a drifter whose onset falls late in the
history is still on its way at the last snapshot. Between two snapshots a user's window changes
with probability ``change_rate`` (else its features are identical), and a drifter's on every
day its blend moves; during a promotion (``promotion_start``, ``promotion_days``) every user's
session and purchase rates are lifted.

Scenarios: ``DemoSpec()`` is the default demo (a few snapshots, 5 % drifters);
:meth:`DemoSpec.drifting` is a product with a sizeable cohort migrating between two behaviours
over a fortnight, the history a forecaster is meant to learn from.

Deterministic from the seed; generated in blocks of users, each from its own streams, so
millions of users stream to Parquet in bounded memory.

Layout written by :func:`write_demo_dataset`::

    <root>/snapshots/dt=YYYY-MM-DD/part-00000.parquet   user_id + features (what the job reads)
    <root>/truth/dt=YYYY-MM-DD/part-00000.parquet       the ground truth (never read by the job):
        user_id, archetype (the one with the larger share), kind (stable|hybrid|drifter),
        archetype_a, archetype_b, share_a (share of archetype_a in the blend), changed
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

FEATURES = (
    "sessions_30d",
    "active_days_30d",
    "items_created_30d",
    "purchases_90d",
    "spend_90d",
    "minutes_per_session",
)
#: Feature kinds, as a config declares them (counts resolve to 1, money to 1 currency unit).
FEATURE_KINDS = {
    "sessions_30d": "count",
    "active_days_30d": "count",
    "items_created_30d": "count",
    "purchases_90d": "count",
    "spend_90d": "amount",
    "minutes_per_session": "amount",
}
WINDOW_DAYS = 30

# Latent parameters per archetype: (mean, sd) of the log-rates ℓ and the zero probabilities.
#            sessions      active logit   items           z_items purchases     z_purch  basket       minutes
ARCHETYPES: dict[str, dict[str, tuple[float, float] | float]] = {
    "Creators": {
        "s": (3.0, 0.35), "a": (0.8, 0.4), "i": (1.8, 0.5), "zi": 0.05,
        "p": (0.0, 0.4), "zp": 0.60, "b": (3.0, 0.5), "m": (3.2, 0.3),
    },
    "Consistent users": {
        "s": (3.3, 0.25), "a": (2.0, 0.4), "i": (0.0, 0.5), "zi": 0.85,
        "p": (0.5, 0.4), "zp": 0.40, "b": (3.5, 0.4), "m": (2.3, 0.3),
    },
    "Ghosts": {
        "s": (-1.5, 0.6), "a": (-3.0, 0.5), "i": (0.0, 0.5), "zi": 0.99,
        "p": (0.0, 0.3), "zp": 0.98, "b": (2.5, 0.5), "m": (1.0, 0.5),
    },
    "Shoppers": {
        "s": (2.2, 0.35), "a": (-0.5, 0.4), "i": (0.0, 0.5), "zi": 0.97,
        "p": (1.4, 0.4), "zp": 0.10, "b": (4.2, 0.5), "m": (1.8, 0.3),
    },
    "Browsers": {
        "s": (2.4, 0.35), "a": (-0.3, 0.4), "i": (0.0, 0.5), "zi": 0.90,
        "p": (0.0, 0.3), "zp": 0.88, "b": (2.8, 0.5), "m": (2.8, 0.3),
    },
}  # fmt: skip
ARCHETYPE_NAMES = tuple(ARCHETYPES)
PRIOR = {"Creators": 0.12, "Consistent users": 0.25, "Ghosts": 0.20, "Shoppers": 0.18, "Browsers": 0.25}
LATENTS = ("s", "a", "i", "p", "b", "m")
ZEROS = ("zi", "zp")
# Hybrids blend one of these pairs; drifters move from the first archetype to the second.
HYBRID_PAIRS = (("Consistent users", "Shoppers"), ("Browsers", "Shoppers"), ("Creators", "Consistent users"))
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
    drift_days: int = 4  # snapshots a drifter takes to move from one archetype to the other
    change_rate: float = 0.3
    promotion_start: int | None = None  # index of the first promotion snapshot
    promotion_days: int = 0
    promotion_lift: float = 2.5
    block_users: int = 100_000
    row_group_rows: int = 50_000

    def __post_init__(self) -> None:
        if self.drift_days < 1:
            msg = f"drift_days must be at least 1 (snapshots a drifter takes to move), got {self.drift_days}"
            raise ValueError(msg)

    @classmethod
    def drifting(cls, **overrides) -> DemoSpec:
        """A product with a cohort migrating from browsing to creating, over a fortnight of dailies.

        What it represents: 14 daily snapshots in which 15 % of users (say, those reached by a
        new creation feature) move from :data:`DRIFT_PAIR` ``[0]`` (Browsers) to ``[1]``
        (Creators). Each starts on its own day, uniformly over the fortnight, and takes a week
        (``drift_days=7``: a habit takes about that long to show in trailing 30-day aggregates),
        so at any day a steady trickle of users is crossing and the segment shares drift
        steadily, while everyone else churns only from window to window (``change_rate``) around
        a fixed composition. No promotion: the movement is the drift alone. Hybrids and the
        other defaults are those of :class:`DemoSpec`; ``overrides`` replace any field.
        """
        fields = {"n_snapshots": 14, "drift_share": 0.15, "drift_days": 7, "promotion_start": None}
        return cls(**{**fields, **overrides})

    @property
    def dates(self) -> list[str]:
        d0 = dt.date.fromisoformat(self.start)
        return [(d0 + dt.timedelta(days=i)).isoformat() for i in range(self.n_snapshots)]

    @property
    def archetypes(self) -> tuple[str, ...]:
        return ARCHETYPE_NAMES[: self.n_archetypes]

    def in_promotion(self, day: int) -> bool:
        return (
            self.promotion_start is not None
            and self.promotion_start <= day < self.promotion_start + self.promotion_days
        )


def _params(names) -> dict[str, np.ndarray]:
    """Archetype parameters as arrays indexed by archetype: mean/sd per latent, zero probabilities."""
    out = {}
    for key in LATENTS:
        pairs = [ARCHETYPES[n][key] for n in names]
        out[f"{key}_mu"] = np.array([p[0] for p in pairs if isinstance(p, tuple)])
        out[f"{key}_sd"] = np.array([p[1] for p in pairs if isinstance(p, tuple)])
    for key in ZEROS:
        out[key] = np.array([ARCHETYPES[n][key] for n in names])
    return out


def _block_users(spec: DemoSpec, block: int) -> dict[str, Any]:
    """The fixed latent state of one block of users."""
    start = block * spec.block_users
    n = min(spec.block_users, spec.n_users - start)
    rng = np.random.default_rng([spec.seed, block, 0])
    names = spec.archetypes
    prior = np.array([PRIOR[a] for a in names])
    a = rng.choice(len(names), size=n, p=prior / prior.sum())
    b = a.copy()
    u = rng.random(n)
    kind = np.where(u < spec.hybrid_share, 1, np.where(u < spec.hybrid_share + spec.drift_share, 2, 0))
    pairs = [(names.index(x), names.index(y)) for x, y in HYBRID_PAIRS if x in names and y in names]
    hyb = np.flatnonzero(kind == 1)
    if pairs and hyb.size:
        which = rng.integers(0, len(pairs), hyb.size)
        a[hyb] = [pairs[w][0] for w in which]
        b[hyb] = [pairs[w][1] for w in which]
    else:
        kind[hyb] = 0
    dri = np.flatnonzero(kind == 2)
    if DRIFT_PAIR[0] in names and DRIFT_PAIR[1] in names:
        a[dri], b[dri] = names.index(DRIFT_PAIR[0]), names.index(DRIFT_PAIR[1])
    else:
        kind[dri] = 0
    share = np.where(kind == 1, rng.uniform(0.3, 0.7, n), 1.0)
    P = _params(names)
    z = rng.standard_normal((2, len(LATENTS), n))  # independent latent draws for both parents
    latent_a = {k: P[f"{k}_mu"][a] + P[f"{k}_sd"][a] * z[0, j] for j, k in enumerate(LATENTS)}
    latent_b = {k: P[f"{k}_mu"][b] + P[f"{k}_sd"][b] * z[1, j] for j, k in enumerate(LATENTS)}
    # each drifter's own onset day, uniform over the history (drawn last: the draws above are
    # those of earlier versions, so stable users and hybrids are unchanged)
    onset = rng.uniform(0.0, max(spec.n_snapshots - 1, 0), n)
    return {
        "user_id": np.arange(start, start + n, dtype=np.int64) + 1_000_000,
        "a": a,
        "b": b,
        "kind": kind,
        "share": share,
        "onset": onset,
        "latent_a": latent_a,
        "latent_b": latent_b,
        "za": {k: P[k][a] for k in ZEROS},
        "zb": {k: P[k][b] for k in ZEROS},
    }


def _share(spec: DemoSpec, users: dict, day: int) -> np.ndarray:
    s = users["share"].copy()
    dri = users["kind"] == 2
    s[dri] = np.clip(1.0 - (day - users["onset"][dri]) / spec.drift_days, 0.0, 1.0)
    return s


def _draw(spec: DemoSpec, users: dict, share: np.ndarray, day: int, rng) -> np.ndarray:
    """Features of every user of a block from its latent state blended at ``share``."""
    la, lb = users["latent_a"], users["latent_b"]
    lat = {k: share * la[k] + (1 - share) * lb[k] for k in LATENTS}
    zp = {k: share * users["za"][k] + (1 - share) * users["zb"][k] for k in ZEROS}
    lift = np.log(spec.promotion_lift) if spec.in_promotion(day) else 0.0
    n = len(share)
    sessions = rng.poisson(np.exp(lat["s"] + lift))
    active = np.minimum(rng.binomial(WINDOW_DAYS, 1.0 / (1.0 + np.exp(-(lat["a"] + lift)))), sessions)
    items = np.where(rng.random(n) < zp["zi"], 0, rng.poisson(np.exp(lat["i"])))
    no_purchase = zp["zp"] / (spec.promotion_lift if lift else 1.0)
    purchases = np.where(rng.random(n) < no_purchase, 0, 1 + rng.poisson(np.exp(lat["p"] + lift)))
    spend = np.round(purchases * np.exp(lat["b"]), 2)
    minutes = np.where(sessions > 0, np.round(np.exp(lat["m"]), 1), 0.0)
    return np.column_stack([sessions, active, items, purchases, spend, minutes]).astype(np.float64)


def block_snapshots(spec: DemoSpec, block: int):
    """(features, truth) tables of one block of users for every snapshot, in order."""
    users = _block_users(spec, block)
    names = np.asarray(spec.archetypes, dtype=object)
    kinds = np.array(["stable", "hybrid", "drifter"])[users["kind"]]
    previous = None
    share = users["share"]
    for day in range(spec.n_snapshots):
        rng = np.random.default_rng([spec.seed, block, day + 1])
        previous_share, share = share, _share(spec, users, day)
        fresh = _draw(spec, users, share, day, rng)
        if previous is None:
            X = fresh
        else:
            moving = spec.in_promotion(day) or spec.in_promotion(day - 1)
            redraw = np.ones(len(fresh), bool) if moving else rng.random(len(fresh)) < spec.change_rate
            redraw |= share != previous_share  # a drifter's window moves on every day its blend does
            X = np.where(redraw[:, None], fresh, previous)
        changed = np.ones(len(X), bool) if previous is None else (previous != X).any(axis=1)
        previous = X
        feats = pa.table(
            {
                "user_id": users["user_id"],
                **{
                    f: pa.array(X[:, j].astype(np.int64) if FEATURE_KINDS[f] == "count" else X[:, j])
                    for j, f in enumerate(FEATURES)
                },
            }
        )
        major = np.where(share >= 0.5, users["a"], users["b"])
        truth = pa.table(
            {
                "user_id": users["user_id"],
                "archetype": pa.array(names[major]),
                "kind": pa.array(kinds),
                "archetype_a": pa.array(names[users["a"]]),
                "archetype_b": pa.array(names[users["b"]]),
                "share_a": share,
                "changed": changed,
            }
        )
        yield feats, truth


def write_demo_dataset(root: str | Path, spec: DemoSpec = DemoSpec(), *, overwrite: bool = False) -> Path:
    """Write every snapshot of ``spec`` under ``root``; returns the snapshots directory.

    A block whose files all exist is kept unless ``overwrite``; each file is written to a
    temporary name and renamed into place, so an interrupted run never leaves a partial file.
    """
    import dataclasses
    import json

    root = Path(root)
    stamp = root / "demo_spec.json"
    wanted = json.dumps({**dataclasses.asdict(spec), "features": FEATURES}, sort_keys=True)
    existing = (root / "snapshots").exists() or (root / "truth").exists()
    if existing and (not stamp.exists() or stamp.read_text() != wanted):
        overwrite = True  # generated by another spec (or another version of the generator)
        for sub in ("snapshots", "truth"):
            shutil.rmtree(root / sub, ignore_errors=True)
    n_blocks = max(1, -(-spec.n_users // spec.block_users))
    for block in range(n_blocks):
        name = f"part-{block:05d}.parquet"
        targets = [
            (root / "snapshots" / f"dt={d}" / name, root / "truth" / f"dt={d}" / name) for d in spec.dates
        ]
        if not overwrite and all(t.exists() for pair in targets for t in pair):
            continue
        for tables, pair in zip(block_snapshots(spec, block), targets, strict=True):
            for table, target in zip(tables, pair, strict=True):
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                pq.write_table(table, tmp, row_group_size=spec.row_group_rows)
                tmp.replace(target)
    if not stamp.exists() or stamp.read_text() != wanted:  # a second run changes no file
        stamp.write_text(wanted)
    logger.info("demo data written: %d users x %d snapshots", spec.n_users, spec.n_snapshots)
    return root / "snapshots"


def read_truth(root: str | Path, date: str):
    """Ground truth of one snapshot as a pandas DataFrame."""
    return pq.read_table(Path(root) / "truth" / f"dt={date}").to_pandas()


# --- the generator's true posterior (for calibration measurements) -----------------------------

_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(48)  # ∫ f(z) N(z; 0, 1) dz ≈ Σ w f(x) / √(2π)
_GH_W = _GH_W / np.sqrt(2 * np.pi)


def _log_mix(logp_given_latent, mu, sd):
    """log ∫ p(x | ℓ) N(ℓ; mu, sd) dℓ for arrays x (n,), by Gauss–Hermite quadrature."""
    lat = mu + sd * _GH_X[None, :]
    lp = logp_given_latent(lat)  # (n, nodes)
    m = lp.max(axis=1, keepdims=True)
    return (m[:, 0] + np.log(np.exp(lp - m) @ _GH_W)).astype(np.float64)


def true_log_likelihoods(X: np.ndarray, spec: DemoSpec = DemoSpec()) -> np.ndarray:
    """log p(x | archetype) under the generator for pure (non-hybrid) users: shape (n, A).

    Columns follow ``spec.archetypes``; rows are raw feature vectors in :data:`FEATURES` order
    (outside a promotion).
    """
    from scipy.special import gammaln

    P = _params(spec.archetypes)
    s, act, items, purch, spend, minutes = (X[:, j] for j in range(6))
    out = np.empty((len(X), len(spec.archetypes)))

    def poisson(k):
        return lambda lat: k[:, None] * lat - np.exp(lat) - gammaln(k + 1)[:, None]

    def log_binom_tail(k, lat):
        """log P(Binomial(30, expit(lat)) >= k), rows in chunks (n is small, 30 trials)."""
        ks = np.arange(WINDOW_DAYS + 1)
        coef = gammaln(WINDOW_DAYS + 1) - gammaln(ks + 1) - gammaln(WINDOW_DAYS - ks + 1)
        out = np.empty(lat.shape)
        for lo in range(0, len(k), 2048):
            sl = slice(lo, lo + 2048)
            logp = -np.logaddexp(0.0, -lat[sl])[..., None]  # log p
            log1mp = -np.logaddexp(0.0, lat[sl])[..., None]  # log (1 - p)
            logpmf = coef + ks * logp + (WINDOW_DAYS - ks) * log1mp
            logpmf = np.where(ks >= k[sl, None, None], logpmf, -np.inf)
            m = logpmf.max(axis=2, keepdims=True)
            out[sl] = m[..., 0] + np.log(np.exp(logpmf - m).sum(axis=2))
        return out

    capped_rows = np.flatnonzero(act == s)
    for c in range(len(spec.archetypes)):
        lp = _log_mix(poisson(s), P["s_mu"][c], P["s_sd"][c])

        def active(lat):
            lat = np.broadcast_to(lat, (len(act), lat.shape[1]))
            logp, log1mp = -np.logaddexp(0.0, -lat), -np.logaddexp(0.0, lat)
            coef = gammaln(WINDOW_DAYS + 1) - gammaln(act + 1) - gammaln(WINDOW_DAYS - act + 1)
            out = coef[:, None] + act[:, None] * logp + (WINDOW_DAYS - act)[:, None] * log1mp
            out[capped_rows] = log_binom_tail(act[capped_rows], lat[capped_rows])
            return out

        lp += _log_mix(active, P["a_mu"][c], P["a_sd"][c])
        zi = P["zi"][c]
        li = _log_mix(poisson(items), P["i_mu"][c], P["i_sd"][c]) + np.log1p(-zi)
        lp += np.where(items == 0, np.logaddexp(np.log(zi), li), li)
        zp = P["zp"][c]
        lpp = _log_mix(poisson(np.maximum(purch - 1, 0)), P["p_mu"][c], P["p_sd"][c]) + np.log1p(-zp)
        lp += np.where(purch == 0, np.log(zp), lpp)
        # spend / purchases = exp(ℓ_b) (to the cent): a log-normal density in the basket value
        with np.errstate(divide="ignore", invalid="ignore"):
            basket = np.log(np.maximum(spend, 0.005) / np.maximum(purch, 1))
        lb = -0.5 * ((basket - P["b_mu"][c]) / P["b_sd"][c]) ** 2 - np.log(P["b_sd"][c])
        lp += np.where(purch > 0, lb, 0.0)
        with np.errstate(divide="ignore"):
            lm = np.log(np.maximum(minutes, 0.05))
        lmm = -0.5 * ((lm - P["m_mu"][c]) / P["m_sd"][c]) ** 2 - np.log(P["m_sd"][c])
        lp += np.where(s > 0, lmm, 0.0)
        out[:, c] = lp
    return out


def true_posterior(X: np.ndarray, spec: DemoSpec = DemoSpec()) -> np.ndarray:
    """p(archetype | x) under the generator's pure-archetype model (priors :data:`PRIOR`): (n, A)."""
    prior = np.array([PRIOR[a] for a in spec.archetypes])
    lp = true_log_likelihoods(X, spec) + np.log(prior / prior.sum())
    lp -= lp.max(axis=1, keepdims=True)
    p = np.exp(lp)
    return p / p.sum(axis=1, keepdims=True)
