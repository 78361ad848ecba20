"""A/B of the engine between two checkouts of gmm-dask, in one run, alternating.

``python -m benchmarks.ab OLD NEW [--rounds 3]`` runs, in a fresh process per checkout and
round (A, B, A, B, ...), one compiled E-step pass over 500,000 rows (D = 16, K = 8, full and
diag covariance, one BLAS thread, best of 5) and a 20-iteration fit of 200,000 × 8 rows (K = 8,
threaded local scheduler), and writes the best of each to ``benchmarks/AB.md`` and ``ab.json``.
Use it to show a refactor did not slow the engine (as for the layering: old = the commit before).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

PROBE = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
try:
    from gmm_dask.mixture.gaussian import compute_precision_cholesky
    from gmm_dask.mixture.suffstats import estep_stats
except ImportError:  # a checkout from before the layered layout
    from gmm_dask.gaussian import compute_precision_cholesky
    from gmm_dask.suffstats import estep_stats
from threadpoolctl import threadpool_limits
from gmm_dask import GaussianMixture
out, rng = {}, np.random.default_rng(0)
with threadpool_limits(1):
    for ct in ("full", "diag"):
        X = rng.standard_normal((500_000, 16))
        w, m = np.full(8, 1 / 8), rng.standard_normal((8, 16))
        cov = np.broadcast_to(np.eye(16), (8, 16, 16)).copy() if ct == "full" else np.ones((8, 16))
        pc = compute_precision_cholesky(cov, ct)
        estep_stats(X[:5000], None, w, m, pc, ct)
        best = np.inf
        for _ in range(5):
            t0 = time.perf_counter()
            estep_stats(X, None, w, m, pc, ct)
            best = min(best, time.perf_counter() - t0)
        out[f"estep_{ct}_Mrows_per_s"] = 0.5 / best
    X = rng.standard_normal((200_000, 8))
    t0 = time.perf_counter()
    GaussianMixture(8, max_iter=20, tol=0, random_state=0).fit(X)
    out["fit_200k_seconds"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def measure(checkout: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, checkout], capture_output=True, text=True, check=True, timeout=600
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        for side in ("old", "new"):
            runs[side].append(measure(getattr(args, side)))
    best = {
        side: {key: (min if key.endswith("seconds") else max)(r[key] for r in rs) for key in rs[0]}
        for side, rs in runs.items()
    }
    (HERE / "ab.json").write_text(json.dumps({"checkouts": vars(args), "runs": runs, "best": best}, indent=1))
    lines = [
        "# Engine A/B between two checkouts (`python -m benchmarks.ab OLD NEW`)",
        "",
        f"Alternating fresh processes, {args.rounds} rounds each, best of each; this machine.",
        "",
        "| measure | old | new | new / old |",
        "|---|---|---|---|",
    ]
    for key in best["old"]:
        o, n = best["old"][key], best["new"][key]
        lines.append(f"| {key} | {o:.3f} | {n:.3f} | {n / o:.3f} |")
    (HERE / "AB.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
