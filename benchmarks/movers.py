"""Movers against the demo's true drifters: the one-step TV rule and the steady rule.

``python -m benchmarks.movers [--users N]`` generates the demo (7 dailies, the 2-day promotion of
``gmm-dask demo``) and :meth:`DemoSpec.drifting`, fits each with ``model.family: behaviour`` (train on
the first date, backfill refit after), and scores every rule on three memberships: the fit's, the
fit's with unchanged users' γ held from the day before (what scoring with yesterday's model gives
a user whose data did not change), and the generator's Bayes posterior (no promotion term: not a
ceiling on promotion days). A flagged user is a hit when the truth's ``kind`` is ``drifter``;
recall is over all drifters. Writes ``benchmarks/MOVERS.md`` and ``movers.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from gmm_dask.demo import (
    FEATURE_KINDS,
    FEATURES,
    DemoSpec,
    block_snapshots,
    true_posterior,
    write_demo_dataset,
)
from gmm_dask.segmentation.fluidity import steady_move

HERE = Path(__file__).resolve().parent
RULES = {
    "TV since the previous snapshot (mover_snapshots=1)": 1,
    "steady over 2": 2,
    "steady over 3 (default)": 3,
}


def _fit(spec: DemoSpec, tmp: Path) -> np.ndarray:
    """The behaviour family's memberships of every date, (dates, users, K), users by id."""
    from gmm_dask.app import jobs
    from gmm_dask.app.params import BackfillParams, TrainParams
    from gmm_dask.storage.io import read_partition

    write_demo_dataset(tmp / "data", spec)
    cfg = {
        "input": {
            "path": str(tmp / "data" / "snapshots"),
            "id_column": "user_id",
            "features": [{"name": f, "kind": FEATURE_KINDS[f]} for f in FEATURES],
        },
        "model": {"family": "behaviour", "n_components": 5, "n_init": 4, "random_state": 0, "tol": 1e-6},
        "output": {"root": str(tmp / "out")},
        "cluster": {"type": "local", "n_workers": 1, "threads_per_worker": 2, "processes": False},
    }
    (tmp / "job.yaml").write_text(yaml.safe_dump(cfg))
    jobs.train(TrainParams(config=str(tmp / "job.yaml"), snapshot=spec.dates[0]))
    jobs.backfill(
        BackfillParams(
            config=str(tmp / "job.yaml"), start=spec.dates[1], end=spec.dates[-1], mode="refit", publish=True
        )
    )
    out = []
    for d in spec.dates:
        m = read_partition(str(tmp / "out"), "memberships", d).to_pandas().sort_values("user_id")
        out.append(np.stack(m["gamma"].to_numpy()))
    return np.stack(out)


def _truth(spec: DemoSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kind (users,), changed (dates, users) and the Bayes posterior (dates, users, A)."""
    kinds, changed, post = None, [], []
    for feats, truth in block_snapshots(spec, 0):
        X = np.column_stack([feats.column(f).to_numpy().astype(float) for f in FEATURES])
        post.append(true_posterior(X, spec))
        changed.append(truth.column("changed").to_numpy())
        kinds = truth.column("kind").to_numpy(zero_copy_only=False)
    return kinds, np.stack(changed), np.stack(post)


def score(G: np.ndarray, drifter: np.ndarray, span: int, tau: float = 0.5) -> list[dict]:
    rows = []
    for t in range(span, len(G)):
        tv, steady = steady_move(list(G[t - span : t + 1]))
        flag = steady & (tv >= tau)
        hit = int((flag & drifter).sum())
        rows.append(
            {"day": t, "flagged": int(flag.sum()), "hits": hit, "precision": hit / max(int(flag.sum()), 1),
             "recall": hit / int(drifter.sum())}
        )  # fmt: skip
    return rows


def measure(name: str, spec: DemoSpec, tmp: Path) -> dict:
    kinds, changed, post = _truth(spec)
    fit = _fit(spec, tmp / name)
    held = fit.copy()
    for t in range(1, len(held)):
        held[t, ~changed[t]] = held[t - 1, ~changed[t]]
    drifter = kinds == "drifter"
    return {
        source: {rule: score(G, drifter, span) for rule, span in RULES.items()}
        for source, G in (
            ("behaviour fit", fit),
            ("fit, unchanged users held", held),
            ("Bayes posterior", post),
        )
    }


def _markdown(results: dict, specs: dict[str, DemoSpec]) -> str:
    lines = ["# Movers vs true drifters", "", __doc__.split("\n\n", 1)[1].strip(), ""]
    for name, res in results.items():
        spec = specs[name]
        lines += [f"## {name}: {spec.n_users:,} users × {spec.n_snapshots} dailies, seed {spec.seed}", ""]
        lines += ["| memberships | rule | precision, last date | recall, last date | precision, pooled |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for source, by_rule in res.items():
            for rule, rows in by_rule.items():
                last = rows[-1]
                pooled = sum(r["hits"] for r in rows) / max(sum(r["flagged"] for r in rows), 1)
                lines.append(
                    f"| {source} | {rule} | {last['precision']:.2f} | {last['recall']:.2f} | {pooled:.2f} |"
                )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default=str(HERE))
    a = p.parse_args(argv)
    common = {"n_users": a.users, "seed": a.seed, "block_users": a.users}
    specs = {
        "demo": DemoSpec(n_snapshots=7, promotion_start=3, promotion_days=2, **common),
        "drifting": DemoSpec.drifting(**common),
    }
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: measure(name, spec, Path(tmp)) for name, spec in specs.items()}
    out = Path(a.out)
    (out / "movers.json").write_text(json.dumps(results, indent=1))
    (out / "MOVERS.md").write_text(_markdown(results, specs))
    print((out / "MOVERS.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
