"""The operators: requests-mock for the exact calls, the simulator over real HTTP for the rest."""

from __future__ import annotations

import json
import re
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import pytest
from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
from airflow_provider_kaleyra.numbers.masking import mask
from airflow_provider_kaleyra.operators.base import run_identity
from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator, KaleyraRcsLookupOperator
from airflow_provider_kaleyra.operators.soip import KaleyraSoipCapabilityCheckOperator
from airflow_provider_kaleyra.rcs.outputs import read_results
from airflow_provider_kaleyra.utils.storage import as_path
from kaleyra_simulator import rcs_answer

pytest_plugins = ["conftest_airflow"]

BASE = "http://kaleyra.test"
SID = "HXAP16SIDTEST"
BULK_URL = f"{BASE}/v1/{SID}/rcs/lookup"
SINGLE_RE = re.compile(rf"{re.escape(BASE)}/v1/{SID}/rcs/lookup/.+")
SOIP_URL = f"{BASE}/v1/{SID}/messages/soip/capability-check"


def us(i: int) -> str:
    return f"+1415{2_000_000 + i}"


def set_conn(monkeypatch, **extra) -> None:
    """``kaleyra_default`` pointing at requests-mock's fake host; ``extra`` overrides extras."""
    settings = {
        "rcs_base_url": BASE,
        "soip_base_url": BASE,
        "default_region": "US",
        "callback_profile_id": "profile-conn",
        "retry_backoff": 0.001,
        "max_retries": 1,
        "rate_limit": 0,
    }
    settings.update(extra)
    conn = {"conn_type": "kaleyra", "login": SID, "password": "KEY-very-secret-4b8f2a", "extra": settings}
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_DEFAULT", json.dumps(conn))


@pytest.fixture
def mock_conn(monkeypatch):
    set_conn(monkeypatch)


def bulk_echo(request, context):
    asked = request.json()["deviceAddresses"]
    return {"devices": [{**rcs_answer(n), "deviceAddress": n.lstrip("+")} for n in asked]}


def bulk(tmp_path, name="out.csv", **kwargs) -> KaleyraRcsBulkLookupOperator:
    return KaleyraRcsBulkLookupOperator(
        task_id=f"bulk_{name.replace('.', '_')}", output=str(tmp_path / name), **kwargs
    )


def expected(e164: str) -> tuple[str, str, str]:
    device = rcs_answer(e164)
    return (
        "rcs_enabled" if device["rcsEnabled"] else "rcs_disabled",
        device["carrierId"],
        device["carrierStatus"],
    )


# -- requests-mock: the exact calls -------------------------------------------------------------


def test_single_lookup_renders_the_number_and_returns_the_device_record(mock_conn, requests_mock, capfd):
    data = {
        "deviceAddress": "14155552671",
        "carrierId": "AT&T",
        "carrierStatus": "ACTIVE",
        "rcsEnabled": True,
    }
    requests_mock.get(SINGLE_RE, json={"code": "RCS702", "data": data})
    op = KaleyraRcsLookupOperator(task_id="single", number="{{ params.number }}")
    op.render_template_fields({"params": {"number": "(415) 555-2671"}})
    assert op.number == "(415) 555-2671"
    assert op.execute({}) == {**data, "deviceAddress": "14155****71"}  # the number masked in XCom
    assert requests_mock.last_request.url == f"{BASE}/v1/{SID}/rcs/lookup/%2B14155552671"
    logged = "".join(capfd.readouterr())
    assert "RCS lookup of (415)*******71" in logged and "555-2671" not in logged


