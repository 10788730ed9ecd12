"""The preflight task group under ``dag.test()``: one normalization per row per run; fail fast vs retry."""

from __future__ import annotations

import csv
import json
import re
import textwrap

from airflow_provider_kaleyra.preflight.sample import generate_audience_rows

pytest_plugins = ["conftest_airflow"]


def _conn(sim, sid: str | None = None, **extra) -> str:
    return json.dumps(
        {
            "conn_type": "kaleyra",
            "login": sid or sim.config.sid,
            "password": sim.config.api_key,
            "extra": {"rcs_base_url": sim.url, "soip_base_url": sim.url, "default_region": "US", **extra},
        }
    )


PREFLIGHT_DAG = """
    import json, os, sys
    from datetime import datetime
    from airflow.sdk import DAG
    from airflow_provider_kaleyra.preflight import kaleyra_preflight

    WORK = os.environ["KALEYRA_TEST_DIR"]
    with DAG("preflight_test", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        kaleyra_preflight(audience=WORK + "/audience.csv", output=WORK + "/out", shard_count=2, soip=False)

    if __name__ == "__main__":
        # Count every call of the one normalizer, in every module that imported it, for the whole run.
        import importlib
        from airflow_provider_kaleyra.numbers import normalize as phone
        for name in ("preflight.prepare", "rcs.engine", "operators.kaleyra", "hooks.kaleyra",
                     "sensors.kaleyra", "callbacks.bodies"):
            importlib.import_module("airflow_provider_kaleyra." + name)
        original, calls = phone.normalize, []
        def counting(raw, region=None):
            calls.append(1)
            return original(raw, region)
        for module in list(sys.modules.values()):
            if getattr(module, "normalize", None) is original:
                module.normalize = counting
        run = dag.test()
        states = {ti.task_id: str(ti.state).rsplit(".", 1)[-1] for ti in run.get_task_instances()}
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        with create_session() as session:
            rows = session.query(XComModel).filter_by(dag_id=dag.dag_id, run_id=run.run_id).all()
            xcoms = {f"{x.task_id}[{x.map_index}].{x.key}": json.dumps(x.value) for x in rows}
        print("RESULT " + json.dumps({"run": str(run.state).rsplit(".", 1)[-1], "calls": len(calls), "tasks": states, "xcoms": xcoms}))
"""


