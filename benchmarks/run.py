"""gmm-dask vs scikit-learn (and Spark MLlib when available), in one run, on this machine.

    ./dev bench                 # full suite (~10-15 min on 2 cores)
    ./dev bench --quick         # smaller N, for a smoke run
    ./dev bench --render        # rewrite RESULTS.md from results.json

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

from benchmarks.targets import analysis, targets

HERE = Path(__file__).resolve().parent


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
    ap.add_argument(
        "--large-n",
        type=int,
        default=100_000_000,
        help="users in the large streaming case (dask scheduler + 2 workers of 1.5 GiB); 0 skips it",
    )
    ap.add_argument(
        "--only-pipeline", action="store_true", help="run only the end-to-end and large pipeline cases"
    )
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument(
        "--render", action="store_true", help="only rewrite RESULTS.md from an existing results.json"
    )
    args = ap.parse_args(argv)
    if args.render:
        out = Path(args.out)
        (out / "RESULTS.md").write_text(render(json.loads((out / "results.json").read_text())))
        print(f"wrote {out / 'RESULTS.md'}")
        return 0
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

    if args.only_pipeline:
        out = Path(args.out)
        previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
        results = {**previous, "machine": results["machine"]}
        _pipeline_cases(results, args)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        # without an earlier full run there are no engine rows to render: the pipeline cases alone
        text = (
            render(results)
            if "dgemm" in results
            else "\n".join(["# Benchmark results (pipeline cases only)", "", *_pipeline_lines(results), ""])
        )
        (out / "RESULTS.md").write_text(text)
        print(f"wrote {out / 'RESULTS.md'} and results.json")
        return 0
    print("DGEMM reference rate")
    results["dgemm"] = engine("dgemm")
    dgemm = max(results["dgemm"].values())
    print("E-step phases of one 125,000-row partition, one core")
    results["phases"] = {ct: engine("phases", n=125_000, d=d, k=k, ct=ct) for ct in ("full", "diag")}

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
    case(  # against stream-N-1000000: 2 workers never slower than 1 when streaming either
        "stream-workers-1",
        1_000_000,
        "full",
        workers=1,
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
    print("Compiled kernel vs scikit-learn, one process")
    results["kernel"] = {ct: _kernel(ct) for ct in ("full", "diag")}
    print(f"Cold start: first fit on a fresh cluster vs the second, N={n_main:,} (kernels built / JIT)")
    results["coldstart"] = _coldstart(n_main, 1 if args.quick else 3)
    _pipeline_cases(results, args)
    results["seconds"] = round(time.time() - t_start, 1)
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "RESULTS.md").write_text(render(results))
    print(f"wrote {out / 'RESULTS.md'} and results.json in {results['seconds']} s")
    from benchmarks import calibration

    calibration.main(["--users", "30000" if args.quick else "100000", "--out", str(out)])
    print(f"wrote {out / 'CALIBRATION.md'}, calibration.json and calibration.svg")
    return 0


def _kernel(ct: str) -> dict:
    """``benchmarks.kernel`` in its own process, with BLAS free to use 2 threads."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    cmd = [sys.executable, "-m", "benchmarks.kernel", json.dumps({"ct": ct})]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, env=env, check=False)
    if proc.returncode != 0:
        return {"ct": ct, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _kernel_lines(r: dict) -> list[str]:
    kern = r.get("kernel")
    if not kern:
        return []
    lines = [
        "**One EM iteration, one process, no Dask** (`benchmarks/kernel.py`: N = 1M, D = 16, K = 8, "
        "same initial parameters, engines taking turns round by round, best round; DGEMM measured "
        "in the same run, best of its rounds):",
        "",
        "| cov | gmm-dask 2 thr | gmm-dask 1 thr | scikit-learn best (1 / 2 BLAS thr) | ratio | GFLOP/s | % of DGEMM (2 thr) | float32 mode (2 thr) | max rel. diff vs sklearn after 5 iter |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ct, k in kern.items():
        if "error" in k:
            lines.append(f"| {ct} | failed: {k['error']} |||||||| ")
            continue
        f32 = k.get("median_s", {}).get("ours32_2")
        lines.append(
            f"| {ct} | {k['ours_2threads_s']:.3f} s | {k['ours_1thread_s']:.3f} s | {k['sklearn_best_s']:.3f} s "
            f"({k['sklearn_1thread_s']:.3f} / {k['sklearn_2threads_s']:.3f}) | {k['ratio']:.3f} (1/{1 / k['ratio']:.1f}) | "
            f"{k['gflops_2']:.1f} | {100 * k['fraction_of_dgemm_2']:.0f}% of {k['dgemm_gflops_2']:.1f} | "
            f"{f'{f32:.3f} s (median)' if f32 else '—'} | {k.get('max_rel_diff_vs_sklearn_after_5_iter', float('nan')):.1e} |"
        )
    return [*lines, ""]


def _coldstart(n: int, rounds: int) -> dict:
    """``benchmarks.coldstart`` in its own process (its clusters are its own)."""
    code = f"import json; from benchmarks.coldstart import measure; print(json.dumps(measure({n}, {rounds})))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE.parent, check=False
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _coldstart_lines(r: dict) -> list[str]:
    from benchmarks.coldstart import lines

    c = r.get("coldstart")
    if not c:
        return []
    head = "**Cold start and warm fit** (#23 items 5 and 7): the first fit on a fresh cluster against a second fit on it"
    if "error" in c:
        return [f"{head}: failed: {c['error']}", ""]
    return [f"{head}.", "", *lines(c), ""]


def _pipeline(params: dict) -> dict:
    """``benchmarks.pipeline`` in its own process (its cluster and memory are its own)."""
    cmd = [sys.executable, "-m", "benchmarks.pipeline", json.dumps(params)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, check=False)
    if proc.returncode != 0:
        return {"params": params, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _pipeline_cases(results: dict, args) -> None:
    n_e2e = 500_000 if args.quick else 4_000_000
    print(f"End-to-end train job: N={n_e2e:,}, LocalCluster, streaming")
    results["pipeline"] = _pipeline({"n": n_e2e})
    if args.large_n:
        print(f"Large streaming case: N={args.large_n:,}, dask scheduler + 2 workers of 1.5 GiB (long)")
        results["large"] = _pipeline(
            {"n": args.large_n, "cluster": "processes", "memory_limit": "1.5GiB", "max_iter": 5}
        )


def _pipeline_lines(r: dict) -> list[str]:
    lines = []
    for key, title in (("pipeline", "End-to-end `train` job"), ("large", "Large streaming case")):
        c = r.get(key)
        if not c:
            continue
        if "error" in c:
            lines += [f"**{title}** (N={c['params']['n']:,}) failed: {c['error']}", ""]
            continue
        p = c["params"]
        where = (
            f"`dask scheduler` + 2 × `dask worker --nthreads 1 --memory-limit {p['memory_limit']}` on 127.0.0.1"
            if p["cluster"] == "processes"
            else "LocalCluster, 2 workers × 1 thread"
        )
        lines += [
            f"**{title}**: N = {c['rows']:,} users (one demo snapshot, 6 features, "
            f"{c['input_bytes'] / 2**20:,.0f} MiB of Parquet, generated in pieces in {c['generation_seconds']:,.0f} s), "
            f"{where}, default model settings (ids checked, `persist: false`), "
            f"max_iter {p['max_iter']}: {c['n_iter']} EM iterations; job wall time {c['wall_seconds']:,.1f} s "
            f"= {c['wall_over_em']:.2f} × the sum of its EM passes ({c['passes']['em_seconds']:,.1f} s).",
            "",
            "| phase | seconds | rows/s | × one E-step pass |",
            "|---|---|---|---|",
        ]
        one = c["one_em_pass_seconds"]
        for name, sec in c["phases"].items():
            lines.append(f"| {name} | {sec:,.1f} | {c['rows_per_second'].get(name, 0):,} | {sec / one:.2f} |")
        pa_ = c["passes"]
        lines += [
            f"| of which initialisation | {pa_['init_seconds']:,.1f} | — | {pa_['init_seconds'] / one:.2f} ({pa_['init']} passes) |",
            f"| of which EM | {pa_['em_seconds']:,.1f} | — | {pa_['em']} passes of {one:.2f} s |",
            "",
        ]
        if "worker_peak_rss_mib" in c:
            lines += [
                f"Peak worker RSS: {', '.join(f'{m:,} MiB' for m in c['worker_peak_rss_mib'])}; "
                f"workers restarted: {c['worker_restarts']}." + (f" ({c['note']}.)" if c.get("note") else ""),
                "",
            ]
    return lines


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
            f"{c['gflops']:.1f} | {100 * c['fraction_of_dgemm']:.1f}% | {mem:.2f} | {lbd} |"
        )
    lines += [
        "",
        f"Scheduler overhead per iteration (N=20,000, 100 partitions, 2 workers): {1000 * r['overhead_sec_per_iter']:.1f} ms.",
        "",
        f"Spark MLlib: {r['spark']}.",
        "",
    ]
    lines += _kernel_lines(r)
    if r.get("engine_note"):
        lines += [f"> {r['engine_note']}", ""]
    lines += _coldstart_lines(r)
    lines += _pipeline_lines(r)
    checks, unmet = targets(r)
    lines += ["## Targets", "", *checks, "", analysis(r, unmet)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