def test_bulk_list_input_asks_distinct_numbers_once_and_writes_every_row(mock_conn, requests_mock, tmp_path):
    requests_mock.post(BULK_URL, json=bulk_echo)
    numbers = [us(i) for i in range(150)] + ["(415) 200-0000", "", "not a number", us(7)]
    op = bulk(tmp_path, "out.jsonl", numbers=numbers)
    summary = op.execute({})

    assert requests_mock.call_count == 1
    assert requests_mock.last_request.json() == {"deviceAddresses": [us(i) for i in range(150)]}
    rows = list(read_results(as_path(summary["output"])))
    assert [r["row"] for r in rows] == list(range(len(numbers)))
    assert [r["input"] for r in rows] == numbers
    assert rows[150]["e164"] == us(0) and rows[150]["status"] == rows[0]["status"]
    assert (rows[151]["status"], rows[151]["error"]) == ("invalid", "empty")
    assert rows[152]["status"] == "invalid" and rows[152]["error"].startswith("unparseable")
    assert all(
        (r["status"], r["carrier_id"], r["carrier_status"]) == expected(r["e164"]) for r in rows if r["e164"]
    )
    assert summary == {
        "output": str(tmp_path / "out.jsonl"),
        "inputs": 154,
        "rows": 154,
        "distinct": 150,
        "statuses": {
            "rcs_enabled": sum(r["status"] == "rcs_enabled" for r in rows),
            "rcs_disabled": sum(r["status"] == "rcs_disabled" for r in rows),
            "invalid": 2,
            "failed": 0,
        },
        "failed_numbers": 0,
        "requests": 1,
        "batches": 1,
        "chunks": 1,
        "chunks_resumed": 0,
        "shard": None,
        "cache": None,  # no cache_url on the connection
    }
    assert not (tmp_path / "out.jsonl.checkpoint").exists()


def test_template_fields_render_paths_lists_shards_and_ratios(tmp_path):
    audience = ObjectStoragePath(f"file://{tmp_path}/audience.csv")
    op = KaleyraRcsBulkLookupOperator(
        task_id="t",
        audience=audience,
        column="{{ params.column }}",
        output="{{ params.dir }}/out-{{ params.shard }}.csv",
        shard_index="{{ params.shard }}",
        shard_count="{{ params.shards }}",
        max_failed_ratio="{{ params.ratio }}",
        kaleyra_conn_id="{{ params.conn }}",
    )
    params = {"column": "mobile", "dir": str(tmp_path), "shard": 2, "shards": 4, "ratio": 0.05, "conn": "k2"}
    op.render_template_fields({"params": params})
    assert op.audience == audience and isinstance(op.audience, ObjectStoragePath)
    assert (op.column, op.output_path, op.kaleyra_conn_id) == ("mobile", f"{tmp_path}/out-2.csv", "k2")
    assert op._shard() == (2, 4)
    assert op.hook.kaleyra_conn_id == "k2"
    listed = KaleyraRcsBulkLookupOperator(
        task_id="u", numbers=["{{ params.a }}", "+14152000001"], output="o.csv"
    )
    listed.render_template_fields({"params": {"a": "+14152000000"}})
    assert list(listed.numbers) == ["+14152000000", "+14152000001"]
    assert "+14152000000" not in repr(listed.numbers)  # Airflow records rendered fields: masked
    assert "api_key" not in " ".join(KaleyraRcsBulkLookupOperator.template_fields)


def test_failures_over_the_ratio_fail_after_writing_and_a_retry_asks_only_for_them(
    mock_conn, requests_mock, tmp_path
):
    numbers = [us(i) for i in range(1000)]  # two calls of 500, one checkpoint part each
    outage = {"on": True}

    def flaky(request, context):
        if outage["on"] and us(0) in request.json()["deviceAddresses"]:
            context.status_code = 503
            return {"code": 503, "message": "Temporal error, try again later"}
        return bulk_echo(request, context)

    requests_mock.post(BULK_URL, json=flaky)
    op = bulk(tmp_path, numbers=numbers, checkpoint_batches=1)
    where = re.escape(str(tmp_path / "out.csv"))
    with pytest.raises(AirflowException, match=rf"500 of 1000 distinct numbers .*{where}"):
        op.execute({})
    rows = list(read_results(as_path(str(tmp_path / "out.csv"))))
    assert len(rows) == 1000 and sum(r["status"] == "failed" for r in rows) == 500
    assert "503" in rows[0]["error"]
    assert [p.name for p in (tmp_path / "out.csv.checkpoint").glob("*/part-*")] == ["part-00001.jsonl"]

    outage["on"] = False
    requests_mock.reset_mock()
    summary = bulk(tmp_path, numbers=numbers, checkpoint_batches=1).execute({})
    assert requests_mock.call_count == 1 and us(0) in requests_mock.last_request.json()["deviceAddresses"]
    assert (summary["chunks_resumed"], summary["statuses"]["failed"], summary["requests"]) == (1, 0, 1)
    assert not (tmp_path / "out.csv.checkpoint").exists()


