"""The run report: charts drawn with axes and values, real tables, no 'nan', self-contained; the
components' family tree; and the page rendered in a real browser (headless Chromium)."""

from __future__ import annotations

import html
import io
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
