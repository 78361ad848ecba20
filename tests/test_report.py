"""The run report: charts drawn with axes and values, real tables, no 'nan', self-contained; the
components' family tree; and the page rendered in a real browser (headless Chromium)."""

from __future__ import annotations

import html
import io
import itertools
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gmm_dask.demo import FEATURES as DEMO_FEATURES
from gmm_dask.report.data import ReportData
from gmm_dask.report.family import family_tree, gaussian_distance_matrix
from gmm_dask.report.html import html_report
from gmm_dask.report.markdown import markdown_summary
from gmm_dask.segmentation.distance import bhattacharyya_distance

from .conftest import CHROMIUM_ARGS

FEATURES = list(DEMO_FEATURES)
CHARTS = {"sizes", "profile", "entropy", "transitions", "bic", "projection", "family-tree", "forecast"}


def _spd(rng: np.random.Generator, d: int, scale: float = 0.3) -> np.ndarray:
    a = rng.normal(size=(d, d)) * scale
    return a @ a.T + 0.05 * np.eye(d)


def make_data(
    k: int = 5,
    d: int = 6,
    m: int = 3000,
    *,
    seed: int = 0,
    history: bool = True,
    nan_means: bool = False,
    empty_segment: bool = False,
) -> ReportData:
    """A realistic report's inputs from synthetic parameters: K components in D dimensions, a sample
    of m users, the previous snapshot with one birth (the last id) and one death (id 90)."""
    rng = np.random.default_rng(seed)
    feats = FEATURES[:d] if d <= len(FEATURES) else [f"feature_{j}" for j in range(d)]
    ids = list(range(k))
    names = [f"segment_{i}" for i in ids]
    means = rng.normal(scale=1.5, size=(k, d))
    covs = [_spd(rng, d) for _ in range(k)]
    weights = rng.dirichlet(np.full(k, 3.0))
    n_users = 50_000
    size = np.round(weights * n_users).astype(np.int64)
    if empty_segment:
        size[-1] = 0
    share = size / max(size.sum(), 1)
    raw = np.expm1(np.abs(means) * 2.0) * np.array([1.0, 0.5, 0.2, 0.05, 40.0, 3.0] * (d // 6 + 1))[:d]
    if nan_means:
        raw[0, :] = np.nan
    seg = pd.DataFrame(
        {
            "segment": np.array(ids, dtype=np.int32),
            "name": names,
            "weight": weights,
            "size": size,
            "share": share,
        }
    )
    for j, f in enumerate(feats):
        seg[f"mean_{f}"] = raw[:, j]
    seg["degenerate"] = pd.array(
        ["atom at purchases_90d=0 (variance at the resolution floor)"] + [None] * (k - 1), dtype="string"
    )
    seg["mean_entropy_bits"] = np.where(size > 0, rng.uniform(0, 0.4, k), np.nan)
    seg["high_entropy_share"] = np.where(size > 0, rng.uniform(0, 0.01, k), np.nan)
    mix_mean = weights @ means
    mix_sd = np.sqrt(weights @ (means - mix_mean) ** 2 + 1.0)
    profile_z = pd.DataFrame((means - mix_mean) / mix_sd, index=ids, columns=feats)
    if nan_means:
        profile_z.iloc[0, :] = np.nan
    profile_raw = pd.DataFrame(raw, index=ids, columns=feats)
    # 99.8 % of users in the first bin: the old linear histogram showed one bar
    hist = np.zeros(50)
    hist[0] = 49_900
    hist[1:12] = [40, 15, 9, 6, 5, 4, 3, 3, 2, 2, 1]
    hist[30] = 1
    comps = [
        {"segment": i, "name": n, "weight": float(w), "mean": mu, "cov": c}
        for i, n, w, mu, c in zip(ids, names, weights, means, covs, strict=True)
    ]
    labels = np.sort(rng.choice(k, size=m, p=weights)) if m else np.zeros(0, int)
    sample = np.concatenate(
        [np.zeros((0, d))]
        + [rng.multivariate_normal(means[j], covs[j], size=int((labels == j).sum())) for j in range(k)]
    )
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    n_pair = [int(rng.integers(0, 400)) for _ in pairs]
    if pairs:
        n_pair[-1] = 0  # a pair nobody blends: its mean γ is NaN and must not print
    overlaps = pd.DataFrame(
        {
            "segment_a": [a for a, _ in pairs],
            "segment_b": [b for _, b in pairs],
            "name_a": [names[a] for a, _ in pairs],
            "name_b": [names[b] for _, b in pairs],
            "threshold": 0.2,
            "n_users": np.array(n_pair, dtype=np.int64),
            "mean_gamma_a": [rng.uniform(0.3, 0.7) if n else np.nan for n in n_pair],
            "mean_gamma_b": [rng.uniform(0.3, 0.7) if n else np.nan for n in n_pair],
        }
    )
    data = ReportData(
        kind="segment",
        snapshot="2026-01-07",
        model_version="v0003",
        published=True,
        run_id="run-7f3a",
        counts={"rows_read": 50_120, "rows_written": n_users, "rows_dropped": 120, "rows_imputed": 0},
        fit={
            "n_iter": 41,
            "converged": True,
            "log_likelihood": -7.123456,
            "bic": 712_345.6,
            "aic": 711_000.2,
            "covariance_type": "full",
            "reseeded_components": [[3, 2]],
            "degenerate": {"pruned": []},
        },
        phases={"read": 1.2, "fit": 8.4, "score": 2.1, "write": 0.9},
        segments=seg,
        features=feats,
        profile_z=profile_z,
        profile_raw=profile_raw,
        entropy_hist=hist,
        bands={"low_max": 0.25, "moderate_max": 0.6},
        band_count={"low": 49_960, "moderate": 39, "high": 1},
        overlaps=overlaps,
        components=comps,
        sample_z=sample,
        sample_segment=np.array(ids)[labels] if m else np.zeros(0, int),
        tables={"memberships": "out/memberships/dt=2026-01-07", "segments": "out/segments/dt=2026-01-07"},
    )
    if not history:
        return data
    prev_ids = [*ids[:-1], 90] if k > 1 else [90]
    prev_size = np.round(size[: len(prev_ids)] * rng.uniform(0.8, 1.2, len(prev_ids))).astype(np.int64)
    data.previous_segments = pd.DataFrame(
        {
            "segment": prev_ids,
            "name": [names[i] if i < k else "segment_90" for i in prev_ids],
            "size": prev_size,
            "share": prev_size / prev_size.sum(),
        }
    )
    data.previous_snapshot = "2026-01-06"
    counts = rng.integers(0, 300, size=(len(prev_ids), k))
    for i, s in enumerate(prev_ids):
        if s in ids:
            counts[i, ids.index(s)] = 5000
    data.transitions = pd.DataFrame(counts, index=pd.Index(prev_ids, name="segment_from"), columns=ids)
    data.segment_names = {**dict(zip(ids, names, strict=True)), 90: "segment_90"}
    ks = list(range(2, 8))
    bic = pd.DataFrame(
        [
            {
                "n_components": kk,
                "covariance_type": ct,
                "bic": 800_000 - 30_000 * min(kk, 5) + 4000 * kk + (9000 if ct == "diag" else 0),
                "aic": 790_000 - 30_000 * min(kk, 5) + 2000 * kk,
                "log_likelihood": -8.0 + 0.2 * min(kk, 5),
                "n_iter": 30 + kk,
                "converged": True,
                "selected": kk == 5 and ct == "full",
            }
            for ct in ("diag", "full")
            for kk in ks
        ]
    )
    bic.loc[0, "bic"] = np.nan  # a failed candidate: skipped, never printed as nan
    data.bic_table = bic
    data.forecast = pd.DataFrame(
        {
            "segment": ids,
            "name": names,
            "share_now": share,
            "share_forecast": share * rng.uniform(0.9, 1.1, k),
        }
    )
    rows = []
    for date in ("2026-01-05", "2026-01-06"):
        for i in ids:
            actual = share[i] * rng.uniform(0.9, 1.1)
            rows.append(
                {
                    "held_out": pd.Timestamp(date),
                    "segment": i,
                    "name": names[i],
                    "actual": actual,
                    "markov": actual * rng.uniform(0.97, 1.03),
                    "persistence": actual * rng.uniform(0.9, 1.1),
                }
            )
    data.backtest = pd.DataFrame(rows)
    data.backtest_scores = pd.DataFrame(
        {
            "held_out": [pd.Timestamp(x) for x in ("2026-01-05", "2026-01-05", "2026-01-06", "2026-01-06")],
            "method": ["markov", "persistence"] * 2,
            "share_mae": [0.004, 0.011, 0.005, 0.009],
            "share_tv": [0.01, 0.03, 0.012, 0.025],
            "user_brier": [0.08, 0.12, 0.09, np.nan],
        }
    )
    data.audiences = pd.DataFrame(
        {
            "audience": ["hybrids", "new_buyers"],
            "definition": ["entropy_band == 'moderate'", "segment == 'segment_1' & purchases_90d > 0"],
            "n_users": [39, 1200],
            "path": ["out/audiences/hybrids/dt=2026-01-07", "out/audiences/new_buyers/dt=2026-01-07"],
        }
    )
    return data


def _charts(page: str) -> dict[str, str]:
    found = re.findall(r'<figure class="chart" data-chart="([^"]+)">(.*?)</figure>', page, flags=re.S)
    return dict(found)


def _no_nan(text: str) -> None:
    bad = re.findall(r".{0,40}\b(?:nan|NaN|inf)\b.{0,40}", text)
    assert not bad, bad[:5]


# --- the page -------------------------------------------------------------------------------------


ODD_NAME = "<b>heavy & co</b>"  # a segment named with markup: shown as text, never as HTML


@pytest.fixture(scope="module")
def page() -> str:
    """The report of a realistic run (drawn once for the tests that only read it)."""
    data = make_data()
    data.segments.loc[2, "name"] = ODD_NAME
    data.segment_names[2] = ODD_NAME
    data.components[2]["name"] = ODD_NAME
    return html_report(data)


def test_report_has_every_chart_with_axes_ticks_and_values(page):
    charts = _charts(page)
    assert set(charts) == CHARTS
    for name, fig in charts.items():
        assert fig.count("<svg") == 1, name
        svg = fig[: fig.index("</svg>")]
        texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
        numbers = [t for t in texts if re.search(r"\d", t)]
        assert len(numbers) >= 4, (name, texts)  # tick labels and values are real text
        assert re.search(r'<g id="c-[^"]*xtick_\d+"', svg) or name in ("profile", "transitions"), name
        assert "<figcaption>" in fig
    assert "99.8%" in charts["entropy"] or "99.9%" in charts["entropy"]  # the band's count, on the chart
    assert "users (log scale)" in charts["entropy"]
    assert "z-score vs population" in charts["profile"]
    assert "PC1 (" in charts["projection"]
    assert "% of variance)" in charts["projection"]
    assert "from 2026-01-06" in charts["transitions"]
    assert "to 2026-01-07" in charts["transitions"]
    assert "vanished" in charts["sizes"]
    assert "new" in charts["sizes"]
    assert "Bhattacharyya" in charts["family-tree"]
    assert "Ward" in charts["family-tree"]
    assert "markov" in charts["forecast"].lower()
    assert "pp" in charts["forecast"]


def test_report_is_self_contained_escaped_tables_and_has_no_nan(page):
    _no_nan(page)
    assert "<script" not in page
    assert "<pre" not in page  # the summary is HTML, not markdown in a <pre>
    refs = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page)
    assert all(r.startswith(("#", "data:image/png;base64,")) for r in refs), [r[:40] for r in refs]
    assert "@import" not in page
    assert "url(http" not in page
    assert ODD_NAME not in page
    assert html.escape(ODD_NAME, quote=False) in page
    assert page.count("<table>") >= 6
    assert re.search(r"<th[^>]*>users</th>", page)
    # ids are unique across the inline SVGs
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    # the blended pair with no users is left out, the others are listed
    assert "segment_3 + segment_4" not in page
    assert "segment_0 + segment_1" in page
    assert len(page) < 3_000_000


def test_report_size_stays_small_for_twenty_segments_and_thirty_features():
    page = html_report(make_data(k=20, d=30, m=20_000, seed=3))
    assert set(_charts(page)) == CHARTS
    _no_nan(page)
    assert len(page) < 4_000_000, len(page)


@pytest.mark.parametrize(
    "kw",
    [
        {"k": 1, "d": 3},
        {"k": 3, "d": 1},
        {"k": 4, "nan_means": True, "empty_segment": True},
        {"k": 4, "m": 0},
        {"k": 2, "d": 2, "history": False},
    ],
    ids=["K=1", "D=1", "nan-means-empty-segment", "empty-sample", "no-history"],
)
def test_report_edge_cases_render_without_nan(kw):
    data = make_data(**kw)
    page = html_report(data)
    _no_nan(page)
    md = markdown_summary(data)
    _no_nan(md)
    charts = _charts(page)
    assert {"sizes", "profile", "entropy"} <= set(charts)
    if kw.get("k") == 1:
        assert "family-tree" not in charts
        assert "no family tree" in page
    if kw.get("m") == 0:
        assert "projection" not in charts
        assert "no projection" in page
    if kw.get("d") == 1:
        assert "one strip per segment" in charts["projection"]
    if kw.get("history") is False:  # no previous snapshot, model selection or forecast: no such charts
        assert set(charts) == {"sizes", "profile", "entropy", "projection", "family-tree"}


# --- markdown ------------------------------------------------------------------------------------


def test_markdown_summary_tables_skip_empty_pairs_and_never_print_nan():
    md = markdown_summary(make_data(nan_means=True, empty_segment=True))
    _no_nan(md)
    assert "| segment | id | weight | users | share |" in md
    assert "## Entropy bands" in md
    assert "## Most blended pairs" in md
    assert "segment_3 + segment_4" not in md  # 0 users
    assert "## Audiences" in md
    assert "new_buyers" in md
    assert "## Backtest" in md
    assert "markov" in md
    assert "## Forecast for the next snapshot" in md
    assert "`memberships`" in md


# --- one word per quantity ------------------------------------------------------------------------

#: The words the legend defines, and words for the same quantities that no header may use instead.
TERMS = ("forecast share", "membership share", "weight", "share")
SYNONYMS = ("proportion", "fraction", "prior", "π", "mixing", "soft", "probability", "mass")


def md_legend_terms(md: str) -> list[str]:
    """The terms the summary's legend defines: its block of '- **term**: definition' lines right
    under the segments table."""
    block = md[md.index("## Segments") :].split("\n\n")[2]  # heading, table, legend
    return re.findall(r"^- \*\*([^*]+)\*\*: \S", block, flags=re.M)


def md_headers(md: str) -> list[str]:
    """Every column header of the markdown's tables (a row followed by a |---| line)."""
    lines = md.splitlines()
    return [
        h.strip()
        for row, nxt in itertools.pairwise(lines)
        if row.startswith("|") and re.fullmatch(r"\|(?:-+:?\|)+", nxt)
        for h in row.strip("|").split(" | ")
    ]


def html_headers(page: str) -> list[str]:
    return [
        html.unescape(re.sub(r"<[^>]+>", "", h)).strip() for h in re.findall(r"<th[^>]*>(.*?)</th>", page)
    ]


def html_legend_terms(page: str) -> list[str]:
    (dl,) = re.findall(r'<dl class="legend">(.*?)</dl>', page, flags=re.S)
    return re.findall(r"<dt>([^<]+)</dt>", dl)


def assert_one_word_per_quantity(headers: list[str], defined: list[str]) -> None:
    """Each header names its quantity with a defined term, and with no synonym of one."""
    for h in headers:
        low = h.lower()
        assert not [w for w in SYNONYMS if re.search(rf"\b{w}\b", low)], h
        rest = low
        for term in TERMS:  # longest first: "forecast share" before "share"
            if term in rest:
                assert term in defined, (h, defined)
                rest = rest.replace(term, "")
        assert not re.search(r"share|weight", rest), h  # a quantity word outside every defined term


def test_summary_and_report_define_each_quantity_once_and_headers_use_only_those_words(page):
    md = markdown_summary(make_data())
    defined = md_legend_terms(md)
    assert sorted(defined) == sorted(TERMS)  # each once
    assert md.index("## Segments") < md.index("- **weight**: ") < md.index("## Entropy bands")
    assert_one_word_per_quantity(md_headers(md), defined)
    assert "| segment | membership share 2026-01-07 | forecast share, next snapshot |" in md
    assert sorted(html_legend_terms(page)) == sorted(TERMS)
    assert_one_word_per_quantity(html_headers(page), html_legend_terms(page))
    assert "previous share" in html_headers(page)


def test_forecast_on_hard_segments_is_a_forecast_of_the_share_and_needs_no_membership_share():
    from dataclasses import replace

    d = make_data()
    md = markdown_summary(replace(d, forecast_basis="hard segments"))
    assert sorted(md_legend_terms(md)) == ["forecast share", "share", "weight"]
    assert "| segment | share 2026-01-07 | forecast share, next snapshot |" in md
    no_forecast = markdown_summary(make_data(history=False))
    assert sorted(md_legend_terms(no_forecast)) == ["share", "weight"]
    assert_one_word_per_quantity(md_headers(no_forecast), ["share", "weight"])


def test_the_readme_defines_the_same_words_once():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    defined = re.findall(r"^- \*\*([^*]+)\*\* — \S", readme, flags=re.M)
    assert sorted(t for t in defined if t in TERMS) == sorted(TERMS)


# --- the page's layout ---------------------------------------------------------------------------


def test_wide_segment_tables_are_split_and_rows_and_fit_has_no_empty_header(page):
    tables = re.findall(r"<table[^>]*>(.*?)</table>", page, flags=re.S)
    for t in tables:  # a segment's numbers, then its features' means: no table of 13 columns
        head = re.search(r"<thead><tr>(.*?)</tr></thead>", t)
        assert head is None or head[1].count("<th") <= 10, head
    (fit,) = [t for t in tables if "<caption>Rows and fit</caption>" in t]
    assert "<thead>" not in fit
    assert all(h for h in html_headers(page))  # no empty header cell anywhere
    wide = html_report(make_data(k=3, d=14, m=200, history=False))
    caps = re.findall(r"<caption>(Mean of each feature[^<]*)</caption>", wide)
    assert caps == [f"Mean of each feature, in its original units ({i} of 3)" for i in (1, 2, 3)]


def test_report_says_why_it_has_no_bic_curve():
    single = html_report(make_data(k=4, m=200, history=False))
    assert 'data-chart="bic"' not in single
    section = single[single.index('<section id="model-selection">') :]
    section = section[: section.index("</section>")]
    assert "Single K fitted (K=4): there is no BIC curve. Run select-k" in section


def test_run_time_is_the_jobs_total_and_the_backtest_is_in_points():
    from dataclasses import replace

    d = replace(make_data(), seconds=18.04)  # the phases add up to 12.6 s
    page = html_report(d)
    assert "<dt>run time</dt><dd>18.0 s</dd>" in page
    assert "12.6 s" not in page
    assert "Run time 18.0 s, as the command line prints it" in page
    assert "Run time 18.0 s." in markdown_summary(d)
    # MAE 0.004 and 0.005 (markov), TV 0.01 and 0.012: 0.45 and 1.10 points on average
    assert "| markov | 0.45 | 1.10 | 0.0850 |" in markdown_summary(d)
    assert re.search(r"<td>markov</td><td class=\"num\">0\.40</td><td class=\"num\">1\.00</td>", page)


def test_size_labels_end_inside_the_plot_clear_of_the_change_column():
    from gmm_dask.report.charts_segments import _draw_sizes, _sizes_by_id

    d = make_data(k=5)
    long = {s: f"very high items created (94 %, ~6), high minutes per session {s}" for s in range(5)}
    d.segments["name"] = [long[s] for s in d.segments["segment"]]
    d.segment_names.update(long)
    now, prev = _sizes_by_id(d.segments), _sizes_by_id(d.previous_segments)
    order = sorted(now, key=lambda s: -now[s][0]) + [s for s in prev if s not in now]
    fig = _draw_sizes(d, order, now, prev)
    fig.draw_without_rendering()
    ax = fig.axes[0]
    right = ax.get_window_extent().x1
    labels = [t for t in ax.texts if "(" in t.get_text() and "%" in t.get_text()]
    assert len(labels) == 5
    assert all(t.get_window_extent().x1 <= right for t in labels), [t.get_text() for t in labels]


def _count_in(box, pts: np.ndarray) -> int:
    """How many display points (m, 2) lie inside ``box`` (a matplotlib Bbox)."""
    inside = (pts[:, 0] >= box.x0) & (pts[:, 0] <= box.x1) & (pts[:, 1] >= box.y0) & (pts[:, 1] <= box.y1)
    return int(inside.sum())


def test_mean_labels_sit_off_their_marks_where_fewer_users_are():
    from gmm_dask.report.charts_model import _draw_2d, _pca, _sample

    p = _sample(make_data(k=5, m=3000))
    fig = _draw_2d(p)
    fig.canvas.draw()
    ax = fig.axes[0]
    pts = ax.transData.transform(_pca(p.z, p.means)[0])
    boxes = {a.get_bbox_patch().get_gid(): a.get_bbox_patch().get_window_extent() for a in ax.texts}
    marks = {ln.get_gid(): ln for ln in ax.lines if (ln.get_gid() or "").startswith("mean-")}
    assert len(boxes) == len(marks) == 5
    for gid, line in marks.items():
        box = boxes[gid.replace("mean-", "mean-label-")]
        x, y = ax.transData.transform(np.column_stack(line.get_data()))[0]
        r = line.get_markersize() / 72 * fig.dpi / 2
        assert not (box.x0 - r < x < box.x1 + r and box.y0 - r < y < box.y1 + r), gid  # off its mark
        under = _count_in(box, pts)
        on_mark = _count_in(box.translated(x - (box.x0 + box.x1) / 2, y - (box.y0 + box.y1) / 2), pts)
        assert under <= on_mark, (gid, under, on_mark)  # where fewer users are than on the mark
        assert ax.bbox.contains(box.x0, box.y0), gid  # inside the plot
        assert ax.bbox.contains(box.x1, box.y1), gid


# --- the family tree -----------------------------------------------------------------------------


def _gauss(mean, cov, i=0):
    return {
        "segment": i,
        "name": f"s{i}",
        "weight": 0.25,
        "mean": np.asarray(mean, float),
        "cov": np.asarray(cov, float),
    }


@pytest.mark.parametrize("metric", ["bhattacharyya", "hellinger"])
def test_distance_between_gaussians_is_zero_symmetric_and_positive(metric):
    rng = np.random.default_rng(1)
    comps = [_gauss(rng.normal(size=3), _spd(rng, 3), i) for i in range(4)]
    comps.append(_gauss(comps[0]["mean"], comps[0]["cov"], 4))  # identical to the first
    dist = gaussian_distance_matrix(comps, metric)
    assert dist.shape == (5, 5)
    np.testing.assert_allclose(dist, dist.T)
    np.testing.assert_allclose(np.diag(dist), 0.0)
    assert dist[0, 4] == pytest.approx(0.0, abs=1e-7)
    off = dist[np.triu_indices(4, 1)]
    assert np.all(off > 0)
    if metric == "hellinger":
        assert np.all(off <= 1)


def test_bhattacharyya_distance_matches_the_closed_form_in_one_dimension():
    # D_B = (μ1−μ2)²/(4(σ1²+σ2²)) + ½ ln((σ1²+σ2²)/(2σ1σ2))
    s1, s2, d = 1.0, 2.0, 1.5
    expect = d**2 / (4 * (s1**2 + s2**2)) + 0.5 * np.log((s1**2 + s2**2) / (2 * s1 * s2))
    assert bhattacharyya_distance([0.0], [[s1**2]], [d], [[s2**2]]) == pytest.approx(expect)
    pair = [_gauss([0.0], [[s1**2]]), _gauss([d], [[s2**2]], 1)]
    assert gaussian_distance_matrix(pair)[0, 1] == pytest.approx(expect)
    assert gaussian_distance_matrix(pair, "hellinger")[0, 1] == pytest.approx(np.sqrt(1 - np.exp(-expect)))
    # equal covariances: √(8 D_B) is the Mahalanobis distance between the means
    cov = np.array([[2.0, 0.3], [0.3, 0.5]])
    mu = np.array([1.0, -0.5])
    maha = np.sqrt(mu @ np.linalg.solve(cov, mu))
    assert np.sqrt(8 * bhattacharyya_distance([0, 0], cov, mu, cov)) == pytest.approx(maha)
    with pytest.raises(ValueError, match="metric must be"):
        gaussian_distance_matrix(pair, "kl")


def test_distance_with_non_finite_or_singular_parameters():
    ok = _gauss([0.0, 0.0], np.eye(2))
    singular = _gauss([1.0, 0.0], [[1.0, 1.0], [1.0, 1.0]], 1)
    broken = _gauss([np.nan, 0.0], np.eye(2), 2)
    dist = gaussian_distance_matrix([ok, singular, broken])
    assert np.isfinite(dist[0, 1])
    assert dist[0, 1] > 0
    assert np.isinf(dist[0, 2])
    hell = gaussian_distance_matrix([ok, singular, broken], "hellinger")
    assert hell[0, 2] == 1.0
    assert 0 < hell[0, 1] <= 1
    link = family_tree([ok, singular, broken, _gauss([0.1, 0.0], np.eye(2), 3)])
    assert np.all(np.isfinite(link))
    assert {int(x) for x in link[0, :2]} == {0, 3}  # the broken one joins last


def test_family_tree_joins_the_near_identical_pairs_first():
    eye = np.eye(2)
    comps = [
        _gauss([0.0, 0.0], eye, 0),
        _gauss([6.0, 0.0], eye, 1),
        _gauss([0.05, 0.0], eye * 1.01, 2),
        _gauss([6.0, 0.05], eye, 3),
    ]
    link = family_tree(comps)
    assert link.shape == (3, 4)
    first_two = {frozenset(int(x) for x in link[i, :2]) for i in range(2)}
    assert first_two == {frozenset({0, 2}), frozenset({1, 3})}
    assert np.all(np.diff(link[:, 2]) >= 0)  # Ward heights are monotone
    with pytest.raises(ValueError, match="at least 2 components"):
        family_tree(comps[:1])


# --- in a real browser ---------------------------------------------------------------------------


def _screenshot(target) -> bytes:
    """A PNG of a page or an element; one retry, as headless Chromium now and then refuses a
    capture under load ('Unable to capture screenshot')."""
    from playwright.sync_api import Error

    try:
        return target.screenshot()
    except Error:
        return target.screenshot()


def test_report_renders_in_headless_chromium_and_every_chart_draws(chromium, page, tmp_path):
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "report.html"
    page_file.write_text(page, encoding="utf-8")
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=CHROMIUM_ARGS,
        )
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            requests: list[str] = []
            tab.on("request", lambda req: requests.append(req.url))
            tab.goto(page_file.as_uri(), wait_until="load")
            figures = tab.locator("figure.chart")
            assert figures.count() == len(CHARTS)
            for i in range(figures.count()):
                fig = figures.nth(i)
                name = fig.get_attribute("data-chart")
                svg = fig.locator("svg")
                assert svg.count() == 1, name
                assert svg.is_visible(), name
                box = svg.bounding_box()
                assert box is not None, name
                assert min(box["width"], box["height"]) > 50, (name, box)
                assert svg.locator("path").count() > 0, name
                assert svg.locator("text").count() > 3, name
                # drawn: the pixels on screen carry ink (marks, text, colour), not an empty box
                pixels = np.asarray(Image.open(io.BytesIO(_screenshot(svg))).convert("L"))
                assert (pixels < 200).mean() > 0.02, (name, (pixels < 200).mean())
            # every table fits its box at the page's content width: nothing hides behind a scroll
            widths = tab.evaluate(
                "[...document.querySelectorAll('table')].map(t => [t.querySelector('caption, th').textContent,"
                " t.getBoundingClientRect().width, t.parentElement.clientWidth])"
            )
            assert len(widths) >= 10
            assert [w for w in widths if w[1] > w[2] + 0.5] == [], widths
            # the users' chart: each mean's label is drawn clear of its mark
            labels = tab.locator('figure[data-chart="projection"] g[id*="mean-label-"]')
            assert labels.count() == 5
            for i in range(labels.count()):
                label = labels.nth(i)
                mark = tab.locator(f"#{label.get_attribute('id').replace('mean-label-', 'mean-')}")
                a, b = label.bounding_box(), mark.bounding_box()
                assert a is not None
                assert b is not None
                apart = (
                    a["x"] >= b["x"] + b["width"]
                    or b["x"] >= a["x"] + a["width"]
                    or a["y"] >= b["y"] + b["height"]
                    or b["y"] >= a["y"] + a["height"]
                )
                assert apart, (label.get_attribute("id"), a, b)
            tab.evaluate("window.scrollTo(0, 0)")
            png = _screenshot(tab)  # the viewport: full-page captures of long pages are flaky in Chromium
        finally:
            browser.close()
    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    (tmp_path / "report.png").write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 100_000