def test_failures_under_the_ratio_only_warn(mock_conn, requests_mock, tmp_path):
    requests_mock.get(SINGLE_RE, status_code=503, json={"code": 503, "message": "down"})
    summary = bulk(tmp_path, numbers=[us(1), "junk"], max_failed_ratio=1.0).execute({})
    assert summary["statuses"] == {"rcs_enabled": 0, "rcs_disabled": 0, "invalid": 1, "failed": 1}


def test_too_many_invalid_rows_fail_before_any_request(mock_conn, requests_mock, tmp_path):
    numbers = [us(1), "x", "y", "", "12"]
    op = bulk(tmp_path, numbers=numbers, max_invalid_ratio=0.5)
    with pytest.raises(AirflowFailException, match=r"4 of 5 input rows .*unparseable.* \(2\)"):
        op.execute({})
    assert requests_mock.call_count == 0
    assert not (tmp_path / "out.csv").exists()


def test_argument_mistakes_are_reported_early(mock_conn, requests_mock, tmp_path):
    with pytest.raises(ValueError, match="exactly one of numbers"):
        bulk(tmp_path)
    with pytest.raises(ValueError, match="exactly one of numbers"):
        bulk(tmp_path, numbers=[us(1)], audience="a.csv")
    with pytest.raises(ValueError, match="max_failed_ratio"):
        bulk(tmp_path, numbers=[us(1)], max_failed_ratio=2)
    with pytest.raises(TypeError, match="list of phone numbers"):
        bulk(tmp_path, numbers="+14152000001").execute({})
    with pytest.raises(ValueError, match="together"):
        bulk(tmp_path, numbers=[us(1)], shard_index=0).execute({})
    with pytest.raises(ValueError, match=r"\[0, shard_count\)"):
        bulk(tmp_path, numbers=[us(1)], shard_index=4, shard_count=4).execute({})
    with pytest.raises(ValueError, match="must end in .csv"):
        bulk(tmp_path, "out.xlsx", numbers=[us(1)]).execute({})
    assert requests_mock.call_count == 0


def test_soip_check_submits_distinct_numbers_in_chunks(requests_mock, monkeypatch, tmp_path):
    seen_at: list[datetime] = []

    def accept(request, context):
        seen_at.append(datetime.now(UTC))
        context.status_code = 202
        return {"code": "MSG402", "message": "Request Successfully Processed", "data": [], "error": {}}

    requests_mock.post(SOIP_URL, json=accept)
    numbers = [f"+9198765{i:05d}" for i in range(250)] + ["98765 00000", "junk", ""]
    store_url = f"sqlite:///{tmp_path / 'c.db'}"
    set_conn(monkeypatch, default_region="IN", callback_store_url=store_url, max_concurrency=4)
    op = KaleyraSoipCapabilityCheckOperator(
        task_id="soip", numbers=numbers, callback_profile_id="{{ params.profile }}", chunk_size=100
    )
    op.render_template_fields({"params": {"profile": "profile-op"}})
    before = datetime.now(UTC)
    result = op.execute({})

    bodies = [r.json() for r in requests_mock.request_history]
    assert sorted(len(b["number"]) for b in bodies) == [50, 100, 100]
    sent = sorted(n for b in bodies for n in b["number"])
    assert sent == [f"9198765{i:05d}" for i in range(250)]  # Kaleyra's form: country code, no "+"
    assert all(b["callback_profile_id"] == "profile-op" for b in bodies)
    assert set(result) == {
        "submission_id",
        "submitted_at",
        "numbers",
        "invalid",
        "requests",
        "callback_profile_id",
    }
    assert (result["numbers"], result["invalid"], result["requests"]) == (250, 2, 3)
    assert len(json.dumps(result)) < 300 and "98765" not in json.dumps(result)  # no number in XCom
    submitted = datetime.fromisoformat(result["submitted_at"])
    assert submitted.tzinfo is not None and before <= submitted <= seen_at[0]
    assert result["callback_profile_id"] == "profile-op"
    # the sensor finds the submitted numbers in the store
    from airflow_provider_kaleyra.callbacks.store import get_store

    store = get_store(store_url)
    assert store.submission_size(result["submission_id"]) == 250
    assert {n for n, _ in store.results(result["submission_id"], submitted)} == {
        f"+9198765{i:05d}" for i in range(250)
    }


