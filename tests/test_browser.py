"""Both UIs in a real browser, as a person uses them: headless Chromium driven by Playwright.

`icetrain ui` serves Dagster and MLflow for a project with one user-declared pipeline. The
first test materializes the pipeline from the Dagster UI and follows the model asset's page to
its MLflow run; the second opens that link in the MLflow UI and finds the run, its Iceberg
dataset and its source. Screenshots go to ``$ICETRAIN_TEST_ARTIFACTS/browser`` (default
``test-artifacts/browser`` in the repository).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from icetrain.servers import free_port
from pipeline.config.settings import Settings
from pipeline.lake.catalog import load_table, open_catalog
from pipeline.lake.ingest import RUN_ID_PROPERTY
from tests.conftest import ISOLATED_ENV, write_appends

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(os.environ.get("ICETRAIN_TEST_ARTIFACTS", REPO / "test-artifacts")) / "browser"
PIPELINES = """\
pipelines:
  orders:
    data: {table: shop.orders, label: label}
    model: {factory: mlp}
    optim: {epochs: 2}
dagster:
  definitions: ["assets.demo:defs"]
"""

if not CHROMIUM.exists():
    reason = "Debian's chromium is not installed (`make test` installs it)"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


@dataclass
class Project:
    """A user's project served by `icetrain ui`, and what the first test found for the second."""

    settings: Settings
    dagster: str
    mlflow: str
    found: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    root = tmp_path_factory.mktemp("browser")
    with pytest.MonkeyPatch.context() as env:
        for name in [*ISOLATED_ENV, *(n for n in os.environ if n.startswith("PYICEBERG_"))]:
            env.delenv(name, raising=False)
        env.setenv("ICETRAIN_HOME", str(root / "home"))
        env.setenv("DAGSTER_HOME", str(root / "dagster_home"))
        env.setenv("PYICEBERG_HOME", str(root / "no-pyiceberg-config"))
        env.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        env.chdir(root)
        (root / "icetrain.yaml").write_text(PIPELINES)
        settings = Settings.from_env()
        write_appends(open_catalog(settings), "shop.orders", [400, 200])
        dagster_port, mlflow_port = free_port(), free_port()
        ui = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "icetrain"),
                "ui",
                "--dagster-port",
                str(dagster_port),
                "--mlflow-port",
                str(mlflow_port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            banner = ui.stdout.readline()
            assert banner.startswith("Dagster UI:"), banner + ui.stdout.read()
            yield Project(settings, f"http://127.0.0.1:{dagster_port}", f"http://127.0.0.1:{mlflow_port}")
        finally:
            ui.send_signal(signal.SIGTERM)
            try:
                ui.wait(timeout=60)
            except subprocess.TimeoutExpired:  # pragma: no cover - only if `icetrain ui` failed to stop
                os.killpg(ui.pid, signal.SIGKILL)
                ui.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh page; its last state is saved as ``<test name>.png`` whether the test passed or not."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def graphql(project: Project, query: str) -> dict:
    request = urllib.request.Request(
        f"{project.dagster}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def run_ids(project: Project) -> set[str]:
    runs = graphql(project, "{ runsOrError { ... on Runs { results { runId } } } }")["runsOrError"]["results"]
    return {run["runId"] for run in runs}


def wait_for_new_run(project: Project, before: set[str], timeout: float = 300) -> dict:
    """The run launched since ``before`` was taken, once it has finished (success, failure or cancel)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = graphql(
            project, "{ runsOrError { ... on Runs { results { runId status jobName tags { key value } } } } }"
        )["runsOrError"]["results"]
        new = [run for run in runs if run["runId"] not in before]
        if new and new[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return new[0]
        time.sleep(1)
    raise AssertionError(f"no new run finished within {timeout:.0f}s")


def test_a_pipeline_materialized_from_the_dagster_ui_shows_its_snapshot_and_mlflow_run(
    project: Project, page: Page
) -> None:
    page.goto(f"{project.dagster}/locations/icetrain/asset-groups/orders")
    expect(page.get_by_text("trained_model", exact=True)).to_be_visible()
    before = run_ids(project)
    page.get_by_role("button", name="Materialize all").click()
    confirm = page.get_by_role("button", name="Confirm")  # Dagster asks when an upstream asset was never materialized
    if confirm.is_visible(timeout=3000):
        confirm.click()

    run = wait_for_new_run(project, before)
    assert run["status"] == "SUCCESS", run

    snapshot_id = str(load_table(open_catalog(project.settings), "shop.orders").current_snapshot().snapshot_id)
    page.goto(f"{project.dagster}/assets/orders/trained_model")
    expect(page.get_by_text("snapshot_id", exact=True)).to_be_visible()
    expect(page.get_by_text(snapshot_id, exact=True)).to_be_visible()
    link = page.locator(f"a[href^='{project.mlflow}/#/experiments/'][href*='/runs/']").first
    expect(link).to_be_visible()
    href = link.get_attribute("href")
    run_id = re.fullmatch(rf"{re.escape(project.mlflow)}/#/experiments/\d+/runs/([0-9a-f]{{32}})", href).group(1)

    with urllib.request.urlopen(f"{project.mlflow}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=30) as response:
        mlflow_run = json.loads(response.read())["run"]
    tags = {tag["key"]: tag["value"] for tag in mlflow_run["data"]["tags"]}
    assert tags["icetrain.snapshot_id"] == snapshot_id
    assert tags["icetrain.dagster_run_id"] == run["runId"]
    params = {param["key"]: param["value"] for param in mlflow_run["data"]["params"]}
    project.found.update(
        href=href,
        run_id=run_id,
        snapshot_id=snapshot_id,
        dagster_run_id=run["runId"],
        train_rows=params["resolved.train_rows"],
    )


def test_the_mlflow_link_opens_the_run_with_its_iceberg_dataset_and_source(project: Project, page: Page) -> None:
    if "href" not in project.found:
        pytest.fail("the Dagster UI test found no MLflow link to follow", pytrace=False)
    snapshot_id = project.found["snapshot_id"]
    page.goto(project.found["href"])

    expect(page.get_by_role("heading", name=f"orders@{snapshot_id}")).to_be_visible()
    expect(page.get_by_text(project.found["run_id"], exact=True)).to_be_visible()
    expect(page.get_by_text("Source", exact=True)).to_be_visible()
    expect(page.get_by_text("icetrain", exact=True).first).to_be_visible()
    dagster_link = page.locator(f"a[href='{project.dagster}/runs/{project.found['dagster_run_id']}']")
    expect(dagster_link).to_be_visible()

    page.get_by_text(f"shop.orders@{snapshot_id} (train)").last.click()
    details = page.get_by_role("dialog")
    expect(details).to_contain_text(f"shop.orders@{snapshot_id} (val)")
    expect(details).to_contain_text(f"num rows: {project.found['train_rows']}")
    expect(details.get_by_text("x1", exact=True)).to_be_visible()


def test_a_date_range_backfilled_from_the_dagster_ui_appends_one_snapshot_per_day(project: Project, page: Page) -> None:
    page.goto(f"{project.dagster}/assets/demo/transactions")
    before = run_ids(project)
    page.get_by_role("button", name="Materialize").first.click()
    partitions = page.get_by_placeholder("No matching partitions")
    partitions.fill("[2026-11-01...2026-11-03]")
    partitions.press("Enter")
    expect(page.get_by_role("dialog")).to_contain_text("3 partitions")
    page.get_by_role("button", name="Launch backfill").click()

    run = wait_for_new_run(project, before)

    assert run["status"] == "SUCCESS", run
    table = load_table(open_catalog(project.settings), "demo.transactions")
    summaries = [s.summary.additional_properties for s in table.snapshots()]
    assert [summary["icetrain.partition"] for summary in summaries] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert {summary[RUN_ID_PROPERTY] for summary in summaries} == {run["runId"]}
    page.goto(f"{project.dagster}/assets/demo/transactions?view=partitions")
    # the list shows the newest days first and renders only what fits: filter it to the day
    page.get_by_placeholder("Filter by name").fill("2026-11-03")
    expect(page.get_by_text("2026-11-03", exact=True).first).to_be_visible()
