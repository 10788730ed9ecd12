"""Audience files in, result files out: every line is one row, whatever the bytes."""

from __future__ import annotations

import csv
import gzip
import io
import json
import time

import pytest
from airflow.sdk import ObjectStoragePath
from hypothesis import HealthCheck, given, settings, strategies as st

from airflow_provider_kaleyra.numbers.audience import (
    MAX_LINE_BYTES,
    NOT_CSV,
    NOT_UTF8,
    AudienceRow,
    line_blocks,
    open_audience,
)
from airflow_provider_kaleyra.rcs import outputs
from airflow_provider_kaleyra.rcs.answers import Answer, RcsResult
from airflow_provider_kaleyra.rcs.checkpoint import Checkpoint, fingerprint
from airflow_provider_kaleyra.rcs.outputs import merge_results, read_results, write_results
from airflow_provider_kaleyra.utils.storage import as_path


def lines_of(data: bytes, block: int | None = None, limit: int = MAX_LINE_BYTES) -> list[bytes | None]:
    stream = io.BytesIO(data)
    read = stream.read if block is None else (lambda _n: stream.read(block))
    return [line for block in line_blocks(read, limit) for line in block]


def rows_of(tmp_path, name: str, data: bytes, **kwargs) -> list[AudienceRow]:
    path = tmp_path / name
    path.write_bytes(data)
    return list(open_audience(as_path(str(path)), **kwargs).rows())


# -- lines -----------------------------------------------------------------------------------


def test_lines_drop_line_ends_and_keep_blank_lines():
    assert lines_of(b"a\r\nb\n\nc") == [b"a", b"b", b"", b"c"]
    assert lines_of(b"a\n") == [b"a"]
    assert lines_of(b"") == []
    assert lines_of(b"\n\n") == [b"", b""]


@pytest.mark.parametrize("block", [1, 2, 3, 7, 1024])
def test_over_long_lines_become_none_across_any_block_size(block):
    data = b"12\n" + b"x" * 11 + b"\n34\n" + b"y" * 50
    assert lines_of(data, block=block, limit=10) == [b"12", None, b"34", None]
    assert lines_of(b"x" * 10 + b"\r\n", block=block, limit=10) == [b"x" * 10]


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), block=st.integers(1, 40), limit=st.integers(1, 20))
def test_lines_match_a_plain_split(data, block, limit):
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    expected = [line.removesuffix(b"\r") for line in expected]
    assert lines_of(data, block=block, limit=limit) == [
        line if len(line) <= limit else None for line in expected
    ]


# -- audience files ----------------------------------------------------------------------------


def test_csv_with_bom_quotes_blank_lines_and_short_rows(tmp_path):
    data = '\ufeffname,Phone\nAnn,+1 415 555 0100\n"Doe, Jo","(415) 555-0101"\n\nBob\n,\n'
    rows = rows_of(tmp_path, "a.csv", data.encode(), column="phone")
    assert rows == [
        AudienceRow("+1 415 555 0100"),
        AudienceRow("(415) 555-0101"),
        AudienceRow(""),
        AudienceRow("", "no 'phone' field"),
        AudienceRow(""),
    ]


def test_csv_line_the_csv_module_refuses_is_a_row_with_a_reason(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b'phone,name\n\r"x,y\n+14155552671,b\n')
    assert list(open_audience(as_path(str(path))).rows()) == [
        AudienceRow('\r"x,y', NOT_CSV),
        AudienceRow("+14155552671"),
    ]


def test_text_file_keeps_every_line_with_a_reason_where_unreadable(tmp_path):
    data = b"\xef\xbb\xbf+14155550100\r\n\n\xff\xfe415\n" + b"9" * (MAX_LINE_BYTES + 1) + b"\n+14155550101"
    rows = rows_of(tmp_path, "a.txt", data)
    assert rows == [
        AudienceRow("+14155550100"),
        AudienceRow(""),
        AudienceRow("\ufffd\ufffd415", NOT_UTF8),
        AudienceRow("", f"line too long: over {MAX_LINE_BYTES} bytes"),
        AudienceRow("+14155550101"),
    ]


def test_wrong_column_names_the_columns_found(tmp_path):
    with pytest.raises(ValueError, match=r"no column 'phone'; columns found: 'name', 'mobile'"):
        rows_of(tmp_path, "a.csv", b"name,mobile\nAnn,+14155550100\n")
    assert rows_of(tmp_path, "b.csv", b"name,mobile\nAnn,+14155550100\n", column="mobile") == [
        AudienceRow("+14155550100")
    ]


@pytest.mark.parametrize("data", [b"", b"\xff\xfe,phone\n1\n"])
def test_csv_needs_a_readable_header(tmp_path, data):
    with pytest.raises(ValueError, match="line 1"):
        rows_of(tmp_path, "a.csv", data)


def test_format_from_suffix_or_argument(tmp_path):
    assert rows_of(tmp_path, "a.dat", b"phone\n1\n", fmt="csv") == [AudienceRow("1")]
    with pytest.raises(ValueError, match="audience_format"):
        rows_of(tmp_path, "a.xlsx", b"1\n")
    with pytest.raises(ValueError, match=".csv, .jsonl or .json"):
        outputs.result_format(as_path(str(tmp_path / "out.parquet")))


