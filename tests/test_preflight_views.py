"""The report one click from the task: extra links, the plugin's routes behind Airflow's permissions,
the runs page, and the report as a browser shows it.

A DAG with the report task runs with ``dag.test()`` (so the task records its run folder and its extra
links in the metadata database, as on a deployment); then the plugin's app is served as the API
server mounts it, with Airflow's SimpleAuthManager issuing and checking the JWTs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from airflow_provider_kaleyra.preflight import views
from airflow_provider_kaleyra.preflight.channels import LIST_NAMES

pytest_plugins = ["conftest_airflow"]
ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "spring_campaign"
MARKER = "PREFLIGHT-VIEWS "  # the server's line with its port and tokens
APT_LINE = "apt-get install -y chromium (scripts/setup.sh installs it)"

DAG_FILE = """
from airflow.sdk import DAG
from airflow_provider_kaleyra.preflight.report import KaleyraPreflightReportOperator

counts = {{"rows": 10, "invalid": 1, "duplicates": 1, "distinct": 8}}
decided = {{
    "rows": {{"rcs": 4, "soip": 2, "sms": 3, "none": 1}},
    "numbers": {{"rcs": 4, "soip": 1, "sms": 3}},
    "reasons": {{"rcs_enabled": 4, "soip_capable": 2, "not_rcs_capable": 3, "invalid": 1}},
    "carriers": {{}}, "countries": {{}}, "soip_asked": 0, "soip_answered": 0,
}}
national = {{"default_region": "US", "default_rows": 2, "by_region": {{"US": 2}}, "examples": []}}
prepared = {{"run_dir": {run_dir!r}, "storage_conn_id": None, "audience": "file:///data/spring.csv",
            "counts": counts, "invalid_reasons": {{"empty": 1}}, "national": national}}
with DAG({dag_id!r}, schedule=None) as dag:
    KaleyraPreflightReportOperator(task_id="build_report", prepared=prepared, decided=decided)

if __name__ == "__main__":
    dag.test()
