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

from airflow_provider_kaleyra.callbacks.bodies import RawCallback
from airflow_provider_kaleyra.callbacks.store import CallbackStore
from airflow_provider_kaleyra.triggers.kaleyra import KaleyraSoipCallbackTrigger

NUMBERS = ["+919876543210", "+919876543211", "+919876543212", "+919876543213"]


def _add(store: CallbackStore, number: str, capable: object, at: datetime) -> None:
    body = json.dumps({"number": number.lstrip("+"), "soip_capable": capable}).encode()
    store.add_callback(RawCallback("POST", body, "application/json", received_at=at))


# -- trigger ------------------------------------------------------------------------------------


def _conn(monkeypatch, conn_id: str, url: str, **extra: object) -> None:
    conn = {
        "conn_type": "kaleyra",
        "login": "AC-TEST-SID",
        "password": "test-api-key-0123456789",
        "extra": {"callback_secret": "cb-secret-xyz", "callback_store_url": url, **extra},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def test_trigger_serialize_round_trips_and_holds_no_store_password():
    trigger = KaleyraSoipCallbackTrigger(
        submission_id="s1",
        since=datetime(2026, 1, 1, tzinfo=UTC),
        total=10,
        required=8,
        kaleyra_conn_id="k",
        poll_interval=5.0,
        deadline="2026-01-01T01:00:00+00:00",
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_kaleyra.triggers.kaleyra.KaleyraSoipCallbackTrigger"
    json.dumps(kwargs)  # storable as is
    assert not any("url" in key or "password" in key for key in kwargs)  # the store comes from the connection
    assert "postgresql" not in repr(trigger)
    from airflow.sdk._shared.module_loading import import_string

    again = import_string(classpath)(**kwargs)
    assert again.serialize() == (classpath, kwargs)


def _run(trigger):
    async def first():
        return await anext(trigger.run())

    return asyncio.run(asyncio.wait_for(first(), 20)).payload


def test_trigger_fires_when_enough_numbers_answered(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    _conn(monkeypatch, "kaleyra_trigger_test", url)
    store = CallbackStore(url)
    since = datetime.now(UTC) - timedelta(minutes=1)
    store.add_submission("s1", NUMBERS)
    _add(store, NUMBERS[0], True, since + timedelta(seconds=1))
    _add(store, NUMBERS[1], False, since - timedelta(seconds=1))  # before the submission: ignored
    trigger = KaleyraSoipCallbackTrigger(
        submission_id="s1",
        since=since,
        total=4,
        required=1,
        kaleyra_conn_id="kaleyra_trigger_test",
        poll_interval=0.05,
    )
    assert _run(trigger) == {
        "status": "success",
        "answered": 1,
        "total": 4,
        "required": 1,
        "submission_id": "s1",
        "message": None,
    }


def test_trigger_reports_timeout_with_answered_count(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    _conn(monkeypatch, "kaleyra_trigger_test", url)
    CallbackStore(url).add_submission("s1", NUMBERS)
    trigger = KaleyraSoipCallbackTrigger(
        submission_id="s1",
        since=datetime.now(UTC),
        total=4,
        required=4,
        kaleyra_conn_id="kaleyra_trigger_test",
        poll_interval=0.05,
        deadline=datetime.now(UTC) + timedelta(seconds=0.3),
    )
    event = _run(trigger)
    assert (event["status"], event["answered"]) == ("timeout", 0)


def test_trigger_without_a_store_url_reports_the_setting(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_KALEYRA_NO_STORE",
        json.dumps({"conn_type": "kaleyra", "login": "AC-TEST-SID", "password": "test-api-key-0123456789"}),
    )
    trigger = KaleyraSoipCallbackTrigger(
        submission_id="s1", since=datetime.now(UTC), total=1, required=1, kaleyra_conn_id="kaleyra_no_store"
    )
    event = _run(trigger)
    assert event["status"] == "error" and "callback_store_url" in event["message"]


# -- sensor, called directly --------------------------------------------------------------------


def _context(start: datetime) -> dict:
    from types import SimpleNamespace

    return {
        "dag_run": SimpleNamespace(start_date=start),
        "ti": SimpleNamespace(dag_id="d", task_id="wait", run_id="r1", map_index=-1),
    }


def test_sensor_arguments():
    from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor

    sensor = KaleyraSoipCallbackSensor(task_id="s", submission={"submission_id": "x"}, output="/tmp/x.jsonl")
    assert sensor.output_path == "/tmp/x.jsonl"
    assert set(sensor.template_fields) == {
        "numbers",
        "submission",
        "kaleyra_conn_id",
        "output_path",
        "storage_conn_id",
    }
    with pytest.raises(ValueError, match="min_answered_ratio"):
        KaleyraSoipCallbackSensor(task_id="s2", numbers=NUMBERS, output="x.jsonl", min_answered_ratio=0)
    with pytest.raises(ValueError, match="exactly one"):
        KaleyraSoipCallbackSensor(task_id="s4", numbers=NUMBERS, submission={}, output="x.jsonl")
    with pytest.raises(TypeError):
        KaleyraSoipCallbackSensor("s3")  # keyword-only


def test_national_format_numbers_given_to_the_sensor_are_matched(tmp_path, monkeypatch):
    """The receiver stores +919876543210; the sensor reads 98765 43210 with the connection's region."""
    from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor

    url = f"sqlite:///{tmp_path / 'c.db'}"
    _conn(monkeypatch, "kaleyra_in", url, default_region="IN")
    start = datetime.now(UTC) - timedelta(minutes=5)
    store = CallbackStore(url)
    _add(store, "+919876543210", True, start + timedelta(minutes=1))
    _add(store, "+919876543211", False, start + timedelta(minutes=1))
    output = tmp_path / "out" / "results.jsonl"
    sensor = KaleyraSoipCallbackSensor(
        task_id="wait",
        numbers=["98765 43210", "09876543211", "+91 98765 43210"],
        output=str(output),
        kaleyra_conn_id="kaleyra_in",
    )
    done = sensor.poke(_context(start))
    assert done.is_done
    assert done.xcom_value["summary"]["total"] == 2 and done.xcom_value["summary"]["answered"] == 2
    lines = sorted((json.loads(line) for line in output.read_text().splitlines()), key=lambda d: d["number"])
    assert [(d["number"], d["outcome"]) for d in lines] == [
        ("+919876543210", "capable"),
        ("+919876543211", "not_capable"),
    ]
    assert "+91987654321" not in json.dumps(done.xcom_value)  # no number in XCom


def test_a_timed_out_wait_writes_the_answers_that_arrived(tmp_path, monkeypatch):
    """The preflight's channels step reads only this file: a soft-failed wait must leave it behind."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout

    from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor

    url = f"sqlite:///{tmp_path / 'c.db'}"
    _conn(monkeypatch, "kaleyra_late", url)
    submitted = datetime.now(UTC) - timedelta(minutes=5)
    store = CallbackStore(url)
    store.add_submission("s1", NUMBERS[:2])
    _add(store, NUMBERS[1], True, datetime.now(UTC))
    output = tmp_path / "soip.jsonl"
    sensor = KaleyraSoipCallbackSensor(
        task_id="wait",
        submission={"submission_id": "s1", "submitted_at": submitted.isoformat()},
        output=str(output),
        kaleyra_conn_id="kaleyra_late",
        deferrable=True,
        soft_fail=True,
    )
    with pytest.raises(AirflowSensorTimeout, match="1 of 2 numbers still have no SOIP callback"):
        sensor.execute_complete(_context(submitted), {"status": "timeout", "answered": 1})
    lines = {d["number"]: d["outcome"] for d in map(json.loads, output.read_text().splitlines())}
    assert lines == {NUMBERS[0]: "missing", NUMBERS[1]: "capable"}
    text = KaleyraSoipCallbackSensor(task_id="w2", submission="{'submission_id': 's1'}", output=str(output))
    with pytest.raises(AirflowFailException, match="as a dict"):  # text is refused, not parsed
        text.poke(_context(submitted))


def test_sensor_without_a_store_url_fails_naming_the_setting(tmp_path, monkeypatch):
    """The multi-host trap: no shared store named means a loud failure, not a wait on a per-host file."""
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor

    monkeypatch.setenv(
        "AIRFLOW_CONN_KALEYRA_NO_STORE",
        json.dumps({"conn_type": "kaleyra", "login": "AC-TEST-SID", "password": "test-api-key-0123456789"}),
    )
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    sensor = KaleyraSoipCallbackSensor(
        task_id="wait",
        submission={"submission_id": "s1", "submitted_at": datetime.now(UTC).isoformat()},
        output=str(tmp_path / "r.jsonl"),
        kaleyra_conn_id="kaleyra_no_store",
    )
    with pytest.raises(AirflowFailException, match="callback_store_url"):
        sensor.poke(_context(datetime.now(UTC)))
    assert not list(tmp_path.glob("*.db"))  # no per-host file was made


def test_numbers_given_to_the_sensor_render_masked():
    from airflow.sdk.execution_time.task_runner import _serialize_rendered_fields

    from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor

    sensor = KaleyraSoipCallbackSensor(task_id="s", numbers=NUMBERS, output="/tmp/x.jsonl")
    sensor.render_template_fields({})
    rendered = json.dumps(_serialize_rendered_fields(sensor))  # what Airflow stores and shows
    assert '"count": 4' in rendered
    assert not any(number in rendered for number in NUMBERS)


# -- dag.test() -----------------------------------------------------------------------------------

DAG_FILE = textwrap.dedent(
    '''
    """Scenarios for test_soip_sensor; dag.test() runs each when executed as a script."""
    import json, os, threading, time
    from datetime import datetime, timedelta, timezone

    from airflow.sdk import DAG, task

    from airflow_provider_kaleyra.callbacks.bodies import RawCallback
    from airflow_provider_kaleyra.callbacks.store import CallbackStore
    from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor

    OUT = os.environ["SCENARIO_OUT"]
    SUBMITTED = os.environ["SCENARIO_SUBMITTED_AT"]
    NUMBERS = json.loads(os.environ["SCENARIO_NUMBERS"])
    SUBMISSION = {"submission_id": "s1", "submitted_at": SUBMITTED, "numbers": len(NUMBERS)}

    def scenario(dag_id, **sensor_kwargs):
        with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            wait = KaleyraSoipCallbackSensor(task_id="wait", **sensor_kwargs)

            @task
            def keep(result):
                with open(os.path.join(OUT, dag_id + ".json"), "w") as fh:
                    json.dump(result, fh)

            keep(wait.output)
        return dag

    def common(name):
        return dict(submission=SUBMISSION, poke_interval=0.2, output=os.path.join(OUT, "out", name + ".jsonl"))

    # each store is named by a connection: kaleyra_a (STORE_A), kaleyra_default (STORE_B), kaleyra_empty
    dags = {
        "poke_ok": scenario("poke_ok", kaleyra_conn_id="kaleyra_a", min_answered_ratio=0.75, **common("poke_ok")),
        "poke_timeout": scenario("poke_timeout", kaleyra_conn_id="kaleyra_empty", timeout=1, **common("pt")),
        "poke_soft": scenario(
            "poke_soft", kaleyra_conn_id="kaleyra_empty", timeout=1, soft_fail=True, **common("ps")
        ),
        "defer_ok": scenario("defer_ok", deferrable=True, poll_interval=0.2, timeout=30, **common("defer_ok")),
        "defer_timeout": scenario(
            "defer_timeout", kaleyra_conn_id="kaleyra_empty", deferrable=True, timeout=1.5, **common("dt")
        ),
        "defer_soft": scenario(
            "defer_soft", kaleyra_conn_id="kaleyra_empty", deferrable=True, timeout=1, soft_fail=True,
            **common("ds"),
        ),
    }

    def late_callbacks():
        """Answers that arrive once defer_ok has deferred (its first poke logged), never before."""
        import sqlite3

        store = CallbackStore(os.environ["STORE_B"])
        metadata = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with sqlite3.connect(metadata) as db:
                deferred = db.execute(
                    "SELECT count(*) FROM task_instance WHERE dag_id = 'defer_ok' AND state = 'deferred'"
                ).fetchone()[0]
            if deferred:
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
    for url in stores.values():
        CallbackStore(url).add_submission("s1", NUMBERS)  # what the check operator records

    def conn(url: str) -> str:
        return json.dumps(
            {
                "conn_type": "kaleyra",
                "login": "AC-TEST-SID",
                "password": "test-api-key-0123456789",
                "extra": {"callback_secret": "cb-secret-xyz", "callback_store_url": url},
            }
        )

    env = {
        **os.environ,
        **stores,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW_CONN_KALEYRA_DEFAULT": conn(stores["STORE_B"]),
        "AIRFLOW_CONN_KALEYRA_A": conn(stores["STORE_A"]),
        "AIRFLOW_CONN_KALEYRA_EMPTY": conn(stores["STORE_EMPTY"]),
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
    lines = {d["number"]: d for d in map(json.loads, Path(result["output"]).read_text().splitlines())}
    assert sorted(lines) == NUMBERS
    assert [lines[n]["outcome"] for n in NUMBERS] == ["capable", "not_capable", "unparseable", "missing"]
    assert set(result) == {"summary", "output"}
    assert not any(number.lstrip("+") in json.dumps(result) for number in NUMBERS)  # no number in XCom


def test_deferrable_mode_waits_for_late_callbacks(dag_runs):
    assert dag_runs["states"]["defer_ok"]["tasks"] == {"wait": "success", "keep": "success"}
    summary = dag_runs["outputs"]["defer_ok"]["summary"]
    assert (summary["answered"], summary["capable"], summary["not_capable"]) == (4, 3, 1)
    assert "running trigger in line" in dag_runs["log"]


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
    from airflow_provider_kaleyra.numbers.masking import mask

    assert mask(NUMBERS[3]) in _scenario_log(dag_runs, "poke_ok")


def _scenario_log(dag_runs, dag_id: str) -> str:
    """The part of the run's output between the start and the end of one scenario's sensor task."""
    log = dag_runs["log"]
    start = log.index(f"<TaskInstance: {dag_id}.wait ")
    end = log.index("[DAG TEST] end task task_id=wait", start)
    return log[start:end]


def test_reading_the_connection_masks_its_secrets(monkeypatch):
    """The password inside the store URL too: Airflow masks the whole URL, not the password alone."""
    from airflow.sdk._shared.secrets_masker import redact

    from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook

    conn = {
        "conn_type": "kaleyra",
        "login": "AC-TEST-SID",
        "password": "api-key-masked-0123456789",
        "extra": {
            "pod": "na",
            "default_region": "IN",
            "callback_profile_id": "profile-shown-4711",
            "callback_secret": "cb-secret-masked-9876",
            "callback_store_url": "postgresql+psycopg://kaleyra:store-pw-masked-55@db.internal/cb",
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_MASK_TEST", json.dumps(conn))
    config = KaleyraHook("kaleyra_mask_test").config
    assert config.pod == "na" and config.callback_profile_id == "profile-shown-4711"
    for secret in ("api-key-masked-0123456789", "cb-secret-masked-9876", "store-pw-masked-55"):
        assert secret not in str(redact(f"value {secret} end"))