def test_each_row_is_normalized_once_per_run(make_simulator, run_dag_file, tmp_path, monkeypatch):
    sim = make_simulator()
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_DEFAULT", _conn(sim))
    work = tmp_path / "work"
    work.mkdir()
    with (work / "audience.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("customer_id", "phone", "segment"))
        writer.writerows(generate_audience_rows(1500, seed=3))
    monkeypatch.setenv("KALEYRA_TEST_DIR", str(work))
    dag_file = tmp_path / "dags" / "preflight_test.py"
    dag_file.parent.mkdir()
    dag_file.write_text(textwrap.dedent(PREFLIGHT_DAG))
    result = json.loads(run_dag_file(dag_file, timeout=240).stdout.split("RESULT ")[-1].splitlines()[0])
    assert result["run"] == "success", result
    assert result["tasks"]["preflight.soip_check"] == "skipped"  # the leg is off
    assert result["calls"] == 1500  # prepare once per row; the RCS shards take its E.164 as they are
    # typed records go through XCom (the prepared run, each shard, the lookup summaries, ...), never a number
    xcoms = result["xcoms"]
    assert {"preflight.prepare[-1].prepared", "preflight.channels[-1].return_value"} <= set(xcoms)
    assert "preflight.rcs_lookup[1].return_value" in xcoms
    assert not [key for key, value in xcoms.items() if re.search(r"\+\d{8}", value)], xcoms
    (run_dir,) = (work / "out").iterdir()
    listed = sum(
        1
        for name in ("rcs", "soip", "sms", "invalid")
        for _ in csv.DictReader((run_dir / f"{name}.csv").open())
    )
    assert listed == 1500
    assert sim.stats()["requests"]["rcs_single"] == 0  # every shard >= 100 numbers: bulk calls only


FAIL_FAST_DAG = """
    import json
    from datetime import datetime, timedelta
    from airflow.sdk import DAG
    from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator

    NUMBERS = [f"+1415200{i:04d}" for i in range(150)]
    with DAG("fail_fast_test", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        for conn_id in ("kaleyra_wrong_sid", "kaleyra_down"):
            KaleyraRcsBulkLookupOperator(
                task_id=conn_id, kaleyra_conn_id=conn_id, numbers=NUMBERS, output=f"/tmp/{conn_id}-{{{{ run_id }}}}.csv",
                retries=2, retry_delay=timedelta(seconds=0), max_failed_ratio=0,
            )

    if __name__ == "__main__":
        run = dag.test()
        tis = {ti.task_id: [str(ti.state).rsplit(".", 1)[-1], ti.try_number] for ti in run.get_task_instances()}
        print("RESULT " + json.dumps(tis))
"""


def test_a_wrong_sid_fails_in_one_attempt_while_an_outage_is_retried(
    make_simulator, run_dag_file, tmp_path, monkeypatch
):
    sim = make_simulator()
    down = make_simulator(error_5xx=1.0)
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_WRONG_SID", _conn(sim, sid="AC-SOMEONE-ELSE"))
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_DOWN", _conn(down, max_retries=0))
    dag_file = tmp_path / "dags" / "fail_fast_test.py"
    dag_file.parent.mkdir()
    dag_file.write_text(textwrap.dedent(FAIL_FAST_DAG))
    tis = json.loads(run_dag_file(dag_file, timeout=240).stdout.split("RESULT ")[-1].splitlines()[0])
    assert tis["kaleyra_wrong_sid"] == ["failed", 1]  # 401: retries=2 not used
    assert tis["kaleyra_down"] == ["failed", 3]  # 5xx: waiting may fix it, so all retries are used


SOIP_TIMEOUT_DAG = """
    import json, os
    from datetime import datetime
    from airflow.sdk import DAG
    from airflow_provider_kaleyra.preflight import kaleyra_preflight

    WORK = os.environ["KALEYRA_TEST_DIR"]
    with DAG("preflight_soip_timeout", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        kaleyra_preflight(audience=WORK + "/audience.csv", output=WORK + "/out", shard_count=1, soip_timeout=3)

    if __name__ == "__main__":
        run = dag.test()
        states = {ti.task_id: str(ti.state).rsplit(".", 1)[-1] for ti in run.get_task_instances()}
        print("RESULT " + json.dumps({"run": str(run.state).rsplit(".", 1)[-1], "tasks": states}))
"""


def test_a_soip_wait_that_times_out_loses_no_row(make_simulator, run_dag_file, tmp_path, monkeypatch):
    """No callback ever comes: the wait gives up (skipped), and the numbers asked go to SMS, none lost."""
    from airflow_provider_kaleyra.numbers.normalize import normalize
    from airflow_provider_kaleyra.preflight.channels import region_of
    from kaleyra_simulator import rcs_answer

    sim = make_simulator()  # no callback URL: Kaleyra never answers
    store = f"sqlite:///{tmp_path / 'callbacks.db'}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_KALEYRA_DEFAULT", _conn(sim, callback_profile_id="p", callback_store_url=store)
    )
    work = tmp_path / "work"
    work.mkdir()
    rows = list(generate_audience_rows(600, seed=5))
    with (work / "audience.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("customer_id", "phone", "segment"), *rows])
    monkeypatch.setenv("KALEYRA_TEST_DIR", str(work))
    dag_file = tmp_path / "dags" / "preflight_soip_timeout.py"
    dag_file.parent.mkdir()
    dag_file.write_text(textwrap.dedent(SOIP_TIMEOUT_DAG))
    result = json.loads(run_dag_file(dag_file, timeout=240).stdout.split("RESULT ")[-1].splitlines()[0])
    assert result["tasks"]["preflight.soip_check"] == "success"
    assert result["tasks"]["preflight.soip_wait"] == "skipped"  # timed out, soft_fail
    assert result["tasks"]["preflight.build_report"] == "success"
    (run_dir,) = (work / "out").iterdir()
    listed = {}
    for name in ("rcs", "soip", "sms", "invalid"):
        listed.update(
            (r["customer_id"], r["reason"]) for r in csv.DictReader((run_dir / f"{name}.csv").open())
        )
    assert len(listed) == len(rows)
    asked = {
        customer
        for customer, phone, _ in rows
        if (e164 := normalize(phone, "US").e164)
        and not rcs_answer(e164)["rcsEnabled"]
        and region_of(e164) == "IN"
    }
    assert asked and {c for c, reason in listed.items() if reason == "soip_no_callback"} == asked
    asked_numbers = {normalize(p, "US").e164 for c, p, _ in rows if c in asked}
    assert json.loads((run_dir / "summary.json").read_text())["soip"] == {
        "asked": len(asked_numbers),
        "answered": 0,
    }
    # the timed-out wait wrote what arrived (nothing here) for channels to read: no second store query
    written = [json.loads(line) for line in (run_dir / "work" / "soip.jsonl").read_text().splitlines()]
    assert {w["number"] for w in written} == asked_numbers and {w["outcome"] for w in written} == {"missing"}
