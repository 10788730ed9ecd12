"""Hostile answers survived: the hook and the bulk operator over real HTTP against a server that misbehaves on purpose.

Each case scripts ``hostile_server.HostileServer`` to answer exactly so, byte for byte: a reset in
the middle of a body, corrupt gzip, JSON nested too deep, an empty 200, nonsense ``Retry-After``,
a body dripping a byte every half second, 100 MB bodies, odd ``rcsEnabled`` values, ``chat:``
addresses, a revoked key, error bodies echoing the API key. Whatever the server does, every input
comes back exactly once (an answer or ``failed`` with the reason), in bounded time and memory,
and no secret comes out.
"""

from __future__ import annotations

import csv
import json
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _reliability import SECRET_API_KEY, SECRET_CALLBACK, SECRETS
from hostile_server import (
    Behaviour,
    Connection,
    HostileServer,
    Request,
    bulk_answer,
    corrupt_gzip,
    drip,
    empty,
    huge,
    nested,
    raw,
    reply,
    reset_mid_body,
    throttle,
)

from airflow_provider_kaleyra.client.api import FAILED, RCS_DISABLED, RCS_ENABLED
from airflow_provider_kaleyra.client.body import MAX_BODY_BYTES
from airflow_provider_kaleyra.client.exceptions import KaleyraAuthError
from airflow_provider_kaleyra.client.transport import call_budget
from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator
from airflow_provider_kaleyra.rcs.answers import NO_RCS_ENABLED, UNREADABLE_RCS_ENABLED

ANSWERED = {RCS_ENABLED, RCS_DISABLED}


def us(i: int) -> str:
    return f"+1415555{i:04d}"


NUMBERS = [us(i) for i in range(120)]  # one bulk call


@pytest.fixture
def hostile(use_connection: Callable[..., None]) -> Iterator[Callable[..., HostileServer]]:
    """``hostile(*behaviours, **connection_extras)``: a started server, with ``kaleyra_default`` pointing at it."""
    started: list[HostileServer] = []

    def start(*behaviours: Behaviour, **extra: Any) -> HostileServer:
        server = HostileServer(*behaviours).start()
        started.append(server)
        settings = {"max_retries": 2, "retry_backoff": 0.01, "timeout": 3, **extra}
        use_connection(server.url, **settings)
        return server

    yield start
    for server in started:
        server.stop()


def lookup(numbers: list[str] = NUMBERS) -> tuple[list[Any], float]:
    started = time.monotonic()
    results = list(KaleyraHook().lookup_rcs_many(numbers))
    return results, time.monotonic() - started


