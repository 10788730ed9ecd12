"""A callback acknowledged by the receiver survives the receiver being killed with SIGKILL.

Real uvicorn in its own process (the standalone ``kaleyra-callback-receiver``), 8 keep-alive
clients sending as fast as they can; SIGKILL arrives mid-burst, while group commits are in
flight. Every callback that got its ``202`` must be in the store afterwards: the receiver answers
only once the transaction holding the callback has committed.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from _reliability import SECRET_CALLBACK as SECRET, start_receiver

from airflow_provider_kaleyra.callbacks.receiver import CALLBACK_PATH, URL_PREFIX
from airflow_provider_kaleyra.callbacks.store import CallbackStore
from tests.databases import throwaway_database

CLIENTS = 8
KILL_AFTER = 400  # acknowledged callbacks before the kill


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    yield from throwaway_database(request.param, tmp_path)


def test_acknowledged_callbacks_survive_sigkill(store_url):
    proc, port = start_receiver(store_url)
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        i = 0
        while not stop.is_set():
            digits = f"9198{k:02d}{i:06d}"
            i += 1
            try:
                conn.request(
                    "POST",
                    URL_PREFIX + CALLBACK_PATH,
                    body=json.dumps({"number": digits, "soip_capable": True}).encode(),
                    headers={"Content-Type": "application/json", "X-Kaleyra-Secret": SECRET},
                )
                answer = conn.getresponse()
                answer.read()
            except (OSError, http.client.HTTPException):
                return  # the receiver is gone
            if answer.status == 202:
                with lock:
                    acked.append("+" + digits)

    before = datetime.now(UTC) - timedelta(minutes=1)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 120
        while len(acked) < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # mid-burst: requests and commits in flight
        proc.wait(timeout=10)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        for thread in threads:
            thread.join(timeout=15)
    with lock:
        survivors = list(acked)
    assert proc.returncode == -signal.SIGKILL
    assert len(survivors) >= KILL_AFTER

    store = CallbackStore(store_url)
    try:
        store.add_submission("acked", survivors)
        found = {number for number, result in store.results("acked", before) if result is not None}
    finally:
        store.dispose()
    assert set(survivors) <= found, f"{len(set(survivors) - found)} acknowledged callbacks lost"
