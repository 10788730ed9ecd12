"""KaleyraHook end to end over real HTTP against the simulator."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from airflow_provider_kaleyra.client.api import INVALID, RCS_DISABLED, RCS_ENABLED
from airflow_provider_kaleyra.client.exceptions import KaleyraAuthError
from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
from kaleyra_simulator import rcs_answer, simulator_connection


def _audience(size: int, garbage_ratio: float, seed: int = 7) -> list[str]:
    """US numbers in the formats people type, with garbage mixed in."""
    rng = random.Random(seed)
    formats = ["+1{a}{b}{c}", "({a}) {b}-{c}", "{a}.{b}.{c}", "001 {a} {b} {c}", "1-{a}-{b}-{c}"]
    garbage = ["", "n/a", "12", "+999 1234", "call me", "+1 415 555 01", "☎", "0" * 30]
    rows = []
    for _ in range(size):
        if rng.random() < garbage_ratio:
            rows.append(rng.choice(garbage))
        else:
            a = rng.choice(["415", "212", "646", "312", "617"])
            b = f"{rng.randint(200, 999)}"
            c = f"{rng.randint(0, 9999):04d}"
            rows.append(rng.choice(formats).format(a=a, b=b, c=c))
    return rows


def test_10k_numbers_with_5pct_garbage_are_all_accounted_for(kaleyra_conn):
    audience = _audience(10_000, 0.05)
    hook = KaleyraHook()
    results = list(hook.lookup_rcs_many(audience))

    assert [r.input for r in results] == audience  # one record per input, in order
    statuses = Counter(r.status for r in results)
    assert set(statuses) <= {RCS_ENABLED, RCS_DISABLED, INVALID}
    assert 400 <= statuses[INVALID] <= 600
    assert all(r.error for r in results if r.status == INVALID)
    for r in results:
        if r.status != INVALID:
            expected = rcs_answer(r.e164)
            assert (r.status == RCS_ENABLED) == expected["rcsEnabled"]
            assert r.carrier_id == expected["carrierId"]
    distinct = len({r.e164 for r in results if r.e164})
    stats = kaleyra_conn.stats()
    assert stats["requests"]["rcs_bulk"] == math.ceil(distinct / 500)
    assert stats["requests"]["rcs_single"] == 0
    assert stats["numbers_looked_up"]["rcs"] == distinct  # each distinct number asked once


def test_single_lookup_and_soip_check_over_http(kaleyra_conn):
    hook = KaleyraHook()
    data = hook.lookup_rcs("(415) 555-2671")
    assert data["rcsEnabled"] == rcs_answer("+14155552671")["rcsEnabled"]
    body = hook.check_soip_capability(["+919876543210"], callback_profile_id="profile-1")
    assert body["code"] == "MSG402"
    assert hook.test_connection() == (True, "Connection to Kaleyra works")


def test_wrong_key_fails_fast_over_http(make_simulator, monkeypatch):
    import json

    sim = make_simulator()
    conn = simulator_connection(sim.url, sid=sim.config.sid, api_key="wrong-key-123", default_region="US")
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_DEFAULT", json.dumps(conn))
    with pytest.raises(KaleyraAuthError):
        list(KaleyraHook().lookup_rcs_many([f"+1415555{i:04d}" for i in range(300)]))
    assert sim.stats()["requests"]["rcs_bulk"] == 1


def test_connection_test_names_each_problem(make_simulator, monkeypatch):
    """Issue 23, item 5: success only for a real Kaleyra answer; each misconfiguration its own message."""
    import json
    import socket

    sim = make_simulator()

    def check(url: str, **conn: str) -> tuple[bool, str]:
        settings = {"sid": sim.config.sid, "api_key": sim.config.api_key, **conn}
        monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_DEFAULT", json.dumps(simulator_connection(url, **settings)))
        return KaleyraHook().test_connection()

    assert check(sim.url) == (True, "Connection to Kaleyra works")
    ok, wrong_url = check(sim.url + "/not-kaleyra")  # a 404 on the lookup path
    assert not ok and "is not Kaleyra's RCS API" in wrong_url and "HTTP 404" in wrong_url
    ok, wrong_sid = check(sim.url, sid="AC-NOT-MINE")
    assert not ok and wrong_sid.startswith("Kaleyra does not know the account SID")
    ok, wrong_key = check(sim.url, api_key="wrong-key-123")
    assert not ok and wrong_key.startswith("Kaleyra refused the API key")
    sim.configure(rcs_disabled=True)
    ok, disabled = check(sim.url)
    assert not ok and disabled.startswith("The RCS channel is not enabled")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    ok, unreachable = check(closed)
    assert not ok and unreachable.startswith(f"No answer from {closed}")
    assert len({wrong_url, wrong_sid, wrong_key, disabled, unreachable}) == 5
    assert all(sim.config.api_key not in message for message in (wrong_url, wrong_sid, wrong_key, disabled))