def test_soip_check_renders_and_logs_no_number(requests_mock, monkeypatch, tmp_path, caplog):
    from airflow.sdk.execution_time.task_runner import _serialize_rendered_fields

    requests_mock.post(SOIP_URL, status_code=202, json={"code": "MSG402"})
    set_conn(monkeypatch, default_region="IN", callback_store_url=f"sqlite:///{tmp_path / 'c.db'}")
    numbers = [f"+9198765{i:05d}" for i in range(30)] + ["98765 nope"]
    op = KaleyraSoipCapabilityCheckOperator(task_id="soip", numbers=numbers)  # e.g. an XComArg, resolved
    op.render_template_fields({}, None)
    rendered = json.dumps(_serialize_rendered_fields(op))
    assert '"count": 31' in rendered and "98765000" not in rendered
    caplog.set_level("DEBUG")
    op.execute({})
    assert "98765" not in caplog.text


def test_soip_check_reads_an_audience_file_and_shards_it(requests_mock, monkeypatch, tmp_path):
    requests_mock.post(SOIP_URL, status_code=202, json={"code": "MSG402"})
    set_conn(monkeypatch, callback_store_url=f"sqlite:///{tmp_path / 'c.db'}")
    audience = tmp_path / "audience.csv"
    audience.write_text("name,phone\n" + "".join(f"n{i},{us(i % 450)}\n" for i in range(500)) + "x,junk\n")
    results = [
        KaleyraSoipCapabilityCheckOperator(
            task_id="soip", audience=str(audience), shard_index=index, shard_count=2
        ).execute({})
        for index in range(2)
    ]
    assert [r["numbers"] for r in results] == [225, 225]
    assert all(r["invalid"] == 1 for r in results)
    sent = [n for r in requests_mock.request_history for n in r.json()["number"]]
    assert len(sent) == len(set(sent)) == 450


def test_soip_check_profile_defaults_to_the_connection(requests_mock, monkeypatch, tmp_path):
    set_conn(monkeypatch, callback_store_url=f"sqlite:///{tmp_path / 'c.db'}")
    requests_mock.post(SOIP_URL, status_code=202, json={"code": "MSG402"})
    result = KaleyraSoipCapabilityCheckOperator(task_id="s", numbers=["+14152000001"]).execute({})
    assert result["callback_profile_id"] == "profile-conn"
    assert requests_mock.last_request.json() == {
        "number": ["14152000001"],
        "callback_profile_id": "profile-conn",
    }
    set_conn(monkeypatch, callback_profile_id=None, callback_store_url=f"sqlite:///{tmp_path / 'c.db'}")
    requests_mock.reset_mock()
    with pytest.raises(AirflowFailException, match="callback_profile_id"):
        KaleyraSoipCapabilityCheckOperator(task_id="s", numbers=["+14152000001"]).execute({})
    assert requests_mock.call_count == 0


