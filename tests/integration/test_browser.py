"""The dashboard and /docs in a real browser (Debian's Chromium driven by Playwright), as a user.

Nothing downloads a browser: Playwright drives ``/usr/bin/chromium`` (``.ci/run`` installs it).
The browser may reach only the server under test; every other request is aborted, so the pages
are shown to work offline. Screenshots go to ``$REGULA_ARTIFACTS`` (default: the test's tmp dir).
"""

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RegulaServer

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
EXAMPLE_CSV = Path(__file__).resolve().parents[2] / "app" / "examples" / "credit.csv"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def server(module_server: RegulaServer) -> RegulaServer:
    """One server for the module: the docs page needs no state of its own."""
    return module_server


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("REGULA_ARTIFACTS") or tmp_path_factory.mktemp("screens"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(server: RegulaServer) -> Iterator[Any]:
    """A fresh browser page that can reach the server under test and nothing else."""
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        offsite: list[str] = []

        def only_local(route: Any) -> None:
            if route.request.url.startswith(server.url):
                route.continue_()
            else:
                offsite.append(route.request.url)
                route.abort()

        context.route("**/*", only_local)
        page = context.new_page()
        page.set_default_timeout(60_000)
        yield page
        browser.close()
        assert offsite == [], f"the page tried to reach other hosts: {offsite}"


def wait_until(predicate: Any, timeout: float = 90.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def points(page: Any, selector: str) -> int:
    value = page.get_attribute(selector, "data-points")
    return int(value or 0)


def test_upload_train_watch_and_predict_in_the_dashboard(
    server: RegulaServer, page: Any, artifacts: Path
) -> None:
    page.goto(f"{server.url}/#/datasets")
    page.set_input_files("#upload-input", str(EXAMPLE_CSV))
    link = page.wait_for_selector("#upload-result")
    dataset_id = link.get_attribute("data-id")
    assert dataset_id
    page.screenshot(path=str(artifacts / "datasets.png"), full_page=True)

    # A new L1 job from the form: the L1-logistic preset, made slow enough to watch.
    page.goto(f"{server.url}/#/jobs/new")
    page.wait_for_selector("#job-form")
    page.select_option("#dataset-select", dataset_id)
    page.click('[data-preset="l1-logistic"]')
    wait_until(lambda: "default" in page.inner_text("#target-select"), what="the target options")
    page.select_option("#target-select", "default")
    page.select_option('[data-field="optimizer.name"] select', "adam")
    page.fill('[data-field="optimizer.learning_rate"] input', "0.02")
    page.fill('[data-field="regularization.l1"] input', "0.02")
    page.fill('[data-field="epochs"] input', "400")
    page.fill('[data-field="batch_size"] input', "8")
    page.screenshot(path=str(artifacts / "new-job.png"), full_page=True)
    page.click("#job-submit")
    page.wait_for_url(re.compile(r".*#/jobs/[0-9a-f]{32}$"), timeout=90_000)

    # The loss chart gains points while the job runs.
    page.wait_for_selector("#loss-chart")
    first = wait_until(lambda: points(page, "#loss-chart"), what="a first epoch on the chart")
    status = page.get_attribute("#job-status", "data-status")
    assert status in ("running", "succeeded"), status
    if status == "running":
        wait_until(lambda: points(page, "#loss-chart") > first, what="more epochs on the chart")
    page.screenshot(path=str(artifacts / "job-running.png"), full_page=True)
    wait_until(
        lambda: page.get_attribute("#job-status", "data-status") == "succeeded",
        timeout=300,
        what="the job to succeed",
    )
    assert points(page, "#loss-chart") >= 1
    page.screenshot(path=str(artifacts / "job-done.png"), full_page=True)

    # The model page: L1 switched the irrelevant columns off; they are greyed.
    page.click("#model-link")
    page.wait_for_selector("#feature-importance .feature-bar")
    dropped = page.eval_on_selector_all(
        "#feature-importance .feature-bar.dropped", "bars => bars.map(b => b.dataset.feature)"
    )
    kept = page.eval_on_selector_all(
        "#feature-importance .feature-bar:not(.dropped)", "bars => bars.map(b => b.dataset.feature)"
    )
    assert dropped, "no feature was shown as dropped"
    assert {"income", "late_payments"} <= set(kept), kept
    assert set(dropped) <= {"region", "noise_1", "noise_2", "noise_3", "noise_4", "shoe_size"}

    # Predict from the form built from the feature names.
    form = page.wait_for_selector("#predict-form")
    for name, value in {
        "income": "40",
        "debt_ratio": "0.2",
        "late_payments": "0",
        "years_employed": "10",
        "employment": "salaried",
        "region": "east",
        "noise_1": "0",
        "noise_2": "0",
        "noise_3": "0",
        "noise_4": "0",
        "shoe_size": "42",
    }.items():
        field = form.query_selector(f'[data-feature="{name}"]')
        if field is not None:
            field.fill(value)
    page.click("#predict-submit")
    prediction = page.wait_for_selector('[data-testid="prediction"]')
    assert prediction.inner_text().strip() in ("yes", "no")
    page.screenshot(path=str(artifacts / "model.png"), full_page=True)


def test_a_search_from_the_form_draws_its_path_in_the_dashboard(
    server: RegulaServer, page: Any, artifacts: Path
) -> None:
    num, folds = 25, 5  # folds: the form's own start value
    with httpx.Client(base_url=server.url, timeout=60) as client:
        upload = client.post(
            "/datasets", files={"file": ("credit.csv", EXAMPLE_CSV.read_bytes(), "text/csv")}
        )
        assert upload.status_code == 201, upload.text
        dataset_id = upload.json()["id"]
        page.goto(f"{server.url}/#/jobs/new?dataset={dataset_id}")
        page.wait_for_selector('#target-select option[value="default"]', state="attached")
        page.select_option("#target-select", "default")
        page.click('[data-preset="l1-logistic"]')  # a linear classifier under fista
        assert not page.is_visible("#f-search-num")  # the search section starts switched off
        page.check("#f-search")
        page.fill("#f-search-num", str(num))
        assert page.input_value("#f-search-folds") == str(folds)
        page.screenshot(path=str(artifacts / "new-search.png"), full_page=True)
        page.click("#job-submit")
        page.wait_for_url(re.compile(r".*#/jobs/[0-9a-f]{32}$"), timeout=90_000)
        job_id = page.url.rsplit("/", 1)[1]
        page.wait_for_selector("#path-loss-chart")
        wait_until(
            lambda: page.get_attribute("#job-status", "data-status") == "succeeded",
            timeout=300,
            what="the search to succeed",
        )
        wait_until(
            lambda: page.get_attribute("#path-chosen", "data-complete") == "true",
            what="the complete path on the page",
        )
        path = client.get(f"/jobs/{job_id}/path").json()
    # every point of the grid on each chart, one line per raw feature, both choices shown
    for chart in ("#path-loss-chart", "#path-coef-chart", "#path-count-chart"):
        assert points(page, chart) == num, chart
    assert page.get_attribute("#path-coef-chart", "data-features") == "11"
    assert page.inner_text("#path-used").strip().endswith("1se")
    assert f"{num * (folds + 1)} of {num * (folds + 1)} path points" in page.inner_text(
        "#progress-text"
    )
    shown = float(page.inner_text("#path-1se").split()[-1])
    assert shown == pytest.approx(path["chosen"]["1se"], rel=1e-3)
    page.screenshot(path=str(artifacts / "search.png"), full_page=True)


def test_docs_render_their_operations_offline(
    server: RegulaServer, page: Any, artifacts: Path
) -> None:
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".opblock-tag-section")
    tags = [
        t.strip()
        for t in page.eval_on_selector_all(
            ".opblock-tag", "nodes => nodes.map(n => n.dataset.tag || n.textContent)"
        )
    ]
    assert [t.split()[0] for t in tags][:4] == ["datasets", "jobs", "models", "health"], tags
    operations = page.query_selector_all(".opblock")
    assert len(operations) >= 10
    assert page.query_selector('.opblock-summary-path[data-path="/jobs"]') is not None
    page.screenshot(path=str(artifacts / "docs.png"), full_page=False)
    page.goto(f"{server.url}/redoc")
    page.wait_for_selector("[data-section-id]")
    page.screenshot(path=str(artifacts / "redoc.png"), full_page=False)
