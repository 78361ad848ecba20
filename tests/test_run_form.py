"""The analyst's path in a real browser: a Prefect server on 127.0.0.1 with the repository's
deployments served; headless Chromium fills the `daily` deployment's custom run form (a value
inside the nested model override), submits it, and finds the run's charts and its warnings on the
run page; an out-of-range nested value is refused with the field's name and range."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from gmm_dask.demo import DemoSpec, write_demo_dataset

from .conftest import CHROMIUM_ARGS
from .pipeline_helpers import make_config
from .prefect_servers import prefect_server, serving, wait

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SPEC = DemoSpec(n_users=3000, n_snapshots=2, seed=9, block_users=3000)


def _post(api: str, path: str, body: dict) -> list[dict]:
    req = urllib.request.Request(
        f"{api}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def served_ui(tmp_path_factory):
    """(base URL, API URL, the daily deployment's id): a server whose UI talks to its own API, and
    `gmm-dask serve` of a small demo config."""
    tmp = tmp_path_factory.mktemp("form")
    write_demo_dataset(tmp / "data", SPEC)
    cfg = make_config(tmp, tmp / "data")
    with prefect_server(tmp) as server, serving(server, cfg, tmp / "serve.log") as serve:
        wait(lambda: len(_post(server.api, "/deployments/filter", {})) >= 7, 150, "served deployments", serve)
        daily = next(d for d in _post(server.api, "/deployments/filter", {}) if d["name"] == "daily")
        yield server.base, server.api, daily["id"]


def _set_nested(tab, title: str, value: str) -> None:
    """In the run form, switch the model override's field ``title`` from Empty to a value."""
    prop = (
        tab.locator(".schema-form-property")
        .filter(has=tab.get_by_text(f"{title} (Optional)", exact=True))
        .last
    )
    prop.get_by_role("button", name=title, exact=True).click()
    prop.locator("input").first.fill(value)


@pytest.fixture
def form(chromium, served_ui):
    from playwright.sync_api import sync_playwright

    base, _, daily = served_ui
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            tab.goto(f"{base}/deployments/deployment/{daily}/run", wait_until="networkidle")
            yield tab
        finally:
            browser.close()


def test_an_out_of_range_nested_value_is_refused_naming_the_field_and_its_range(form, served_ui):
    _, api, _ = served_ui
    before = len(_post(api, "/flow_runs/filter", {}))
    _set_nested(form, "Number of components", "0")
    form.get_by_role("button", name="Submit").click()
    message = form.get_by_text("model.n_components").first
    message.wait_for()
    assert "0 is less than the minimum of 1" in message.inner_text()
    assert len(_post(api, "/flow_runs/filter", {})) == before  # nothing was started


def test_a_custom_run_from_the_form_shows_its_charts_and_its_warnings_on_the_run_page(form, served_ui):
    base, api, daily = served_ui
    before = {r["id"] for r in _post(api, "/flow_runs/filter", {})}
    _set_nested(form, "Most iterations", "2")  # EM stops before it converges: the run warns
    _set_nested(form, "Tolerance", "0.000000000001")
    form.get_by_role("button", name="Submit").click()
    form.wait_for_url(f"**/deployments/deployment/{daily}**")  # the UI goes back to the deployment
    wait(lambda: {r["id"] for r in _post(api, "/flow_runs/filter", {})} - before, 60, "the submitted run")
    (run_id,) = {r["id"] for r in _post(api, "/flow_runs/filter", {})} - before

    def done() -> bool:
        (run,) = _post(api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
        assert run["state_type"] not in ("FAILED", "CRASHED", "CANCELLED"), run["state"]
        return run["state_type"] == "COMPLETED"

    deadline = time.time() + 400
    while not done():
        assert time.time() < deadline, "the run did not complete"
        time.sleep(2)
    (run,) = _post(api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    assert run["parameters"]["model"]["max_iter"] == 2  # the form's nested values reached the run
    assert run["parameters"]["model"]["tol"] == 1e-12

    form.goto(f"{base}/runs/flow-run/{run_id}", wait_until="networkidle")
    form.get_by_text("EM did not converge in 2 iterations").first.wait_for()  # the Logs tab: the warning
    form.get_by_text("Artifacts", exact=True).first.click()
    form.get_by_text("segment-summary", exact=True).first.click()
    form.locator('img[alt="Segment sizes"]').wait_for()
    form.wait_for_function("document.images.length >= 3 && [...document.images].every(i => i.complete)")
    sizes = form.evaluate(
        "[...document.images].map(i => [i.alt, i.naturalWidth, i.getBoundingClientRect().width])"
    )
    drawn = [alt for alt, natural, box in sizes if natural > 100 and box > 100]
    assert {"Segment sizes", "Segment profiles"} <= set(drawn), sizes