def run_bulk_operator(
    tmp_path: Any, numbers: list[str] = NUMBERS
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    output = tmp_path / "out.csv"
    summary = KaleyraRcsBulkLookupOperator(
        task_id="bulk", numbers=numbers, output=str(output), max_failed_ratio=1
    ).execute({})
    with output.open(newline="") as handle:
        return summary, list(csv.DictReader(handle))


# Every way of not giving a readable answer, and the reason the records then carry.
UNREADABLE: dict[str, tuple[Behaviour, str]] = {
    "reset mid-body, Content-Length": (reset_mid_body(chunked=False), "no readable answer from Kaleyra"),
    "reset mid-body, chunked": (reset_mid_body(chunked=True), "no readable answer from Kaleyra"),
    "corrupt gzip": (corrupt_gzip(), "no readable answer from Kaleyra"),
    "JSON nested 100,000 deep": (nested(100_000), "JSON nested too deep"),
    "empty 200": (empty(), "Kaleyra's bulk answer was empty"),
}


MALFORMED_HEADS = {
    "garbage status line": b"HTTP/1.1 two hundred OK\r\n\r\n{}",
    "no status line": b"{}",
    "Content-Length: abc": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n{}",
    "Content-Length: -5": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n{}",
    "two Content-Lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\n{}",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("case", list(MALFORMED_HEADS))
def test_a_malformed_answer_is_a_failed_record_with_a_reason(hostile, case):
    server = hostile(raw(MALFORMED_HEADS[case]), max_retries=1)
    results, elapsed = lookup()
    assert [r.e164 for r in results] == NUMBERS
    assert all(r.status == FAILED and r.error.startswith("gave up after 2 attempts") for r in results), (
        results[0]
    )
    assert server.count == 2 and elapsed < 3


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_an_unreadable_answer_is_retried_and_then_answered(hostile, case):
    server = hostile(UNREADABLE[case][0], bulk_answer())
    results, _ = lookup()
    assert [r.e164 for r in results] == NUMBERS
    assert {r.status for r in results} <= ANSWERED, Counter(r.error for r in results)
    assert server.count == 2  # the bad answer, then the retry


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_an_unreadable_answer_every_time_becomes_failed_records_never_an_exception(hostile, tmp_path, case):
    behaviour, reason = UNREADABLE[case]
    server = hostile(behaviour, max_retries=2)
    results, _ = lookup()
    assert [r.e164 for r in results] == NUMBERS
    assert all(r.status == FAILED for r in results)
    assert all(r.error.startswith("gave up after 3 attempts: ") and reason in r.error for r in results), (
        results[0]
    )
    assert server.count == 3

    summary, rows = run_bulk_operator(tmp_path)  # the operator too: a finished task with reasons
    assert summary["statuses"][FAILED] == len(NUMBERS) == len(rows)
    assert all(reason in row["error"] for row in rows)


@pytest.mark.parametrize(
    "value", ["nan", "inf", "-inf", "-5", "1e400", "soon", "Sun, 99 Foo 2025 99:99:99 GMT"]
)
def test_nonsense_retry_after_is_an_absent_header_exponential_backoff(hostile, value):
    server = hostile(throttle(value), throttle(value), bulk_answer(), retry_backoff=0.2, max_retries=3)
    results, elapsed = lookup()
    assert {r.status for r in results} <= ANSWERED
    assert server.count == 3
    first, second, third = (r.received_at for r in server.requests)
    # backoff of retry_backoff x 2^attempt x jitter in [0.5, 1]: 0.1-0.2 s, then 0.2-0.4 s
    assert 0.09 <= second - first <= 1.0 and 0.19 <= third - second <= 1.5
    assert elapsed < 3


def test_a_dripping_body_is_cut_at_the_deadline(hostile):
    timeout, retries = 1.0, 1
    hostile(drip(0.5), timeout=timeout, max_retries=retries)
    results, elapsed = lookup()
    assert all(r.status == FAILED and "took longer than the 1 s timeout" in r.error for r in results)
    # each attempt ends at its deadline: two attempts and one short backoff, far within the budget
    assert 2 * timeout <= elapsed < 2 * timeout + 1.0 <= call_budget(timeout, retries)


def test_a_drip_then_a_good_answer_is_answered(hostile):
    server = hostile(drip(0.5), bulk_answer(), timeout=1)
    results, elapsed = lookup()
    assert {r.status for r in results} <= ANSWERED and server.count == 2 and elapsed < 2.5


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "chunked"])
def test_a_100_mb_body_is_refused_after_the_cap_in_bounded_memory(hostile, declare):
    """Eight calls at once, each answered with 100 MB: memory stays at eight capped reads at most."""
    server = hostile(huge(100 * 1024 * 1024, declare=declare), max_retries=0, timeout=10, max_concurrency=8)
    numbers = [us(i) for i in range(4000)]  # 8 bulk calls
    list(KaleyraHook().lookup_rcs_many(["not a number"]))  # first-use work (imports, metadata) done untraced
    tracemalloc.start()
    try:
        results, elapsed = lookup(numbers)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(
        f"\n8 x 100 MB answers ({'declared' if declare else 'chunked'}): peak {peak / 2**20:.1f} MiB traced"
    )
    assert all(r.status == FAILED and f"over the {MAX_BODY_BYTES}" in r.error for r in results), results[0]
    assert server.count == 8
    assert peak < 8 * 1.5 * MAX_BODY_BYTES, f"peak {peak / 2**20:.1f} MiB"  # (800 MB unbounded)
    assert elapsed < 10
    time.sleep(0.2)  # (the server notices the closed connections)
    # with a length the client refuses before reading; without one each call stops at the cap
    assert server.bytes_sent < 8 * 20 * 1024 * 1024


