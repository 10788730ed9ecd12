"""KaleyraHook against the specification, with requests-mock standing in for Kaleyra."""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter

import pytest
import requests

from airflow_provider_kaleyra.client import pacing
from airflow_provider_kaleyra.client.api import FAILED, INVALID, RCS_DISABLED, RCS_ENABLED
from airflow_provider_kaleyra.client.exceptions import KaleyraApiError, KaleyraAuthError
from airflow_provider_kaleyra.client.pacing import PACER_SLACK, Pacer, retry_after_seconds
from airflow_provider_kaleyra.client.transport import Transport
from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
from airflow_provider_kaleyra.rcs.answers import answer_from_device, failed, shared

BASE = "http://kaleyra.test"
SID = "HXAP16SIDTEST"
KEY = "KEY-very-secret-4b8f2a"
BULK_URL = f"{BASE}/v1/{SID}/rcs/lookup"
SINGLE_RE = re.compile(rf"{re.escape(BASE)}/v1/{SID}/rcs/lookup/.+")
SOIP_URL = f"{BASE}/v1/{SID}/messages/soip/capability-check"


@pytest.fixture
def hook(monkeypatch):
    conn = {
        "conn_type": "kaleyra",
        "login": SID,
        "password": KEY,
        "extra": {
            "rcs_base_url": BASE,
            "soip_base_url": BASE,
            "default_region": "US",
            "callback_profile_id": "profile-1",
            "retry_backoff": 0.001,
            "max_retries": 3,
            "rate_limit": 0,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_DEFAULT", json.dumps(conn))
    return KaleyraHook()


def us(i: int) -> str:
    return f"+1415555{i:04d}"


def bulk_echo(request, context):
    """Answer every asked number; even positions RCS-enabled."""
    asked = request.json()["deviceAddresses"]
    return {
        "devices": [
            {
                "deviceAddress": n.lstrip("+"),
                "carrierId": "Google",
                "carrierStatus": "ACTIVE",
                "rcsEnabled": i % 2 == 0,
            }
            for i, n in enumerate(asked)
        ]
    }


def test_single_lookup_url_headers_and_data(hook, requests_mock):
    data = {
        "deviceAddress": "14155552671",
        "carrierId": "AT&T",
        "carrierStatus": "ACTIVE",
        "rcsEnabled": True,
    }
    requests_mock.get(SINGLE_RE, json={"code": "RCS702", "message": "ok", "data": data, "error": {}})
    assert hook.lookup_rcs("(415) 555-2671") == data
    req = requests_mock.last_request
    assert req.url == f"{BASE}/v1/{SID}/rcs/lookup/%2B14155552671"
    assert req.method == "GET"
    assert req.headers["api-key"] == KEY
    assert req.headers["Accept"] == "application/json"


def test_bulk_lookup_posts_distinct_e164_numbers(hook, requests_mock):
    requests_mock.post(BULK_URL, json=bulk_echo)
    numbers = [us(i) for i in range(150)] + ["(415) 555-0000"]  # a duplicate in another format
    devices = hook.lookup_rcs_bulk(numbers)
    req = requests_mock.last_request
    assert req.headers["api-key"] == KEY
    assert req.headers["Content-Type"] == "application/json"
    assert req.json() == {"deviceAddresses": [us(i) for i in range(150)]}
    assert len(devices) == 150


@pytest.mark.parametrize("count", [99, 501])
def test_bulk_lookup_refuses_counts_outside_100_500_before_any_request(hook, requests_mock, count):
    requests_mock.post(BULK_URL, json=bulk_echo)
    with pytest.raises(ValueError, match=f"100-500 distinct valid numbers, got {count}"):
        hook.lookup_rcs_bulk([us(i) for i in range(count)])
    assert requests_mock.call_count == 0


def test_bulk_lookup_counts_after_dedup(hook, requests_mock):
    requests_mock.post(BULK_URL, json=bulk_echo)
    with pytest.raises(ValueError, match="got 99"):
        hook.lookup_rcs_bulk([us(i) for i in range(99)] * 3)


def test_bulk_lookup_refuses_invalid_numbers(hook, requests_mock):
    with pytest.raises(ValueError, match="not a valid phone number"):
        hook.lookup_rcs_bulk([us(i) for i in range(150)] + ["+9876543210"])


def test_soip_check_payload_and_202(hook, requests_mock):
    requests_mock.post(
        SOIP_URL, status_code=202, json={"code": "MSG402", "message": "Request Successfully Processed"}
    )
    body = hook.check_soip_capability(["+91 98765 43210", "+919876543211"])
    assert body["code"] == "MSG402"
    req = requests_mock.last_request
    assert req.headers["api-key"] == KEY
    assert req.json() == {"number": ["919876543210", "919876543211"], "callback_profile_id": "profile-1"}


def test_soip_check_needs_a_profile(hook, monkeypatch, requests_mock):
    conn = json.loads(__import__("os").environ["AIRFLOW_CONN_KALEYRA_DEFAULT"])
    del conn["extra"]["callback_profile_id"]
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_DEFAULT", json.dumps(conn))
    with pytest.raises(ValueError, match="callback_profile_id"):
        KaleyraHook().check_soip_capability(["+919876543210"])


def test_lookup_many_accounts_for_every_input(hook, requests_mock):
    requests_mock.post(BULK_URL, json=bulk_echo)
    single = {"deviceAddress": "x", "carrierId": "T-Mobile", "carrierStatus": "ACTIVE", "rcsEnabled": False}
    requests_mock.get(SINGLE_RE, json={"code": "RCS702", "data": single})
    valid = [us(i) for i in range(1200)]
    messy = ["", "garbage", "+9876543210", "415 555 0001", "00 1 415 555 0002"]
    results = list(hook.lookup_rcs_many(valid + messy))
    assert [r.input for r in results] == valid + messy
    statuses = Counter(r.status for r in results)
    assert statuses[INVALID] == 3
    assert statuses[RCS_ENABLED] + statuses[RCS_DISABLED] == 1202
    # 1200 distinct numbers -> 3 balanced bulk calls, no single lookups (the messy valid ones are duplicates)
    assert [len(r.json()["deviceAddresses"]) for r in requests_mock.request_history] == [400, 400, 400]
    assert results[-2].e164 == us(1) and results[-1].e164 == us(2)
    assert {r.error for r in results if r.status == INVALID} >= {"empty"}


def test_lookup_many_small_audience_uses_single_lookups(hook, requests_mock):
    requests_mock.get(SINGLE_RE, json={"code": "RCS702", "data": {"rcsEnabled": True}})
    results = list(hook.lookup_rcs_many([us(i) for i in range(5)]))
    assert all(r.status == RCS_ENABLED for r in results)
    assert requests_mock.call_count == 5 and all(r.method == "GET" for r in requests_mock.request_history)


def test_missing_numbers_are_retried_and_extras_ignored(hook, requests_mock, hook_logs):
    calls = []

    def answer(request, context):
        asked = request.json()["deviceAddresses"]
        calls.append(len(asked))
        keep = asked if len(calls) > 1 else asked[:-120]  # first answer leaves 120 out
        body = bulk_echo(type("R", (), {"json": lambda self: {"deviceAddresses": keep}})(), context)
        body["devices"].append({"deviceAddress": "+19999999999", "rcsEnabled": True})
        return body

    requests_mock.post(BULK_URL, json=answer)
    results = list(hook.lookup_rcs_many([us(i) for i in range(300)]))
    assert calls == [300, 120]
    assert all(r.status in (RCS_ENABLED, RCS_DISABLED) for r in results)
    assert "not asked for" in hook_logs.text and "left out 120" in hook_logs.text


def test_numbers_missing_twice_are_reported_failed(hook, requests_mock):
    requests_mock.post(BULK_URL, json={"devices": []})
    results = list(hook.lookup_rcs_many([us(i) for i in range(100)]))
    assert {r.status for r in results} == {FAILED}
    assert all("left out" in r.error for r in results)


def test_retries_5xx_429_and_resets_then_succeeds(hook, requests_mock, caplog):
    requests_mock.post(
        BULK_URL,
        [
            {"status_code": 503, "json": {"code": "E503", "message": "Temporal error, try again later"}},
            {"status_code": 429, "headers": {"Retry-After": "0"}, "json": {"message": "Throttling"}},
            {"exc": requests.ConnectionError("reset")},
            {"json": bulk_echo},
        ],
    )
    assert len(hook.lookup_rcs_bulk([us(i) for i in range(100)])) == 100
    assert requests_mock.call_count == 4
    retried = [r.getMessage() for r in caplog.records if "(attempt" in r.getMessage()]
    assert len(retried) == 3 and sum("HTTP 429" in m for m in retried) == 1, retried


def test_truncated_body_is_retried(hook, requests_mock):
    requests_mock.post(BULK_URL, [{"text": '{"devices": [{"devi'}, {"json": bulk_echo}])
    assert len(hook.lookup_rcs_bulk([us(i) for i in range(100)])) == 100


def test_gives_up_after_max_retries_with_status_and_code(hook, requests_mock):
    requests_mock.post(BULK_URL, status_code=502, json={"code": 502, "message": "Bad gateway"})
    with pytest.raises(KaleyraApiError) as err:
        hook.lookup_rcs_bulk([us(i) for i in range(100)])
    assert requests_mock.call_count == 4  # 1 + max_retries
    assert err.value.status == 502 and err.value.code == 502
    assert "gave up after 4 attempts" in str(err.value)


@pytest.mark.parametrize("status", [400, 404, 409, 413])
def test_other_4xx_are_not_retried(hook, requests_mock, status):
    requests_mock.post(
        BULK_URL, status_code=status, json={"code": "RBC529", "message": "Invalid input", "error": {}}
    )
    with pytest.raises(KaleyraApiError) as err:
        hook.lookup_rcs_bulk([us(i) for i in range(100)])
    assert requests_mock.call_count == 1
    assert (err.value.status, err.value.code, err.value.retryable) == (status, "RBC529", False)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_fail_fast_and_name_the_cause(hook, requests_mock, status):
    requests_mock.post(BULK_URL, status_code=status, json={"code": "AUTH", "message": "Unauthorized"})
    with pytest.raises(KaleyraAuthError, match="API key") as err:
        list(hook.lookup_rcs_many([us(i) for i in range(300)]))
    assert requests_mock.call_count == 1
    assert "RCS channel" in str(err.value)


def test_bulk_failure_after_retries_marks_its_numbers_failed(hook, requests_mock):
    requests_mock.post(BULK_URL, status_code=500, json={"message": "boom"})
    results = list(hook.lookup_rcs_many([us(i) for i in range(100)] + ["junk"]))
    assert Counter(r.status for r in results) == {FAILED: 100, INVALID: 1}
    assert "HTTP 500" in results[0].error


def test_api_key_never_leaks(hook, requests_mock, caplog, hook_logs):
    requests_mock.post(BULK_URL, status_code=500, json={"message": "boom"})
    requests_mock.get(SINGLE_RE, status_code=401, json={"message": "Unauthorized"})
    with caplog.at_level(logging.DEBUG):
        list(hook.lookup_rcs_many([us(i) for i in range(100)]))
        ok, message = hook.test_connection()
    assert not ok
    texts = [caplog.text, hook_logs.text, message, repr(hook), repr(hook.config), repr(hook.transport)]
    assert all(KEY not in t for t in texts)


def test_test_connection_reports_without_raising(hook, requests_mock):
    requests_mock.get(SINGLE_RE, json={"code": "RCS702", "data": {"rcsEnabled": True}})
    assert hook.test_connection() == (True, "Connection to Kaleyra works")
    requests_mock.get(SINGLE_RE, exc=requests.ConnectionError("refused"))
    ok, message = hook.test_connection()
    assert not ok and "no answer" in message


def test_connection_errors_name_the_problem(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_DEFAULT", json.dumps({"conn_type": "kaleyra", "login": SID}))
    with pytest.raises(ValueError, match="password: set it to the API key"):
        _ = KaleyraHook().config
    monkeypatch.setenv(
        "AIRFLOW_CONN_KALEYRA_DEFAULT",
        json.dumps({"conn_type": "kaleyra", "login": SID, "password": KEY, "extra": {"pod": "mars"}}),
    )
    with pytest.raises(ValueError, match="unknown pod 'mars'"):
        _ = KaleyraHook().config
    monkeypatch.setenv(
        "AIRFLOW_CONN_KALEYRA_DEFAULT",
        json.dumps({"conn_type": "kaleyra", "login": SID, "password": KEY, "extra": {"timeout": "soon"}}),
    )
    with pytest.raises(ValueError, match="'timeout' must be a number"):
        _ = KaleyraHook().config


def test_pod_picks_documented_hosts(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_KALEYRA_DEFAULT",
        json.dumps({"conn_type": "kaleyra", "login": SID, "password": KEY, "extra": {"pod": "in"}}),
    )
    cfg = KaleyraHook().config
    assert cfg.rcs_base_url == "https://rcs-api.in.kaleyra.io"
    assert cfg.soip_base_url == "https://api.in.kaleyra.io"


def test_retry_after_parsing():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("1000") == 60.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    for nonsense in ("nan", "inf", "-inf", "-1", "1e999", "  ", "Sun, 99 Foo 2025 99:99:99 GMT"):
        assert retry_after_seconds(nonsense) is None, nonsense  # as if absent: exponential backoff


def test_an_unusable_base_url_fails_at_once_with_a_clear_message(monkeypatch):
    conn = {"conn_type": "kaleyra", "login": SID, "password": KEY, "extra": {"rcs_base_url": "kaleyra.test"}}
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_DEFAULT", json.dumps(conn))
    hook = KaleyraHook()
    with pytest.raises(KaleyraApiError, match="check the connection's base URLs") as raised:
        hook.lookup_rcs("+14155552671")
    assert not raised.value.retryable and hook.transport.requests_sent == 1


def test_pacer_spaces_requests():
    pacer = Pacer(200)
    start = time.monotonic()
    for _ in range(21):
        pacer.wait()
    assert time.monotonic() - start >= 0.099  # 20 intervals of 5 ms


class _FakeClock:
    """``time`` for the pacer: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps = 0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


def test_pacer_makes_up_lateness_but_never_bursts_beyond_its_slack(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(pacing, "time", clock)
    pacer = Pacer(100)  # a slot every 10 ms
    sent = []

    def send() -> None:
        pacer.wait()
        sent.append(clock.now)

    for _ in range(10):
        send()
    assert sent == pytest.approx([1000 + i / 100 for i in range(10)])
    clock.now += 0.035  # a worker reached its slot 35 ms late (busy with a response)
    for _ in range(4):
        send()
    # the three slots it missed go out at once, then the schedule goes on where it was
    assert sent[10:] == pytest.approx([1000.125, 1000.125, 1000.125, 1000.13])

    clock.now += 5.0  # idle for a while: at most PACER_SLACK seconds of requests at once
    sleeps = clock.sleeps
    burst = 0
    while clock.sleeps == sleeps:
        send()
        burst += 1
    assert burst - 1 == round(100 * PACER_SLACK) + 1  # (the last one slept)
    for _ in range(300):
        send()
    for i, first in enumerate(sent):  # in any second: rate x (1 + slack) + 1 at most
        assert sum(1 for t in sent[i:] if t < first + 1.0) <= 100 * (1 + PACER_SLACK) + 1


def test_transport_reads_proxies_once_per_host_with_no_proxy(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "simulator.local")
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    t = Transport(api_key=KEY, timeout=1, max_retries=0, rate_limit=0, pool_size=1)
    assert t.session.trust_env is False  # no per-request environment scan, no .netrc
    assert t._proxies_for("https://api.kaleyra.io/v1/x/rcs/lookup")["https"] == "http://proxy.internal:3128"
    assert t._proxies_for("https://simulator.local/v1/x/rcs/lookup") == {}
    monkeypatch.setenv("HTTPS_PROXY", "http://changed:1")  # read once per host
    assert t._proxies_for("https://api.kaleyra.io/v1/y")["https"] == "http://proxy.internal:3128"


def test_equal_answers_are_one_shared_record():
    device = {
        "deviceAddress": "+14155550100",
        "rcsEnabled": "TRUE",
        "carrierId": "Google",
        "carrierStatus": "ACTIVE",
    }
    first, second = answer_from_device(device), answer_from_device(dict(device))
    assert first is second and first.status == RCS_ENABLED and first.carrier_id == "Google"
    odd = answer_from_device({**device, "carrierId": ["not", "a", "carrier"]})
    assert odd.carrier_id is None and odd.status == RCS_ENABLED  # an odd field is dropped, the answer kept
    assert shared(failed("timeout")) is shared(failed("timeout"))  # read back from a checkpoint too


def test_connection_test_refuses_what_is_not_a_kaleyra_answer(hook, requests_mock):
    """A wrong base URL that answers 200 with a web page, or a 403: never "works"."""
    requests_mock.get(SINGLE_RE, text="<html>Welcome to nginx</html>", headers={"Content-Type": "text/html"})
    ok, message = hook.test_connection()
    assert not ok and "is not Kaleyra's RCS API" in message
    requests_mock.get(SINGLE_RE, json={"code": "RCS200", "data": {"deviceAddress": "14155552671"}})
    ok, message = hook.test_connection()
    assert not ok and "without a readable rcsEnabled" in message
    requests_mock.get(SINGLE_RE, status_code=403, json={"code": 403, "message": "Forbidden"})
    ok, message = hook.test_connection()
    assert not ok and message.startswith("The RCS channel is not enabled")
    requests_mock.get(SINGLE_RE, status_code=503, json={"code": 503, "message": "Temporal error"})
    ok, message = hook.test_connection()
    assert not ok and "try again later" in message