# --- the key charts as markdown images (the Prefect UI's summary) ---------------------------------


def _md_images(md: str) -> list[tuple[str, bytes]]:
    import base64

    found = re.findall(r"!\[([^\]]*)\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", md)
    return [(alt, base64.b64decode(b64, validate=True)) for alt, b64 in found]


def test_key_charts_are_standalone_svg_images_within_the_budget():
    from gmm_dask.report.images import charts_markdown

    d = make_data(k=8)
    md, ids = charts_markdown(d)
    images = _md_images(md)
    assert ids == ["sizes", "profile", "bic"]  # a run that chose its K: the BIC curve is third
    assert [alt for alt, _ in images] == ["Segment sizes", "Segment profiles", "Model selection"]
    for _, svg in images:
        text = svg.decode("utf-8")
        assert text.startswith("<svg ")
        assert 'xmlns="http://www.w3.org/2000/svg"' in text
        assert "<path" in text
        assert text.count("<text") > 3
    assert sum(len(m) for m in re.findall(r"base64,[^)]*", md)) <= 300_000
    assert "&#x27;" not in md
    assert "<" not in re.sub(r"\(data:[^)]*\)", "", md)
    _no_nan(md)


def test_key_charts_fall_back_in_order_and_leave_out_what_passes_the_budget():
    from dataclasses import replace

    from gmm_dask.report.images import charts_markdown

    d = make_data(k=8)
    assert charts_markdown(d, max_charts=5)[1] == ["sizes", "profile", "bic", "forecast", "entropy"]
    assert charts_markdown(replace(d, bic_table=None))[1] == ["sizes", "profile", "forecast"]
    assert charts_markdown(replace(d, bic_table=None, backtest=None, forecast=None))[1] == [
        "sizes",
        "profile",
        "entropy",
    ]
    sizes_only, small = charts_markdown(d, max_charts=1)
    assert small == ["sizes"]
    budget = len(_md_images(sizes_only)[0][1]) * 4 // 3 + 100  # room for the sizes chart only
    md, ids = charts_markdown(d, max_bytes=budget)
    assert "sizes" in ids
    assert len(ids) < 3
    assert sum(len(m) for m in re.findall(r"base64,[^)]*", md)) <= budget
    assert charts_markdown(d, max_bytes=10) == ("", [])


def test_report_link_is_a_file_uri_for_local_paths_and_the_store_url_otherwise(tmp_path):
    from flows.artifacts import report_link

    local = tmp_path / "_reports" / "segment-2026-01-07-v0008.html"
    assert report_link(str(local)) == local.resolve().as_uri()
    url = "s3://bucket/out/_reports/segment-2026-01-07-v0008.html"
    assert report_link(url) == url
