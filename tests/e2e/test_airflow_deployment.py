"""Both example DAGs on a real Airflow 3 deployment, triggered through the REST API.

The example files are copied into a SUBFOLDER of the DAGs folder (``dags/kaleyra/``), as users deploy
them, and the preflight is triggered with its defaults (an empty ``conf``), as the UI's form would.

Scheduler, API server (with the Kaleyra callback receiver mounted by the plugin), triggerer and
DAG processor run as separate processes with the LocalExecutor, on a fresh PostgreSQL database
(SQLite when ``KALEYRA_TEST_POSTGRES_URL`` is unset). The Kaleyra simulator answers the lookups
and POSTs the SOIP callbacks to ``<api server>/kaleyra/soip/callback`` with the shared secret.
The outputs are checked number by number against the simulator's deterministic answers.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from airflow_deployment import AirflowDeployment, PostgresDatabase

from airflow_provider_kaleyra.numbers.normalize import normalize
from airflow_provider_kaleyra.preflight.channels import DEFAULT_SOIP_REGIONS, region_of
from kaleyra_simulator import (
    CallbackAuth,
    KaleyraSimulator,
    SimulatorConfig,
    rcs_answer,
    soip_answer,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = REPO / "example_dags"
CAMPAIGN, SOIP = "example_kaleyra_campaign_preflight", "example_kaleyra_soip_check"
AUDIENCE_SIZE, SHARDS = 10_000, 4  # the DAG's defaults
REGION = "US"
CALLBACK_SECRET = "e2e-callback-secret-7f3a"
CLIENT_ID, CLIENT_SECRET = "e2e-console", "e2e-client-secret-91kd"  # advanced callback auth
# Advanced auth: tokens live 2 s (the receiver accepts 1 s at least; it tells Kaleyra expires_in = 1 s), and
# an advanced run's callbacks are spread over CALLBACK_SPREAD s, so its token expires mid-run.
TOKEN_LIFETIME, CALLBACK_SPREAD = 2, 5.0
PROFILE = "e2e-profile"
RUN_TIMEOUT = 360.0


def _soip_numbers() -> list[str]:
    """300 valid Indian mobile numbers in mixed formats, one repeated, and two that are not numbers."""
    import phonenumbers

    rng = random.Random(11)
    numbers: list[str] = []
    while len(numbers) < 300:
        e164 = f"+91{rng.choice('6789')}{rng.randrange(10**9):09d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(e164)) and e164 not in numbers:
            numbers.append(e164)
    mixed = [n if i % 3 else f"+91 {n[3:8]} {n[8:]}" for i, n in enumerate(numbers)]
    return [*mixed, numbers[0], "not a number", "12345"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowDeployment]:
    home = tmp_path_factory.mktemp("airflow-home")
    server = os.environ.get("KALEYRA_TEST_POSTGRES_URL")
    databases: list[PostgresDatabase] = []
    if server:
        metadata, callbacks = (
            PostgresDatabase(server, "e2e_airflow"),
            PostgresDatabase(server, "e2e_callbacks"),
        )
        databases += [metadata.create(), callbacks.create()]
        metadata_url, store_url = metadata.url, callbacks.url
    else:  # works, but SQLite serialises every writer: PostgreSQL is what setup.sh gives the test run
        metadata_url, store_url = None, f"sqlite:///{home / 'kaleyra_callbacks.db'}"
    dags = home / "dags"
    shutil.copytree(EXAMPLE_DAGS, dags / "kaleyra", ignore=shutil.ignore_patterns("__pycache__"))
    deployment = AirflowDeployment(home, dags, sql_alchemy_conn=metadata_url)
    simulator = KaleyraSimulator(
        SimulatorConfig(
            latency=0.01,
            callback_url=f"{deployment.url}/kaleyra/soip/callback",
            callback_auth=CallbackAuth("header", "X-Kaleyra-Secret", CALLBACK_SECRET),
            callback_delay=10.0,  # later than the sensor's first look: it has to defer
        )
    ).start()
    deployment.env["AIRFLOW_CONN_KALEYRA_DEFAULT"] = simulator.connection_json(
        default_region=REGION,
        callback_profile_id=PROFILE,
        callback_secret=CALLBACK_SECRET,
        callback_client_id=CLIENT_ID,
        callback_client_secret=CLIENT_SECRET,
        callback_token_lifetime=TOKEN_LIFETIME,
        callback_store_url=store_url,
        rate_limit=100,
        max_concurrency=4,
    )
    deployment.simulator = simulator  # type: ignore[attr-defined]
    try:
        deployment.start()
        deployment.api(
            "POST",
            "/pools",
            json={
                "name": "kaleyra_api",
                "slots": 2,
                "description": "Kaleyra API: concurrent RCS lookup shards",
            },
        )
        yield deployment
    finally:
        deployment.stop()
        simulator.stop()
        for database in databases:
            database.drop()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _run_dir(base: Path, run_id: str) -> Path:
    return base / re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_")


def test_both_example_dags_on_a_real_deployment(deployment: AirflowDeployment) -> None:
    started = time.monotonic()
    deployment.wait_for_dags([CAMPAIGN, SOIP])
    # The provider's plugin mounted the callback receiver on the API server, and it wants the secret.
    receiver, http = f"{deployment.url}/kaleyra", requests.Session()
    http.trust_env = False  # no proxy for 127.0.0.1
    assert http.get(f"{receiver}/health", timeout=10).json() == {"status": "ok"}
    assert (
        http.post(f"{receiver}/soip/callback", json={"number": "919876543210"}, timeout=10).status_code == 401
    )
    out = deployment.home / "outputs"
    campaign_run = deployment.trigger(CAMPAIGN, {})  # every param at its default
    soip_numbers = _soip_numbers()
    soip_run = deployment.trigger(SOIP, {"numbers": soip_numbers, "output_location": str(out / "soip")})
    runs = [(CAMPAIGN, campaign_run), (SOIP, soip_run)]
    states = deployment.wait_for_runs(runs, timeout=RUN_TIMEOUT)
    if any(state != "success" for state in states.values()):
        pytest.fail(
            f"DAG runs did not succeed: {states}\n" + "\n".join(deployment.diagnostics(*run) for run in runs)
        )
    print(f"both runs succeeded {time.monotonic() - started:.0f} s after the deployment was up")

    # What a failure would print: every task's state (and the logs of the unsuccessful ones).
    assert "preflight.build_report[-1]: success" in deployment.diagnostics(CAMPAIGN, campaign_run)
    default_output = deployment.home / "kaleyra" / "preflight"
    _check_campaign(deployment, campaign_run, _run_dir(default_output, campaign_run))
    _check_soip(deployment, soip_run, _run_dir(out / "soip", soip_run), soip_numbers)


def _expected(phone: str) -> tuple[str, str]:
    """(channel, e164) of one audience cell, from the simulator's deterministic answers."""
    e164 = normalize(phone, REGION).e164
    if e164 is None:
        return "none", ""
    if rcs_answer(e164)["rcsEnabled"]:
        return "rcs", e164
    if region_of(e164) in DEFAULT_SOIP_REGIONS:
        return ("soip" if soip_answer(e164) else "sms"), e164
    return "sms", e164


