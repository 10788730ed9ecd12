"""The callback receiver: auth, payload formats, idempotency, limits; in-process and over real HTTP."""

from __future__ import annotations

import base64
import json
import socket
from datetime import UTC, timedelta

import pytest
import requests
from fastapi.testclient import TestClient

from airflow_provider_kaleyra.callbacks import cli
from airflow_provider_kaleyra.callbacks.bodies import FieldMapping, RawCallback, parse_callback
from airflow_provider_kaleyra.callbacks.receiver import create_app, create_standalone_app
from airflow_provider_kaleyra.callbacks.store import CallbackStore
from tests.store_queries import counts, raw_callbacks, results_for

SECRET = "cb-secret-xyz"
URL = "/soip/callback"


def _basic(password: str, user: str = "kaleyra") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


SCHEMES = {
    "basic": _basic,
    "bearer": lambda s: {"Authorization": f"Bearer {s}"},
    "header": lambda s: {"X-Kaleyra-Secret": s},
}


@pytest.fixture
def store(tmp_path):
    s = CallbackStore(f"sqlite:///{tmp_path / 'callbacks.db'}")
    yield s
    s.dispose()


@pytest.fixture
def client(store):
    with TestClient(create_app(store=store, secret=SECRET, max_body_bytes=4096)) as c:
        yield c


# -- authentication ---------------------------------------------------------------------------------


def test_no_credentials_is_refused_and_nothing_stored(client, store):
    response = client.post(URL, json={"number": "919876543210", "capable": True})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    assert counts(store)["callbacks"] == 0


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_wrong_secret_is_refused(client, store, scheme):
    response = client.post(URL, json={"number": "919876543210"}, headers=SCHEMES[scheme]("nope"))
    assert response.status_code == 401
    assert counts(store)["callbacks"] == 0


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_right_secret_is_accepted(client, store, scheme):
    response = client.post(
        URL, json={"number": "919876543210", "capable": True}, headers=SCHEMES[scheme](SECRET)
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "accepted", "duplicate": False, "results": 1, "parse_error": None}
    assert counts(store) == {"callbacks": 1, "results": 1, "parse_errors": 0}


def test_garbled_basic_header_is_refused(client):
    response = client.post(URL, json={}, headers={"Authorization": "Basic !!!not-base64"})
    assert response.status_code == 401


def test_unconfigured_receiver_refuses_everything(store, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_KALEYRA_NOSECRET", json.dumps({"conn_type": "kaleyra", "login": "a", "password": "b"})
    )
    with TestClient(create_app(store=store, conn_id="kaleyra_nosecret")) as c:
        response = c.post(URL, json={"number": "919876543210"}, headers=_basic(""))
    assert response.status_code == 503
    assert counts(store)["callbacks"] == 0


def test_misconfigured_receiver_looks_again_after_a_while(store, monkeypatch):
    from airflow_provider_kaleyra.callbacks import receiver

    broken = json.dumps({"conn_type": "kaleyra", "login": "a", "password": "b"})
    fixed = json.dumps(
        {"conn_type": "kaleyra", "login": "a", "password": "b", "extra": {"callback_secret": SECRET}}
    )
    payload = {"number": "919876543210", "capable": True}
    for interval, after_the_fix in ((15.0, 503), (0.0, 202)):  # not read again before the interval ends
        monkeypatch.setattr(receiver, "_RETRY_CONFIG_AFTER", interval)
        monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_LATE", broken)
        with TestClient(create_app(store=store, conn_id="kaleyra_late")) as client:
            assert client.post(URL, json=payload, headers=_basic(SECRET)).status_code == 503
            monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_LATE", fixed)
            assert client.post(URL, json=payload, headers=_basic(SECRET)).status_code == after_the_fix
    assert counts(store)["callbacks"] == 1


