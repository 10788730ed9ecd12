"""The Kaleyra simulator over real HTTP: shapes from the spec, auth, limits, throttling, faults, callbacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from base64 import b64encode
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from airflow_provider_kaleyra.client.api import (
    API_KEY_HEADER,
    BULK_MAX,
    BULK_MIN,
    RCS_BULK_PATH,
    RCS_SINGLE_PATH,
    SOIP_CHECK_PATH,
    e164_key,
)
from kaleyra_simulator import CallbackAuth, KaleyraSimulator, SimulatorConfig, rcs_answer, soip_answer
from kaleyra_simulator.answers import CARRIER_STATUSES, CARRIERS

SID = "AC-TEST-SID"
KEY = "test-api-key-0123456789"
HEADERS = {API_KEY_HEADER: KEY, "Accept": "application/json"}


def us(i: int) -> str:
    return f"+1415555{i:04d}"


def single_url(sim: KaleyraSimulator, number: str, sid: str = SID) -> str:
    return sim.url + RCS_SINGLE_PATH.format(sid=sid, number=number)


def bulk_url(sim: KaleyraSimulator, sid: str = SID) -> str:
    return sim.url + RCS_BULK_PATH.format(sid=sid)


def soip_url(sim: KaleyraSimulator, sid: str = SID) -> str:
    return sim.url + SOIP_CHECK_PATH.format(sid=sid)


def post_bulk(
    sim: KaleyraSimulator, numbers: list[Any], session: Any = requests, **kw: Any
) -> requests.Response:
    return session.post(bulk_url(sim), json={"deviceAddresses": numbers}, headers=HEADERS, timeout=5, **kw)


def assert_error_body(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "data", "error"}
    assert isinstance(body["error"], dict) and body["error"]
    assert body["code"] not in (None, "")
    return body


# --------------------------------------------------------------------------- answers


def test_answers_are_stable_golden_values():
    # Golden values: benchmarks and other tests rely on these never changing between processes.
    assert rcs_answer("+14155550123") == {
        "deviceAddress": "+14155550123",
        "carrierId": "Verizon",
        "carrierStatus": "ACTIVE",
        "rcsEnabled": False,
    }
    assert rcs_answer("14155550123") == rcs_answer("+14155550123")
    assert soip_answer("+919876543210") == soip_answer("919876543210")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from kaleyra_simulator import soip_answer as s, rcs_answer as r;"
            "print(s('919876543210'), r('+14155550199'))",
        ],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"{soip_answer('919876543210')} {rcs_answer('+14155550199')}"


def test_answer_distribution():
    devices = [rcs_answer(us(i)) for i in range(4000)]
    enabled = sum(d["rcsEnabled"] for d in devices) / len(devices)
    assert 0.55 < enabled < 0.65
    assert {d["carrierId"] for d in devices} == set(CARRIERS)
    assert {d["carrierStatus"] for d in devices} == set(CARRIER_STATUSES)
    assert not any(d["rcsEnabled"] for d in devices if d["carrierStatus"] != "ACTIVE")
    capable = sum(soip_answer(f"+9198765{i:05d}") for i in range(4000)) / 4000
    assert 0.55 < capable < 0.65


# --------------------------------------------------------------------------- RCS single


def test_single_lookup_shape_raw_and_percent_encoded_plus(simulator):
    number = "+14155550123"
    encoded = requests.get(single_url(simulator, "%2B14155550123"), headers=HEADERS, timeout=5)
    raw = requests.get(single_url(simulator, number), headers=HEADERS, timeout=5)
    assert encoded.status_code == raw.status_code == 200
    assert encoded.headers["Content-Type"] == "application/json"
    assert int(encoded.headers["Content-Length"]) == len(encoded.content)
    body = encoded.json()
    assert body == raw.json()
    expected = rcs_answer(number)
    expected["deviceAddress"] = "14155550123"  # like Kaleyra's sample: digits, no +
    assert body == {"code": "RCS702", "message": "Device Lookup successful", "data": expected, "error": {}}
    assert simulator.stats()["requests"]["rcs_single"] == 2
    assert simulator.stats()["numbers_looked_up"]["rcs"] == 2


@pytest.mark.parametrize(
    "number", ["14155550123", "%2B0123456789", "%2B1415abc0123", "%2B1234", "%2B1234567890123456"]
)
def test_single_lookup_rejects_non_e164(simulator, number):
    assert_error_body(requests.get(single_url(simulator, number), headers=HEADERS, timeout=5), 400)


# --------------------------------------------------------------------------- RCS bulk


def test_bulk_lookup_shape_order_and_dedup(simulator):
    numbers = [us(i) for i in range(150)]
    response = post_bulk(simulator, numbers + numbers[:30])
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert response.json() == {"devices": [rcs_answer(n) for n in numbers]}
    assert simulator.stats()["numbers_looked_up"]["rcs"] == 150


@pytest.mark.parametrize(
    ("distinct", "copies", "status"),
    [
        (BULK_MIN - 1, 1, 400),
        (BULK_MIN - 1, 6, 400),
        (BULK_MIN, 1, 200),
        (BULK_MIN, 5, 200),
        (BULK_MAX, 1, 200),
        (BULK_MAX, 2, 200),
        (BULK_MAX + 1, 1, 400),
    ],
)
def test_bulk_100_to_500_rule_counts_after_dedup(simulator, distinct, copies, status):
    numbers = [us(i) for i in range(distinct)] * copies
    response = post_bulk(simulator, numbers)
    if status == 200:
        assert len(response.json()["devices"]) == distinct
    else:
        body = assert_error_body(response, 400)
        assert body["error"]["count"] == distinct


def test_bulk_rejects_invalid_entries_naming_them(simulator):
    bad = ["14155550000", "+0155", "not a number", 14155550001]
    body = assert_error_body(post_bulk(simulator, [us(i) for i in range(200)] + bad), 400)
    assert body["error"]["invalid"] == [str(b) for b in bad]
    assert body["error"]["invalid_count"] == 4


def test_bulk_drop_mode_counts_only_valid_entries(make_simulator):
    sim = make_simulator(bulk_invalid="drop")
    bad = ["14155550000", "+0155", None]
    ok = post_bulk(sim, [us(i) for i in range(100)] + bad)
    assert [d["deviceAddress"] for d in ok.json()["devices"]] == [us(i) for i in range(100)]
    body = assert_error_body(post_bulk(sim, [us(i) for i in range(99)] + bad), 400)
    assert body["error"]["count"] == 99


def test_bulk_accepts_chunked_bodies(simulator):
    body = json.dumps({"deviceAddresses": [us(i) for i in range(120)]}).encode()
    chunks = (
        body[i : i + 1000] for i in range(0, len(body), 1000)
    )  # a generator makes requests send it chunked
    with requests.Session() as session:
        response = session.post(bulk_url(simulator), data=chunks, headers=HEADERS, timeout=5)
        assert len(response.json()["devices"]) == 120
        assert post_bulk(
            simulator, [us(i) for i in range(100)], session=session
        ).ok  # connection still in sync
    assert simulator.stats()["connections"] == 1


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'{"deviceAddresses": "+14155550000"}', b"{}"])
def test_bulk_rejects_malformed_bodies(simulator, payload):
    response = requests.post(bulk_url(simulator), data=payload, headers=HEADERS, timeout=5)
    assert_error_body(response, 400)


# --------------------------------------------------------------------------- SOIP


@pytest.mark.parametrize(
    ("kwargs", "count"),
    [
        ({"json": {"number": "919876543210", "callback_profile_id": "p1"}}, 1),
        ({"json": {"number": "919876543210, +919876543211", "callback_profile_id": "p1"}}, 2),
        ({"json": {"number": ["+919876543210", "919876543211", "919876543210"]}}, 2),
        ({"data": {"number": "919876543210,919876543211", "callback_profile_id": "p1"}}, 2),
        ({"data": [("number", "919876543210"), ("number", "+919876543212")]}, 2),
        # Kaleyra's own sample: JSON-ish text sent as form data
        (
            {
                "data": '{"number": "919876543210", "callback_profile_id": "p1"}',
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            },
            1,
        ),
    ],
)
def test_soip_accepts_documented_number_forms(simulator, kwargs, count):
    headers = {**HEADERS, **kwargs.pop("headers", {})}
    response = requests.post(soip_url(simulator), headers=headers, timeout=5, **kwargs)
    assert response.status_code == 202, response.text
    assert response.json() == {
        "code": "MSG402",
        "message": "Request Successfully Processed",
        "data": [],
        "error": {},
    }
    assert simulator.stats()["numbers_looked_up"]["soip"] == count


@pytest.mark.parametrize(
    "kwargs",
    [
        {"json": {"callback_profile_id": "p1"}},
        {"json": {"number": ""}},
        {"json": {"number": "98765abc"}},
        {"json": {"number": ["919876543210", "12"]}},
        {"data": "number="},
        {"json": ["919876543210"]},
        {"data": b"{broken", "headers": {"Content-Type": "application/json"}},
    ],
)
def test_soip_bad_input_is_rbc529(simulator, kwargs):
    headers = {**HEADERS, **kwargs.pop("headers", {})}
    body = assert_error_body(requests.post(soip_url(simulator), headers=headers, timeout=5, **kwargs), 400)
    assert body["code"] == "RBC529"
    assert body["message"] == "Invalid input or validation error!"
    assert body["data"] == []
    assert body["error"]["error"]


# --------------------------------------------------------------------------- auth and routing


def _all_endpoints(sim: KaleyraSimulator, headers: dict[str, str], sid: str = SID) -> list[requests.Response]:
    return [
        requests.get(single_url(sim, "%2B14155550123", sid), headers=headers, timeout=5),
        requests.post(
            bulk_url(sim, sid),
            json={"deviceAddresses": [us(i) for i in range(100)]},
            headers=headers,
            timeout=5,
        ),
        requests.post(soip_url(sim, sid), json={"number": "919876543210"}, headers=headers, timeout=5),
    ]


@pytest.mark.parametrize("headers", [{}, {API_KEY_HEADER: "wrong"}, {API_KEY_HEADER: KEY + "x"}])
def test_wrong_or_missing_api_key_is_401_everywhere(simulator, headers):
    for response in _all_endpoints(simulator, headers):
        assert_error_body(response, 401)
    assert simulator.stats()["auth_failures"] == 3


def test_unknown_sid_is_401(simulator):
    for response in _all_endpoints(simulator, HEADERS, sid="OTHER-SID"):
        assert "SID" in assert_error_body(response, 401)["message"]


def test_rcs_disabled_answers_401_to_rcs_only(make_simulator):
    sim = make_simulator(rcs_disabled=True)
    single, bulk, soip = _all_endpoints(sim, HEADERS)
    assert_error_body(single, 401)
    assert_error_body(bulk, 401)
    assert soip.status_code == 202


def test_unknown_path_and_wrong_method(simulator):
    assert_error_body(requests.get(simulator.url + "/v1/nope", headers=HEADERS, timeout=5), 404)
    response = requests.get(bulk_url(simulator), headers=HEADERS, timeout=5)
    assert_error_body(response, 405)
    assert response.headers["Allow"] == "POST"


def test_session_reuses_one_keep_alive_connection(simulator):
    with requests.Session() as session:
        for i in range(20):
            assert session.get(
                single_url(simulator, "%2B1415555" + f"{i:04d}"), headers=HEADERS, timeout=5
            ).ok
            assert post_bulk(simulator, [us(j) for j in range(100)], session=session).ok
    stats = simulator.stats()
    assert stats["connections"] == 1
    assert stats["requests"]["rcs_single"] == stats["requests"]["rcs_bulk"] == 20


def test_determinism_across_servers(make_simulator):
    a, b = make_simulator(), make_simulator(error_5xx=0.0, seed=7)
    numbers = [us(i) for i in range(300)]
    assert post_bulk(a, numbers).json() == post_bulk(b, numbers).json() == post_bulk(a, numbers).json()
    one = requests.get(single_url(a, "%2B14155550042"), headers=HEADERS, timeout=5).json()
    assert one == requests.get(single_url(b, "%2B14155550042"), headers=HEADERS, timeout=5).json()


def test_latency_is_applied(make_simulator):
    sim = make_simulator(latency=0.2)
    started = time.monotonic()
    assert requests.get(single_url(sim, "%2B14155550123"), headers=HEADERS, timeout=5).ok
    assert time.monotonic() - started >= 0.2


# --------------------------------------------------------------------------- rate limit


def test_rate_limit_answers_429_with_retry_after(make_simulator):
    sim = make_simulator(rate_limit=5)
    with requests.Session() as session:
        statuses = [
            session.get(single_url(sim, "%2B14155550123"), headers=HEADERS, timeout=5) for _ in range(15)
        ]
    codes = Counter(r.status_code for r in statuses)
    assert 5 <= codes[200] <= 9 and codes[429] == 15 - codes[200]
    throttled = next(r for r in statuses if r.status_code == 429)
    assert_error_body(throttled, 429)
    assert int(throttled.headers["Retry-After"]) >= 1
    assert sim.stats()["rate_limited"] == codes[429]
    assert sim.stats()["faults"]["rate_429"] == 0


def test_evenly_paced_client_is_never_throttled(make_simulator):
    rate = 40.0
    sim = make_simulator(rate_limit=rate)
    with requests.Session() as session:
        next_at = time.monotonic()
        for _ in range(60):  # 1.5 s at exactly the limit, after the full burst would have allowed more
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += 1 / rate
            assert (
                session.get(single_url(sim, "%2B14155550123"), headers=HEADERS, timeout=5).status_code == 200
            )
    assert sim.stats()["rate_limited"] == 0


def test_retry_after_can_be_omitted(make_simulator):
    sim = make_simulator(rate_limit=1, retry_after=False)
    responses = [
        requests.get(single_url(sim, "%2B14155550123"), headers=HEADERS, timeout=5) for _ in range(3)
    ]
    throttled = [r for r in responses if r.status_code == 429]
    assert throttled and all("Retry-After" not in r.headers for r in throttled)


# --------------------------------------------------------------------------- faults


def test_fault_error_5xx(make_simulator):
    sim = make_simulator(error_5xx=1.0, seed=1)
    statuses = set()
    for _ in range(30):
        response = requests.get(single_url(sim, "%2B14155550123"), headers=HEADERS, timeout=5)
        assert_error_body(response, response.status_code)
        statuses.add(response.status_code)
    assert statuses == {500, 502, 503, 504}
    assert sim.stats()["faults"]["error_5xx"] == 30


def test_fault_reset_drops_the_connection(make_simulator):
    sim = make_simulator(reset=1.0)
    with pytest.raises(requests.ConnectionError):
        requests.get(single_url(sim, "%2B14155550123"), headers=HEADERS, timeout=5)
    assert sim.stats()["faults"]["reset"] == 1
    sim.configure(reset=0.0)
    assert requests.get(single_url(sim, "%2B14155550123"), headers=HEADERS, timeout=5).ok


def test_fault_slow_exceeds_client_timeout(make_simulator):
    sim = make_simulator(slow=1.0, slow_seconds=0.4)
    with pytest.raises(requests.Timeout):
        requests.get(single_url(sim, "%2B14155550123"), headers=HEADERS, timeout=0.15)
    started = time.monotonic()
    assert requests.get(single_url(sim, "%2B14155550123"), headers=HEADERS, timeout=5).ok
    assert time.monotonic() - started >= 0.4
    assert sim.stats()["faults"]["slow"] == 2


def test_fault_truncated_body_is_not_json(make_simulator):
    sim = make_simulator(truncated=1.0)
    response = post_bulk(sim, [us(i) for i in range(100)])
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content)
    with pytest.raises(ValueError):
        response.json()
    # only 200 answers are truncated: errors stay readable
    assert_error_body(post_bulk(sim, [us(i) for i in range(10)]), 400)
    assert sim.stats()["faults"]["truncated"] == 1


def test_fault_bulk_missing_and_extra(make_simulator):
    numbers = [us(i) for i in range(200)]
    missing = post_bulk(make_simulator(bulk_missing=1.0, seed=3), numbers).json()["devices"]
    returned = {e164_key(d["deviceAddress"]) for d in missing}
    assert returned < set(numbers)
    extra_sim = make_simulator(bulk_extra=1.0, seed=3)
    extra = post_bulk(extra_sim, numbers).json()["devices"]
    returned = {e164_key(d["deviceAddress"]) for d in extra}
    assert returned > set(numbers)
    assert all(d == rcs_answer(d["deviceAddress"]) for d in extra)
    assert extra_sim.stats()["faults"]["bulk_extra"] == 1


def test_fault_rate_429_random(make_simulator):
    sim = make_simulator(rate_429=1.0)
    response = requests.post(soip_url(sim), json={"number": "919876543210"}, headers=HEADERS, timeout=5)
    assert_error_body(response, 429)
    assert response.headers["Retry-After"] == "1"
    stats = sim.stats()
    assert stats["faults"]["rate_429"] == 1 and stats["rate_limited"] == 1


def test_fault_sequence_follows_the_seed(make_simulator):
    def run(sim: KaleyraSimulator) -> list[int]:
        with requests.Session() as session:
            return [
                session.get(single_url(sim, "%2B14155550123"), headers=HEADERS, timeout=5).status_code
                for _ in range(40)
            ]

    first = run(make_simulator(error_5xx=0.4, seed=42))
    assert first == run(make_simulator(error_5xx=0.4, seed=42))
    assert 200 in first and set(first) - {200}


# --------------------------------------------------------------------------- control endpoints


def test_stats_and_reset_over_http_and_configure(simulator):
    requests.get(single_url(simulator, "%2B14155550123"), headers=HEADERS, timeout=5)
    stats = requests.get(simulator.url + "/_sim/stats", timeout=5).json()
    assert stats["requests"]["rcs_single"] == 1 and stats["responses"]["200"] == 1
    assert set(stats) >= {"requests", "rate_limited", "faults", "numbers_looked_up", "callbacks"}
    assert requests.post(simulator.url + "/_sim/reset", timeout=5).ok
    assert simulator.stats()["requests"]["rcs_single"] == 0

    config = requests.post(simulator.url + "/_sim/config", json={"rcs_disabled": True}, timeout=5).json()
    assert config["rcs_disabled"] is True and config["api_key"] == "***"
    assert (
        requests.get(single_url(simulator, "%2B14155550123"), headers=HEADERS, timeout=5).status_code == 401
    )
    simulator.configure(rcs_disabled=False)
    assert requests.get(single_url(simulator, "%2B14155550123"), headers=HEADERS, timeout=5).ok
    bad = requests.post(simulator.url + "/_sim/config", json={"error_5xx": 3}, timeout=5)
    assert_error_body(bad, 400)


def test_config_validation():
    with pytest.raises(ValueError):
        SimulatorConfig(reset=1.5)
    with pytest.raises(ValueError):
        SimulatorConfig(bulk_invalid="ignore")
    assert SimulatorConfig(callback_auth="header:X-Token:abc").callback_auth == CallbackAuth(
        "header", "X-Token", "abc"
    )
    assert "test-api-key" not in repr(SimulatorConfig())


def test_kaleyra_conn_fixture_builds_a_valid_config(kaleyra_conn):
    from airflow.models.connection import Connection

    from airflow_provider_kaleyra.client.config import KaleyraConfig

    conn = Connection.from_json(os.environ["AIRFLOW_CONN_KALEYRA_DEFAULT"], conn_id="kaleyra_default")
    config = KaleyraConfig.from_connection(conn)
    assert config.sid == SID and config.api_key == KEY
    assert config.rcs_base_url == config.soip_base_url == kaleyra_conn.url
    assert config.rate_limit == 1000 and config.max_retries == 5


# --------------------------------------------------------------------------- callbacks


class Receiver:
    """A tiny callback endpoint: records every request; can fail the first ``fail_first`` of them."""

    def __init__(self, fail_first: int = 0, status: int = 503) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.status = status
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append(
                        {"headers": dict(self.headers), "body": body, "at": time.monotonic()}
                    )
                    fail = len(receiver.requests) <= receiver.fail_first
                self.send_response(receiver.status if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/kaleyra/callback"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


NUMBERS = ["919876543210", "919876543211", "919876543212"]


def test_callbacks_json_with_basic_auth_after_delay(make_simulator, receiver):
    sim = make_simulator(
        callback_url=receiver.url, callback_delay=0.3, callback_auth=CallbackAuth("basic", "kal", "s3cret")
    )
    sent_at = time.monotonic()
    response = requests.post(
        soip_url(sim),
        json={"number": ["+" + NUMBERS[0]] + NUMBERS[1:], "callback_profile_id": "prof-9"},
        headers=HEADERS,
        timeout=5,
    )
    assert response.status_code == 202
    assert sim.stats()["callbacks"]["pending"] == 3
    assert sim.wait_callbacks(5)
    assert len(receiver.requests) == 3
    payloads = [json.loads(r["body"]) for r in receiver.requests]
    assert sorted(p["number"] for p in payloads) == NUMBERS
    assert len({p["request_id"] for p in payloads}) == 1
    for request, payload in zip(receiver.requests, payloads):
        assert request["at"] - sent_at >= 0.3
        assert request["headers"]["Content-Type"] == "application/json"
        assert request["headers"]["Authorization"] == "Basic " + b64encode(b"kal:s3cret").decode()
        assert payload["soip_capable"] is soip_answer(payload["number"])
        assert payload["status"] == ("capable" if payload["soip_capable"] else "not_capable")
        assert payload["callback_profile_id"] == "prof-9"
        assert payload["timestamp"].endswith("Z")
    assert sim.stats()["callbacks"] == {"sent": 3, "failed": 0, "retried": 0, "pending": 0}


def test_callbacks_spread_after_the_delay(make_simulator, receiver):
    sim = make_simulator(callback_url=receiver.url, callback_delay=0.2, callback_spread=0.6)
    sent_at = time.monotonic()
    requests.post(soip_url(sim), json={"number": NUMBERS}, headers=HEADERS, timeout=5)
    assert sim.wait_callbacks(5)
    arrived = sorted(r["at"] - sent_at for r in receiver.requests)
    assert len(arrived) == 3 and arrived[0] >= 0.2
    assert arrived[-1] >= 0.2 + 0.6 * 2 / 3  # the last of three is due two thirds into the spread


def test_callbacks_form_encoded_duplicated_with_header_auth(make_simulator, receiver):
    sim = make_simulator(
        callback_url=receiver.url,
        callback_body="form",
        callback_duplicates=True,
        callback_auth="header:X-Callback-Token:tok-123",
    )
    assert (
        requests.post(
            soip_url(sim),
            data={"number": ",".join(NUMBERS), "callback_profile_id": "p"},
            headers=HEADERS,
            timeout=5,
        ).status_code
        == 202
    )
    assert sim.wait_callbacks(5)
    assert len(receiver.requests) == 6
    fields = [dict(urllib.parse.parse_qsl(r["body"].decode())) for r in receiver.requests]
    assert Counter(f["number"] for f in fields) == dict.fromkeys(NUMBERS, 2)
    for request, form in zip(receiver.requests, fields):
        assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
        assert request["headers"]["X-Callback-Token"] == "tok-123"
        assert form["soip_capable"] == ("true" if soip_answer(form["number"]) else "false")
    assert sim.stats()["callbacks"]["sent"] == 6


def test_callbacks_are_retried_then_counted_failed(make_simulator):
    flaky = Receiver(fail_first=2)
    broken = Receiver(fail_first=10**6, status=500)
    try:
        sim = make_simulator(callback_url=flaky.url, callback_retries=3)
        requests.post(soip_url(sim), json={"number": NUMBERS[0]}, headers=HEADERS, timeout=5)
        assert sim.wait_callbacks(5)
        assert len(flaky.requests) == 3
        assert sim.stats()["callbacks"] == {"sent": 1, "failed": 0, "retried": 2, "pending": 0}

        sim.configure(callback_url=broken.url, callback_retries=1)
        sim.reset_stats()
        requests.post(soip_url(sim), json={"number": NUMBERS[0]}, headers=HEADERS, timeout=5)
        assert sim.wait_callbacks(5)
        assert len(broken.requests) == 2
        assert sim.stats()["callbacks"] == {"sent": 0, "failed": 1, "retried": 1, "pending": 0}
    finally:
        flaky.close()
        broken.close()


def test_no_callbacks_without_url(simulator):
    requests.post(soip_url(simulator), json={"number": NUMBERS}, headers=HEADERS, timeout=5)
    assert simulator.stats()["callbacks"]["pending"] == 0


# --------------------------------------------------------------------------- CLI


def test_cli_prints_url_serves_and_stops_on_sigterm():
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kaleyra_simulator",
            "--port",
            "0",
            "--sid",
            "CLI-SID",
            "--api-key",
            "cli-key",
            "--rate-limit",
            "100",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        response = requests.get(
            url + RCS_SINGLE_PATH.format(sid="CLI-SID", number="%2B14155550123"),
            headers={API_KEY_HEADER: "cli-key"},
            timeout=5,
        )
        assert response.json()["data"]["carrierId"] == rcs_answer("+14155550123")["carrierId"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_flags_are_derived_from_every_config_field():
    import argparse
    import dataclasses

    from kaleyra_simulator.config import FAULT_KINDS, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert SimulatorConfig(**vars(parser.parse_args([]))) == SimulatorConfig()
    args = ["--error-5xx", "0.25", "--no-retry-after", "--rcs-disabled", "--seed", "7"]
    args += ["--callback-auth", "header:X-Secret:s3", "--bulk-invalid", "drop", "--rate-limit", "20"]
    config = SimulatorConfig(**vars(parser.parse_args(args)))
    assert (config.error_5xx, config.retry_after, config.rcs_disabled, config.seed) == (0.25, False, True, 7)
    assert config.callback_auth == CallbackAuth("header", "X-Secret", "s3")
    assert (config.bulk_invalid, config.rate_limit) == ("drop", 20.0)
    assert {f.name for f in dataclasses.fields(SimulatorConfig)} == set(vars(parser.parse_args([])))
    assert FAULT_KINDS == (
        "error_5xx",
        "reset",
        "slow",
        "truncated",
        "bulk_missing",
        "bulk_extra",
        "rate_429",
    )