def _check_campaign(deployment: AirflowDeployment, run_id: str, run_dir: Path) -> None:
    # The sample the first task generated under the deployment's Airflow home.
    audience = _rows(deployment.home / "kaleyra" / "samples" / f"audience_{AUDIENCE_SIZE}.csv")
    assert len(audience) == AUDIENCE_SIZE
    listed: dict[str, dict[str, str]] = {}
    for name in ("rcs", "soip", "sms", "invalid"):
        for record in _rows(run_dir / f"{name}.csv"):
            assert record["customer_id"] not in listed, "a row is in two lists"
            listed[record["customer_id"]] = record
    # Number by number: every row once, in the list of its channel, with its own columns kept.
    assert len(listed) == AUDIENCE_SIZE
    for row in audience:
        got = listed[row["customer_id"]]
        assert (got["channel"], got["e164"]) == _expected(row["phone"]), row["customer_id"]
        assert (got["phone"], got["segment"]) == (row["phone"], row["segment"])
        assert got["reason"]
    reasons = {r["reason"] for r in listed.values()}
    assert {"rcs_enabled", "soip_capable", "soip_not_capable", "not_rcs_capable"} <= reasons
    assert all(r["reason"].startswith("invalid: ") for r in listed.values() if r["channel"] == "none")

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["channels"]["rows"] == dict(Counter(_expected(r["phone"])[0] for r in audience))
    assert summary["soip"]["asked"] == summary["soip"]["answered"] > 0
    report = (run_dir / "report.html").read_text()
    assert 'href="rcs.csv"' in report and "Channel of each audience row" in report

    # The lookups ran as mapped task instances in the pool; the SOIP sensor deferred.
    tis = deployment.task_instances(CAMPAIGN, run_id)
    lookups = [ti for ti in tis if ti["task_id"] == "preflight.rcs_lookup"]
    assert sorted(ti["map_index"] for ti in lookups) == list(range(SHARDS))
    assert {ti["pool"] for ti in lookups} == {"kaleyra_api"}
    assert all(ti["try_number"] == 1 for ti in tis)
    sensor_logs = [
        text for name, text in deployment.task_logs(CAMPAIGN, run_id) if "task_id=preflight.soip_wait" in name
    ]
    assert any("Deferring until" in text for text in sensor_logs), sensor_logs
    # The channel lists are assets: one event each, carrying the list's location.
    events = deployment.api("GET", "/assets/events", params={"source_dag_id": CAMPAIGN, "limit": 100})
    located = {e["extra"].get("location") for e in events["asset_events"] if e["source_run_id"] == run_id}
    assert located == {f"file://{run_dir}/{name}.csv" for name in ("rcs", "soip", "sms", "invalid")}


