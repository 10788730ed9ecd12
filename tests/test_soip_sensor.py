"""KaleyraSoipCallbackSensor and its trigger: unit tests, then real ``dag.test()`` runs.

The ``dag.test()`` runs happen in one subprocess with its own AIRFLOW_HOME and metadata DB, so they
neither depend on nor disturb the Airflow configuration other tests in this session have loaded.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_provider_kaleyra.callbacks.parsing import RawCallback
from airflow_provider_kaleyra.callbacks.store import CallbackStore
from airflow_provider_kaleyra.triggers.kaleyra import KaleyraSoipCallbackTrigger

NUMBERS = ["+919876543210", "+919876543211", "+919876543212", "+919876543213"]


def _add(store: CallbackStore, number: str, capable: object, at: datetime) -> None:
    body = json.dumps({"number": number.lstrip("+"), "soip_capable": capable}).encode()
    store.add_callback(RawCallback("POST", body, "application/json", received_at=at))


# -- trigger ------------------------------------------------------------------------------------


def test_trigger_serialize_round_trips():
    trigger = KaleyraSoipCallbackTrigger(
        watch_id="w1",
        since=datetime(2026, 1, 1, tzinfo=UTC),
        total=10,
        required=8,
        kaleyra_conn_id="k",
        store_url="sqlite:////tmp/x.db",
        poll_interval=5.0,
        deadline="2026-01-01T01:00:00+00:00",
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_kaleyra.triggers.kaleyra.KaleyraSoipCallbackTrigger"
    json.dumps(kwargs)  # storable as is
    from airflow.sdk._shared.module_loading import import_string

    again = import_string(classpath)(**kwargs)
    assert again.serialize() == (classpath, kwargs)


def _run(trigger):
    async def first():
        return await anext(trigger.run())

    return asyncio.run(asyncio.wait_for(first(), 20)).payload


def test_trigger_fires_when_enough_numbers_answered(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = CallbackStore(url)
    since = datetime.now(UTC) - timedelta(minutes=1)
    watch = store.register_watch(NUMBERS)
    _add(store, NUMBERS[0], True, since + timedelta(seconds=1))
    _add(store, NUMBERS[1], False, since - timedelta(seconds=1))  # before the submission: ignored
    trigger = KaleyraSoipCallbackTrigger(
        watch_id=watch, since=since, total=4, required=1, store_url=url, poll_interval=0.05
    )
    assert _run(trigger) == {
        "status": "success",
        "answered": 1,
        "total": 4,
        "required": 1,
        "watch_id": watch,
        "message": None,
    }


def test_trigger_reports_timeout_with_answered_count(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = CallbackStore(url)
    watch = store.register_watch(NUMBERS)
    deadline = datetime.now(UTC) + timedelta(seconds=0.3)
    trigger = KaleyraSoipCallbackTrigger(
        watch_id=watch,
        since=datetime.now(UTC),
        total=4,
        required=4,
        store_url=url,
        poll_interval=0.05,
        deadline=deadline,
    )
    event = _run(trigger)
    assert (event["status"], event["answered"]) == ("timeout", 0)


def test_trigger_reads_the_store_url_from_the_connection(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'conn.db'}"
    conn = {
        "conn_type": "kaleyra",
        "login": "AC-TEST-SID",
        "password": "test-api-key-0123456789",
        "extra": {"callback_secret": "cb-secret-xyz", "callback_store_url": url},
    }
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_TRIGGER_TEST", json.dumps(conn))
    store = CallbackStore(url)
    watch = store.register_watch(NUMBERS[:1])
    _add(store, NUMBERS[0], True, datetime.now(UTC))
    trigger = KaleyraSoipCallbackTrigger(
        watch_id=watch,
        since=datetime.now(UTC) - timedelta(minutes=1),
        total=1,
        required=1,
        kaleyra_conn_id="kaleyra_trigger_test",
        poll_interval=0.05,
    )
    assert _run(trigger)["status"] == "success"


# -- sensor construction ------------------------------------------------------------------------


def test_sensor_arguments():
    from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor

    sensor = KaleyraSoipCallbackSensor(task_id="s", numbers=NUMBERS, output="/tmp/x.jsonl")
    assert sensor.output_path == "/tmp/x.jsonl"
    assert set(sensor.template_fields) == {
        "numbers",
        "submission",
        "kaleyra_conn_id",
        "store_url",
        "output_path",
        "storage_conn_id",
    }
    with pytest.raises(ValueError, match="min_answered_ratio"):
        KaleyraSoipCallbackSensor(task_id="s2", numbers=NUMBERS, min_answered_ratio=0)
    with pytest.raises(TypeError):
        KaleyraSoipCallbackSensor("s3")  # keyword-only


def test_a_password_in_an_explicit_store_url_is_masked_in_the_rendered_fields():
    from airflow.sdk.execution_time.task_runner import _serialize_rendered_fields

    from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor

    password = "SECRET-STORE-PW-7f3a9c"
    sensor = KaleyraSoipCallbackSensor(
        task_id="s",
        numbers=NUMBERS,
        store_url="postgresql+psycopg://kaleyra:{{ params.pw }}@db.internal/callbacks",
    )
    sensor.render_template_fields({"params": {"pw": password}})
    assert password in sensor.store_url  # the sensor still needs it
    rendered = json.dumps(_serialize_rendered_fields(sensor))  # what Airflow stores and shows
    assert "db.internal" in rendered and password not in rendered


# -- dag.test() -----------------------------------------------------------------------------------

DAG_FILE = textwrap.dedent(
    '''
    """Scenarios for test_soip_sensor; dag.test() runs each when executed as a script."""
    import json, os, threading, time
    from datetime import datetime, timedelta, timezone

    from airflow.sdk import DAG, task

    from airflow_provider_kaleyra.callbacks.parsing import RawCallback
    from airflow_provider_kaleyra.callbacks.store import CallbackStore
    from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor

    OUT = os.environ["SCENARIO_OUT"]
    SUBMITTED = os.environ["SCENARIO_SUBMITTED_AT"]
    NUMBERS = json.loads(os.environ["SCENARIO_NUMBERS"])
    SUBMISSION = {"numbers": NUMBERS, "submitted_at": SUBMITTED, "responses": []}

    def scenario(dag_id, **sensor_kwargs):
        with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            wait = KaleyraSoipCallbackSensor(task_id="wait", **sensor_kwargs)

            @task
            def keep(result):
                with open(os.path.join(OUT, dag_id + ".json"), "w") as fh:
                    json.dump(result, fh)

            keep(wait.output)
        return dag

    common = dict(submission=SUBMISSION, poke_interval=0.2)
    dags = {
        "poke_ok": scenario("poke_ok", store_url=os.environ["STORE_A"], min_answered_ratio=0.75, **common),
        "poke_output": scenario(
            "poke_output", numbers=NUMBERS[:2], submission=SUBMISSION, store_url=os.environ["STORE_A"],
            output=os.path.join(OUT, "out", "results.jsonl"), poke_interval=0.2,
        ),
        "poke_timeout": scenario("poke_timeout", store_url=os.environ["STORE_EMPTY"], timeout=1, **common),
        "poke_soft": scenario("poke_soft", store_url=os.environ["STORE_EMPTY"], timeout=1, soft_fail=True, **common),
        # No store_url: the connection's callback_store_url (STORE_B) is used.
        "defer_ok": scenario("defer_ok", deferrable=True, poll_interval=0.2, timeout=30, **common),
        "defer_timeout": scenario(
            "defer_timeout", store_url=os.environ["STORE_EMPTY"], deferrable=True, timeout=1.5, **common
        ),
        "defer_soft": scenario(
            "defer_soft", store_url=os.environ["STORE_EMPTY"], deferrable=True, timeout=1, soft_fail=True,
            **common,
        ),
    }

    def late_callbacks():
        """Answers that arrive once defer_ok has deferred (its watch exists), never before."""
        from sqlalchemy import func, select

        from airflow_provider_kaleyra.callbacks.store import watches_table

        store = CallbackStore(os.environ["STORE_B"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with store.engine.connect() as conn:
                if conn.execute(select(func.count()).select_from(watches_table)).scalar():
                    break
            time.sleep(0.1)
        time.sleep(0.5)
        for number in NUMBERS[1:]:
            body = json.dumps({"msisdn": number.lstrip("+"), "status": "capable"}).encode()
            store.add_callback(RawCallback("POST", body, "application/json"))

    if __name__ == "__main__":
        states = {}
        for name, dag in dags.items():
            if name == "defer_ok":
                threading.Thread(target=late_callbacks, daemon=True).start()
            started = time.monotonic()
            dr = dag.test()
            states[name] = {
                "run": str(dr.state),
                "tasks": {ti.task_id: str(ti.state) for ti in dr.get_task_instances()},
                "seconds": time.monotonic() - started,
            }
        with open(os.path.join(OUT, "states.json"), "w") as fh:
            json.dump(states, fh)
    '''
)


@pytest.fixture(scope="session")
def dag_runs(tmp_path_factory):
    """Migrate a throwaway metadata DB and run every scenario once; returns states, outputs, log."""
    root = tmp_path_factory.mktemp("soip_sensor")
    home, out, dags = root / "airflow", root / "out", root / "airflow" / "dags"
    dags.mkdir(parents=True)
    out.mkdir()
    (dags / "soip_scenarios.py").write_text(DAG_FILE)

    submitted = datetime.now(UTC) - timedelta(minutes=10)
    stores = {k: f"sqlite:///{root / (k.lower() + '.db')}" for k in ("STORE_A", "STORE_B", "STORE_EMPTY")}
    a = CallbackStore(stores["STORE_A"])
    _add(a, NUMBERS[0], True, submitted + timedelta(minutes=1))
    _add(a, NUMBERS[1], False, submitted + timedelta(minutes=2))
    _add(a, NUMBERS[2], "MSG-WHO-KNOWS", submitted + timedelta(minutes=3))
    _add(a, NUMBERS[3], True, submitted - timedelta(minutes=1))  # answered an earlier check: missing
    b = CallbackStore(stores["STORE_B"])
    _add(b, NUMBERS[0], False, submitted + timedelta(minutes=1))

    conn = {
        "conn_type": "kaleyra",
        "login": "AC-TEST-SID",
        "password": "test-api-key-0123456789",
        "extra": {"callback_secret": "cb-secret-xyz", "callback_store_url": stores["STORE_B"]},
    }
    env = {
        **os.environ,
        **stores,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW_CONN_KALEYRA_DEFAULT": json.dumps(conn),
        "SCENARIO_OUT": str(out),
        "SCENARIO_SUBMITTED_AT": submitted.isoformat(),
        "SCENARIO_NUMBERS": json.dumps(NUMBERS),
    }
    bindir = Path(sys.executable).parent
    started = time.monotonic()
    migrate = subprocess.run(
        [str(bindir / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    migrated = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(dags / "soip_scenarios.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    log = proc.stdout + proc.stderr  # dag.test() prints task logs here
    (root / "run.log").write_text(log)
    (root / "timing.txt").write_text(
        f"migrate {migrated - started:.1f}s, scenarios {time.monotonic() - migrated:.1f}s"
    )
    assert proc.returncode == 0 and (out / "states.json").exists(), log[-5000:]
    outputs = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json") if p.stem != "states"}
    return {
        "states": json.loads((out / "states.json").read_text()),
        "outputs": outputs,
        "log": log,
        "out": out,
        "store_b": stores["STORE_B"],
    }


def test_poke_mode_returns_summary_and_per_number_results(dag_runs):
    assert dag_runs["states"]["poke_ok"]["tasks"] == {"wait": "success", "keep": "success"}
    result = dag_runs["outputs"]["poke_ok"]
    summary = result["summary"]
    assert {
        k: summary[k] for k in ("total", "answered", "capable", "not_capable", "unparseable", "missing")
    } == {"total": 4, "answered": 3, "capable": 1, "not_capable": 1, "unparseable": 1, "missing": 1}
    assert result["results"]["+919876543210"]["outcome"] == "capable"
    assert result["results"]["+919876543213"] == {"outcome": "missing"}


def test_poke_mode_writes_json_lines_when_output_is_set(dag_runs):
    result = dag_runs["outputs"]["poke_output"]
    path = Path(result["output"])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["number"] for line in lines] == NUMBERS[:2]
    assert [line["outcome"] for line in lines] == ["capable", "not_capable"]
    assert "results" not in result and result["summary"]["total"] == 2


def test_deferrable_mode_waits_for_late_callbacks(dag_runs):
    assert dag_runs["states"]["defer_ok"]["tasks"] == {"wait": "success", "keep": "success"}
    summary = dag_runs["outputs"]["defer_ok"]["summary"]
    assert (summary["answered"], summary["capable"], summary["not_capable"]) == (4, 3, 1)
    assert "running trigger in line" in dag_runs["log"]
    # The watch registered for the trigger is dropped once the sensor completes.
    from sqlalchemy import func, select

    from airflow_provider_kaleyra.callbacks.store import watches_table

    with CallbackStore(dag_runs["store_b"]).engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(watches_table)).scalar() == 0


@pytest.mark.parametrize("dag_id", ["poke_timeout", "defer_timeout"])
def test_timeout_fails_and_names_the_missing_count(dag_runs, dag_id):
    assert dag_runs["states"][dag_id]["tasks"]["wait"] == "failed"
    logs = _scenario_log(dag_runs, dag_id)
    assert "AirflowSensorTimeout" in logs
    assert "4 of 4 numbers still have no SOIP callback" in logs


@pytest.mark.parametrize("dag_id", ["poke_soft", "defer_soft"])
def test_soft_fail_skips_on_timeout(dag_runs, dag_id):
    assert dag_runs["states"][dag_id]["tasks"] == {"wait": "skipped", "keep": "skipped"}


def test_numbers_are_masked_in_logs(dag_runs):
    for number in NUMBERS:
        assert number not in dag_runs["log"]
    from airflow_provider_kaleyra.phone import mask

    assert mask(NUMBERS[3]) in _scenario_log(dag_runs, "poke_ok")


def _scenario_log(dag_runs, dag_id: str) -> str:
    """The part of the run's output between the start and the end of one scenario's sensor task."""
    log = dag_runs["log"]
    start = log.index(f"<TaskInstance: {dag_id}.wait ")
    end = log.index("[DAG TEST] end task task_id=wait", start)
    return log[start:end]
