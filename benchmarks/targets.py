"""The targets of the benchmark run: the checklist RESULTS.md ends with, why a missed one is
missed on this machine kind, and the design notes (rendered by :mod:`benchmarks.run`)."""

from __future__ import annotations

from collections.abc import Callable

MIB = 1 << 20


DESIGN = """## How the figures come about

- **Two GEMMs per block of rows** (`gmm_dask/suffstats.py`). Each in-cache block of up to
  3,000 rows is expanded once into `f = [xᵢxⱼ (i ≤ j); x; 1]` (F = 153 rows for D = 16, full;
  F = 33 for diag), centred at the mixture mean. Every component's log-density is `A @ f` and
  every component's weight, first and second moments are `R @ fᵀ`: about 2·2·K·F·N ≈ 4.9 GFLOP
  per iteration for the full case instead of the 4·N·K·D² ≈ 9.5 GFLOP of the standard
  algorithm — symmetry halves it. (The GFLOP/s column counts the standard algorithm's work, so
  it is an *effective* rate.) No N×K×D temporaries exist. Per-block moments are re-centred and
  merged exactly (Chan et al.); components whose mean lies more than 1,000 of their own standard
  deviations from the mixture mean are computed with explicit `x − μₖ`, so they keep their digits.
- **One task per worker thread per iteration** over partitions that worker already holds
  (`gmm_dask/runner.py`), one BLAS thread per task: EM's tall-skinny products run faster that
  way than with threaded BLAS. The scheduler sees 2 tasks and a tree of merges per iteration.
- **Memory**: the persisted data, plus per worker one feature block (≤ 4 MiB) and its
  per-block moments. The `peak mem` column is measured above a baseline taken after the workers
  have imported the library, so it includes the data and the generator's temporaries.
- **Timings on this shared 2-vCPU VM vary by up to ~25 % between runs** (the DGEMM rate itself
  moved between 78 and 102 GFLOP/s for 2 threads across this project's runs, and two busy worker
  processes each run ~30 % slower than one alone); read ratios near a threshold as ranges.
"""


def _phases_table(r: dict) -> list[str]:
    ph = r.get("phases")
    if not ph:
        return []
    cols = [
        ("centre", "centre_ms"),
        ("products", "products_ms"),
        ("A @ f", "gemm_density_ms"),
        ("softmax", "softmax_ms"),
        ("R @ fᵀ", "gemm_moments_ms"),
        ("whole kernel", "kernel_ms"),
    ]
    lines = [
        "E-step phases of one partition (`benchmarks/phases.py`: ms on one core, one BLAS thread; "
        "the whole kernel also merges blocks and keeps the rows for re-seeding):",
        "",
        "| cov | rows | F | " + " | ".join(c for c, _ in cols) + " | A @ f GFLOP/s | R @ fᵀ GFLOP/s |",
        "|---|---|---|" + "---|" * (len(cols) + 2),
    ]
    for ct, p in ph.items():
        lines.append(
            f"| {ct} | {p['rows']:,} | {p['F']} | "
            + " | ".join(f"{p[k]:.1f}" for _, k in cols)
            + f" | {p['gemm_density_gflops']:.1f} | {p['gemm_moments_gflops']:.1f} |"
        )
    return [*lines, ""]


