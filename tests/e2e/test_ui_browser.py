"""The report one click from the task, in a real browser on a real Airflow 3 deployment.

Chromium (Debian's package, driven by Playwright; no browser is downloaded) signs in to the Airflow
UI as a campaign manager, triggers the example preflight from its Trigger form with the defaults,
opens the report task and follows its "Preflight report" link; the rendered report's channel mix
must equal the run's figures. The same with the run's outputs in an S3 bucket (moto's server),
entered in the same form. A user without access to the DAG gets the refusal, not the report.

The deployment (API server with the provider's plugins, scheduler, DAG processor, triggerer; the
LocalExecutor on PostgreSQL) uses Airflow's SimpleAuthManager with two users: ``manager`` (role
``op``) and ``outsider`` (no role: no DAG at all).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from airflow_deployment import AirflowDeployment, PostgresDatabase
from celery_deployment import BUCKET, S3_CONN_ID, S3Server

from airflow_provider_kaleyra.preflight.rendering import LABELS
from kaleyra_simulator import CallbackAuth, KaleyraSimulator, SimulatorConfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "example_kaleyra_campaign_preflight"
REPORT_TASK = "preflight.build_report"
USERS = {"manager": ("op", "manager-pw-4d1c"), "outsider": ("", "outsider-pw-9e2a")}
CALLBACK_SECRET = "e2e-browser-callback-secret"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
UI_TIMEOUT_MS = 60_000  # the first page of a cold API server on a busy machine is slow
RUN_TIMEOUT = 420.0
SHOTS = Path(os.environ.get("KALEYRA_E2E_SCREENSHOTS", "/tmp/kaleyra-e2e-browser"))


class SignedInDeployment(AirflowDeployment):
    """The REST helpers authenticate as ``manager``: with users configured there is no all-admins token."""

    def token(self) -> str:
        if self._token is None:
            password = USERS["manager"][1]
            answer = self._session.post(
                f"{self.url}/auth/token", json={"username": "manager", "password": password}, timeout=30
            )
            answer.raise_for_status()
            self._token = answer.json()["access_token"]
        return self._token


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SignedInDeployment, S3Server]]:
    home = tmp_path_factory.mktemp("airflow-home")
    server = os.environ.get("KALEYRA_TEST_POSTGRES_URL")
    databases: list[PostgresDatabase] = []
    if server:
        metadata = PostgresDatabase(server, "e2e_browser").create()
        callbacks = PostgresDatabase(server, "e2e_browser_cb").create()
        databases += [metadata, callbacks]
        metadata_url, store_url = metadata.url, callbacks.url
    else:
        metadata_url, store_url = None, f"sqlite:///{home / 'kaleyra_callbacks.db'}"
    dags = home / "dags"
    shutil.copytree(REPO / "example_dags", dags / "kaleyra", ignore=shutil.ignore_patterns("__pycache__"))
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({name: password for name, (_, password) in USERS.items()}) + "\n")
    deployment = SignedInDeployment(home, dags, sql_alchemy_conn=metadata_url)
    started: list[Any] = []
    try:
        s3 = S3Server(home / "s3")
        started.append(s3)
        simulator = KaleyraSimulator(
            SimulatorConfig(
                latency=0.01,
                callback_url=f"{deployment.url}/kaleyra/soip/callback",
                callback_auth=CallbackAuth("header", "X-Kaleyra-Secret", CALLBACK_SECRET),
                callback_delay=2.0,
            )
        ).start()
        started.append(simulator)
        deployment.env.update(
            {
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                    f"{name}:{role}" for name, (role, _) in USERS.items()
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW_CONN_KALEYRA_DEFAULT": simulator.connection_json(
                    default_region="US",
                    callback_profile_id="e2e-browser",
                    callback_secret=CALLBACK_SECRET,
                    callback_store_url=store_url,
                    rate_limit=200,
                    max_concurrency=4,
                ),
                f"AIRFLOW_CONN_{S3_CONN_ID.upper()}": json.dumps(s3.connection()),
            }
        )
        started.append(deployment)
        deployment.start()
        deployment.api("POST", "/pools", json={"name": "kaleyra_api", "slots": 2, "description": "e2e"})
        deployment.wait_for_dags([DAG_ID])
        yield deployment, s3
    finally:
        for thing in reversed(started):
            thing.stop()
        for database in databases:
            database.drop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install -y chromium (scripts/setup.sh installs it)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _signed_in(browser: Any, deployment: AirflowDeployment, user: str) -> Any:
    """A new browser context (its own cookies) signed in through the UI's login form; its first page."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    page.goto(f"{deployment.url}/")
    page.wait_for_url("**/auth/login**")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(USERS[user][1])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)
    return page


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _manual_runs(deployment: AirflowDeployment) -> set[str]:
    runs = deployment.api("GET", f"/dags/{DAG_ID}/dagRuns", params={"limit": 100})["dag_runs"]
    return {run["dag_run_id"] for run in runs}


def _trigger_from_form(page: Any, deployment: AirflowDeployment, fields: dict[str, str], name: str) -> str:
    """Open the DAG, fill ``fields`` (params by name) in its Trigger form, submit; the new run's id."""
    before = _manual_runs(deployment)
    page.goto(f"{deployment.url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Sample rows").wait_for()  # the form shows the DAG's params
    for param, value in fields.items():
        dialog.locator(f"input[name=element_{param}]").fill(value)
    _shot(page, f"{name}-trigger-form")
    dialog.get_by_test_id("trigger-dag-submit").click()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = _manual_runs(deployment) - before
        if new:
            [run_id] = new
            return run_id
        time.sleep(1)
    _shot(page, f"{name}-no-run")
    raise AssertionError("no run was created by the Trigger form")


