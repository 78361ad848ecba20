"""Behaviour family benchmark: E-step rows/s against the Gaussian compiled kernel, and demo ARI.

Run with ``.venv/bin/python -m benchmarks.behaviour`` (single thread; writes
``benchmarks/BEHAVIOUR.md`` and ``benchmarks/behaviour.json``). ``--quick``: the throughput
only, printed, nothing written.

1. E-step throughput: ``BehaviourFamily.chunk_stats`` vs ``suffstats.estep_stats`` (full
   covariance, warm numba) on the same N = 1M rows in 125k-row partitions, D ∈ {6, 16}, K = 8,
   A/B in one process: 5 rounds, each timing one pass of either, best of each (the ratio is
   what holds up on a shared machine); D = 6 also with a count zero-parented by another.
2. Demo (``DemoSpec(n_users=50_000, n_snapshots=7, promotion on days 3–4)``): single-archetype
   ARI per day of a chain of fits (day 0 initialised, later days warm-started), against the
   generator's Bayes posterior and the family fitted to the true labels (supervised ceiling).
3. A second generator (the one of tests/test_behaviour.py: page views 0 whenever sessions are
   0): ARI vs the family on the true labels and vs a supervised classifier
   (HistGradientBoosting, 5-fold), with the detected zero-parent link and without links.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from gmm_dask.mixture import suffstats
from gmm_dask.mixture.behaviour import BehaviourFamily, BehaviourParams, infer_structure

HERE = Path(__file__).parent
N, K, PART = 1_000_000, 8, 125_000
#: Throughput: best of this many rounds, each timing the behaviour kernel then the Gaussian one.
ROUNDS = 5


def make_rows(d: int, rng: np.random.Generator, zero_link: bool = False) -> tuple[np.ndarray, list[str]]:
    """Behavioural columns: zero-inflated counts, amounts, (D = 16) continuous and binaries;
    for D = 6 one count capped by another and amounts zero with their count (``zero_link``:
    count 3 also 0 whenever count 2 is)."""
    kinds = (
        ["count"] * 4 + ["amount"] * 2
        if d == 6
        else ["count"] * 8 + ["amount"] * 4 + ["continuous"] * 2 + ["binary"] * 2
    )
    cols = []
    for j, kind in enumerate(kinds):
        if kind == "count":
            cols.append(np.where(rng.random(N) < 0.4, 0, rng.poisson(rng.gamma(2, 5 + j, N))))
        elif kind == "amount":
            cols.append(np.where(rng.random(N) < 0.5, 0, np.round(np.exp(rng.normal(3, 1, N)), 2)))
        elif kind == "continuous":
            cols.append(rng.normal(0, 1, N))
        else:
            cols.append((rng.random(N) < 0.3).astype(float))
    X = np.column_stack(cols).astype(float)
    if d == 6:
        X[:, 1] = np.minimum(X[:, 1], X[:, 0])
        X[:, 4] *= X[:, 3] > 0
        X[:, 5] *= X[:, 0] > 0
        if zero_link:
            X[:, 3] *= X[:, 2] > 0
    return X, kinds


def best_of(fn: Callable[[], object], rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def throughput(
    d: int, rng: np.random.Generator, zero_link: bool = False, rounds: int = ROUNDS
) -> dict[str, Any]:
    X, kinds = make_rows(d, rng, zero_link)
    parts = [X[i : i + PART] for i in range(0, N, PART)]
    st = infer_structure(X[:20_000], kinds, [f"f{j}" for j in range(d)])
    fam = BehaviourFamily(st)
    labels = rng.integers(0, K, 20_000)
    p: BehaviourParams = fam.m_step(fam.resp_stats(X[:20_000], None, np.eye(K)[labels]))
    Z = np.log1p(np.abs(X))
    zparts = [Z[i : i + PART] for i in range(0, N, PART)]
    mu = Z[rng.integers(0, N, K)]
    cov = np.stack([np.cov(Z[:20_000].T) + 1e-3 * np.eye(d)] * K)
    pc = np.linalg.cholesky(np.linalg.inv(cov))
    w = np.full(K, 1 / K)
    suffstats.estep_stats(zparts[0][:1000], None, w, mu, pc, "full")  # load / compile
    fam.chunk_stats(parts[0][:1000], None, p)
    t_beh = t_gau = np.inf
    for _ in range(rounds):  # A/B interleaved: both kernels see the same machine load
        t_beh = min(t_beh, best_of(lambda: fam.combine_all([fam.chunk_stats(q, None, p) for q in parts]), 1))
        t_gau = min(
            t_gau,
            best_of(
                lambda: suffstats.combine_all(
                    [suffstats.estep_stats(q, None, w, mu, pc, "full") for q in zparts]
                ),
                1,
            ),
        )
    row = {
        "D": d, "K": K, "N": N, "zero_link": zero_link, "kinds": kinds, "caps": list(st.cap),
        "parents": list(st.parent), "rounds": rounds,
        "behaviour_rows_per_s": N / t_beh, "gaussian_full_compiled_rows_per_s": N / t_gau,
    }  # fmt: skip
    row["ratio"] = row["behaviour_rows_per_s"] / row["gaussian_full_compiled_rows_per_s"]
    print(json.dumps(row), flush=True)
    return row


def _ari(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def _em(
    fam: BehaviourFamily, X: np.ndarray, p: BehaviourParams, max_iter: int = 500
) -> tuple[BehaviourParams, int]:
    pieces = np.array_split(np.arange(len(X)), 4)
    previous = -np.inf
    for it in range(1, max_iter + 1):
        s = fam.combine_all([fam.chunk_stats(X[q], None, p) for q in pieces])
        p = fam.m_step(s)
        if s.loglik - previous < 1e-8 * abs(s.loglik):
            return p, it
        previous = s.loglik
    return p, max_iter


def demo_chain() -> list[dict[str, Any]]:
    """Per-day ARI of a warm-started chain on the demo (50k users, promotion days 3–4)."""
    from gmm_dask.demo import (
        ARCHETYPE_NAMES,
        FEATURE_KINDS,
        FEATURES,
        DemoSpec,
        block_snapshots,
        true_posterior,
    )
    from gmm_dask.mixture.behaviour.init import initialize_from_sample
    from tests.test_behaviour import supervised

    spec = DemoSpec(n_users=50_000, n_snapshots=7, seed=7, promotion_start=3, promotion_days=2)
    rows, fam, p = [], None, None
    for day, (feats, truth) in enumerate(block_snapshots(spec, 0)):
        t0 = time.perf_counter()
        X = np.column_stack([feats.column(c).to_numpy().astype(float) for c in FEATURES])
        labels = np.array([ARCHETYPE_NAMES.index(a) for a in truth.column("archetype").to_pylist()])
        stable = truth.column("kind").to_numpy(zero_copy_only=False) == "stable"
        if fam is None or p is None:
            st = infer_structure(X[:20_000], [FEATURE_KINDS[f] for f in FEATURES], FEATURES)
            fam = BehaviourFamily(st)
            p = initialize_from_sample(st, X[20_000:25_000], 5, seed=0)
        p, n_iter = _em(fam, X, p)
        sup = supervised(fam, X, labels, 5)
        row = {
            "day": day, "promotion": spec.in_promotion(day), "em_iterations": n_iter,
            "ari": _ari(labels[stable], fam.log_prob(X[stable], p).argmax(1)),
            "bayes_ari": _ari(labels[stable], true_posterior(X[stable], spec).argmax(1)),
            "supervised_family_ari": _ari(labels[stable], fam.log_prob(X[stable], sup).argmax(1)),
            "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def second_generator() -> dict[str, Any]:
    """The test's second generator at 50k rows (page views 0 whenever sessions are 0): the
    family vs its supervised ceiling and vs a supervised classifier, with the zero-parent link
    detected and without links."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import cross_val_predict

    from gmm_dask.mixture.behaviour.init import initialize_from_sample
    from tests.test_behaviour import KINDS2, second_generator, supervised

    out: dict[str, Any] = {}
    X, z = second_generator(50_000)
    hgb = cross_val_predict(HistGradientBoostingClassifier(random_state=0), X, z, cv=5)
    for name, parents in (("zero_parent_link", "auto"), ("no_links", None)):
        names = ["sessions", "views", "purchases", "app", "rating"]
        st = infer_structure(X[:20_000], KINDS2, names, parents=parents)
        fam = BehaviourFamily(st)
        p, _ = _em(fam, X, initialize_from_sample(st, X[:5000], 4, seed=1))
        row = {
            "parents": list(st.parent),
            "ari": _ari(z, fam.log_prob(X, p).argmax(1)),
            "supervised_family_ari": _ari(z, fam.log_prob(X, supervised(fam, X, z, 4)).argmax(1)),
            "supervised_hgb_ari": _ari(z, hgb),
        }
        row["ratio_family"] = row["ari"] / row["supervised_family_ari"]
        row["ratio_hgb"] = row["ari"] / row["supervised_hgb_ari"]
        print(name, json.dumps(row), flush=True)
        out[name] = row
    return out