def _why_unmet(key: str, r: dict) -> str:
    """Why a target can be missed on this machine kind (only shown for targets a run missed)."""
    ph = r.get("phases", {})
    full = ph.get("full", {})
    gemm_share = (
        f" In this run's phase timings the two GEMMs are {full['gemm_density_ms'] + full['gemm_moments_ms']:.0f}"
        f" of {full['kernel_ms']:.0f} ms per partition and run at {full['gemm_density_gflops']:.0f} and"
        f" {full['gemm_moments_gflops']:.0f} GFLOP/s — with K = 8 they are skinny (8 × F by F × 3,000),"
        " and the second has a long inner dimension, which OpenBLAS runs well below its square-matrix"
        " rate; building the products and the softmax are memory passes that add no counted flops."
        if full
        else ""
    )
    why = {
        "full_ratio": (
            "The full case pays per iteration one Dask round trip (~20 ms for submit, merge and "
            "gather on this machine) on top of the kernel." + gemm_share
        ),
        "dgemm": (
            "Only the GEMMs run near the DGEMM rate." + gemm_share + " Two busy worker processes "
            "also slow each other down (shared L3 and memory bandwidth), so the 2-worker rate is "
            "below twice the 1-worker rate; under Dask each iteration also pays its round trip "
            "(see the scheduler overhead), which the one-process kernel table does not."
        ),
        "diag_ratio": (
            "For diag the per-row arithmetic is small (F = 33 rows per block), so fixed costs per "
            "iteration — the Dask round trip and the N×K softmax, which scikit-learn pays too — "
            "are a large share, and scikit-learn's diag E-step is already two thin GEMMs."
        ),
        "memory": (
            "The persisted fit's peak includes the data generator's temporaries inside the "
            "workers (the data are built there); the EM loop itself adds a few MiB per worker."
        ),
        "stream": (
            "Streaming memory is dominated by pyarrow's read buffers and the worker's allocator, "
            "which returns memory lazily."
        ),
        "overhead": (
            "Each iteration is one task per worker plus a merge and a gather; on this machine a "
            "no-op submit-and-gather alone takes ~20 ms, so little is left for 100 partitions."
        ),
        "agreement": "A disagreement is a bug, not a performance trade-off: see the per-case column.",
        "profile": (
            "The profile pass reads the id column too and hashes every id into buckets that are "
            "checked by their own tasks (duplicate ids at any size), computes each column's moments, "
            "minimum, maximum, zeros and integrality, and pays the workers' first imports; an E-step "
            "pass reads only the features."
        ),
        "init": "see the passes of each method in gmm_dask/mixture/init.py.",
        "write": (
            "Writing scores every row (a full E-step with entropies), builds the memberships table "
            "(γ as a list column) and encodes and compresses it to Parquet, which costs more than "
            "the E-step's arithmetic at K = 5, D = 6. Measured on one 250,000-row piece of the "
            "demo data in one process (2026-12-06): reading and preparing it 40 ms (as an E-step "
            "pass), scoring 100 ms (γ, entropies, bands, the segments' and overlaps' aggregates) "
            "against the E-step kernel's 25 ms, and encoding and writing the 17 MB of Parquet 60 ms "
            "(γ alone 25 ms; without compression 47 ms)."
        ),
        "large": "See the large case's worker log (benchmarks/work) for why a worker restarted.",
        "wall": (
            "Besides its EM passes a job makes a profile pass, the initialisation's sampling pass and "
            "its in-memory over-cluster-and-merge, one pass for the components' Gaussian summary "
            "(names and profiles) and the scoring pass that writes; with max_iter 5 those are "
            "weighed against only 5 EM passes."
        ),
        "stream_pass": (
            "A streamed pass reads and decodes every Parquet row group (16 float64 columns of "
            "random values, which do not compress) and stacks the columns into rows on each "
            "iteration; a persisted pass only runs the kernel on memory the worker holds."
        ),
        "workers": "Two busy worker processes share this machine's 2 cores, L3 and memory bandwidth.",
        "cold": (
            "What is left of a first fit is the workers' first touch of the memory their data are "
            "generated into, and the driver's own first-fit costs in the run's first round."
        ),
        "warm_ratio": "See the one-process kernel table and the phases of one partition.",
    }
    return why[key]


def analysis(r: dict, unmet: list[str]) -> str:
    """The design notes and phase timings, then one paragraph per target this run did not meet."""
    out = [DESIGN, *_phases_table(r)]
    if unmet:
        out += ["## Why the unmet targets are unmet", ""]
        out += [f"- **{LABELS[key]}**: {_why_unmet(key, r)}" for key in unmet]
    else:
        out.append("Every target was met in this run.")
    return "\n".join(out)