def test_secret_and_store_come_from_the_connection(tmp_path, monkeypatch):
    db = tmp_path / "from-conn.db"
    conn = {
        "conn_type": "kaleyra",
        "login": "AC-TEST-SID",
        "password": "test-api-key-0123456789",
        "extra": {"callback_secret": SECRET, "callback_store_url": f"sqlite:///{db}"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_CB_TEST", json.dumps(conn))
    monkeypatch.setenv("KALEYRA_CALLBACK_CONN_ID", "kaleyra_cb_test")
    with TestClient(create_app()) as c:
        assert c.post(URL, json={"number": "919876543210", "capable": True}).status_code == 401
        ok = c.post(URL, json={"number": "919876543210", "capable": True}, headers=_basic(SECRET))
    assert ok.status_code == 202
    assert counts(CallbackStore(f"sqlite:///{db}"))["results"] == 1


# -- payloads -----------------------------------------------------------------------------------


def test_json_form_and_get_query_are_read(client, store):
    auth = _basic(SECRET)
    assert (
        client.post(URL, json={"msisdn": "919876543210", "soip_capable": "true"}, headers=auth).status_code
        == 202
    )
    form = client.post(URL, data={"mobile": "+919876543211", "status": "not_capable"}, headers=auth)
    assert form.status_code == 202 and form.json()["results"] == 1
    get = client.get(URL, params={"to": "919876543212", "capable": "1", "request_id": "r-9"}, headers=auth)
    assert get.status_code == 202 and get.json()["results"] == 1
    found = results_for(store, ["+919876543210", "+919876543211", "+919876543212"], _epoch())
    assert {n: r.outcome for n, r in found.items()} == {
        "+919876543210": "capable",
        "+919876543211": "not_capable",
        "+919876543212": "capable",
    }
    assert found["+919876543212"].request_id == "r-9"


def test_duplicates_are_stored_once(client, store):
    payload = {"phoneNumber": "919876543210", "code": "capable", "messageId": "m-1"}
    first = client.post(URL, json=payload, headers=_basic(SECRET))
    second = client.post(URL, json=payload, headers=_basic(SECRET))
    assert (first.json()["duplicate"], second.json()["duplicate"]) == (False, True)
    assert counts(store) == {"callbacks": 1, "results": 1, "parse_errors": 0}


def test_malformed_body_is_stored_and_flagged(client, store):
    response = client.post(
        URL, content=b'{"number": "9198', headers={**_basic(SECRET), "Content-Type": "application/json"}
    )
    assert response.status_code == 202
    assert "not valid JSON" in response.json()["parse_error"]
    assert counts(store) == {"callbacks": 1, "results": 0, "parse_errors": 1}
    assert raw_callbacks(store)[0]["body"] == b'{"number": "9198'


def test_empty_callback_is_a_bad_request(client, store):
    assert client.post(URL, headers=_basic(SECRET)).status_code == 400
    assert counts(store)["callbacks"] == 0


def test_oversized_body_is_refused_and_nothing_stored(client, store):
    big = {"number": "919876543210", "pad": "x" * 5000}
    assert client.post(URL, json=big, headers=_basic(SECRET)).status_code == 413

    def chunks():  # no Content-Length: the streamed read is capped too
        for _ in range(10):
            yield b"x" * 1000

    assert client.post(URL, content=chunks(), headers=_basic(SECRET)).status_code == 413
    assert counts(store)["callbacks"] == 0


def test_other_methods_and_bad_lengths_are_refused(client, store):
    assert client.patch(URL, headers=_basic(SECRET)).status_code == 405
    bad_length = {**_basic(SECRET), "Content-Length": "12abc"}
    assert client.post(URL, content=b'{"number": 1}', headers=bad_length).status_code == 400
    assert counts(store)["callbacks"] == 0


def test_health_needs_no_secret(client):
    assert client.get("/health").json() == {"status": "ok"}


# -- parsing --------------------------------------------------------------------------------------


def _parse(payload, **kwargs):
    return parse_callback(RawCallback("POST", json.dumps(payload).encode(), "application/json"), **kwargs)


def test_parses_lists_and_nested_bulk_payloads():
    parsed = _parse(
        {
            "bulkId": "b-1",
            "results": [
                {"phoneNumber": "919876543210", "code": "CAPABLE"},
                {"phoneNumber": "+919876543211", "code": "incapable"},
            ],
        }
    )
    assert [(r.number, r.capable, r.request_id) for r in parsed.results] == [
        ("+919876543210", True, "b-1"),
        ("+919876543211", False, "b-1"),
    ]
    assert parsed.error is None


def test_national_numbers_and_comma_lists_use_the_region():
    parsed = _parse({"number": "9876543210, 919876543211", "capable": False}, region="IN")
    assert [r.number for r in parsed.results] == ["+919876543210", "+919876543211"]
    # no region on the connection: Kaleyra's own form (country code, no "+") still reads, a national one not
    bare = _parse({"number": "9876543210, 919876543211", "capable": False})
    assert [r.number for r in bare.results] == [None, "+919876543211"]
    us = _parse({"number": "4155552671", "capable": True}, region="US")
    assert us.results[0].number == "+14155552671"


def test_unknown_values_and_missing_numbers_are_flagged():
    assert _parse({"number": "919876543210", "status": "MSG999"}).error == "capability not recognised"
    assert "no number found" in _parse({"foo": "bar"}).error
    assert _parse({"number": "12", "capable": True}).error == "not a valid phone number"


def test_field_mapping_is_configurable():
    mapping = FieldMapping.from_dict(
        {
            "number_keys": ["subscriber"],
            "capability_keys": ["rcs"],
            "capable_values": ["ok"],
            "not_capable_values": ["ko"],
        }
    )
    parsed = _parse({"subscriber": "919876543210", "rcs": "OK"}, mapping=mapping)
    assert (parsed.results[0].number, parsed.results[0].capable) == ("+919876543210", True)
    with pytest.raises(ValueError, match="unknown"):
        FieldMapping.from_dict({"numbr_keys": ["x"]})


def test_dedupe_key_ignores_json_formatting_but_not_method_or_query():
    a = RawCallback("POST", b'{"a": 1, "b": 2}', "application/json")
    assert a.dedupe_key == RawCallback("POST", b'{"b":2,"a":1}', "application/json").dedupe_key
    assert a.dedupe_key != RawCallback("GET", b'{"b":2,"a":1}', "application/json").dedupe_key
    assert (
        a.dedupe_key != RawCallback("POST", b'{"a": 1, "b": 2}', "application/json", query="x=1").dedupe_key
    )


# -- real HTTP -----------------------------------------------------------------------------------


@pytest.fixture
def live_server(store, serve_app):
    port = serve_app(create_standalone_app(store=store, secret=SECRET, max_body_bytes=4096))
    return f"http://127.0.0.1:{port}/kaleyra{URL}", port


def _raw_request(port: int, head: str) -> str:
    """Send only the request head; a server that waited for the body would time out here."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode())
        return sock.recv(4096).decode(errors="replace")


def test_over_real_http(live_server, store):
    url, port = live_server
    assert requests.post(url, json={"number": "919876543210"}, timeout=5).status_code == 401
    assert (
        requests.post(url, json={"number": "919876543210"}, auth=("k", "wrong"), timeout=5).status_code == 401
    )
    ok = requests.post(url, json={"number": "919876543210", "capable": True}, auth=("k", SECRET), timeout=5)
    assert ok.status_code == 202
    dup = requests.post(url, json={"number": "919876543210", "capable": True}, auth=("k", SECRET), timeout=5)
    assert dup.json()["duplicate"] is True
    form = requests.post(
        url, data={"msisdn": "919876543211", "capable": "no"}, headers={"X-Kaleyra-Secret": SECRET}, timeout=5
    )
    assert form.status_code == 202
    get = requests.get(
        url,
        params={"number": "919876543212", "status": "capable"},
        headers={"Authorization": f"Bearer {SECRET}"},
        timeout=5,
    )
    assert get.status_code == 202

    # Refused from the head alone: the (never sent) body is not awaited.
    head = f"POST /kaleyra{URL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n"
    assert _raw_request(port, head + "\r\n").startswith("HTTP/1.1 401")
    authed = head + "Authorization: Bearer " + SECRET + "\r\n\r\n"
    assert _raw_request(port, authed).startswith("HTTP/1.1 413")
    assert counts(store) == {"callbacks": 3, "results": 3, "parse_errors": 0}


# -- plugin and CLI --------------------------------------------------------------------------------


def test_plugin_mounts_the_app_under_kaleyra():
    from airflow.plugins_manager import is_valid_plugin

    from airflow_provider_kaleyra.callbacks.plugin import KaleyraCallbackPlugin, app

    assert is_valid_plugin(KaleyraCallbackPlugin)
    [entry] = KaleyraCallbackPlugin.fastapi_apps
    assert entry["app"] is app and entry["url_prefix"] == "/kaleyra" and entry["name"]


def test_cli_purge(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    store = CallbackStore(url)
    from datetime import datetime

    old = datetime.now(UTC) - timedelta(days=45)
    store.add_callback(
        RawCallback("POST", b'{"number":"919876543210","capable":true}', "application/json", received_at=old)
    )
    assert cli.main(["--store-url", url, "--purge-older-than", "30d"]) == 0
    assert "purged 1 callbacks" in capsys.readouterr().out
    assert cli.parse_age("12h") == timedelta(hours=12) and cli.parse_age("7") == timedelta(days=7)


def _epoch():
    from datetime import datetime

    return datetime(2000, 1, 1, tzinfo=UTC)


def test_cli_refuses_to_start_without_a_secret_or_a_store(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KALEYRA_NO_SUCH_SECRET", raising=False)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert cli.main(["--store-url", url, "--secret-env", "KALEYRA_NO_SUCH_SECRET"]) == 2
    assert "KALEYRA_NO_SUCH_SECRET is empty or unset" in capsys.readouterr().err
    monkeypatch.setenv("KALEYRA_SOME_SECRET", SECRET)
    assert (
        cli.main(["--store-url", "mysql://db/x", "--secret-env", "KALEYRA_SOME_SECRET", "--workers", "2"])
        == 2
    )
    assert "only sqlite and postgresql" in capsys.readouterr().err
    unreachable = "postgresql+psycopg://kaleyra:pw-s3cret@127.0.0.1:1/x"
    assert cli.main(["--store-url", unreachable, "--secret-env", "KALEYRA_SOME_SECRET"]) == 2
    err = capsys.readouterr().err
    assert "cannot be used" in err and "pw-s3cret" not in err
