"""Calibration of memberships on the demo data against the generator's ground truth.

``python -m benchmarks.calibration [--users N] [--k K]`` fits the demo job on a generated snapshot
and measures what issue #9 asks: the entropy band of single-archetype users and of hybrids, the
ARI of the hard segment against the true archetype (non-hybrid users), and the expected
calibration error (ECE) of ``max_gamma`` against the generator's true posterior; it writes the
figures and a reliability diagram to ``benchmarks/CALIBRATION.md`` and ``calibration.svg``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from gmm_dask.demo import FEATURES, DemoSpec, read_truth, true_posterior

HERE = Path(__file__).resolve().parent


def evaluate(memberships: pd.DataFrame, data_root: Path, date: str, spec: DemoSpec, bins: int = 10) -> dict:
    """Calibration figures of one snapshot's memberships (columns as the memberships table)."""
    from sklearn.metrics import adjusted_rand_score

    truth = read_truth(data_root, date)
    raw = pd.read_parquet(data_root / "snapshots" / f"dt={date}")
    df = truth.merge(memberships, on="user_id").merge(raw, on="user_id")
    pure = df[df.kind == "stable"]
    hyb = df[df.kind == "hybrid"]
    names = list(spec.archetypes)
    # map segments to archetypes on the pure users (Hungarian on the contingency table)
    k = int(df.segment.max()) + 1
    table = np.zeros((k, len(names)))
    np.add.at(table, (pure.segment.to_numpy(), pure.archetype.map(names.index).to_numpy()), 1)
    rows, cols = linear_sum_assignment(-table)
    seg_to_arch = dict(zip(rows, cols, strict=True))
    post = true_posterior(pure[list(FEATURES)].to_numpy(float), spec)
    pred_arch = pure.segment.map(lambda s: seg_to_arch.get(s, -1)).to_numpy()
    true_p = np.where(pred_arch >= 0, post[np.arange(len(pure)), np.maximum(pred_arch, 0)], 0.0)
    conf = pure.max_gamma.to_numpy()
    correct = pred_arch == pure.archetype.map(names.index).to_numpy()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges) - 1, 0, bins - 1)
    diagram, ece, ece_acc = [], 0.0, 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            diagram.append(
                {
                    "bin": b,
                    "n": int(m.sum()),
                    "confidence": float(conf[m].mean()),
                    "true_posterior": float(true_p[m].mean()),
                    "accuracy": float(correct[m].mean()),
                }
            )
            ece += m.mean() * abs(conf[m].mean() - true_p[m].mean())
            ece_acc += m.mean() * abs(conf[m].mean() - correct[m].mean())
    bayes = post.argmax(axis=1) == pure.archetype.map(names.index).to_numpy()
    return {
        "users": len(df),
        "pure_users": len(pure),
        "hybrids": len(hyb),
        "pure_low_band": float((pure.entropy_band == "low").mean()),
        "hybrid_moderate_or_high": float((hyb.entropy_band != "low").mean()),
        "ari_pure": float(adjusted_rand_score(pure.archetype, pure.segment)),
        "ece_vs_true_posterior": float(ece),
        "ece_vs_accuracy": float(ece_acc),
        "bayes_accuracy_pure": float(bayes.mean()),
        "true_posterior_hybrid_max_below_0_86": float(
            (true_posterior(hyb[list(FEATURES)].to_numpy(float), spec).max(axis=1) < 0.86).mean()
        ),
        "diagram": diagram,
    }


def reliability_svg(diagram: list[dict], width: int = 360, height: int = 360) -> str:
    pad = 40
    sx = lambda v: pad + v * (width - 2 * pad)  # noqa: E731
    sy = lambda v: height - pad - v * (height - 2 * pad)  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
        f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(1)}" y2="{sy(1)}" stroke="#999" stroke-dasharray="4"/>',
        f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(1)}" y2="{sy(0)}" stroke="#000"/>',
        f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(0)}" y2="{sy(1)}" stroke="#000"/>',
        f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle" font-size="12">max γ (model confidence)</text>',
        f'<text x="12" y="{height / 2}" font-size="12" transform="rotate(-90 12 {height / 2})" text-anchor="middle">true posterior of that segment</text>',
    ]
    for t in (0, 0.5, 1):
        parts.append(f'<text x="{sx(t)}" y="{sy(0) + 14}" font-size="10" text-anchor="middle">{t:g}</text>')
        parts.append(f'<text x="{sx(0) - 6}" y="{sy(t) + 3}" font-size="10" text-anchor="end">{t:g}</text>')
    pts = " ".join(f"{sx(d['confidence']):.1f},{sy(d['true_posterior']):.1f}" for d in diagram)
    parts.append(f'<polyline points="{pts}" fill="none" stroke="#4e79a7" stroke-width="2"/>')
    for d in diagram:
        parts.append(
            f'<circle cx="{sx(d["confidence"]):.1f}" cy="{sy(d["true_posterior"]):.1f}" r="3" fill="#e15759"><title>n={d["n"]}</title></circle>'
        )
    parts.append("</svg>")
    return "".join(parts)


