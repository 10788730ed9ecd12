"""Who may deliver callbacks: advanced auth (token route, stateless tokens), the IP allow-list, and
no secret in any access log line; over real HTTP where a server is involved."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from datetime import timedelta
from urllib.parse import unquote

import jwt
import pytest
import requests
import uvicorn
from fastapi.testclient import TestClient

from airflow_provider_kaleyra.callbacks.auth import TokenAuthority
from airflow_provider_kaleyra.callbacks.receiver import create_app, create_standalone_app
from airflow_provider_kaleyra.callbacks.store import CallbackStore
from tests.store_queries import counts, raw_callbacks

CLIENT_ID = "kaleyra-console"
CLIENT_SECRET = "CLIENT-SECRET-4u8q"
SECRET = "CB-SECRET-z1"
PAYLOAD = {"number": "919876543210", "soip_capable": True}


@pytest.fixture
def store(tmp_path):
    s = CallbackStore(f"sqlite:///{tmp_path / 'callbacks.db'}")
    yield s
    s.dispose()


def _app(store, **kwargs):
    kwargs = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "conn_id": "kaleyra_a", **kwargs}
    return create_standalone_app(store=store, **kwargs)


@pytest.fixture
def live(store, serve_app):
    port = serve_app(_app(store), log_level="info")
    return f"http://127.0.0.1:{port}/kaleyra/soip"


# -- advanced auth --------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["json", "form", "basic", "query"])
def test_token_route_takes_credentials_every_way_and_answers_the_documented_shape(live, store, style):
    creds = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    ask = {
        "json": lambda: requests.post(f"{live}/token", json=creds, timeout=5),
        "form": lambda: requests.post(f"{live}/token", data=creds, timeout=5),
        "basic": lambda: requests.post(f"{live}/token", auth=(CLIENT_ID, CLIENT_SECRET), timeout=5),
        "query": lambda: requests.get(f"{live}/token", params=creds, timeout=5),
    }[style]
    answer = ask()
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    token = answer.json()
    assert token["token_type"] == "Bearer" and token["expires_in"] == "3599"
    assert set(token) >= {"ext_expires_in", "expires_on", "not_before", "resource", "access_token"}
    assert int(token["expires_on"]) - int(token["not_before"]) == 3600
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    for _ in range(2):  # the second time from the verified-token cache
        ok = requests.post(f"{live}/callback", json=PAYLOAD, headers=bearer, timeout=5)
        assert ok.status_code == 202, ok.text
    assert counts(store)["callbacks"] == 1
    assert token["access_token"] not in json.dumps(raw_callbacks(store), default=str)


@pytest.mark.parametrize(
    "creds",
    [
        {"client_id": CLIENT_ID, "client_secret": "wrong"},
        {"client_id": "someone", "client_secret": CLIENT_SECRET},
        {"client_id": CLIENT_ID},
        {},
    ],
)
def test_wrong_client_credentials_get_no_token(live, creds):
    answer = requests.post(f"{live}/token", json=creds, timeout=5)
    assert answer.status_code == 401 and answer.json() == {"error": "invalid_client"}


def test_expired_forged_and_other_connection_tokens_are_refused(store):
    mine = TokenAuthority(CLIENT_ID, CLIENT_SECRET, binding="kaleyra_a", lifetime=timedelta(seconds=1))
    other = TokenAuthority(CLIENT_ID, CLIENT_SECRET, binding="kaleyra_b")  # same secret, other connection
    forged = jwt.encode(
        {"aud": mine.audience, "exp": int(time.time()) + 60, "iat": 0},
        "a guess at the key, long enough for HS256",
        "HS256",
    )
    unsigned = jwt.encode({"aud": mine.audience, "exp": int(time.time()) + 60, "iat": 0}, None, "none")
    expiring = mine.issue()["access_token"]
    with TestClient(_app(store, token_lifetime=timedelta(seconds=1))) as client:
        post = lambda token: client.post(  # noqa: E731
            "/kaleyra/soip/callback", json=PAYLOAD, headers={"Authorization": f"Bearer {token}"}
        )
        assert post(expiring).status_code == 202
        for bad in (other.issue()["access_token"], forged, unsigned, "not-a-jwt", expiring[:-2] + "xx"):
            answer = post(bad)
            assert answer.status_code == 401 and 'error="invalid_token"' in answer.headers["www-authenticate"]
        time.sleep(2.1)  # expired: refused though verified (and cached) before
        assert post(expiring).status_code == 401
    assert counts(store)["callbacks"] == 1


def test_tokens_are_stateless_any_receiver_of_the_connection_verifies_them(store, tmp_path):
    other_store = CallbackStore(f"sqlite:///{tmp_path / 'other.db'}")
    with TestClient(_app(store)) as first, TestClient(_app(other_store)) as second:
        token = first.post("/kaleyra/soip/token", json={"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET})
        bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
        assert second.post("/kaleyra/soip/callback", json=PAYLOAD, headers=bearer).status_code == 202
    other_store.dispose()


def test_shared_secret_still_works_beside_tokens_and_token_route_needs_client_credentials(store):
    with TestClient(_app(store, secret=SECRET)) as client:
        ok = client.post("/kaleyra/soip/callback", json=PAYLOAD, headers={"X-Kaleyra-Secret": SECRET})
        assert ok.status_code == 202
    with TestClient(create_app(store=store, secret=SECRET)) as client:
        assert client.post("/soip/token", json={"client_id": "a", "client_secret": "b"}).status_code == 404


def test_advanced_auth_from_the_connection_with_its_lifetime(store, monkeypatch, tmp_path):
    extra = {
        "callback_client_id": CLIENT_ID,
        "callback_client_secret": CLIENT_SECRET,
        "callback_token_lifetime": "120",
        "callback_store_url": f"sqlite:///{tmp_path / 'conn.db'}",
    }
    conn = {"conn_type": "kaleyra", "login": "AC-1", "password": "key-1", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_ADV", json.dumps(conn))
    with TestClient(create_app(conn_id="kaleyra_adv")) as client:
        basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        token = client.post("/soip/token", headers={"Authorization": f"Basic {basic}"}).json()
        assert token["expires_in"] == "119"
        bearer = {"Authorization": f"Bearer {token['access_token']}"}
        assert client.put("/soip/callback", json=PAYLOAD, headers=bearer).status_code == 202
    assert CLIENT_SECRET not in repr(create_app(conn_id="kaleyra_adv").state.kaleyra_settings.get())


# -- IP allow-list ---------------------------------------------------------------------------------


def test_allow_list_and_forwarded_for_only_from_trusted_proxies(store):
    def post(app, forwarded=None):
        headers = {"X-Kaleyra-Secret": SECRET, **({"X-Forwarded-For": forwarded} if forwarded else {})}
        with TestClient(app) as client:  # TestClient's peer address is "testclient"
            return client.post("/soip/callback", json=PAYLOAD, headers=headers).status_code

    only_kaleyra = create_app(store=store, secret=SECRET, allowed_ips=("203.0.113.0/24",))
    assert post(only_kaleyra) == 403
    assert post(only_kaleyra, "203.0.113.9") == 403  # the peer is no trusted proxy: its header is ignored
    assert counts(store)["callbacks"] == 0


@pytest.fixture
def serve_direct():
    """Serve as the receiver's CLI and the API server do by default: uvicorn believes no proxy header."""
    servers = []

    def start(app):
        server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", proxy_headers=False
            )
        )
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)
        while not (server.started and server.servers):
            time.sleep(0.02)
        return server.servers[0].sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.should_exit = True


