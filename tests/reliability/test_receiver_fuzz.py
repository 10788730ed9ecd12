"""The SOIP callback receiver under hostile input: malformed, oversized and unauthenticated requests.

Invariants, checked on generated requests:

* without the secret: a 4xx, and nothing stored;
* with the secret: 202 and stored (parse errors are stored and flagged, never dropped), except an
  empty callback (400) or an oversized body (413), which store nothing;
* the secret is compared with ``hmac.compare_digest``, and refused requests are answered from the
  head alone: a huge unauthenticated body over real HTTP is refused fast and never buffered.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator

import pytest
from _reliability import SECRET_CALLBACK as SECRET
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st

from airflow_provider_kaleyra.callbacks import auth
from airflow_provider_kaleyra.callbacks.bodies import RawCallback
from airflow_provider_kaleyra.callbacks.receiver import CALLBACK_PATH, create_app, create_standalone_app
from airflow_provider_kaleyra.callbacks.store import CallbackStore
from tests.store_queries import counts, raw_callbacks

LIMIT = 4096
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

ascii_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
header_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80)
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/octet-stream",
        "*/*",
        "garbage/;;;",
    ]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
callback_like = st.fixed_dictionaries(
    {
        "number": st.one_of(
            st.text(max_size=20), st.integers(), st.from_regex(r"91[6-9]\d{9}", fullmatch=True)
        )
    },
    optional={
        "soip_capable": st.one_of(st.booleans(), st.text(max_size=10)),
        "status": st.sampled_from(["capable", "not_capable", "MSG999", "", "CAPABLE"]),
        "request_id": st.text(max_size=20),
        "nested": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=600),
    json_values.map(lambda v: json.dumps(v).encode()),
    callback_like.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.dictionaries(ascii_text, ascii_text, max_size=5).map(
        lambda d: "&".join(f"{k}={v}" for k, v in d.items()).encode()
    ),
    st.just(b"[" * 5000 + b"]" * 5000),  # deep nesting
    st.integers(LIMIT + 1, 3 * LIMIT).map(lambda n: b"{" + b"x" * n + b"}"),  # oversized
)
queries = st.one_of(
    st.just(""),
    st.dictionaries(ascii_text, ascii_text, max_size=3).map(
        lambda d: "&".join(f"{k}={v}" for k, v in d.items())
    ),
)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


wrong_secrets = st.one_of(
    header_text.filter(lambda s: s != SECRET),
    st.sampled_from([SECRET[:-1], SECRET + "x", SECRET.lower(), " " + SECRET[1:], SECRET[::-1], ""]),
)
bad_auth = st.one_of(
    st.just({}),
    wrong_secrets.map(lambda s: {"X-Kaleyra-Secret": s}),
    wrong_secrets.map(lambda s: {"Authorization": f"Bearer {s}"}),
    wrong_secrets.map(lambda s: {"Authorization": _basic("kaleyra", s)}),
    st.just({"Authorization": _basic(SECRET, "")}),  # the secret as user name is not the password
    st.just({"Authorization": "Bearer"}),
    st.just({"Authorization": f"Token {SECRET}"}),  # unknown scheme
    st.just({"Authorization": "Basic %%%"}),
    header_text.map(lambda s: {"Authorization": s}),
    st.just({"X-Kaleyra-Secret-Other": SECRET}),
)
good_auth = st.sampled_from(
    [
        {"X-Kaleyra-Secret": SECRET},
        {"Authorization": f"Bearer {SECRET}"},
        {"Authorization": _basic("kaleyra", SECRET)},
        {"Authorization": _basic("", SECRET)},
    ]
)


@pytest.fixture
def store(tmp_path) -> Iterator[CallbackStore]:
    s = CallbackStore(f"sqlite:///{tmp_path / 'fuzz.db'}")
    yield s
    s.dispose()


def _headers(auth: dict[str, str], content_type: str | None) -> dict[str, str]:
    headers = dict(auth)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers


def test_unauthenticated_requests_get_4xx_and_store_nothing(store):
    with TestClient(create_app(store=store, secret=SECRET, max_body_bytes=LIMIT)) as client:

        @FUZZ
        @given(
            method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
            auth=bad_auth,
            content_type=content_types,
            body=bodies,
            query=queries,
        )
        def check(method, auth, content_type, body, query):
            response = client.request(
                method,
                CALLBACK_PATH + (f"?{query}" if query else ""),
                content=body or None,
                headers=_headers(auth, content_type),
            )
            assert 400 <= response.status_code < 500, (response.status_code, response.text)
            if method in ("GET", "POST", "PUT"):
                assert response.status_code == 401
            assert SECRET not in response.text

        check()
    assert counts(store) == {"callbacks": 0, "results": 0, "parse_errors": 0}


def test_authenticated_requests_are_stored_once_or_refused_with_a_reason(store):
    accepted: dict[str, int] = {}  # dedupe key -> deliveries answered 202
    refused = {"400": 0, "413": 0}

    with TestClient(create_app(store=store, secret=SECRET, max_body_bytes=LIMIT)) as client:

        @FUZZ
        @given(
            method=st.sampled_from(["GET", "POST", "PUT"]),
            auth=good_auth,
            content_type=content_types,
            body=bodies,
            query=queries,
            resend=st.booleans(),
        )
        def check(method, auth, content_type, body, query, resend):
            url = CALLBACK_PATH + (f"?{query}" if query else "")
            headers = _headers(auth, content_type)
            for _ in range(2 if resend else 1):
                response = client.request(method, url, content=body or None, headers=headers)
                raw = RawCallback(method, body, content_type, query=response.request.url.query.decode())
                if len(body) > LIMIT:
                    assert response.status_code == 413, response.text
                    refused["413"] += 1
                elif not body.strip() and not raw.query:
                    assert response.status_code == 400, response.text
                    refused["400"] += 1
                else:
                    assert response.status_code == 202, (response.status_code, response.text)
                    answer = response.json()
                    key = raw.dedupe_key
                    assert answer["duplicate"] is (key in accepted), (answer, key in accepted)
                    accepted[key] = accepted.get(key, 0) + 1

        check()

    # Nothing lost, nothing doubled: one row per distinct accepted delivery, and the same ones.
    rows = raw_callbacks(store, limit=100_000)
    assert {row["dedupe_key"] for row in rows} == set(accepted)
    assert len(rows) == len(accepted)
    assert all(SECRET not in row["headers"] for row in rows), "the secret was stored with the headers"
    print(
        f"\nfuzzed receiver: {len(accepted)} distinct accepted, {sum(accepted.values())} deliveries, refused {refused}"
    )
    assert refused["413"] and refused["400"] is not None and len(accepted) > 50


def test_secret_is_compared_in_constant_time(store, monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    payload = {"number": "919876543210", "soip_capable": True}
    with TestClient(create_app(store=store, secret=SECRET)) as client:
        wrong = "X" * len(SECRET)  # same length: only a constant-time compare keeps timing flat
        assert (
            client.post(CALLBACK_PATH, json=payload, headers={"X-Kaleyra-Secret": wrong}).status_code == 401
        )
        assert calls and calls[-1] == (wrong.encode(), SECRET.encode())
        calls.clear()
        for offer in (
            {"X-Kaleyra-Secret": SECRET},
            {"Authorization": f"Bearer {SECRET}"},
            {"Authorization": _basic("u", SECRET)},
        ):
            assert client.post(CALLBACK_PATH, json=payload, headers=offer).status_code == 202
            assert (SECRET.encode(), SECRET.encode()) in calls
            calls.clear()
    # The check must not short-circuit on a plain ``==`` of the secret anywhere in the receiver.
    import inspect

    source = inspect.getsource(auth.is_authorized)
    assert "compare_digest" in source and "== expected" not in source and "== secret" not in source


# -- real HTTP: refused from the head, fast, never buffered ---------------------------------------


@pytest.fixture
def live_receiver(store, serve_app):
    return serve_app(create_standalone_app(store=store, secret=SECRET, max_body_bytes=64 * 1024))


def _send_huge(port: int, head: str, body_bytes: int, chunked: bool = False) -> tuple[str, float, int]:
    """Send a head, then stream up to ``body_bytes`` of body while watching for an early answer.

    Returns (status line, seconds to the answer, body bytes the server let us send before answering).
    """
    started = time.monotonic()
    sent = 0
    block = b"9" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        sock.setblocking(False)
        answer = b""
        while time.monotonic() - started < 10:
            try:
                data = sock.recv(4096)
                if data:
                    answer += data
                    if b"\r\n" in answer:
                        break
                elif answer or sent:
                    break
            except BlockingIOError:
                pass
            except OSError:
                break
            if sent < body_bytes:
                piece = (b"%x\r\n" % len(block) + block + b"\r\n") if chunked else block
                try:
                    sent += sock.send(piece)
                except BlockingIOError:
                    time.sleep(0.001)
                except OSError:  # the server hung up on us: fine, it has answered or will
                    time.sleep(0.01)
            else:
                time.sleep(0.005)
        return answer.split(b"\r\n", 1)[0].decode(errors="replace"), time.monotonic() - started, sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_huge_unauthenticated_body_is_refused_fast_and_not_stored(live_receiver, store, chunked):
    size = 500 * 1024 * 1024
    length = "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {size}\r\n"
    head = f"POST /kaleyra{CALLBACK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{length}"
    status, seconds, sent = _send_huge(live_receiver, head + "X-Kaleyra-Secret: nope\r\n\r\n", size, chunked)
    print(f"\nunauthenticated huge body: {status!r} after {seconds * 1000:.0f} ms, {sent} bytes sent")
    assert status.startswith("HTTP/1.1 401"), status
    assert seconds < 3, f"refused after {seconds:.1f}s: the body was read"
    assert sent < 64 * 1024 * 1024, f"the server took {sent} bytes before refusing"

    # Authenticated but oversized: 413, and the body beyond the limit is not buffered either.
    status, seconds, sent = _send_huge(
        live_receiver, head + f"X-Kaleyra-Secret: {SECRET}\r\n\r\n", size, chunked
    )
    assert status.startswith("HTTP/1.1 413"), status
    assert seconds < 3
    assert counts(store)["callbacks"] == 0
