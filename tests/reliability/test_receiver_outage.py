"""Nothing acknowledged that is not stored, also while the store is down.

A throwaway PostgreSQL server (the machine's binaries, its own port and directory) is stopped in the
middle of a burst of callbacks to the standalone receiver, then started again. Every callback
answered 2xx must be in the store; every other one must have been answered 5xx (Kaleyra retries),
and is stored when sent again; the receiver recovers with no restart.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from _reliability import SECRET_CALLBACK, start_receiver
from sqlalchemy import create_engine, text

from airflow_provider_kaleyra.callbacks.receiver import CALLBACK_PATH, URL_PREFIX

BINDIR = max(glob.glob("/usr/lib/postgresql/*/bin"), default="", key=lambda p: int(p.split("/")[-2]))


class ThrowawayPostgres:
    """``initdb`` + ``pg_ctl`` on a free port; as root, run as the ``postgres`` user."""

    def __init__(self, root: Path) -> None:
        self.data = root / "pgdata"
        self.data.mkdir()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(root, "postgres")
            shutil.chown(self.data, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "kaleyra", "--auth=trust")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "kaleyra", "callbacks")
        self.url = f"postgresql+psycopg://kaleyra@127.0.0.1:{self.port}/callbacks"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, f"{BINDIR}/{tool}", *args], check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "log"), "-w", "-o", options, "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture
def postgres():
    if not BINDIR:
        pytest.fail("no PostgreSQL binaries in /usr/lib/postgresql/*/bin (scripts/setup.sh installs them)")
    root = Path(tempfile.mkdtemp(prefix="kaleyra-pg-outage-"))  # not under pytest's root-only tmp
    server = ThrowawayPostgres(root)
    yield server
    stop = [*server.as_user, f"{BINDIR}/pg_ctl", "-D", str(server.data), "-m", "immediate", "stop"]
    subprocess.run(stop, capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def _body(i: int) -> bytes:
    return json.dumps({"number": f"9198{i:08d}", "soip_capable": i % 2 == 0, "request_id": "outage"}).encode()


def _sender(port: int, next_index: Callable[[], int | None], statuses: dict[int, int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", "X-Kaleyra-Secret": SECRET_CALLBACK}
    while (i := next_index()) is not None:
        try:
            conn.request("POST", URL_PREFIX + CALLBACK_PATH, body=_body(i), headers=headers)
            answer = conn.getresponse()
            answer.read()
            statuses[i] = answer.status
        except (OSError, http.client.HTTPException):
            statuses[i] = 0  # no answer: not acknowledged
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        time.sleep(0.002)
    conn.close()


def _send(port: int, indexes: list[int], clients: int = 8) -> dict[int, int]:
    pending, statuses, lock = iter(indexes), {}, threading.Lock()

    def next_index() -> int | None:
        with lock:
            return next(pending, None)

    threads = [threading.Thread(target=_sender, args=(port, next_index, statuses)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return statuses


def _stored(url: str) -> set[int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        numbers = conn.execute(text("SELECT number FROM kaleyra_callback_results")).scalars().all()
    engine.dispose()
    return {int(n[-8:]) for n in numbers}


def test_store_down_mid_burst_answers_5xx_never_2xx_and_recovers(postgres):
    proc, port = start_receiver(postgres.url)
    try:
        # A burst that runs until the store has been down and back up for a while.
        statuses: dict[int, int] = {}
        counter, lock, stop = iter(range(10**6)), threading.Lock(), threading.Event()

        def next_index() -> int | None:
            with lock:
                return None if stop.is_set() else next(counter)

        threads = [threading.Thread(target=_sender, args=(port, next_index, statuses)) for _ in range(8)]
        for thread in threads:
            thread.start()
        while len(statuses) < 500:
            time.sleep(0.01)
        postgres.stop()  # mid-burst
        time.sleep(1.5)
        postgres.start()
        restarted = len(statuses)
        while len(statuses) < restarted + 500:
            time.sleep(0.01)
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        total = len(statuses)
        assert set(statuses) == set(range(total))
        seen = Counter(statuses.values())
        print(f"\nstatuses during the outage burst: {dict(seen)}")
        assert set(seen) <= {202, 503, 0}, seen
        assert seen[503] > 0, "the outage was not seen: the test proves nothing"
        acknowledged = {i for i, status in statuses.items() if 200 <= status < 300}
        stored = _stored(postgres.url)
        assert acknowledged <= stored, f"{len(acknowledged - stored)} acknowledged callbacks are not stored"

        # Recovered by itself: new callbacks are stored; the refused ones are stored when re-sent.
        assert set(_send(port, list(range(total, total + 200))).values()) == {202}
        assert set(_send(port, sorted(set(range(total)) - acknowledged)).values()) == {202}
        assert _stored(postgres.url) == set(range(total + 200))
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