LABELS = {
    "full_ratio": "full ≤ 1/15 of scikit-learn",
    "dgemm": "≥ 60 % of DGEMM",
    "diag_ratio": "diag ≤ 1/6 of scikit-learn",
    "memory": "persisted peak ≤ 2× X",
    "stream": "streaming memory bounded",
    "overhead": "overhead < 50 ms",
    "agreement": "lower bounds agree",
    "profile": "profile ≤ 1.5× a pass",
    "init": "initialisation ≤ 6 passes",
    "write": "writing ≤ 2× a pass",
    "large": "large case without restarts",
    "wall": "job wall ≤ 2.5× its EM passes",
    "stream_pass": "a streaming pass ≤ 2× a persisted one",
    "workers": "2 workers never slower than 1",
    "cold": "first fit on a fresh cluster ≤ 1.10× the second",
    "warm_ratio": "warm fit ≤ 1/15 of scikit-learn",
}


Line = Callable[[bool, str, str], None]


def _scaling_targets(by: dict[str, dict], line: Line) -> None:
    """A streaming pass against a persisted one, and 2 workers against 1 (#23 item 6)."""
    full, one, stream, stream_one = (
        by.get(k) for k in ("main-full", "workers-1", "stream-N-1000000", "stream-workers-1")
    )
    if full and stream and full["n"] == stream["n"]:
        ratio = stream["gmm_dask"]["sec_per_iter"] / full["gmm_dask"]["sec_per_iter"]
        line(
            ratio <= 2,
            f"N={full['n']:,}, full: a streaming pass (Parquet) ≤ 2× a persisted one — measured {ratio:.2f}×",
            "stream_pass",
        )
    for two, single, how in ((full, one, "persisted"), (stream, stream_one, "streamed")):
        if two and single and two["n"] == single["n"]:
            t2, t1 = two["gmm_dask"]["sec_per_iter"], single["gmm_dask"]["sec_per_iter"]
            line(
                t2 <= t1,
                f"N={two['n']:,}, full, {how}: 2 workers never slower than 1 — measured {t2:.3f} against "
                f"{t1:.3f} s/iter ({t1 / t2:.2f}× faster)",
                "workers",
            )


def _coldstart_targets(c: dict | None, line: Line) -> None:
    """The first fit on a fresh cluster against the second (item 5), and the warm fit against
    scikit-learn's on the same case in the same run (item 7)."""
    from benchmarks.coldstart import BUILT, medians

    if not c or "error" in c:
        return
    med, best_sk = medians(c, BUILT), min(c["sklearn"])
    line(
        med["first"] <= 1.10 * med["second"],
        f"cold start, N={c['n']:,}, full, kernels built ahead of time: the first fit on a fresh cluster ≤ 1.10× "
        f"the second — measured {med['first'] / med['second']:.2f}× ({med['first']:.2f} s against {med['second']:.2f} s)",
        "cold",
    )
    line(
        med["second"] <= best_sk / 15,
        f"the same case: a warm fit ≤ 1/15 of scikit-learn's fit from the same initialisation — measured "
        f"1/{best_sk / med['second']:.1f} ({med['second']:.2f} s against {best_sk:.2f} s)",
        "warm_ratio",
    )