def test_soip_check_without_a_store_fails_before_submitting(requests_mock, monkeypatch, tmp_path):
    set_conn(monkeypatch)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    with pytest.raises(AirflowFailException, match="callback_store_url"):
        KaleyraSoipCapabilityCheckOperator(task_id="s", numbers=["+14152000001"]).execute({})
    assert requests_mock.call_count == 0 and not list(tmp_path.glob("*.db"))


# -- the simulator over real HTTP ----------------------------------------------------------------


def write_text_audience(path: Path, count: int) -> None:
    path.write_text("".join(us(i) + "\n" for i in range(count)))


def test_100k_audience_keeps_xcom_small(kaleyra_conn, tmp_path):
    write_text_audience(tmp_path / "audience.txt", 100_000)
    started = time.monotonic()
    summary = bulk(tmp_path, audience=str(tmp_path / "audience.txt")).execute({})
    elapsed = time.monotonic() - started
    assert len(json.dumps(summary)) < 2048
    counts = (summary["inputs"], summary["rows"], summary["distinct"], summary["requests"])
    assert counts == (100_000, 100_000, 100_000, 200)
    assert summary["statuses"]["failed"] == summary["statuses"]["invalid"] == 0
    assert kaleyra_conn.stats()["requests"]["rcs_bulk"] == 200
    assert elapsed < 60, f"100k lookup took {elapsed:.1f} s"
    with open(tmp_path / "out.csv") as handle:
        assert sum(1 for _ in handle) == 100_001


def crash_after(batches: int):
    """A ``KaleyraHook.lookup_batches`` that dies (like a killed worker) after ``batches`` answers."""
    real = KaleyraHook.lookup_batches

    def lookup_batches(self, planned):
        for done, answers in enumerate(real(self, planned), start=1):
            yield answers
            if done == batches:
                raise RuntimeError("worker killed")

    return lookup_batches


def test_a_crashed_run_resumes_without_asking_again(kaleyra_conn, tmp_path, monkeypatch):
    write_text_audience(tmp_path / "audience.txt", 15_000)  # 30 calls of 500; 6 parts of 5 calls
    audience = str(tmp_path / "audience.txt")
    reference = bulk(tmp_path, "reference.csv", audience=audience, checkpoint_batches=5).execute({})
    assert reference["requests"] == 30

    with monkeypatch.context() as patch:
        patch.setattr(KaleyraHook, "lookup_batches", crash_after(12))
        with pytest.raises(RuntimeError, match="worker killed"):
            bulk(tmp_path, audience=audience, checkpoint_batches=5).execute({})
    assert not (tmp_path / "out.csv").exists()
    assert len(list((tmp_path / "out.csv.checkpoint").glob("*/part-*.jsonl"))) == 2

    # The crash was an hour ago: the retry must say so, not report those answers as fresh.
    for part in (tmp_path / "out.csv.checkpoint").glob("*/part-*.jsonl"):
        saved_at, rest = part.read_text().split("\n", 1)
        part.write_text(f"{float(saved_at) - 3600}\n{rest}")

    kaleyra_conn.reset_stats()
    resumed = bulk(tmp_path, audience=audience, checkpoint_batches=5).execute({})
    assert resumed["requests"] == 20 == kaleyra_conn.stats()["requests"]["rcs_bulk"]
    assert resumed["chunks_resumed"] == 2
    rows = list(read_results(as_path(resumed["output"])))
    reference_rows = list(read_results(as_path(reference["output"])))
    assert [
        {**r, "age_seconds": r["age_seconds"] and 0} for r in rows
    ] == reference_rows  # the same answers, in order
    ages = [r["age_seconds"] for r in rows]
    assert all(3600 <= age < 3700 for age in ages[:5_000]), "resumed answers reported fresher than they are"
    assert ages[5_000:] == [0] * 10_000 and {r["source"] for r in rows} == {"api"}
    assert not (tmp_path / "out.csv.checkpoint").exists()