def test_rcs_enabled_unambiguous_spellings_are_read_and_unknown_is_failed_not_disabled(hostile):
    spellings: list[tuple[Any, str | None]] = [
        (True, RCS_ENABLED),
        (False, RCS_DISABLED),
        ("true", RCS_ENABLED),
        (" FALSE ", RCS_DISABLED),
        (1, RCS_ENABLED),
        (0, RCS_DISABLED),
        ("yes", RCS_ENABLED),
        ("No", RCS_DISABLED),
        ("1", RCS_ENABLED),
        ("0", RCS_DISABLED),
        ("missing", NO_RCS_ENABLED),
        (None, NO_RCS_ENABLED),
        ("maybe", UNREADABLE_RCS_ENABLED),
        (2, UNREADABLE_RCS_ENABLED),
        (0.5, UNREADABLE_RCS_ENABLED),
        ([True], UNREADABLE_RCS_ENABLED),
        ({"value": True}, UNREADABLE_RCS_ENABLED),
    ]

    def device(i: int, number: str) -> dict[str, Any]:
        value = spellings[i % len(spellings)][0]
        answer = {"deviceAddress": number.lstrip("+"), "carrierId": "Google", "carrierStatus": "ACTIVE"}
        if value != "missing":
            answer["rcsEnabled"] = value
        return answer

    hostile(bulk_answer(device))
    results, _ = lookup()
    for i, result in enumerate(results):
        value, expected = spellings[i % len(spellings)]
        if expected in ANSWERED:
            assert result.status == expected, (value, result)
        else:
            assert result.status == FAILED and result.error == expected, (value, result)
            assert result.carrier_id == "Google"  # what Kaleyra did say is kept

    # single lookups (fewer than 100 numbers) read their answer the same way
    hostile(bulk_answer(lambda i, number: {"deviceAddress": number, "rcsEnabled": None}))
    singles, _ = lookup(NUMBERS[:3])
    assert [(r.status, r.error) for r in singles] == [(FAILED, NO_RCS_ENABLED)] * 3


def test_chat_and_other_address_forms_are_matched_to_what_was_asked(hostile, hook_logs):
    forms = ["chat:{d}", "chat:+{d}", "+{d}", "{d}", " {d} ", "tel:+{d}"]

    def device(i: int, number: str) -> dict[str, Any]:
        address = forms[i % len(forms)].format(d=number.lstrip("+"))
        return {"deviceAddress": address, "rcsEnabled": True, "carrierId": "Google"}

    server = hostile(bulk_answer(device))
    results, _ = lookup()
    assert all(r.status == RCS_ENABLED for r in results), Counter(r.error for r in results)
    assert server.count == 1  # nothing left out, nothing asked again
    assert "left out" not in hook_logs.text


def test_a_dead_key_stops_at_the_first_refusal(hostile, tmp_path):
    refusal = reply(
        {"code": 401, "message": f"Invalid api-key '{SECRET_API_KEY}'"}, status=401, reason="Unauthorized"
    )
    numbers = [us(i) for i in range(4000)]  # 8 bulk calls for 8 threads
    server = hostile(refusal, max_concurrency=8)
    with pytest.raises(KaleyraAuthError) as raised:
        lookup(numbers)
    assert server.count == 1, "other threads kept sending with a refused key"
    assert SECRET_API_KEY not in str(raised.value) and "***" in str(raised.value)

    server = hostile(refusal, max_concurrency=8)
    with pytest.raises(KaleyraAuthError):
        run_bulk_operator(tmp_path, numbers)
    assert server.count == 1


def test_a_revoked_key_surfaces_at_once_while_other_calls_wait_out_a_retry_after(hostile):
    refusal = reply({"message": "key revoked"}, status=401, reason="Unauthorized")
    server = hostile(throttle("30"), refusal, bulk_answer(), max_concurrency=2)
    started = time.monotonic()
    with pytest.raises(KaleyraAuthError):
        lookup([us(i) for i in range(1000)])  # two bulk calls, side by side
    assert time.monotonic() - started < 3, "a call slept out its 30 s Retry-After with a dead key"
    assert server.count == 2


