"""Secrets kept: the API key and the callback secret appear nowhere they could be read back.

Every operator, the sensor, the trigger, the hook and the receiver run with recognisable secrets
(``SECRET-APIKEY-zq81x``, ``SECRET-CB-77qk``) over real HTTP; then every log record (any logger,
any level, before any redaction), everything printed, every return value (XCom), every rendered
template field, every error message and traceback, and the repr of every object is searched.
The same run through ``dag.test()`` searches Airflow's task logs, the XCom table and the rendered
template fields stored in the metadata database.
"""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
import time
import traceback
from typing import Any

import pytest
from _reliability import SECRET_API_KEY, SECRET_CALLBACK, SECRETS

from airflow_provider_kaleyra.callbacks.receiver import CALLBACK_PATH, URL_PREFIX, create_standalone_app
from airflow_provider_kaleyra.callbacks.store import CallbackStore, get_store
from airflow_provider_kaleyra.client.exceptions import KaleyraApiError, KaleyraAuthError
from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator, KaleyraRcsLookupOperator
from airflow_provider_kaleyra.operators.soip import KaleyraSoipCapabilityCheckOperator
from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor
from airflow_provider_kaleyra.triggers.kaleyra import KaleyraSoipCallbackTrigger
from kaleyra_simulator import CallbackAuth

pytest_plugins = ["conftest_airflow"]

DB_PASSWORD = "SECRET-DBPW-5mq2"


def assert_secret_free(label: str, *texts: Any) -> None:
    for text in texts:
        text = text if isinstance(text, str) else json.dumps(text, default=repr)
        for secret in (*SECRETS, DB_PASSWORD):
            assert secret not in text, (
                f"{label} leaks {secret[:10]}...: {text[max(0, text.find(secret) - 300) :][:600]}"
            )


def us(i: int) -> str:
    return f"+1415{200 + i // 10000}{i % 10000:04d}"


@pytest.fixture
def receiver(tmp_path, serve_app):
    """A live receiver reading its secret and store from the connection (as deployed)."""
    store_url = f"sqlite:///{tmp_path / 'callbacks.db'}"
    port = serve_app(create_standalone_app(conn_id="kaleyra_default"), log_level="info")
    return f"http://127.0.0.1:{port}{URL_PREFIX}{CALLBACK_PATH}", store_url


def _render(operator: Any) -> dict[str, Any]:
    context = {"params": {"probe": "+14152000007"}, "ds": "2025-01-01", "ti": None}
    operator.render_template_fields(context)
    return {name: getattr(operator, name) for name in operator.template_fields}