def targets(r: dict) -> tuple[list[str], list[str]]:
    """Checklist lines for the issue's targets, and the keys of those not met."""
    by = {c["label"]: c for c in r["cases"]}
    out: list[str] = []
    unmet: list[str] = []

    def line(ok, text, key):
        out.append(f"- [{'x' if ok else ' '}] {text}")
        if not ok and key not in unmet:
            unmet.append(key)

    f, dg = by["main-full"], by["main-diag"]
    kern = r.get("kernel") or {}
    sources = (
        [("kernel (one process)", kern["full"], kern["diag"], "fraction_of_dgemm_2")]
        if ("full" in kern and "diag" in kern and not any("error" in v for v in kern.values()))
        else []
    )
    sources.append(("under Dask", f, dg, "fraction_of_dgemm"))
    for where, kf, kd, dgemm_key in sources:
        line(
            kf["ratio"] <= 1 / 15,
            f"{where}, full, N=1,000,000: s/iter ≤ 1/15 of scikit-learn's best — measured ratio "
            f"{kf['ratio']:.3f} (1/{1 / kf['ratio']:.1f})",
            "full_ratio",
        )
        line(
            kf[dgemm_key] >= 0.6,
            f"{where}, full: ≥ 60 % of the measured DGEMM rate — measured {100 * kf[dgemm_key]:.0f}%",
            "dgemm",
        )
        line(
            kd["ratio"] <= 1 / 6,
            f"{where}, diag: s/iter ≤ 1/6 of scikit-learn's best — measured ratio {kd['ratio']:.3f} "
            f"(1/{1 / kd['ratio']:.1f})",
            "diag_ratio",
        )
    line(
        f["gmm_dask"]["peak_rss_bytes"] <= 2 * f["x_bytes"],
        f"persisted fit peak memory ≤ 2× size(X) — measured {f['gmm_dask']['peak_rss_bytes'] / f['x_bytes']:.2f}×",
        "memory",
    )
    streams = [c for c in r["cases"] if not c["persist"] and c["workers"] == 2]
    if streams:
        mems = [c["gmm_dask"]["peak_rss_bytes"] / MIB for c in streams]
        line(
            max(mems) <= 1.5 * min(mems) + 64,
            "streaming fit memory bounded by chunk size, not N — peak "
            + ", ".join(f"{m:.0f} MiB at N={c['n']:,}" for m, c in zip(mems, streams, strict=True)),
            "stream",
        )
    _scaling_targets(by, line)
    _coldstart_targets(r.get("coldstart"), line)
    line(
        r["overhead_sec_per_iter"] < 0.05,
        f"scheduler overhead < 50 ms per iteration — measured {1000 * r['overhead_sec_per_iter']:.1f} ms",
        "overhead",
    )
    for key in ("pipeline", "large"):
        c = r.get(key)
        if not c or "error" in c:
            continue
        one, n = c["one_em_pass_seconds"], f"N={c['rows']:,}"
        line(
            c["profile_over_pass"] <= 1.5,
            f"{n}: profile ≤ 1.5× one streaming E-step pass — measured {c['profile_over_pass']:.2f}×",
            "profile",
        )
        line(
            c["init_passes"] <= 6,
            f"{n}: initialisation ≤ 6 passes — measured {c['init_passes']} passes "
            f"({c['passes']['init_seconds'] / one:.2f}× one E-step pass in time)",
            "init",
        )
        line(
            c["write_over_pass"] <= 2,
            f"{n}: writing memberships, segments and overlaps ≤ 2× one pass — measured {c['write_over_pass']:.2f}×",
            "write",
        )
        line(
            c["wall_over_em"] <= 2.5,
            f"{n}: job wall time ≤ 2.5× the sum of its EM passes — measured {c['wall_over_em']:.2f}× "
            f"({c['wall_seconds']:,.1f} s against {c['passes']['em_seconds']:,.1f} s)",
            "wall",
        )
        if "worker_restarts" in c:
            line(
                c["worker_restarts"] == 0,
                f"{n} on 2 × 1.5 GiB workers completes with no worker restarted — peak RSS "
                f"{max(c['worker_peak_rss_mib']):,} MiB, restarts {c['worker_restarts']}",
                "large",
            )
    lbs = [c["lower_bound_rel_diff"] for c in r["cases"] if "lower_bound_rel_diff" in c]
    line(
        max(lbs) <= 1e-6,
        f"lower bounds agree with scikit-learn to 1e-6 relative in every case — worst {max(lbs):.1e}",
        "agreement",
    )
    return out, unmet
