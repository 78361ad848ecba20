"""gmm-dask vs scikit-learn (and Spark MLlib when available), in one run, on this machine.

    ./dev bench                 # full suite (~10-15 min on 2 cores)
    ./dev bench --quick         # smaller N, for a smoke run

Every engine fits the same generated data from the same initial parameters with ``tol=0`` and a
fixed number of iterations, in its own subprocess. Results go to benchmarks/RESULTS.md and
benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIB = 1 << 20


def engine(name: str, **params) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": str(params.get("blas_threads", 1)),
        "MKL_NUM_THREADS": "1",
    }
    if name == "dgemm":
        env.pop("OPENBLAS_NUM_THREADS")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.cases", name, json.dumps(params)],
        cwd=HERE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{name} {params} failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"  {name:<9} {json.dumps({k: v for k, v in params.items() if k not in ('workdir',)})} -> "
        f"{json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})}",
        flush=True,
    )
    return result


def spark_available() -> str | None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install pyspark) — Spark MLlib comparison skipped"
    if shutil.which("java") is None:
        return "no Java runtime found — Spark MLlib comparison skipped"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=250k main case, short series")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args(argv)
    workdir = HERE / "work"
    workdir.mkdir(exist_ok=True)
    n_main = 250_000 if args.quick else 1_000_000
    d, k = 16, 8
    t_start = time.time()
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "cases": [],
    }

    print("DGEMM reference rate")
    results["dgemm"] = engine("dgemm")
    dgemm = max(results["dgemm"].values())

    def case(
        label,
        n,
        ct,
        *,
        workers=2,
        persist=True,
        source="memory",
        iters=(3, 8),
        sklearn=True,
        repeats=2,
        chunk_rows=125_000,
    ):
        print(f"{label}: N={n:,} D={d} K={k} {ct}")
        row = {
            "label": label,
            "n": n,
            "d": d,
            "k": k,
            "covariance_type": ct,
            "workers": workers,
            "persist": persist,
            "source": source,
            "x_bytes": n * d * 8,
            "flops_per_iter": None,
        }
        from benchmarks.cases import flops_per_iteration

        row["flops_per_iter"] = flops_per_iteration(n, d, k, ct)
        common = {
            "n": n,
            "d": d,
            "k": k,
            "ct": ct,
            "seed": 0,
            "iters_lo": iters[0],
            "iters_hi": iters[1],
            "repeats": repeats,
        }
        row["gmm_dask"] = engine(
            "gmm_dask",
            **common,
            workers=workers,
            persist=persist,
            source=source,
            chunk_rows=chunk_rows,
            workdir=str(workdir),
        )
        if sklearn:
            row["sklearn"] = {f"blas{t}": engine("sklearn", **common, blas_threads=t) for t in (1, 2)}
            best = min(row["sklearn"].values(), key=lambda r: r["sec_per_iter"])
            row["sklearn_best_sec_per_iter"] = best["sec_per_iter"]
            row["ratio"] = row["gmm_dask"]["sec_per_iter"] / best["sec_per_iter"]
            lb_ref = row["sklearn"]["blas1"]["lower_bound"]
            row["lower_bound_rel_diff"] = abs(row["gmm_dask"]["lower_bound"] - lb_ref) / abs(lb_ref)
        row["gflops"] = row["flops_per_iter"] / row["gmm_dask"]["sec_per_iter"] / 1e9
        row["fraction_of_dgemm"] = row["gflops"] / dgemm
        results["cases"].append(row)
        return row

    case("main-full", n_main, "full")
    case("main-diag", n_main, "diag")
    case("workers-1", n_main, "full", workers=1, sklearn=False)
    series = (
        [250_000, 500_000, 1_000_000] if args.quick else [250_000, 500_000, 1_000_000, 2_000_000, 4_000_000]
    )
    for n in series:
        if n != n_main:
            case(f"scale-N-{n}", n, "full", sklearn=n <= 2_000_000, iters=(2, 5), repeats=1)
    for n in series[:3] if args.quick else [1_000_000, 2_000_000, 4_000_000]:
        case(
            f"stream-N-{n}",
            n,
            "full",
            persist=False,
            source="parquet",
            sklearn=False,
            iters=(2, 5),
            repeats=1,
        )
    print("Scheduler overhead: N=20,000, D=2, K=2, 100 partitions")
    ov = engine(
        "gmm_dask",
        n=20_000,
        d=2,
        k=2,
        ct="diag",
        seed=0,
        iters_lo=1,
        iters_hi=20,
        repeats=1,
        workers=2,
        chunk_rows=200,
        workdir=str(workdir),
    )
    results["overhead_sec_per_iter"] = ov["sec_per_iter"]
    results["spark"] = spark_available() or "available but not run by this version of the benchmark"
    results["seconds"] = round(time.time() - t_start, 1)
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "RESULTS.md").write_text(render(results))
    print(f"wrote {out / 'RESULTS.md'} and results.json in {results['seconds']} s")
    return 0


def render(r: dict) -> str:
    dg = r["dgemm"]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}, {r['machine']['platform']}. "
        f"Measured DGEMM: {dg['gflops_1']:.1f} GFLOP/s (1 thread), {dg['gflops_2']:.1f} GFLOP/s (2 threads). "
        f"Whole run: {r['seconds']} s. Regenerate with `./dev bench`.",
        "",
        "Same data, same initial parameters, `tol=0`, fixed iterations; each engine in its own process. "
        "Seconds per iteration: gmm-dask = median of per-iteration times (LocalCluster, 1 thread per worker, "
        "persisted data unless noted); scikit-learn = (time for 8 iterations − time for 3) / 5, best of 1 or 2 BLAS threads. "
        "Peak memory = peak RSS of the engine's process tree above its baseline.",
        "",
        "| case | N | cov | workers | gmm-dask s/iter | sklearn s/iter (1 thr / 2 thr) | ratio | GFLOP/s | % of DGEMM | peak mem / size(X) | lower bound rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["cases"]:
        g = c["gmm_dask"]
        sk = c.get("sklearn")
        skt = f"{sk['blas1']['sec_per_iter']:.3f} / {sk['blas2']['sec_per_iter']:.3f}" if sk else "—"
        ratio = f"{c['ratio']:.3f}" if sk else "—"
        lbd = f"{c['lower_bound_rel_diff']:.1e}" if sk else "—"
        mem = g["peak_rss_bytes"] / c["x_bytes"]
        src = " (streamed from Parquet)" if not c["persist"] else ""
        lines.append(
            f"| {c['label']}{src} | {c['n']:,} | {c['covariance_type']} | {c['workers']} | {g['sec_per_iter']:.3f} | {skt} | {ratio} | "
            f"{c['gflops']:.1f} | {100 * c['fraction_of_dgemm']:.0f}% | {mem:.2f} | {lbd} |"
        )
    lines += [
        "",
        f"Scheduler overhead per iteration (N=20,000, 100 partitions, 2 workers): {1000 * r['overhead_sec_per_iter']:.1f} ms.",
        "",
        f"Spark MLlib: {r['spark']}.",
        "",
    ]
    lines += ["## Targets", "", *targets(r), "", ANALYSIS]
    return "\n".join(lines) + "\n"


ANALYSIS = """## Why the unmet targets are unmet (as of this version)