def test_plain_paths_become_absolute_object_storage_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = as_path("sub/a.csv")
    assert isinstance(path, ObjectStoragePath)
    assert str(path) == str(tmp_path / "sub" / "a.csv")
    assert as_path(path) is path
    assert as_path("file:///x/y.csv").protocol == "file"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert str(as_path("~/b.csv")) == str(tmp_path / "home" / "b.csv")


# -- results --------------------------------------------------------------------------------------


RESULTS = [
    (0, RcsResult("+1 415 555 0100", "+14155550100", "rcs_enabled", "Google", "ACTIVE", None, "cache", 3600)),
    (1, RcsResult("", None, "invalid", error="empty")),
    (2, RcsResult('a "quoted", text', None, "invalid", error="unparseable")),
]


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl"])
def test_results_round_trip(tmp_path, name):
    path = as_path(str(tmp_path / "deep" / name))
    with write_results(path) as out:
        for row, result in RESULTS:
            out.write(row, result)
    assert out.rows == 3
    assert [RcsResult(*(r[f] for f in RcsResult._fields)) for r in read_results(path)] == [
        r for _, r in RESULTS
    ]
    assert [r["row"] for r in read_results(path)] == [0, 1, 2]
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temp file left


def test_csv_output_header_and_jsonl_keys(tmp_path):
    csv_path, jsonl_path = as_path(str(tmp_path / "o.csv")), as_path(str(tmp_path / "o.json"))
    for path in (csv_path, jsonl_path):
        with write_results(path) as out:
            out.write(*RESULTS[0])
    assert csv_path.read_text().splitlines() == [
        "row,input,e164,status,carrier_id,carrier_status,error,source,age_seconds",
        "0,+1 415 555 0100,+14155550100,rcs_enabled,Google,ACTIVE,,cache,3600",
    ]
    assert tuple(json.loads(jsonl_path.read_text())) == ("row", *RcsResult._fields)


def test_a_failed_write_leaves_the_old_output_untouched(tmp_path):
    path = as_path(str(tmp_path / "o.csv"))
    path.write_text("old")

    def interrupted() -> None:
        with write_results(path) as out:
            out.write(*RESULTS[0])
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        interrupted()
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["o.csv"]


def test_merge_interleaves_shards_by_row(tmp_path):
    shards = [as_path(str(tmp_path / f"s{i}.csv")) for i in range(2)]
    for index, path in enumerate(shards):
        with write_results(path) as out:
            for row, result in RESULTS:
                if row % 2 == index:
                    out.write(row, result)
    summary = merge_results([str(p) for p in shards], str(tmp_path / "all.jsonl"))
    assert summary == {
        "output": str(tmp_path / "all.jsonl"),
        "rows": 3,
        "statuses": {"rcs_enabled": 1, "invalid": 2},
    }
    assert [r["row"] for r in read_results(as_path(summary["output"]))] == [0, 1, 2]


def test_merge_refuses_shards_that_shared_an_output_or_a_row(tmp_path):
    shard = as_path(str(tmp_path / "s.csv"))
    with write_results(shard) as out:
        for row, result in RESULTS:
            out.write(row, result)
    merged = tmp_path / "all.csv"
    with pytest.raises(ValueError, match=r"listed more than once: .*s\.csv.*map_index"):
        merge_results([str(shard), str(shard)], str(merged))
    copy = tmp_path / "copy.csv"
    copy.write_bytes((tmp_path / "s.csv").read_bytes())
    with pytest.raises(ValueError, match="row 0 is in more than one shard output"):
        merge_results([str(shard), str(copy)], str(merged))
    assert not merged.exists()  # nothing half-merged left behind


# -- checkpoint parts ------------------------------------------------------------------------------


def test_checkpoint_parts_round_trip_and_reject_mismatches(tmp_path):
    output = as_path(str(tmp_path / "out.csv"))
    store = Checkpoint(output, fingerprint([14155550100, 14155550101], [2], 20))
    assert store.existing() == set()
    answers = [
        ("+14155550100", Answer("rcs_enabled", "Google", "ACTIVE")),
        ("+14155550101", Answer("failed", error="x")),
    ]
    before = time.time()
    store.save(3, answers)
    assert store.existing() == {3}
    loaded, saved_at = store.load(3, ["+14155550100", "+14155550101"])
    assert loaded == dict(answers) and before - 0.01 <= saved_at <= time.time()  # when it was written
    assert store.load(3, ["+14155550100"]) is None
    store.part(4).write_text("not json\n")
    assert store.load(4, ["+14155550100"]) is None
    store.part(5).write_text('nan\n["rcs_enabled",null,null,null,["+14155550100"]]\n')
    assert store.load(5, ["+14155550100"]) is None  # no usable time: asked again, never served as fresh
    store.discard([3])
    assert store.existing() == {4, 5}
    store.clear()
    assert not store.root.exists()