def test_no_secret_in_logs_xcom_templates_errors_or_reprs(
    secret_simulator, use_connection, receiver, tmp_path, all_logs, caplog, capfd
):
    callback_url, store_url = receiver
    sim = secret_simulator(
        callback_url=callback_url,
        callback_auth=CallbackAuth("header", "X-Kaleyra-Secret", SECRET_CALLBACK),
        error_5xx=0.15,
        reset=0.05,
        rate_429=0.05,
        truncated=0.05,
        bulk_missing=0.2,
        bulk_extra=0.2,
        seed=3,
    )
    use_connection(sim.url, callback_store_url=store_url, max_retries=6, retry_backoff=0.005)
    outputs: list[Any] = []
    reprs: list[str] = []
    errors: list[str] = []

    # -- the hook
    hook = KaleyraHook()
    outputs.append(hook.lookup_rcs("+14152000001"))
    outputs.append(hook.lookup_rcs_bulk([us(i) for i in range(150)]))
    outputs.append(
        [
            r._asdict()
            for r in hook.lookup_rcs_many([us(i) for i in range(1_300)] + ["junk", "(415) 200-0003"])
        ]
    )
    outputs.append([r._asdict() for r in hook.lookup_rcs_many([us(i) for i in range(40)])])  # single lookups
    outputs.append(hook.check_soip_capability(["+14152000001"]))
    outputs.append(hook.test_connection())
    reprs += [repr(hook), repr(hook.config), str(hook.config), repr(hook.transport), repr(hook.get_conn())]

    # -- the operators, the sensor and the trigger
    audience = tmp_path / "audience.csv"
    audience.write_text("phone\n" + "\n".join(us(i) for i in range(600)) + "\nnot a number\n")
    single = KaleyraRcsLookupOperator(task_id="single", number="{{ params.probe }}")
    bulk_list = KaleyraRcsBulkLookupOperator(
        task_id="bulk_list", numbers=[us(i) for i in range(300)], output=str(tmp_path / "list.jsonl")
    )
    bulk_file = KaleyraRcsBulkLookupOperator(
        task_id="bulk_file", audience=str(audience), output=str(tmp_path / "{{ ds }}" / "file.csv")
    )
    soip = KaleyraSoipCapabilityCheckOperator(
        task_id="soip", numbers=[us(i) for i in range(120)] + ["junk"], chunk_size=50
    )
    operators = [single, bulk_list, bulk_file, soip]
    rendered = {op.task_id: _render(op) for op in operators}
    for op in operators:
        outputs.append(op.execute({}))
    submission = outputs[-1]
    assert sim.wait_callbacks(timeout=30)

    sensor = KaleyraSoipCallbackSensor(
        task_id="wait",
        submission=submission,
        output=str(tmp_path / "soip.jsonl"),
        poke_interval=0.1,
        timeout=30,
    )
    rendered["wait"] = _render(sensor)
    deadline = time.monotonic() + 30
    while not (poked := sensor.poke({})).is_done:
        assert time.monotonic() < deadline, "callbacks never all arrived"
        time.sleep(0.1)
    outputs.append(poked.xcom_value)
    assert poked.xcom_value["summary"]["answered"] == 120

    store = get_store(store_url)
    trigger = KaleyraSoipCallbackTrigger(
        submission_id=submission["submission_id"],
        since=submission["submitted_at"],
        total=120,
        required=120,
        poll_interval=0.1,
    )
    event = asyncio.run(anext(trigger.run()))
    outputs += [event.payload, trigger.serialize()]
    reprs += [repr(op) for op in (*operators, sensor)] + [repr(trigger), repr(store), repr(sim.config)]

    # -- errors: a refused key, a dead endpoint, a bad connection, a bad argument
    wrong = secret_simulator(api_key="the-key-kaleyra-expects-1234")
    use_connection(wrong.url, conn_id="kaleyra_wrong", callback_store_url=store_url)
    for call in (
        lambda: KaleyraHook("kaleyra_wrong").lookup_rcs("+14152000001"),
        lambda: KaleyraRcsLookupOperator(
            task_id="w", number="+14152000001", kaleyra_conn_id="kaleyra_wrong"
        ).execute({}),
        lambda: KaleyraRcsBulkLookupOperator(
            task_id="w2",
            numbers=[us(i) for i in range(200)],
            output=str(tmp_path / "w.csv"),
            kaleyra_conn_id="kaleyra_wrong",
        ).execute({}),
        lambda: KaleyraSoipCapabilityCheckOperator(
            task_id="w3", numbers=["+14152000001"], kaleyra_conn_id="kaleyra_wrong"
        ).execute({}),
    ):
        with pytest.raises(KaleyraAuthError) as info:
            call()
        errors += [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value))]
    assert "check the API key" in errors[0]
    outputs.append(KaleyraHook("kaleyra_wrong").test_connection())
    assert outputs[-1][0] is False

    use_connection("http://127.0.0.1:9", conn_id="kaleyra_dead", max_retries=1, timeout=1)
    with pytest.raises(KaleyraApiError) as info:
        KaleyraHook("kaleyra_dead").lookup_rcs("+14152000001")
    errors += [str(info.value), "".join(traceback.format_exception(info.value))]
    use_connection(sim.url, conn_id="kaleyra_bad", timeout="soon")
    with pytest.raises(ValueError) as bad:
        _ = KaleyraHook("kaleyra_bad").config
    errors += [str(bad.value), "".join(traceback.format_exception(bad.value))]
    with pytest.raises(ValueError) as bad:
        KaleyraHook().lookup_rcs_bulk(["+14152000001"])
    errors.append(str(bad.value))
    store_with_password = CallbackStore(f"postgresql+psycopg://kaleyra:{DB_PASSWORD}@127.0.0.1:9/callbacks")
    reprs.append(repr(store_with_password))

    # -- search everything
    captured = capfd.readouterr()
    logs = all_logs.texts()
    # Operators log through structlog (to stdout here, to the task log in Airflow); the rest via logging.
    everything = "\n".join(logs) + captured.out + captured.err
    assert "Wrote 601 rows" in everything and "SOIP callbacks" in everything, "task logs were not captured"
    assert len(logs) > 50
    assert_secret_free("a log record", *logs)
    assert_secret_free("caplog", caplog.text)
    assert_secret_free("stdout/stderr", captured.out, captured.err)
    assert_secret_free("a return value (XCom)", *outputs)
    assert_secret_free("a rendered template field", rendered)
    assert_secret_free("an error", *errors)
    assert_secret_free("a repr", *reprs)
    # The transport's session does carry the key (it must), but never shows it.
    assert SECRET_API_KEY not in repr(hook.transport.session)

    # Phone numbers in the provider's warnings are masked, never whole.
    asked = {us(i) for i in range(1_300)} | {"+14152000001", "+14152000007"}
    warnings = [
        r for r in all_logs.records if r.levelno >= 30 and r.name.startswith("airflow_provider_kaleyra")
    ]
    assert warnings, "the faults produced no warning: the masking check proves nothing"
    for record in warnings:
        text = record.getMessage()
        for number in re.findall(r"\+?\d{10,}", text):
            assert "+" + number.lstrip("+") not in asked, f"a whole phone number in a warning: {text}"


