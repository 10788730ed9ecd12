"""A 20,000-number SOIP check on Airflow components that share no directory but the DAGs.

API server (with the callback receiver the plugin mounts), scheduler (LocalExecutor: the tasks
run under it), DAG processor and triggerer each run with their own ``AIRFLOW_HOME``, as on
separate hosts. They share the DAGs folder, the metadata database and the callback store (two
PostgreSQL databases) and an object store (a ``file://`` directory no ``AIRFLOW_HOME`` contains).
The simulator POSTs every callback to the API server; the sensor waits for them deferred, in the
triggerer. Every number must come out with its answer, and no XCom of the run may hold a number.
"""

from __future__ import annotations

import json
import os
import random
import re
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_deployment import AirflowDeployment, PostgresDatabase

from kaleyra_simulator import CallbackAuth, KaleyraSimulator, SimulatorConfig, soip_answer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

DAG_ID = "kaleyra_soip_multi_host"
COUNT = 20_000
SECRET = "e2e-multi-host-secret-51c9"
PROFILE = "e2e-multi-host"

DAG_FILE = textwrap.dedent(
    '''
    """20,000 numbers by SOIP: submit from a worker, wait deferred in the triggerer."""
    import os
    from datetime import datetime

    from airflow.sdk import DAG

    from airflow_provider_kaleyra.operators.soip import KaleyraSoipCapabilityCheckOperator
    from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor

    STORE = os.environ["KALEYRA_E2E_OBJECT_STORE"]

    with DAG("kaleyra_soip_multi_host", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
        check = KaleyraSoipCapabilityCheckOperator(
            task_id="soip_check", audience=STORE + "/audience.txt", chunk_size=500
        )
        KaleyraSoipCallbackSensor(
            task_id="wait_for_callbacks",
            submission=check.output,
            output=STORE + "/results-{{ run_id | replace(':', '-') | replace('+', '-') }}.jsonl",
            deferrable=True,
            poll_interval=3,
            timeout=600,
        )
    '''
)


def _audience(count: int) -> list[str]:
    """Distinct valid Indian mobile numbers, a third of them written nationally (read with region IN)."""
    import phonenumbers

    rng = random.Random(20_000)
    numbers: dict[str, None] = {}
    while len(numbers) < count:
        e164 = f"+91{rng.choice('6789')}{rng.randrange(10**9):09d}"
        if e164 not in numbers and phonenumbers.is_valid_number(phonenumbers.parse(e164)):
            numbers[e164] = None
    return list(numbers)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowDeployment]:
    server = os.environ.get("KALEYRA_TEST_POSTGRES_URL")
    if not server:
        pytest.fail("KALEYRA_TEST_POSTGRES_URL is unset: components on separate homes share PostgreSQL")
    root = tmp_path_factory.mktemp("multi-host")
    dags, store = root / "dags", root / "object-store"
    dags.mkdir()
    store.mkdir()
    (dags / "soip_multi_host.py").write_text(DAG_FILE)
    metadata, callbacks = PostgresDatabase(server, "e2e_mh_airflow"), PostgresDatabase(server, "e2e_mh_cb")
    databases = [metadata.create(), callbacks.create()]
    deployment = AirflowDeployment(root / "homes", dags, sql_alchemy_conn=metadata.url, component_homes=True)
    simulator = KaleyraSimulator(
        SimulatorConfig(
            latency=0.005,
            callback_url=f"{deployment.url}/kaleyra/soip/callback",
            callback_auth=CallbackAuth("header", "X-Kaleyra-Secret", SECRET),
            callback_delay=5.0,  # later than the sensor's first look: it has to defer
        )
    ).start()
    deployment.env["KALEYRA_E2E_OBJECT_STORE"] = f"file://{store}"
    deployment.env["AIRFLOW_CONN_KALEYRA_DEFAULT"] = simulator.connection_json(
        default_region="IN",
        callback_profile_id=PROFILE,
        callback_secret=SECRET,
        callback_store_url=callbacks.url,
        rate_limit=200,
        max_concurrency=8,
    )
    deployment.simulator = simulator  # type: ignore[attr-defined]
    deployment.object_store = store  # type: ignore[attr-defined]
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()
        simulator.stop()
        for database in databases:
            database.drop()


def test_soip_check_of_20000_numbers_across_separate_homes(deployment: AirflowDeployment) -> None:
    numbers = _audience(COUNT)
    store: Path = deployment.object_store  # type: ignore[attr-defined]
    (store / "audience.txt").write_text(
        "".join((n if i % 3 else n[3:]) + "\n" for i, n in enumerate(numbers))
    )
    homes = {
        name: deployment.home_of(name) for name in ("api-server", "scheduler", "dag-processor", "triggerer")
    }
    assert len(set(homes.values())) == 4

    deployment.wait_for_dags([DAG_ID])
    started = time.monotonic()
    run_id = deployment.trigger(DAG_ID, {})
    states = deployment.wait_for_runs([(DAG_ID, run_id)], timeout=720)
    if states[(DAG_ID, run_id)] != "success":
        pytest.fail(deployment.diagnostics(DAG_ID, run_id))
    elapsed = time.monotonic() - started

    # every number answered, as the simulator decided
    [output] = store.glob("results-*.jsonl")
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(lines) == COUNT
    assert {line["number"] for line in lines} == set(numbers)
    wrong = [
        line["number"]
        for line in lines
        if line["outcome"] != ("capable" if soip_answer(line["number"].lstrip("+")) else "not_capable")
    ]
    assert wrong == []

    # the sensor deferred: it waited in the triggerer (whose home has the trigger's log), not a worker
    sensor_logs = [t for name, t in deployment.task_logs(DAG_ID, run_id) if "wait_for_callbacks" in name]
    assert any("Deferring until" in text for text in sensor_logs), sensor_logs

    # no XCom of the run holds a number, read back as a user would: over the REST API
    xcoms = []
    for ti in deployment.task_instances(DAG_ID, run_id):
        base = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/xcomEntries"
        for entry in deployment.api("GET", base)["xcom_entries"]:
            xcoms.append(deployment.api("GET", f"{base}/{entry['key']}"))
    text = json.dumps(xcoms)
    assert '"submission_id"' in text and '"output"' in text  # the summaries are there
    national = {n[3:] for n in numbers}
    runs = re.findall(r"\d{10,}", text)
    assert not [run for run in runs if any(run[i : i + 10] in national for i in range(len(run) - 9))]
    print(f"{COUNT:,} numbers by SOIP on separate homes in {elapsed:.0f} s; XCom {len(text):,} bytes")