def test_allow_list_over_real_http(store, serve_direct):
    def port_of(**kwargs):
        return serve_direct(create_standalone_app(store=store, secret=SECRET, **kwargs))

    def post(port, forwarded=None):
        headers = {"X-Kaleyra-Secret": SECRET, **({"X-Forwarded-For": forwarded} if forwarded else {})}
        url = f"http://127.0.0.1:{port}/kaleyra/soip/callback"
        return requests.post(url, json=PAYLOAD, headers=headers, timeout=5).status_code

    direct = port_of(allowed_ips=("127.0.0.1/32",))
    assert post(direct) == 202
    elsewhere = port_of(allowed_ips=("203.0.113.0/24",))
    assert post(elsewhere) == 403 and post(elsewhere, "203.0.113.9") == 403
    proxied = port_of(allowed_ips=("203.0.113.0/24",), trusted_proxies=("127.0.0.0/8", "10.0.0.0/8"))
    assert post(proxied) == 403  # the proxy itself is not Kaleyra
    assert post(proxied, "203.0.113.9, 10.1.2.3") == 202  # sender, then an inner trusted proxy
    assert post(proxied, "203.0.113.9, 198.51.100.1") == 403  # spoofed first hop: the last untrusted counts
    assert counts(store)["callbacks"] == 1