def test_server_text_echoing_secrets_is_redacted_from_errors_outputs_and_logs(
    hostile, tmp_path, all_logs, hook_logs, capfd
):
    echo = reply(
        {"code": "E400", "message": f"Invalid api-key '{SECRET_API_KEY}' (secret {SECRET_CALLBACK})"},
        status=400,
        reason=f"Bad {SECRET_API_KEY}",
    )

    def echoing_device(i: int, number: str) -> dict[str, Any]:
        return {"deviceAddress": number, "rcsEnabled": True, "carrierStatus": f"ok {SECRET_CALLBACK}"}

    hostile(echo)
    results, _ = lookup()
    assert all(r.status == FAILED and "Invalid api-key '***'" in r.error for r in results), results[0]
    summary, rows = run_bulk_operator(tmp_path)
    hostile(bulk_answer(echoing_device))
    echoed, _ = lookup()
    assert all(r.status == RCS_ENABLED and r.carrier_status == "ok ***" for r in echoed)
    hostile(reply({"message": f"Invalid api-key '{SECRET_API_KEY}'"}, status=401))
    with pytest.raises(KaleyraAuthError) as raised:
        KaleyraHook().lookup_rcs(NUMBERS[0])

    texts = [
        *(repr(r) for r in results + echoed),
        (tmp_path / "out.csv").read_text(),
        repr(summary),
        str(raised.value),
        *all_logs.texts(),
        hook_logs.text,
        *capfd.readouterr(),
    ]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, text[:500]


def carrier_with_bad_bytes(conn: Connection, request: Request) -> None:
    """A bulk answer whose ``carrierId`` holds a byte that is not UTF-8; everything else is fine."""
    devices = [
        {"deviceAddress": n, "carrierId": "CARRIER", "carrierStatus": "ACTIVE", "rcsEnabled": True}
        for n in request.numbers
    ]
    body = json.dumps({"code": "RCS200", "devices": devices}).encode().replace(b"CARRIER", b"Jio\xff")
    conn.head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))})
    conn.send_body(body)


def test_a_carrier_that_is_not_utf8_keeps_the_answer_and_is_logged_once(hostile, caplog):
    server = hostile(carrier_with_bad_bytes)
    with caplog.at_level("WARNING", logger="airflow_provider_kaleyra.client.transport"):
        results, _ = lookup()
    assert server.count == 1, "a readable answer was asked again"
    assert {(r.status, r.carrier_id) for r in results} == {(RCS_ENABLED, "Jio\ufffd")}
    assert sum("not UTF-8" in record.getMessage() for record in caplog.records) == 1


def drip_then_stall(conn: Connection, request: Request) -> None:
    """Headers, a few bytes 0.3 s apart (each read well within the deadline), then silence."""
    conn.head(200, {"Content-Type": "application/json", "Content-Length": "1000"})
    for _ in range(3):
        conn.send_body(b" ")
        time.sleep(0.3)
    for _ in range(50):
        if conn.stopping:
            return
        time.sleep(0.1)


def test_a_body_that_stalls_near_the_deadline_is_cut_at_the_deadline(hostile):
    """A read still waiting at the deadline is cut there (the transport's watchdog): checking the
    deadline between reads only, the last read would wait for the socket's own timeout (1.6 s here).
    Timed from the request's arrival, so a slow start on a busy machine does not count."""
    arrived: list[float] = []

    def stall(conn: Connection, request: Request) -> None:
        arrived.append(time.monotonic())
        drip_then_stall(conn, request)

    hostile(stall, timeout=1.0, max_retries=0)
    results, _ = lookup()
    elapsed = time.monotonic() - arrived[0]
    assert all(r.status == FAILED for r in results)
    assert elapsed < 1.5, f"{elapsed:.2f} s: the stalled read outlived the 1 s deadline"
