"""Human-readable run reports: a markdown summary and a self-contained HTML page with SVG plots.

Pure string building (no plotting library, no network): entropy histogram, segment sizes, a BIC
curve for model selection, and a 2-D projection (PCA of a sample of users) coloured by segment.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def markdown_summary(res) -> str:
    """Segments with names, weights, feature means in original units, entropy, counts, convergence."""
    lines = [f"# Segmentation of snapshot {res.snapshot}", ""]
    verb = "trained and registered" if res.trained else "applied"
    lines.append(f"Model **{res.model_version}** {verb}.")
    c = res.counts
    lines.append(
        f"Rows read {c['rows_read']:,}; written {c['rows_written']:,}; dropped {c['rows_dropped']:,}; imputed {c['rows_imputed']:,}."
    )
    f = res.fit or {}
    if f:
        lines.append(
            f"EM: {f.get('n_iter')} iterations, converged: {f.get('converged')}, mean log-likelihood "
            f"{f.get('log_likelihood', float('nan')):.6f}, BIC {f.get('bic', float('nan')):,.1f}, AIC {f.get('aic', float('nan')):,.1f}."
        )
    lines += ["", "## Segments", ""]
    seg = res.segments
    feats = [col for col in seg.columns if col.startswith("mean_") and col != "mean_entropy_bits"]
    header = ["segment", "name", "weight", "size", "mean entropy (bits)", "high-entropy share"] + [
        c[5:] for c in feats
    ]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for r in seg.itertuples(index=False):
        row = [
            str(r.segment),
            str(r.name),
            f"{r.weight:.3f}",
            f"{r.size:,}",
            f"{r.mean_entropy_bits:.3f}",
            f"{r.high_entropy_share:.3f}",
        ]
        row += [f"{getattr(r, c):,.2f}" for c in feats]
        lines.append("| " + " | ".join(row) + " |")
    flagged = [r for r in seg.itertuples(index=False) if isinstance(getattr(r, "degenerate", None), str)]
    if flagged:
        lines += ["", "## Degenerate components", ""] + [f"- **{r.name}**: {r.degenerate}" for r in flagged]
    if f.get("reseeded_components"):
        lines.append(f"\nRe-seeded during the fit (iteration, component): {f['reseeded_components']}")
    pruned = (f.get("degenerate") or {}).get("pruned")
    if pruned:
        lines.append(
            "\nPruned and refitted without: " + "; ".join(f"{p['name']} ({p['reason']})" for p in pruned)
        )
    lines += ["", "## Entropy", ""]
    lines.append(", ".join(f"{k}: {v:,}" for k, v in res.band_count.items()))
    if res.overlaps is not None and len(res.overlaps):
        top = res.overlaps.sort_values("n_users", ascending=False).head(5)
        lines += ["", "## Most blended pairs", "", "| pair | users | mean γ |", "|---|---|---|"]
        for r in top.itertuples(index=False):
            lines.append(
                f"| {r.name_a} + {r.name_b} | {r.n_users:,} | {r.mean_gamma_a:.2f} / {r.mean_gamma_b:.2f} |"
            )
    lines += ["", "## Tables", ""] + [f"- `{k}`: `{v}`" for k, v in res.tables.items()]
    return "\n".join(lines)


def _bars(values, labels, title, color="#4e79a7", width=460, height=220) -> str:
    values = np.asarray(values, dtype=float)
    n = len(values)
    top = values.max() if n and values.max() > 0 else 1.0
    pad, bw = 30, (width - 40) / max(n, 1)
    parts = [f'<svg width="{width}" height="{height + 40}" role="img"><title>{html.escape(title)}</title>']
    parts.append(f'<text x="10" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>')
    for i, v in enumerate(values):
        h = (height - pad) * v / top
        x = 30 + i * bw
        fill = color if isinstance(color, str) else color[i]
        parts.append(
            f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{bw * 0.85:.1f}" height="{h:.1f}" fill="{fill}"><title>{html.escape(str(labels[i]))}: {v:,.0f}</title></rect>'
        )
        if n <= 12 or i % max(1, n // 10) == 0:
            parts.append(
                f'<text x="{x:.1f}" y="{height + 14}" font-size="10">{html.escape(str(labels[i]))[:14]}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _line(xs, ys, title, xlabel, width=460, height=220) -> str:
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    x0, x1 = xs.min(), max(xs.max(), xs.min() + 1)
    y0, y1 = ys.min(), max(ys.max(), ys.min() + 1e-9)

    def px(x, y):
        return 40 + (width - 60) * (x - x0) / (x1 - x0), 30 + (height - 60) * (1 - (y - y0) / (y1 - y0))

    pts = " ".join(f"{px(x, y)[0]:.1f},{px(x, y)[1]:.1f}" for x, y in zip(xs, ys, strict=True))
    parts = [
        f'<svg width="{width}" height="{height}" role="img"><title>{html.escape(title)}</title>',
        f'<text x="10" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
        f'<polyline points="{pts}" fill="none" stroke="#4e79a7" stroke-width="2"/>',
    ]
    for x, y in zip(xs, ys, strict=True):
        cx, cy = px(x, y)
        parts.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="#e15759"><title>{xlabel}={x:g}: {y:,.1f}</title></circle>'
        )
        parts.append(f'<text x="{cx - 4:.1f}" y="{height - 8}" font-size="10">{x:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _scatter(Z, seg, names, width=460, height=360) -> str:
    if len(Z) < 2:
        return ""
    Zc = Z - Z.mean(axis=0)
    _, _, vt = np.linalg.svd(Zc, full_matrices=False)
    P = Zc @ vt[:2].T
    lo, hi = P.min(axis=0), P.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    Q = (P - lo) / span
    parts = [
        f'<svg width="{width}" height="{height}" role="img"><title>2-D projection</title>',
        '<text x="10" y="16" font-size="13" font-weight="bold">Users in 2-D (PCA of model inputs), coloured by segment</text>',
    ]
    for (x, y), s in zip(Q, seg, strict=True):
        parts.append(
            f'<circle cx="{20 + x * (width - 40):.1f}" cy="{30 + (1 - y) * (height - 70):.1f}" r="2" fill="{_color(int(s))}" fill-opacity="0.6"/>'
        )
    for i, name in enumerate(names):
        parts.append(
            f'<rect x="{10 + (i % 4) * 110}" y="{height - 30 + (i // 4) * 14}" width="8" height="8" fill="{_color(i)}"/>'
            f'<text x="{22 + (i % 4) * 110}" y="{height - 22 + (i // 4) * 14}" font-size="10">{html.escape(str(name))[:16]}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def html_report(res, sample_z=None, sample_segment=None, bic_table: pd.DataFrame | None = None) -> str:
    """A self-contained HTML page (inline SVG, no scripts, no network)."""
    seg = res.segments
    names = list(seg["name"])
    blocks = [
        _bars(seg["size"], names, "Segment sizes (hard assignment)", [_color(i) for i in range(len(seg))]),
        _bars(res.entropy_hist, [f"{i / 20:.2f}" for i in range(20)], "Normalised entropy of memberships"),
    ]
    if bic_table is not None and len(bic_table):
        for ct, grp in bic_table.groupby("covariance_type"):
            grp = grp.sort_values("n_components")
            blocks.append(_line(grp["n_components"], grp["bic"], f"BIC by number of components ({ct})", "K"))
    if sample_z is not None and len(sample_z):
        blocks.append(_scatter(np.asarray(sample_z), np.asarray(sample_segment), names))
    md = markdown_summary(res)
    body = "".join(f'<div style="display:inline-block;margin:8px">{b}</div>' for b in blocks if b)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>gmm-dask segmentation {html.escape(res.snapshot)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:24px}pre{background:#f6f6f6;padding:12px;white-space:pre-wrap}</style>"
        f"</head><body><h1>Segmentation of {html.escape(res.snapshot)} — model {html.escape(res.model_version)}</h1>"
        f"{body}<h2>Summary</h2><pre>{html.escape(md)}</pre></body></html>"
    )


def bic_markdown(table: pd.DataFrame, chosen: dict) -> str:
    lines = [
        "| K | covariance | BIC | AIC | log-likelihood | iterations | converged |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table.sort_values(["covariance_type", "n_components"]).itertuples(index=False):
        mark = (
            " **←**"
            if (r.n_components, r.covariance_type) == (chosen["n_components"], chosen["covariance_type"])
            else ""
        )
        lines.append(
            f"| {r.n_components} | {r.covariance_type} | {r.bic:,.1f}{mark} | {r.aic:,.1f} | {r.log_likelihood:.5f} | {r.n_iter} | {r.converged} |"
        )
    return "\n".join(lines)


__all__ = ["bic_markdown", "html_report", "markdown_summary"]