- **Two workers are not faster than one on this machine kind.** The `workers-1` row beats the
  2-worker `main-full` row: two busy processes on these 2 vCPUs slow each other down (the stack
  notes saw ~1.7x per process under a co-tenant's load), so the speed has to come from one core's
  arithmetic. Timings on this shared VM also vary by 2x between runs (compare the 250k and 500k
  rows); read ratios as ranges.
- **The per-partition kernel runs at ~12 GFLOP/s on one core (~30 % of single-thread DGEMM).** It
  works in 2,048-row in-cache blocks with reusable buffers (immune to the Dask nanny's
  `MALLOC_TRIM_THRESHOLD_`, which made the first version 3x slower in workers) and does the
  heavy products as GEMMs, but NumPy still makes ~4 separate memory passes per block (square,
  group-sum, responsibility weighting, exp); those passes, not the GEMMs, now dominate. Reaching
  the 1/5 target needs a fused single-pass kernel (e.g. Numba or a small C extension) — not done.
- **diag**: scikit-learn's diag E-step is two thin GEMMs and already cheap, so per-partition
  overheads weigh more; the ratio target of 1/4 is not met.
- **Peak memory of a persisted fit** includes the data generator's temporaries (the source
  blocks are built inside the workers); the EM loop itself adds only per-block buffers (a few MiB
  per worker). Streaming fits stay flat as N grows.
- **Scheduler overhead** (~60 ms per iteration for 100 tiny partitions) is one task per worker
  plus one `who_has` round trip per iteration; close to, not under, the 50 ms target.
"""


def targets(r: dict) -> list[str]:
    by = {c["label"]: c for c in r["cases"]}
    out = []

    def line(ok, text):
        out.append(f"- [{'x' if ok else ' '}] {text}")

    f, dg = by["main-full"], by["main-diag"]
    line(
        f["ratio"] <= 0.2,
        f"full, N={f['n']:,}: s/iter ≤ 1/5 of scikit-learn's best — measured ratio {f['ratio']:.3f}",
    )
    line(
        f["fraction_of_dgemm"] >= 0.4,
        f"full: ≥ 40 % of measured DGEMM rate — measured {100 * f['fraction_of_dgemm']:.0f}%",
    )
    line(dg["ratio"] <= 0.25, f"diag: s/iter ≤ 1/4 of scikit-learn's best — measured ratio {dg['ratio']:.3f}")
    line(
        f["gmm_dask"]["peak_rss_bytes"] <= 2 * f["x_bytes"],
        f"persisted fit peak memory ≤ 2× size(X) — measured {f['gmm_dask']['peak_rss_bytes'] / f['x_bytes']:.2f}×",
    )
    streams = [c for c in r["cases"] if not c["persist"]]
    if streams:
        mems = [c["gmm_dask"]["peak_rss_bytes"] / MIB for c in streams]
        line(
            max(mems) <= 1.5 * min(mems) + 64,
            "streaming fit memory bounded by chunk size, not N — peak "
            + ", ".join(f"{m:.0f} MiB at N={c['n']:,}" for m, c in zip(mems, streams, strict=True)),
        )
    line(
        r["overhead_sec_per_iter"] < 0.05,
        f"scheduler overhead < 50 ms per iteration — measured {1000 * r['overhead_sec_per_iter']:.1f} ms",
    )
    lbs = [c["lower_bound_rel_diff"] for c in r["cases"] if "lower_bound_rel_diff" in c]
    line(
        max(lbs) <= 1e-6,
        f"lower bounds agree with scikit-learn to 1e-6 relative in every case — worst {max(lbs):.1e}",
    )
    return out


if __name__ == "__main__":
    sys.exit(main())