def _wait_success(deployment: AirflowDeployment, run_id: str) -> None:
    states = deployment.wait_for_runs([(DAG_ID, run_id)], timeout=RUN_TIMEOUT)
    if states[(DAG_ID, run_id)] != "success":
        pytest.fail(f"the run did not succeed: {states}\n{deployment.diagnostics(DAG_ID, run_id)}")


def _channels(deployment: AirflowDeployment, run_id: str) -> dict[str, int]:
    """The report task's XCom: rows per channel, as the run decided them."""
    entry = deployment.api(
        "GET",
        f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{REPORT_TASK}/xcomEntries/return_value",
        params={"deserialize": True},
    )
    value = entry["value"]
    return (json.loads(value) if isinstance(value, str) else value)["channels"]


def _open_report_from_task(page: Any, deployment: AirflowDeployment, run_id: str, name: str) -> Any:
    """The report task instance's Details tab (where Airflow shows extra links), then its link; the report."""
    page.goto(f"{deployment.url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/{REPORT_TASK}")
    page.get_by_role("link", name="Details", exact=True).click()
    page.get_by_text("Extra Links").wait_for()
    link = page.get_by_role("link", name="Preflight report", exact=True)
    link.wait_for()
    _shot(page, f"{name}-task")
    if link.get_attribute("target") == "_blank":
        with page.context.expect_page() as opened:
            link.click()
        report = opened.value
    else:
        link.click()
        report = page
    report.wait_for_load_state()
    return report


def _channel_mix(report: Any) -> dict[str, str]:
    """The rendered "Channel mix" table: channel label -> rows, as the browser shows them."""
    table = report.locator("h2:text-is('Channel mix') + table")
    table.wait_for()
    mix = {}
    for row in table.locator("tr").all()[1:]:
        cells = [cell.inner_text().strip() for cell in row.locator("td").all()]
        mix[cells[0]] = cells[1]
    return mix


def _check_report(report: Any, deployment: AirflowDeployment, run_id: str, name: str) -> str:
    assert report.url.startswith(f"{deployment.url}/kaleyra-preflight/runs/{DAG_ID}/"), report.url
    report.locator("h1").wait_for()
    _shot(report, f"{name}-report")
    assert report.locator("h1").inner_text().startswith(f"{DAG_ID}: preflight of ")
    assert run_id in report.locator("p.sub").inner_text()
    rows = _channels(deployment, run_id)
    assert sum(rows.values()) == 10_000  # the Trigger form's default audience_size
    assert all(rows[channel] > 0 for channel in LABELS), rows
    assert _channel_mix(report) == {LABELS[c]: f"{n:,}" for c, n in rows.items()}
    lead = report.locator("p.lead").inner_text()
    assert lead.startswith(f"Of 10,000 audience rows, {rows['rcs']:,} to RCS"), lead
    assert report.locator("svg[aria-label='Channel of each audience row']").count() == 1
    return report.url


def test_report_from_the_trigger_form_defaults(browser: Any, stack) -> None:
    deployment, _ = stack
    page = _signed_in(browser, deployment, "manager")
    run_id = _trigger_from_form(page, deployment, {}, "defaults")
    _wait_success(deployment, run_id)
    report = _open_report_from_task(page, deployment, run_id, "defaults")
    link = _check_report(report, deployment, run_id, "defaults")
    page.context.close()

    # Whoever may not read the DAG gets the refusal, signed in or not, and never the report.
    outsider = _signed_in(browser, deployment, "outsider")
    refused = outsider.goto(link)
    assert refused is not None and refused.status == 403
    assert "preflight of" not in outsider.content() and "Forbidden" in outsider.content()
    _shot(outsider, "outsider-refused")
    runs_page = outsider.goto(f"{deployment.url}/kaleyra-preflight/runs/{DAG_ID}")
    assert runs_page is not None and runs_page.status == 403
    outsider.context.close()
    anonymous = browser.new_context()
    answer = anonymous.new_page().goto(link)
    assert answer is not None and answer.status == 401
    anonymous.close()
    # the same for the REST client of the outsider
    http = requests.Session()
    http.trust_env = False
    token = http.post(
        f"{deployment.url}/auth/token",
        json={"username": "outsider", "password": USERS["outsider"][1]},
        timeout=30,
    ).json()["access_token"]
    assert http.get(link, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 403


def test_report_from_s3_outputs(browser: Any, stack) -> None:
    deployment, s3 = stack
    page = _signed_in(browser, deployment, "manager")
    fields = {"output_location": f"s3://{BUCKET}/browser", "storage_conn_id": S3_CONN_ID}
    run_id = _trigger_from_form(page, deployment, fields, "s3")
    _wait_success(deployment, run_id)
    [key] = [key for key in s3.keys("browser/") if key.endswith("/report.html")]
    report = _open_report_from_task(page, deployment, run_id, "s3")
    link = _check_report(report, deployment, run_id, "s3")
    page.context.close()
    # What the browser rendered came from the bucket, byte for byte: the run wrote nothing locally.
    http = requests.Session()
    http.trust_env = False
    served = http.get(link, headers={"Authorization": f"Bearer {deployment.token()}"}, timeout=30)
    assert served.status_code == 200 and served.content == s3.get(key)
    assert not (deployment.home / "kaleyra" / "preflight" / key.split("/")[1]).exists()