"""


@pytest.fixture(scope="module")
def served(airflow_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Runs the DAG once, then serves the views; yields the server's JSON line plus ``url`` and ``run_dir``."""
    from conftest_airflow import _airflow_env

    work = tmp_path_factory.mktemp("views")
    run_dir = work / "output" / "run-1"
    run_dir.mkdir(parents=True)
    for channel, name in LIST_NAMES.items():
        with (run_dir / name).open("w", newline="") as handle:
            csv.writer(handle).writerows([["phone", "channel"], [f"+1415555{len(name):04d}", channel]])
    dag_dir = work / "dags"
    dag_dir.mkdir()
    (dag_dir / "spring.py").write_text(DAG_FILE.format(run_dir=str(run_dir), dag_id=DAG_ID))
    env = _airflow_env(airflow_home, dag_dir)
    env.update(
        {
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager."
            "SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "viewer:viewer",
            "AIRFLOW__API_AUTH__JWT_SECRET": "test-secret-for-the-preflight-views",
            "KALEYRA_VIEWS_DAG": DAG_ID,  # the session's database also holds other tests' runs
        }
    )
    ran = subprocess.run(
        [sys.executable, str(dag_dir / "spring.py")], env=env, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "preflight_views_server.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stderr is not None
        line = ""
        while not line.startswith(MARKER):
            line = server.stdout.readline()
            assert line, server.stderr.read()[-3000:]  # the server ended before it was ready
        info = json.loads(line[len(MARKER) :])
        info.update(url=f"http://127.0.0.1:{info['port']}", run_dir=run_dir)
        yield info
    finally:
        server.terminate()
        server.wait(timeout=30)


def _report_path(served: dict[str, Any], name: str = "report.html") -> str:
    [run_id] = {link["run_id"] for link in served["links"]}
    return f"/kaleyra-preflight/runs/{DAG_ID}/{quote(run_id, safe='')}/build_report/{name}"


def _get(served: dict[str, Any], path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(served["url"] + path, headers=headers, timeout=30, **kwargs)


def test_the_report_task_links_to_its_report_and_lists(served: dict[str, Any]) -> None:
    links = {link["key"]: link["url"] for link in served["links"]}
    assert set(links) == {f"_link_kaleyra_preflight_{n}" for n in ("report.html", *LIST_NAMES.values())}
    assert links["_link_kaleyra_preflight_report.html"] == _report_path(served)  # no base_url: relative
    assert links["_link_kaleyra_preflight_invalid.csv"] == _report_path(served, "invalid.csv")
    answer = _get(served, links["_link_kaleyra_preflight_report.html"], served["tokens"]["viewer"])
    assert answer.status_code == 200 and "<h1>spring_campaign: preflight of " in answer.text


@pytest.mark.parametrize("page", ["report.html", "rcs.csv", "runs page"])
def test_routes_refuse_whoever_may_not_read_the_dag(served: dict[str, Any], page: str) -> None:
    path = f"/kaleyra-preflight/runs/{DAG_ID}" if page == "runs page" else _report_path(served, page)
    assert _get(served, path).status_code == 401  # no token, no cookie
    assert _get(served, path, "not-a-jwt").status_code == 403  # Airflow: invalid token
    refused = _get(served, path, served["tokens"]["no_role"])  # a valid JWT, no permission on the DAG
    assert refused.status_code == 403 and "+1415" not in refused.text
    forged = _get(served, path, served["tokens"]["viewer"][:-4] + "AAAA")  # signature broken
    assert forged.status_code == 403
    assert _get(served, path, served["tokens"]["viewer"]).status_code == 200


def test_files_open_through_the_api_server(served: dict[str, Any]) -> None:
    viewer = served["tokens"]["viewer"]
    report = _get(served, _report_path(served), viewer)
    assert report.headers["content-type"].startswith("text/html")
    assert report.headers["content-security-policy"].startswith("default-src 'none'")  # no script runs in it
    assert report.text == (served["run_dir"] / "report.html").read_text()
    # the report's relative links resolve to the same route
    rcs = _get(served, _report_path(served, "rcs.csv"), viewer)
    assert rcs.status_code == 200 and rcs.content == (served["run_dir"] / "rcs.csv").read_bytes()
    assert rcs.headers["content-disposition"].startswith(f'attachment; filename="{DAG_ID}_')
    summary = _get(served, _report_path(served, "summary.json"), viewer).json()
    assert summary["dag_id"] == DAG_ID and summary["channels"]["rows"]["rcs"] == 4
    # a browser session's cookie works like the header
    cookie = httpx.get(served["url"] + _report_path(served), cookies={"_token": viewer}, timeout=30)
    assert cookie.status_code == 200
    for bad in ("work%2Frows.csv", "..%2F..%2Fetc%2Fpasswd", "airflow.cfg"):
        assert _get(served, _report_path(served, bad), viewer).status_code == 404
    other_run = _report_path(served).replace("/build_report/", "/prepare/")
    assert _get(served, other_run, viewer).status_code == 404


def test_runs_page_lists_the_dag_runs_with_their_channel_mix(served: dict[str, Any]) -> None:
    page = _get(served, f"/kaleyra-preflight/runs/{DAG_ID}", served["tokens"]["viewer"])
    assert page.status_code == 200
    [run_id] = {link["run_id"] for link in served["links"]}
    assert f"<td>{run_id}</td>" in page.text
    assert "<td class=n>10</td>" in page.text and "<td class=n>50.0%</td>" in page.text  # rows; 4 of 8 RCS
    assert "<title>RCS: 4</title>" in page.text and "<title>none (invalid): 1</title>" in page.text
    assert f'href="{_report_path(served)}"' in page.text
    empty = _get(served, "/kaleyra-preflight/runs/another_dag", served["tokens"]["viewer"])
    assert empty.status_code == 200 and "No preflight report has been recorded" in empty.text


def test_plugin_serves_the_views_and_adds_a_dag_tab() -> None:
    from airflow.plugins_manager import is_valid_plugin

    assert is_valid_plugin(views.KaleyraPreflightPlugin)
    [entry] = views.KaleyraPreflightPlugin.fastapi_apps
    assert entry["app"] is views.app and entry["url_prefix"] == "/kaleyra-preflight"
    [tab] = views.KaleyraPreflightPlugin.external_views
    assert tab["destination"] == "dag" and tab["href"] == "/kaleyra-preflight/runs/{DAG_ID}"
    plugins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
        "airflow.plugins"
    ]
    assert plugins["kaleyra_preflight"] == "airflow_provider_kaleyra.preflight.views:KaleyraPreflightPlugin"


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.fail(f"chromium is not installed: {APT_LINE}")
    profile = Path(os.environ.get("TMPDIR", "/tmp"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,2000"]
    with_profile = [f"--user-data-dir={profile / f'chromium-{os.getpid()}'}"]
    return subprocess.run(
        [browser, *flags, *with_profile, *args], capture_output=True, text=True, timeout=120
    )


def test_a_browser_signed_in_to_airflow_renders_the_report(served: dict[str, Any], tmp_path: Path) -> None:
    """Chromium follows the extra link with the UI's session cookie and renders the report."""
    login = (
        f"{served['url']}/test-login?token={served['tokens']['viewer']}&next={quote(_report_path(served))}"
    )
    dom = _chromium("--dump-dom", login)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<h1>spring_campaign: preflight of " in dom.stdout
    assert "Of 10 audience rows, 4 to RCS (40.0%), 2 to SMS over IP (20.0%), 3 to SMS (30.0%)" in dom.stdout
    assert 'aria-label="Channel of each audience row"' in dom.stdout  # the SVG chart is in the page
    shot = tmp_path / "report.png"
    assert _chromium(f"--screenshot={shot}", login).returncode == 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    # without the session, the browser gets the refusal, not the report
    refused = _chromium("--dump-dom", served["url"] + _report_path(served))
    assert "Not authenticated" in refused.stdout and "preflight of" not in refused.stdout