def test_a_changed_audience_never_reuses_stale_parts(kaleyra_conn, tmp_path, monkeypatch):
    path = tmp_path / "audience.txt"
    write_text_audience(path, 1_000)  # 2 calls of 500, one part each
    with monkeypatch.context() as patch:
        patch.setattr(KaleyraHook, "lookup_batches", crash_after(1))
        with pytest.raises(RuntimeError):
            bulk(tmp_path, audience=str(path), checkpoint_batches=1).execute({})
    assert len(list((tmp_path / "out.csv.checkpoint").glob("*/part-*.jsonl"))) == 1
    path.write_text(path.read_text().replace(us(0), us(5_000)))
    summary = bulk(tmp_path, audience=str(path), checkpoint_batches=1).execute({})
    assert (summary["chunks_resumed"], summary["requests"]) == (0, 2)
    assert next(read_results(as_path(summary["output"])))["e164"] == us(5_000)
    assert not (tmp_path / "out.csv.checkpoint").exists()


def test_another_run_never_trusts_the_parts_a_failed_run_left(kaleyra_conn, tmp_path, monkeypatch, request):
    """Issue 20, item 6: a failed run's checkpoint is its own. The next day's run writes the same
    output from the same audience while Kaleyra's answers changed: every row carries the new answer."""
    from kaleyra_simulator import answers as simulated

    write_text_audience(tmp_path / "audience.txt", 5_000)  # 10 calls of 500; parts of 2 calls
    audience = str(tmp_path / "audience.txt")
    with monkeypatch.context() as patch:
        patch.setattr(KaleyraHook, "lookup_batches", crash_after(4))
        with pytest.raises(RuntimeError, match="worker killed"):
            bulk(tmp_path, audience=audience, checkpoint_batches=2).execute({"run_id": "day-1"})
    assert len(list((tmp_path / "out.csv.checkpoint").glob("*/part-*.jsonl"))) == 2

    real = simulated.rcs_answer

    def changed(e164: str) -> dict:
        device = real(e164)
        return {**device, "rcsEnabled": not device["rcsEnabled"], "carrierId": "NewCarrier"}

    monkeypatch.setattr(simulated, "rcs_answer", changed)  # the server changed its mind overnight
    simulated.clear_caches()
    request.addfinalizer(simulated.clear_caches)  # other tests see the simulator's own answers
    kaleyra_conn.reset_stats()
    summary = bulk(tmp_path, audience=audience, checkpoint_batches=2).execute({"run_id": "day-2"})
    assert (summary["chunks_resumed"], summary["requests"]) == (0, 10)
    rows = list(read_results(as_path(summary["output"])))
    assert len(rows) == 5_000
    for row in rows:
        flipped = "rcs_disabled" if real(row["e164"])["rcsEnabled"] else "rcs_enabled"
        assert (row["status"], row["carrier_id"], row["source"], row["age_seconds"]) == (
            flipped,
            "NewCarrier",
            "api",
            0,
        ), row
    assert not (tmp_path / "out.csv.checkpoint").exists()


def test_a_retry_of_the_same_task_instance_resumes_a_mapped_runs_parts(kaleyra_conn, tmp_path, monkeypatch):
    """The checkpoint key is the task instance: the same dag, run, task and map index resume; another
    map index (another shard writing the same output by mistake) does not."""

    class TI:
        dag_id, run_id, task_id = "d", "r", "bulk_out_csv"

        def __init__(self, map_index: int) -> None:
            self.map_index = map_index

    write_text_audience(tmp_path / "audience.txt", 2_000)  # 4 calls of 500, one per part
    audience = str(tmp_path / "audience.txt")
    with monkeypatch.context() as patch:
        patch.setattr(KaleyraHook, "lookup_batches", crash_after(2))
        with pytest.raises(RuntimeError):
            bulk(tmp_path, audience=audience, checkpoint_batches=1).execute({"ti": TI(0), "run_id": "r"})
    other = bulk(tmp_path, "other.csv", audience=audience, checkpoint_batches=1)
    assert run_identity(other, {"ti": TI(1), "run_id": "r"}) != run_identity(
        other, {"ti": TI(0), "run_id": "r"}
    )
    kaleyra_conn.reset_stats()
    retry = bulk(tmp_path, audience=audience, checkpoint_batches=1).execute({"ti": TI(0), "run_id": "r"})
    assert (retry["chunks_resumed"], retry["requests"]) == (2, 2)