TARGETS = [
    ("single-archetype users in the low entropy band", "pure_low_band", ">=", 0.90),
    ("hybrids in the moderate or high band", "hybrid_moderate_or_high", ">=", 0.70),
    ("ARI of the hard segment vs the true archetype (non-hybrids)", "ari_pure", ">=", 0.90),
    ("ECE of max γ against the generator's true posterior", "ece_vs_true_posterior", "<=", 0.05),
]


def report_markdown(f: dict, spec: DemoSpec) -> str:
    lines = [
        "# Calibration on the demo data (issue #9)",
        "",
        f"`python -m benchmarks.calibration`: {f['users']:,} users ({f['pure_users']:,} single-archetype, "
        f"{f['hybrids']:,} hybrids), seed {spec.seed}, the demo job's config, K = {f['k']}.",
        "",
        "| target | measured | goal | status |",
        "|---|---|---|---|",
    ]
    for label, key, op, goal in TARGETS:
        v = f[key]
        ok = v >= goal if op == ">=" else v <= goal
        lines.append(f"| {label} | {v:.3f} | {op} {goal} | {'met' if ok else 'NOT met'} |")
    if "select_k" in f:
        n = len(spec.archetypes)
        ok = "met" if f["select_k"] == n else "NOT met"
        lines.append(
            f"| select-k (BIC, K = 2…9) picks the true number of archetypes | {f['select_k']} | {n} | {ok} |"
        )
        lines.append("")
        lines.append("BIC by K: " + ", ".join(f"{k}: {v:,.0f}" for k, v in sorted(f["select_k_bic"].items())))
    lines += [
        "",
        "Ceilings set by the data, from the generator's own model:",
        f"- the Bayes-optimal classifier (the generator's true posterior) labels "
        f"{f['bayes_accuracy_pure']:.1%} of single-archetype users correctly;",
        f"- under the true posterior only {f['true_posterior_hybrid_max_below_0_86']:.1%} of hybrids have a "
        "largest membership below 0.86 (the moderate band's edge for a two-way split at K = 5): the "
        "70 % hybrid target exceeds what even the true model gives on this generator.",
        "",
        "Why a Gaussian mixture falls short of ARI 0.9 here: each archetype is itself zero-inflated "
        "(e.g. 40 % of 'Consistent users' made no purchase in the window), so in any transform an "
        "archetype is two clouds — purchasers and non-purchasers — and a K-component Gaussian mixture "
        "spends components on zero patterns that cut across archetypes. Measured on this data (30,000 "
        "users): with `reg_covar` alone, ARI 0.44 and 0.0 % of hybrids outside the low band; the "
        "resolution floor alone, 0.37 and 0.7 %; dequantisation with the floor (the default), 0.60 and "
        "22 %. They remove the spikes but not the within-archetype bimodality; modelling zeros as censored values (a Tobit "
        "mixture) is the principled next step and is not done. For the same reason BIC keeps "
        "falling past the true K: extra components buy likelihood by splitting archetypes along "
        "their zero patterns.",
        "",
        "Reliability diagram (max γ against the true posterior of the matched archetype): "
        "`benchmarks/calibration.svg`; per-bin figures in `benchmarks/calibration.json`.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    import tempfile

    import yaml

    from gmm_dask import jobs
    from gmm_dask.demo import write_demo_dataset
    from gmm_dask.io import read_partition
    from gmm_dask.params import SelectKParams, TrainParams

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--config", default=str(HERE.parent / "configs" / "demo.yaml"))
    p.add_argument("--out", default=str(HERE))
    a = p.parse_args(argv)
    spec = DemoSpec(n_users=a.users, n_snapshots=1, seed=a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_demo_dataset(tmp / "data", spec)
        cfg = yaml.safe_load(Path(a.config).read_text())
        cfg["input"]["path"] = str(tmp / "data" / "snapshots")
        cfg["output"] = {"root": str(tmp / "out")}
        (tmp / "job.yaml").write_text(yaml.safe_dump(cfg))
        res = jobs.train(TrainParams(config=str(tmp / "job.yaml")))
        mem = read_partition(str(tmp / "out"), "memberships", res.snapshot).to_pandas()
        figures = evaluate(mem, tmp / "data", res.snapshot, spec)
        sel = jobs.select_k(SelectKParams(config=str(tmp / "job.yaml"), k_min=2, k_max=9), report=False)
        figures["select_k"] = int(sel.selected["n_components"])
        figures["select_k_bic"] = {int(r.n_components): float(r.bic) for r in sel.table.itertuples()}
    figures["k"] = len(res.segments)
    out = Path(a.out)
    (out / "calibration.svg").write_text(reliability_svg(figures["diagram"]))
    (out / "calibration.json").write_text(json.dumps(figures, indent=1))
    (out / "CALIBRATION.md").write_text(report_markdown(figures, spec))
    print(json.dumps({k: v for k, v in figures.items() if k != "diagram"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
