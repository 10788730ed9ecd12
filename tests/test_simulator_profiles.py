"""The simulator sends callbacks in every mode a Kaleyra profile allows, to the real receiver over HTTP."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import requests

from airflow_provider_kaleyra.callbacks.receiver import create_standalone_app
from airflow_provider_kaleyra.callbacks.store import CallbackStore
from kaleyra_simulator import CallbackAuth, soip_answer
from tests.store_queries import counts, raw_callbacks, results_for

SECRET = "sim-profile-secret"
CLIENT_ID, CLIENT_SECRET = "console-client", "console-client-secret"
HEADERS = {"api-key": "test-api-key-0123456789"}


@pytest.fixture
def store(tmp_path):
    s = CallbackStore(f"sqlite:///{tmp_path / 'profiles.db'}")
    yield s
    s.dispose()


def _receiver(serve_app, store, **kwargs) -> str:
    app = create_standalone_app(
        store=store, secret=SECRET, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **kwargs
    )
    return f"http://127.0.0.1:{serve_app(app)}/kaleyra/soip"


def _check(sim, numbers: list[str]) -> None:
    url = f"{sim.url}/v1/{sim.config.sid}/messages/soip/capability-check"
    assert requests.post(url, json={"number": numbers}, headers=HEADERS, timeout=5).status_code == 202
    assert sim.wait_callbacks(30)


def _numbers(start: int, n: int) -> list[str]:
    return [f"91987654{i:04d}" for i in range(start, start + n)]


AUTHS = {
    "header": CallbackAuth("header", "X-Kaleyra-Secret", SECRET),
    "basic": CallbackAuth("basic", "kaleyra", SECRET),
    "advanced": CallbackAuth("advanced", CLIENT_ID, CLIENT_SECRET),
    "advanced-form": CallbackAuth.parse(f"advanced-form:{CLIENT_ID}:{CLIENT_SECRET}"),
    "advanced-basic": CallbackAuth("advanced", CLIENT_ID, CLIENT_SECRET, "basic"),
}
MODES = [
    ("header", "json", "POST"),
    ("basic", "xml", "PUT"),
    ("advanced", "text", "POST"),
    ("advanced-form", "form", "PUT"),
    ("advanced-basic", "xml", "GET"),
    ("header", "text", "GET"),
]


@pytest.mark.parametrize(("auth", "body", "method"), MODES, ids=["-".join(m) for m in MODES])
def test_every_auth_body_and_method_is_received_and_read(
    make_simulator, serve_app, store, auth, body, method
):
    base = _receiver(serve_app, store)
    sim = make_simulator(
        callback_url=f"{base}/callback", callback_auth=AUTHS[auth], callback_body=body, callback_method=method
    )
    numbers = _numbers(0, 20)
    _check(sim, numbers)
    assert sim.stats()["callbacks"] == {"sent": 20, "failed": 0, "retried": 0, "pending": 0}
    assert sim.stats()["callback_tokens"] == (1 if auth.startswith("advanced") else 0)
    found = results_for(store, ["+" + n for n in numbers], _epoch())
    assert {n: r.capable for n, r in found.items()} == {"+" + n: soip_answer(n) for n in numbers}
    assert counts(store)["parse_errors"] == 0
    assert {row["method"] for row in raw_callbacks(store)} == {method}


def test_advanced_token_is_fetched_again_when_it_expires_mid_run(make_simulator, serve_app, store):
    base = _receiver(serve_app, store, token_lifetime=timedelta(seconds=2))  # expires_in: 1 s
    sim = make_simulator(
        callback_url=f"{base}/callback", callback_auth=AUTHS["advanced"], callback_spread=2.5
    )
    started = time.monotonic()
    _check(sim, _numbers(0, 20))  # one check, its callbacks over 2.5 s: longer than a token lives
    assert time.monotonic() - started >= 2.3
    assert sim.stats()["callbacks"]["sent"] == 20 and sim.stats()["callbacks"]["failed"] == 0
    assert sim.stats()["callback_tokens"] >= 2
    assert counts(store)["results"] == 20


def test_a_refused_token_is_dropped_and_fetched_again(make_simulator, serve_app, store, tmp_path):
    """Tokens from another connection's receiver are refused (401): each refusal fetches a new one."""
    other = CallbackStore(f"sqlite:///{tmp_path / 'other.db'}")
    elsewhere = _receiver(serve_app, other, conn_id="kaleyra_other")
    base = _receiver(serve_app, store, conn_id="kaleyra_mine")
    sim = make_simulator(
        callback_url=f"{base}/callback",
        callback_auth=AUTHS["advanced"],
        callback_token_url=f"{elsewhere}/token",
        callback_retries=2,
    )
    _check(sim, _numbers(0, 1))
    assert sim.stats()["callbacks"]["failed"] == 1 and sim.stats()["callback_tokens"] == 3
    sim.configure(callback_token_url=f"{base}/token")
    _check(sim, _numbers(1, 1))
    assert sim.stats()["callbacks"]["sent"] == 1 and counts(store)["results"] == 1
    other.dispose()


def test_simulator_config_reads_the_new_knobs():
    from kaleyra_simulator import SimulatorConfig

    config = SimulatorConfig(
        callback_auth="advanced-basic:id:pw", callback_method="put", callback_body="form"
    )
    assert (config.callback_auth.kind, config.callback_auth.token_request) == ("advanced", "basic")
    assert (config.callback_method, config.callback_body) == ("PUT", "form")
    assert "pw" not in repr(config) and "pw" not in str(config.public())
    with pytest.raises(ValueError):
        SimulatorConfig(callback_body="yaml")


def _epoch():
    from datetime import UTC, datetime

    return datetime(2000, 1, 1, tzinfo=UTC)