def test_bad_cidr_is_a_configuration_error(store):
    with TestClient(create_app(store=store, secret=SECRET, allowed_ips=("10.0.0.0/33",))) as client:
        answer = client.post("/soip/callback", json=PAYLOAD, headers={"X-Kaleyra-Secret": SECRET})
    assert answer.status_code == 503


# -- no secret in the access log -------------------------------------------------------------------


def test_access_log_shows_no_query_value_accepted_or_refused(live, caplog):
    caplog.set_level(logging.INFO)
    creds = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    token = requests.get(f"{live}/token", params=creds, timeout=5).json()["access_token"]
    requests.get(f"{live}/token", params={"client_id": CLIENT_ID, "client_secret": "WRONG-9x"}, timeout=5)
    bearer = {"Authorization": f"Bearer {token}"}
    requests.get(f"{live}/callback", params={**PAYLOAD, "secret": SECRET}, headers=bearer, timeout=5)
    requests.get(f"{live}/callback", params={"secret": SECRET, "token": token}, timeout=5)  # refused
    requests.get(f"{live}/elsewhere", params={"s": SECRET}, timeout=5)  # unknown path: 404
    access = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert len(access) == 5, access
    assert any("client_secret=***" in line and " 401" in line for line in access)
    text = caplog.text + "\n".join(access)
    for secret in (CLIENT_SECRET, "WRONG-9x", SECRET, token, "919876543210"):
        assert secret not in text


def test_api_server_access_log_shows_no_query_value(store):
    """Mounted as Airflow's API server mounts plugin apps, behind its access-log middleware."""
    from airflow.api_fastapi.common.http_access_log import HttpAccessLogMiddleware
    from fastapi import FastAPI
    from structlog.testing import capture_logs

    outer = FastAPI()
    inner = create_app(store=store, secret=SECRET, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    outer.mount("/kaleyra", inner)
    outer.add_middleware(HttpAccessLogMiddleware)
    with capture_logs() as events, TestClient(outer) as client:
        creds = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        token = client.get("/kaleyra/soip/token", params=creds).json()["access_token"]
        for params in ({"n": "919876543210", "s": SECRET, "t": token}, {"k": SECRET}):
            client.get("/kaleyra/soip/callback", params=params, headers={"Authorization": f"Bearer {token}"})
            client.get("/kaleyra/soip/callback", params=params)  # refused
    access = [e for e in events if e.get("event") == "request finished"]
    assert len(access) == 5 and {e["status_code"] for e in access} == {200, 202, 401}
    assert unquote(access[1]["query"]) == "n=***&s=***&t=***"  # (Airflow re-encodes the query)
    for secret in (CLIENT_SECRET, SECRET, token, "919876543210"):
        assert secret not in repr(events)