def _check_soip(deployment: AirflowDeployment, run_id: str, run_dir: Path, numbers: list[str]) -> None:
    valid = list(dict.fromkeys(e for e in (normalize(n, REGION).e164 for n in numbers) if e))
    assert len(valid) == 300
    capable = {r["e164"] for r in _rows(run_dir / "soip_capable.csv")}
    not_capable = {r["e164"] for r in _rows(run_dir / "soip_not_capable.csv")}
    missing = _rows(run_dir / "soip_missing.csv")
    assert missing == []  # a callback for every number
    assert capable == {n for n in valid if soip_answer(n)}
    assert not_capable == {n for n in valid if not soip_answer(n)}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["counts"]["submitted"] == 300 and summary["counts"]["invalid"] == 2
    )  # "12345", "not a number"
    assert summary["callback_profile_id"] == PROFILE

    # The sensor really deferred: it waited in the triggerer, not in a worker slot.
    sensor_logs = [
        text for name, text in deployment.task_logs(SOIP, run_id) if "task_id=wait_for_callbacks" in name
    ]
    assert any("Deferring until" in text for text in sensor_logs), sensor_logs


# Issue 22: every way a Kaleyra callback profile can deliver, to the receiver on the API server.
CALLBACK_MODES = [
    ("basic", "xml", "PUT"),
    ("advanced", "json", "POST"),
    ("advanced", "form", "PUT"),
    ("advanced-basic", "text", "GET"),
    ("header", "text", "POST"),
]


@pytest.mark.parametrize(
    ("auth", "body", "method"), CALLBACK_MODES, ids=["-".join(m) for m in CALLBACK_MODES]
)
def test_soip_check_with_each_callback_profile_mode(
    deployment: AirflowDeployment, tmp_path: Path, auth: str, body: str, method: str
) -> None:
    simulator = deployment.simulator  # type: ignore[attr-defined]
    credentials = {
        "header": CallbackAuth("header", "X-Kaleyra-Secret", CALLBACK_SECRET),
        "basic": CallbackAuth("basic", "kaleyra", CALLBACK_SECRET),
        "advanced": CallbackAuth("advanced", CLIENT_ID, CLIENT_SECRET),
        "advanced-basic": CallbackAuth("advanced", CLIENT_ID, CLIENT_SECRET, "basic"),
    }[auth]
    spread = CALLBACK_SPREAD if auth.startswith("advanced") else 0.0
    simulator.configure(
        callback_auth=credentials, callback_body=body, callback_method=method, callback_spread=spread
    )
    tokens_before = simulator.stats()["callback_tokens"]
    try:
        deployment.wait_for_dags([SOIP])
        numbers = _soip_numbers()
        out = tmp_path / "soip"
        run_id = deployment.trigger(SOIP, {"numbers": numbers, "output_location": str(out)})
        states = deployment.wait_for_runs([(SOIP, run_id)], timeout=RUN_TIMEOUT)
        if set(states.values()) != {"success"}:
            pytest.fail(
                f"SOIP run with {auth}/{body}/{method}: {states}\n{deployment.diagnostics(SOIP, run_id)}"
            )
        _check_soip(deployment, run_id, _run_dir(out, run_id), numbers)  # every number answered
        assert simulator.stats()["callbacks"]["failed"] == 0
        if auth.startswith("advanced"):  # a token for the run, and new ones as each expired mid-run
            assert simulator.stats()["callback_tokens"] - tokens_before >= 2
    finally:
        simulator.configure(
            callback_auth=CallbackAuth("header", "X-Kaleyra-Secret", CALLBACK_SECRET),
            callback_body="json",
            callback_method="POST",
            callback_spread=0.0,
        )
    # No secret and no token in what the API server printed (its access log included).
    printed = (deployment.home / "api-server.out").read_text(errors="replace")
    for secret in (CALLBACK_SECRET, CLIENT_SECRET):
        assert secret not in printed
    assert "eyJ" not in printed, "a JWT (an advanced-auth token) in the API server's output"
