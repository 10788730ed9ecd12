"""Bad input refused: a clear error, or a per-row reason; never a crash, never a silent skip."""

from __future__ import annotations

import math
import re

import phonenumbers
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from airflow_provider_kaleyra.client.api import BULK_MAX, BULK_MIN
from airflow_provider_kaleyra.numbers.audience import MAX_LINE_BYTES, open_audience
from airflow_provider_kaleyra.numbers.normalize import normalize
from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator
from airflow_provider_kaleyra.rcs.batching import plan_batch_sizes, plan_batches, shard_bounds
from airflow_provider_kaleyra.rcs.outputs import read_results
from airflow_provider_kaleyra.utils.storage import as_path

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
REGIONS = st.sampled_from([None, "US", "IN", "GB", "DE", "BR", "ZZ", "", "XX", "001"])
any_text = st.text(st.characters(codec=None, categories=None), max_size=200)  # surrogates, NUL, controls
phone_like = st.from_regex(r"[ +0-9()\-./\u00a0\u2011\uff10-\uff19\u0660-\u0669ext]{0,30}", fullmatch=True)
huge = st.integers(65, 200_000).map(lambda n: "+1" + "4" * n)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.one_of(any_text, phone_like, huge, st.binary(max_size=30), st.integers(), st.none(), st.floats()),
    region=REGIONS,
)
@example(raw="\ud800", region="US")
@example(raw="+1415555\x002671", region=None)
@example(raw="\x00" * 10_000, region="US")
@example(raw="\ufeff+1 415 555 2671", region=None)
@example(raw="+١٤١٥٥٥٥٢٦٧١", region=None)
@example(raw="00", region="US")
def test_normalize_never_crashes_and_answers_valid_e164_or_a_reason(raw, region):
    result = normalize(raw, region)
    if result.e164 is None:
        assert isinstance(result.reason, str) and result.reason, (raw, result)
        return
    assert result.reason is None
    assert E164.match(result.e164), result
    parsed = phonenumbers.parse(result.e164, None)
    assert phonenumbers.is_valid_number(parsed), result
    assert phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == result.e164
    assert normalize(result.e164) == result, "E.164 output does not read back as itself"


@settings(max_examples=300, deadline=None)
@given(
    number=st.sampled_from(["+14155552671", "+919876543210", "+442079460000", "+4915112345678"]),
    noise=st.sampled_from(["", " ", "  ", "-", ".", "(", ")", "\u00a0", "\t"]),
    cut=st.integers(0, 12),
)
def test_separators_never_change_the_number(number, noise, cut):
    raw = number[: cut + 1] + noise + number[cut + 1 :]
    assert normalize(raw).e164 == number


@settings(max_examples=500, deadline=None)
@given(n=st.integers(0, 2_000_000))
def test_batch_plan_is_compliant_for_any_count(n):
    sizes = plan_batch_sizes(n)
    assert sum(sizes) == n
    if n < BULK_MIN:
        assert sizes == [1] * n
    else:
        assert len(sizes) == math.ceil(n / BULK_MAX)
        assert BULK_MIN <= min(sizes) <= max(sizes) <= BULK_MAX


@settings(max_examples=300, deadline=None)
@given(numbers=st.lists(st.integers(0, 10**9), unique=True, max_size=3000), shards=st.integers(1, 64))
def test_batches_and_shards_hold_every_number_exactly_once(numbers, shards):
    batches = plan_batches(numbers)
    assert [n for batch in batches for n in batch] == numbers
    assert (
        all(len(b) == 1 for b in batches)
        if len(numbers) < BULK_MIN
        else all(BULK_MIN <= len(b) <= BULK_MAX for b in batches)
    )
    bounds = shard_bounds(len(numbers), shards)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(numbers) and len(bounds) <= shards
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    if len(numbers) >= BULK_MIN:
        assert all(stop - start >= BULK_MIN for start, stop in bounds)


def test_planner_refuses_nonsense():
    with pytest.raises(ValueError):
        plan_batch_sizes(-1)
    with pytest.raises(ValueError):
        shard_bounds(10, 0)


# -- audience files ---------------------------------------------------------------------------------


def _lines(data: bytes) -> int:
    """Physical lines in ``data``: every ``\\n`` ends one, and a last line may lack it."""
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