def write_markdown(out: dict[str, Any], path: Path) -> None:
    lines = [
        "# Behaviour family — benchmark (`python -m benchmarks.behaviour`)",
        "",
        f"Single thread, this machine ({out['machine']}); numbers in `behaviour.json`.",
        "",
        f"## E-step throughput (N = 1M, 125k-row partitions, K = 8, A/B interleaved, best of {ROUNDS}, warm numba)",
        "",
        "| D | behaviour chunk_stats | Gaussian full, compiled estep_stats | ratio |",
        "|---|---|---|---|",
    ]
    for r in out["throughput"]:
        lines.append(
            f"| {r['D']}{' + zero link' if r.get('zero_link') else ''} | {r['behaviour_rows_per_s'] / 1e6:.2f} M rows/s | "
            f"{r['gaussian_full_compiled_rows_per_s'] / 1e6:.2f} M rows/s | {r['ratio']:.2f}× |"
        )
    lines += [
        "",
        "The machine is shared: rows/s move with its load, so both kernels are timed in alternating "
        "rounds and the ratio is the figure to compare across runs.",
        "",
        "## Demo: single-archetype ARI per day (50k users, promotion days 3–4, warm-started chain)",
        "",
    ]
    lines += [
        "| day | promo | ARI | Bayes ARI | family on true labels | EM iters |",
        "|---|---|---|---|---|---|",
    ]
    for r in out["demo"]:
        lines.append(
            f"| {r['day']} | {'yes' if r['promotion'] else ''} | {r['ari']:.3f} | {r['bayes_ari']:.3f} | "
            f"{r['supervised_family_ari']:.3f} | {r['em_iterations']} |"
        )
    lines += [
        "",
        "## Second generator (tests/test_behaviour.py, 50k rows, K = 4, views = 0 whenever sessions = 0)",
        "",
    ]
    lines += [
        "| variant | ARI | family on true labels | ratio | HGB 5-fold | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in out["second_generator"].items():
        lines.append(
            f"| {name} | {r['ari']:.3f} | {r['supervised_family_ari']:.3f} | {r['ratio_family']:.2f} | "
            f"{r['supervised_hgb_ari']:.3f} | {r['ratio_hgb']:.2f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def machine() -> str:
    """The CPU model and core count (Linux), else the platform's word for it."""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def main() -> None:
    quick = "--quick" in sys.argv
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"machine": machine(), "threads": 1}
    with threadpool_limits(1):
        out["throughput"] = [throughput(d, rng, link) for d, link in ((6, False), (6, True), (16, False))]
        if not quick:
            out["demo"] = demo_chain()
            out["second_generator"] = second_generator()
    if not quick:
        (HERE / "behaviour.json").write_text(json.dumps(out, indent=1))
        write_markdown(out, HERE / "BEHAVIOUR.md")


if __name__ == "__main__":
    main()
