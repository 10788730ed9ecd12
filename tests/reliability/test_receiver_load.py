"""Load: a burst of 20,000 callbacks from concurrent keep-alive clients, each stored exactly once.

The receiver runs as its own process (the standalone ``kaleyra-callback-receiver`` command, real
uvicorn on 127.0.0.1) so client and server do not share a GIL; the clients are 8 threads, each with
one keep-alive ``http.client`` connection. A slice of the burst is delivered twice, as Kaleyra does
when it retries: duplicates must not add rows.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
from collections import Counter

import pytest
from _reliability import SECRET_CALLBACK as SECRET, start_receiver

from airflow_provider_kaleyra.callbacks.receiver import CALLBACK_PATH, URL_PREFIX
from airflow_provider_kaleyra.callbacks.store import CallbackStore
from tests.store_queries import counts

TOTAL = 20_000
THREADS = 8
RESEND_EVERY = 20  # 5% of callbacks are delivered twice
BUDGET_SECONDS = 240  # measured 8-10 s on 2 cores (75-95 s before the intake work); room against flakes


@pytest.fixture(params=[1, 2], ids=["1-process", "2-processes"])
def receiver_process(tmp_path, request):
    """The standalone receiver; with ``--workers 2``, two processes share the port and the SQLite file."""
    url = f"sqlite:///{tmp_path / 'load.db'}"
    proc, port = start_receiver(url, workers=request.param, capture=True)
    yield port, url
    proc.terminate()
    try:
        output, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    assert SECRET.encode() not in output, "the receiver logged its secret"


def _payload(i: int) -> bytes:
    return json.dumps(
        {
            "number": f"9198760{i:05d}",
            "soip_capable": i % 3 != 0,
            "request_id": f"burst-{i // 100}",
            "timestamp": "2026-01-01T00:00:00.000Z",
        }
    ).encode()


def test_burst_of_20k_callbacks_is_stored_exactly_once(receiver_process):
    port, url = receiver_process
    path = URL_PREFIX + CALLBACK_PATH
    headers = {"Content-Type": "application/json", "X-Kaleyra-Secret": SECRET}
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    errors: list[str] = []

    def worker(index: int) -> None:
        local: Counter[str] = Counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for i in range(index, TOTAL, THREADS):
                for _ in range(2 if i % RESEND_EVERY == 0 else 1):
                    body = _payload(i)
                    for attempt in range(3):  # a dropped keep-alive connection is re-opened, not fatal
                        try:
                            conn.request("POST", path, body=body, headers=headers)
                            response = conn.getresponse()
                            answer = response.read()
                            break
                        except (http.client.HTTPException, OSError):
                            conn.close()
                            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                            if attempt == 2:
                                raise
                    if response.status != 202:
                        local[str(response.status)] += 1
                        continue
                    local["duplicate" if json.loads(answer)["duplicate"] else "new"] += 1
        except Exception as exc:  # reported below: a worker must not die silently
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
            with lock:
                statuses.update(local)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=BUDGET_SECONDS)
    elapsed = time.monotonic() - started
    assert not any(t.is_alive() for t in threads), f"burst not done in {BUDGET_SECONDS}s"
    assert not errors, errors[:5]

    resent = len(range(0, TOTAL, RESEND_EVERY))
    print(
        f"\nreceiver burst: {TOTAL + resent} deliveries in {elapsed:.1f}s "
        f"({(TOTAL + resent) / elapsed:.0f}/s, {THREADS} keep-alive clients): {dict(statuses)}"
    )
    assert statuses == Counter({"new": TOTAL, "duplicate": resent}), statuses

    store = CallbackStore(url)
    try:
        assert counts(store) == {"callbacks": TOTAL, "results": TOTAL, "parse_errors": 0}
    finally:
        store.dispose()