line_bytes = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from(
        [
            b"",
            b"\r",
            b"   ",
            b"\xef\xbb\xbf+14155552671",
            b"\xff\xfe+1 415",
            b"+14155552671\r",
            b'"+1 (415) 555-2671",x',
            b"\x00\x00",
            b",,,,",
            b'"unterminated',
            b'\r"',  # csv refuses a carriage return inside a quoted field
            b"\xed\xa0\x80",
        ]
    ),
    st.integers(MAX_LINE_BYTES - 2, MAX_LINE_BYTES + 3).map(lambda n: b"7" * n),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(line_bytes, max_size=30),
    trailing=st.booleans(),
    bom=st.booleans(),
    fmt=st.sampled_from(["csv", "text"]),
)
def test_every_audience_line_becomes_one_row_with_a_reason_when_unreadable(
    tmp_path, lines, trailing, bom, fmt
):
    body = b"\n".join(lines) + (b"\n" if trailing and lines else b"")
    header = b"phone,name\n" if fmt == "csv" else b""
    data = (b"\xef\xbb\xbf" if bom else b"") + header + body
    path = tmp_path / f"audience.{'csv' if fmt == 'csv' else 'txt'}"
    path.write_bytes(data)
    rows = list(open_audience(as_path(str(path)), column="phone").rows())
    # A BOM opens the first line of a text file (which it belongs to), or the CSV header.
    counted = (b"\xef\xbb\xbf" if bom and fmt == "text" else b"") + body
    assert len(rows) == _lines(counted), (data[:200], rows[:5])
    for row in rows:
        assert isinstance(row.raw, str)
        if row.problem is None:
            norm = normalize(row.raw, "US")
            assert norm.e164 or norm.reason  # the operator reports this reason for the row
        else:
            assert isinstance(row.problem, str) and row.problem, row


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "header"),
        (b"\n+14155552671\n", "header"),
        (b"mobile,name\n+14155552671,a\n", "no column 'phone'; columns found: 'mobile', 'name'"),
        (b"\xff\xfephone\n+14155552671\n", "UTF-8 CSV header"),
        (b"7" * (MAX_LINE_BYTES + 10) + b"\n+14155552671\n", "longer than"),
    ],
    ids=["empty", "blank-header", "wrong-column", "non-utf8-header", "huge-header"],
)
def test_unreadable_csv_headers_fail_with_a_clear_error(tmp_path, content, message):
    path = tmp_path / "audience.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        list(open_audience(as_path(str(path)), column="phone").rows())


NASTY_LINES = [
    (b"+1 415-555-2671,alice", "ok"),
    (b"", "empty"),
    (b"   ,bob", "empty"),
    (b"(212) 555-0199,national", "ok"),
    (b"\xff\xfe\x00+1 212 555 0198,latin", "not UTF-8 text"),
    (b"+1 212 555 0197\r", "ok"),  # CRLF
    (b'"+1 (646) 555-0196","quoted, with comma"', "ok"),
    (b"+1 646 555\x00 0195,nul", "unparseable"),
    (b"9" * (MAX_LINE_BYTES + 100), "line too long"),
    (b"+1 415-555-2671,again", "ok"),  # a duplicate keeps its own row
    (b"short", "unparseable"),
    (b",,,,", "empty"),
    (b"\xed\xa0\x80,surrogate-bytes", "not UTF-8 text"),
    (b"+1 999 555 0100,invalid", "not a valid number"),
]


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_bulk_operator_accounts_for_every_line_of_a_nasty_audience(
    secret_simulator, use_connection, tmp_path, suffix
):
    sim = secret_simulator()
    use_connection(sim.url)
    audience = tmp_path / "audience.csv"
    audience.write_bytes(b"\xef\xbb\xbfPhone,name\r\n" + b"\n".join(line for line, _ in NASTY_LINES) + b"\n")
    output = tmp_path / f"results.{suffix}"
    summary = KaleyraRcsBulkLookupOperator(
        task_id="nasty", audience=str(audience), output=str(output), column="phone"
    ).execute({})
    rows = list(read_results(as_path(str(output))))
    assert summary["rows"] == summary["inputs"] == len(rows) == len(NASTY_LINES)
    assert [r["row"] for r in rows] == list(range(len(NASTY_LINES)))
    for record, (line, expect) in zip(rows, NASTY_LINES):
        if expect == "ok":
            assert record["status"] in ("rcs_enabled", "rcs_disabled"), (line[:60], record)
            assert record["error"] is None
        else:
            assert record["status"] == "invalid", (line[:60], record)
            assert record["error"] and expect in record["error"], (line[:60], record)
    assert len(str(rows[8]["input"])) < 1000, "a huge line was copied into the output"


def test_bulk_operator_refuses_a_wrong_column_before_any_request(secret_simulator, use_connection, tmp_path):
    sim = secret_simulator()
    use_connection(sim.url)
    audience = tmp_path / "audience.csv"
    audience.write_text("msisdn,name\n+14155552671,a\n")
    operator = KaleyraRcsBulkLookupOperator(
        task_id="x", audience=str(audience), output=str(tmp_path / "o.csv")
    )
    with pytest.raises(ValueError, match="no column 'phone'; columns found: 'msisdn', 'name'"):
        operator.execute({})
    assert sum(sim.stats()["requests"].values()) == 0
    assert not (tmp_path / "o.csv").exists()


def test_bulk_operator_refuses_wrong_arguments_clearly(tmp_path):
    with pytest.raises(ValueError, match="exactly one of numbers"):
        KaleyraRcsBulkLookupOperator(task_id="a", output="o.csv")
    with pytest.raises(ValueError, match="max_failed_ratio"):
        KaleyraRcsBulkLookupOperator(task_id="b", output="o.csv", numbers=[], max_failed_ratio=2)
    op = KaleyraRcsBulkLookupOperator(task_id="c", output=str(tmp_path / "o.csv"), numbers="+14155552671")
    with pytest.raises(TypeError, match="must be a list"):
        list(op._blocks())