def test_a_checkpoint_part_never_claims_a_later_time_than_it_was_written(tmp_path, monkeypatch):
    store = Checkpoint(as_path(str(tmp_path / "out.csv")), fingerprint([14155550100], [1], 20))
    written = 1796319271.5267823  # would round up to .527 at three decimals
    monkeypatch.setattr(time, "time", lambda: written)
    store.save(0, [("+14155550100", Answer("rcs_enabled"))])
    _, saved_at = store.load(0, ["+14155550100"])
    assert written - 0.001 < saved_at <= written


def test_fingerprint_changes_with_numbers_order_and_plan():
    base = fingerprint([1, 2, 3], [3], 20)
    assert base == fingerprint([1, 2, 3], [3], 20)
    others = {
        fingerprint([2, 1, 3], [3], 20),
        fingerprint([1, 2, 3], [1, 1, 1], 20),
        fingerprint([1, 2, 3], [3], 5),
    }
    assert len(others | {base}) == 4


# -- one reader: the preflight, the bulk operator and the hook agree --------------------------------

# Excel's forms (a BOM, CRLF, a number in scientific notation, ="..." text), blank lines, a line
# cut by ";", bytes that are not UTF-8, a short line, quotes, repeats, national and 00 forms.
MESSY_AUDIENCE = (
    b"\xef\xbb\xbfcustomer_id,phone,segment\r\n"
    b"C1,+1 415 555 2671,vip\r\n"
    b"\r\n"
    b"C2;(415) 555-2672;new\r\n"
    b"C3,\xff\xfe4155552673,x\r\n"
    b"C4,1.41555527E10,x\r\n"
    b'C5,="+14155552674",x\r\n'
    b'C6,"(415) 555-2675","a, b"\r\n'
    b"C7,+14155552671,repeat\r\n"
    b"C8,00 1 415 555 2676,x\r\n"
    b"C9,N/A,x\r\n"
    b"C10\r\n"
    b"   \r\n"
    b"C11,(212) 245-2918,x\n"
    b"C12,+14155552671"
)


@pytest.mark.parametrize("name", ["audience.csv", "audience.csv.gz"])
def test_the_same_messy_audience_gives_the_same_rows_reasons_and_answers_everywhere(
    kaleyra_conn, tmp_path, name
):
    from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
    from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator
    from airflow_provider_kaleyra.preflight.prepare import prepare_audience

    path = tmp_path / name
    path.write_bytes(gzip.compress(MESSY_AUDIENCE) if name.endswith(".gz") else MESSY_AUDIENCE)
    lines = MESSY_AUDIENCE.split(b"\n")[1:]
    read = list(open_audience(as_path(str(path))).rows())
    assert len(read) == len(lines) == 14  # every line after the header is a row, blank ones too
    assert read[2] == AudienceRow("", "no 'phone' field") and read[3].problem == NOT_UTF8

    prepare_audience(str(path), str(tmp_path / "run"), column="phone", region="US", shard_count=1)
    with (tmp_path / "run" / "work" / "rows.csv").open(encoding="utf-8", newline="") as handle:
        prepared = [(row["e164"] or None, row["invalid_reason"] or None) for row in csv.DictReader(handle)]

    output = tmp_path / "out.csv"
    KaleyraRcsBulkLookupOperator(task_id="bulk", audience=str(path), output=str(output)).execute({})
    operated = list(read_results(as_path(str(output))))
    assert [row["input"] for row in operated] == [row.raw for row in read]

    hooked = list(KaleyraHook().lookup_rcs_many([row.raw for row in read]))

    assert [row["e164"] or None for row in operated] == [e164 for e164, _ in prepared]
    assert [row["error"] or None for row in operated if row["status"] == "invalid"] == [
        reason for e164, reason in prepared if e164 is None
    ]
    valid = [e164 for e164, _ in prepared if e164]
    assert len(valid) == 7 and len(set(valid)) == 5  # +14155552671 three times
    for row, result, line in zip(operated, hooked, read):
        if line.problem is None:  # (a list of strings cannot carry the reader's reasons)
            assert (result.e164, result.status, result.error) == (
                row["e164"] or None,
                row["status"],
                row["error"] or None,
            )
        else:
            assert row["status"] == "invalid" and row["error"] == line.problem


@pytest.mark.parametrize("delimiter", [b";", b"\t"])
def test_another_delimiter_is_refused_the_same_way_everywhere(kaleyra_conn, tmp_path, delimiter):
    from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator
    from airflow_provider_kaleyra.preflight.prepare import prepare_audience

    path = tmp_path / "audience.csv.gz"
    path.write_bytes(gzip.compress(delimiter.join([b"customer_id", b"phone"]) + b"\nC1\n"))
    with pytest.raises(ValueError, match="-delimited") as prepared:
        prepare_audience(str(path), str(tmp_path / "run"), column="phone", region="US", shard_count=1)
    op = KaleyraRcsBulkLookupOperator(task_id="bulk", audience=str(path), output=str(tmp_path / "o.csv"))
    with pytest.raises(ValueError, match="-delimited") as operated:
        op.execute({})
    assert str(operated.value) in str(prepared.value)