DAG_FILE = """
    import json
    import os
    from datetime import datetime

    from airflow.sdk import DAG

    from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator, KaleyraRcsLookupOperator
    from airflow_provider_kaleyra.operators.soip import KaleyraSoipCapabilityCheckOperator
    from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor

    WORK = os.environ["KALEYRA_TEST_DIR"]

    with DAG("kaleyra_secrets", schedule=None, start_date=datetime(2025, 1, 1),
             params={"probe": "+14152000007"}) as dag:
        single = KaleyraRcsLookupOperator(task_id="single", number="{{ params.probe }}")
        bulk = KaleyraRcsBulkLookupOperator(task_id="bulk", audience=WORK + "/audience.csv",
                                            output=WORK + "/out-{{ ds }}.csv")
        soip = KaleyraSoipCapabilityCheckOperator(task_id="soip", numbers=["+14152000001", "(415) 200-0002"])
        wait = KaleyraSoipCallbackSensor(task_id="wait", submission=soip.output, output=WORK + "/soip.jsonl",
                                         poke_interval=0.2, timeout=60)
        single >> bulk >> soip >> wait

    if __name__ == "__main__":
        run = dag.test()
        from airflow.models.renderedtifields import RenderedTaskInstanceFields
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            xcoms = [[x.task_id, x.key, x.value] for x in session.query(XComModel).all()]
            fields = [[r.task_id, r.rendered_fields] for r in session.query(RenderedTaskInstanceFields).all()]
        states = {ti.task_id: str(ti.state).rsplit(".", 1)[-1] for ti in run.get_task_instances()}
        print("DUMP " + json.dumps({"states": states, "xcoms": xcoms, "fields": fields}, default=str))
"""


def test_no_secret_in_airflow_task_logs_xcom_table_or_rendered_fields(
    secret_simulator, use_connection, receiver, run_dag_file, tmp_path, monkeypatch
):
    callback_url, store_url = receiver
    sim = secret_simulator(
        callback_url=callback_url,
        callback_auth=CallbackAuth("header", "X-Kaleyra-Secret", SECRET_CALLBACK),
        error_5xx=0.1,
        seed=11,
    )
    use_connection(sim.url, callback_store_url=store_url, retry_backoff=0.005)
    work = tmp_path / "work"
    work.mkdir()
    (work / "audience.csv").write_text("phone\n" + "\n".join(us(i) for i in range(250)) + "\njunk\n")
    monkeypatch.setenv("KALEYRA_TEST_DIR", str(work))
    dag_file = tmp_path / "dags" / "kaleyra_secrets_dag.py"
    dag_file.parent.mkdir()
    dag_file.write_text(textwrap.dedent(DAG_FILE))

    result = run_dag_file(dag_file, timeout=180)

    dump = json.loads(result.stdout.split("DUMP ")[-1].splitlines()[0])
    assert set(dump["states"].values()) == {"success"}, dump["states"]
    assert {x[0] for x in dump["xcoms"]} >= {"single", "bulk", "soip", "wait"}, dump["xcoms"]
    assert {f[0] for f in dump["fields"]} >= {"single", "bulk", "soip", "wait"}, dump["fields"]
    task_logs = result.stdout + result.stderr
    assert "Wrote 251 rows" in task_logs, "task logs were not captured"
    assert_secret_free("the dag.test output (task logs)", task_logs)
    assert_secret_free("the XCom table", dump["xcoms"])
    assert_secret_free("the rendered template fields", dump["fields"])
    assert list(work.glob("out-*.csv")), "the bulk task wrote nothing"