def garbage_audience(path: Path, count: int) -> list[bytes | None]:
    """A CSV of ``count`` rows, 5% garbage of every kind, 10% repeats; returns each row's phone field."""
    kinds = [
        b"",
        b"not a number",
        b"\xff\xfe\xfd",
        b"12",
        b"+1 999 000 0000",
        b"9" * 70_000,
        b"+44 20 7946 0000 ext",
    ]
    fields: list[bytes | None] = []
    lines = [b"\xef\xbb\xbfid,phone,name"]
    for row in range(count):
        if row % 20 == 7:
            phone = kinds[(row // 20) % len(kinds)]
        elif row % 10 == 3:
            phone = us(row // 3).encode()
        else:
            phone = us(row).encode()
        fields.append(phone)
        lines.append(b"%d,%s,name %d" % (row, phone, row) if len(phone) < 1000 else phone)
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return fields


def test_every_row_is_present_exactly_once_with_5pct_garbage(kaleyra_conn, tmp_path, capfd):
    count = 20_000
    fields = garbage_audience(tmp_path / "audience.csv", count)
    summary = bulk(tmp_path, audience=str(tmp_path / "audience.csv")).execute({})
    rows = list(read_results(as_path(str(tmp_path / "out.csv"))))
    assert [r["row"] for r in rows] == list(range(count))
    garbage = [i for i in range(count) if i % 20 == 7]
    assert summary["statuses"]["invalid"] == len(garbage) == count // 20
    assert summary["statuses"]["failed"] == 0 and summary["rows"] == count
    reasons = {rows[i]["error"] for i in garbage}
    assert {"empty", "not UTF-8 text", "line too long: over 65536 bytes"} <= reasons
    for row, field in zip(rows, fields):
        if row["status"] == "invalid":
            assert row["row"] % 20 == 7 and row["e164"] is None and row["error"]
        else:
            assert row["input"] == field.decode()
            assert (row["status"], row["carrier_id"], row["carrier_status"]) == expected(row["e164"])
    logged = "".join(capfd.readouterr())
    assert "Wrote 20000 rows" in logged and us(0) not in logged and "41520" not in logged


def test_shards_split_the_work_and_merge_into_the_unsharded_output(kaleyra_conn, tmp_path):
    from airflow_provider_kaleyra.rcs.outputs import merge_results

    garbage_audience(tmp_path / "audience.csv", 3_000)
    audience = str(tmp_path / "audience.csv")
    whole = bulk(tmp_path, "whole.csv", audience=audience).execute({})
    shards = [
        bulk(tmp_path, f"shard-{i}.csv", audience=audience, shard_index=i, shard_count=4).execute({})
        for i in range(4)
    ]
    assert sum(s["distinct"] for s in shards) == whole["distinct"]
    assert [s["distinct"] for s in shards] == [650] * 4
    assert [s["requests"] for s in shards] == [2] * 4  # 650 = two bulk calls of 325
    assert [s["statuses"]["invalid"] for s in shards] == [whole["statuses"]["invalid"], 0, 0, 0]
    merged = merge_results([s["output"] for s in shards], tmp_path / "merged.csv")
    assert merged["rows"] == whole["rows"] == 3_000
    assert (tmp_path / "merged.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_object_store_paths_work_like_local_ones(kaleyra_conn, tmp_path, monkeypatch):
    from airflow.sdk.io import fs as airflow_fs

    memory = fsspec.filesystem("memory")
    monkeypatch.setitem(airflow_fs._register_filesystems(), "memory", lambda conn_id, options=None: memory)
    audience = ObjectStoragePath("memory://campaign/audience.txt")
    audience.write_text("\n".join(us(i) for i in range(300)) + "\nnope\n")
    summary = KaleyraRcsBulkLookupOperator(
        task_id="mem", audience=audience, output="memory://campaign/out/results.jsonl", checkpoint_batches=1
    ).execute({})
    assert summary["output"] == "memory://campaign/out/results.jsonl"
    rows = list(read_results(ObjectStoragePath(summary["output"])))
    assert len(rows) == 301 and rows[-1]["error"].startswith("unparseable")
    assert not ObjectStoragePath("memory://campaign/out/results.jsonl.checkpoint").exists()
    memory.rm("/campaign", recursive=True)


def test_dag_with_every_operator_runs_through_dag_test(kaleyra_conn, run_dag_file, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    garbage_audience(work / "audience.csv", 1_200)
    monkeypatch.setenv("KALEYRA_TEST_DIR", str(work))
    dag_file = tmp_path / "dags" / "kaleyra_operators_dag.py"
    dag_file.parent.mkdir()
    dag_file.write_text(textwrap.dedent(DAG_FILE))
    result = run_dag_file(dag_file)
    states = json.loads(result.stdout.split("STATES ")[-1].splitlines()[0])
    assert states["run"] == "success", states
    assert set(states["tasks"].values()) == {"success"}
    assert len([t for t in states["tasks"] if t.startswith("bulk[")]) == 3

    report = json.loads((work / "report.json").read_text())
    assert report["single"] == {**rcs_answer(us(7)), "deviceAddress": mask(us(7)[1:])}
    assert [s["shard"] for s in report["shards"]] == [[0, 3], [1, 3], [2, 3]]
    assert (report["soip"]["numbers"], report["soip"]["invalid"]) == (2, 1)
    assert report["soip"]["callback_profile_id"] == "profile-dag"
    assert kaleyra_conn.stats()["requests"]["soip_check"] == 1

    whole = bulk(tmp_path, "whole.jsonl", audience=str(work / "audience.csv")).execute({})
    assert report["merged"]["rows"] == whole["rows"] == 1_200
    assert (work / "merged.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


DAG_FILE = """
    import json
    import os
    import sys
    from datetime import datetime

    from airflow.sdk import DAG, task

    from airflow_provider_kaleyra.rcs.outputs import merge_results
    from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator, KaleyraRcsLookupOperator
    from airflow_provider_kaleyra.operators.soip import KaleyraSoipCapabilityCheckOperator

    WORK = os.environ["KALEYRA_TEST_DIR"]

    with DAG(
        "kaleyra_operators", schedule=None, start_date=datetime(2025, 1, 1), params={"probe": "+14152000007"}
    ) as dag:
        single = KaleyraRcsLookupOperator(task_id="single", number="{{ params.probe }}")
        shards = KaleyraRcsBulkLookupOperator.partial(
            task_id="bulk",
            audience=WORK + "/audience.csv",
            output=WORK + "/shard-{{ ti.map_index }}.jsonl",
            shard_count=3,
        ).expand(shard_index=[0, 1, 2])
        soip = KaleyraSoipCapabilityCheckOperator(
            task_id="soip", numbers=["+14152000001", "(415) 200-0002", "+14152000001", "junk"],
            callback_profile_id="profile-dag",
        )

        @task
        def merge(summaries):
            return merge_results([s["output"] for s in summaries], WORK + "/merged.jsonl")

        @task
        def report(single, summaries, merged, soip):
            with open(WORK + "/report.json", "w") as handle:
                json.dump({"single": single, "shards": list(summaries), "merged": merged, "soip": soip}, handle)

        report(single.output, shards.output, merge(shards.output), soip.output)

    if __name__ == "__main__":
        run = dag.test()
        tasks = {
            ti.task_id + ("" if ti.map_index < 0 else f"[{ti.map_index}]"): str(ti.state).rsplit(".", 1)[-1]
            for ti in run.get_task_instances()
        }
        print("STATES " + json.dumps({"run": str(run.state).rsplit(".", 1)[-1], "tasks": tasks}))
"""
