"""Benchmark 5: callbacks/s the standalone receiver stores, against storing them straight into the store."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC

from common import (
    Row,
    free_port,
    log,
    median,
    row,
)

# -- 5. callback intake -------------------------------------------------------------------------


def _callback_body(i: int) -> bytes:
    return json.dumps(
        {
            "number": f"9198{i:08d}",
            "soip_capable": i % 3 != 0,
            "request_id": f"bench-{i // 100}",
            "timestamp": "2026-01-01T00:00:00.000Z",
        }
    ).encode()


def _post_callbacks(port: int, secret: str, indexes: range, clients: int) -> float:
    """Deliver callbacks from ``clients`` threads, each on one keep-alive connection; retries on 5xx."""
    errors: list[str] = []

    def client(part: range) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in part:
            for _attempt in range(5):
                conn.request(
                    "POST",
                    "/kaleyra/soip/callback",
                    body=_callback_body(i),
                    headers={"Content-Type": "application/json", "X-Kaleyra-Secret": secret},
                )
                answer = conn.getresponse()
                answer.read()
                if answer.status == 202:
                    break
                time.sleep(0.2)
            else:
                errors.append(f"callback {i}: HTTP {answer.status}")
        conn.close()

    threads = [threading.Thread(target=client, args=(indexes[k::clients],)) for k in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} callbacks refused, e.g. {errors[0]}")
    return elapsed


def _stored(store_url: str) -> tuple[int, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(store_url)
    with engine.connect() as conn:
        callbacks = conn.execute(text("SELECT count(*) FROM kaleyra_callbacks")).scalar()
        numbers = conn.execute(text("SELECT count(DISTINCT number) FROM kaleyra_callback_results")).scalar()
    engine.dispose()
    return int(callbacks or 0), int(numbers or 0)


def _clear_store(store_url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(store_url)
    with engine.begin() as conn:
        for table in ("kaleyra_callback_results", "kaleyra_callbacks"):
            try:
                conn.execute(text(f"DELETE FROM {table}"))
            except Exception:
                pass
    engine.dispose()


def _direct_store(store_url: str, indexes: range) -> float:
    """Baseline: the same callbacks written straight into the store from one thread (no HTTP)."""
    from datetime import datetime

    from airflow_provider_kaleyra.callbacks.parsing import RawCallback
    from airflow_provider_kaleyra.callbacks.store import CallbackStore

    store = CallbackStore(store_url)
    store.engine  # noqa: B018 - schema created outside the timing
    start = time.perf_counter()
    for i in indexes:
        store.add_callback(
            RawCallback(
                method="POST",
                body=_callback_body(i),
                content_type="application/json",
                query="",
                headers={},
                received_at=datetime.now(UTC),
            )
        )
    elapsed = time.perf_counter() - start
    store.dispose()
    return elapsed


def bench_callbacks(quick: bool, runs: int) -> list[Row]:
    try:
        import airflow_provider_kaleyra.callbacks.receiver  # noqa: F401
        from airflow_provider_kaleyra.callbacks.store import CallbackStore  # noqa: F401
    except ImportError as exc:
        return [row("callbacks", "receiver", "skipped", "-", "-", f"callbacks module not importable: {exc}")]
    count = 1_000 if quick else 5_000
    clients = 8
    rows = []
    with tempfile.TemporaryDirectory(prefix="kaleyra-cb-") as tmp:
        stores = [("SQLite", f"sqlite:///{tmp}/callbacks.db")]
        pg = os.environ.get("KALEYRA_TEST_POSTGRES_URL")
        if pg:
            stores.append(("PostgreSQL", pg))
        for name, url in stores:
            secret = "bench-callback-secret-0123456789"
            port = free_port()
            env = {**os.environ, "KALEYRA_BENCH_SECRET": secret}
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "airflow_provider_kaleyra.callbacks",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--store-url",
                    url,
                    "--secret-env",
                    "KALEYRA_BENCH_SECRET",
                    "--log-level",
                    "warning",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _wait_for_health(port, proc)
                http_t, direct_t, lost = [], [], 0
                for run in range(runs):
                    _clear_store(url)
                    indexes = range(run * count, (run + 1) * count)
                    http_t.append(_post_callbacks(port, secret, indexes, clients))
                    stored, numbers = _stored(url)
                    lost = max(lost, count - stored, count - numbers)
                    _clear_store(url)
                    direct_t.append(_direct_store(url, indexes))
                    log(
                        f"callbacks {name} run {run + 1}: {count / http_t[-1]:,.0f}/s over HTTP, "
                        f"{count / direct_t[-1]:,.0f}/s direct, {count - stored} lost"
                    )
            finally:
                proc.terminate()
                proc.wait(timeout=15)
            http_s, direct_s = median(http_t), median(direct_t)
            rows.append(
                row(
                    "callbacks",
                    f"{name}: {count:,} callbacks, {clients} keep-alive clients",
                    f"{count / http_s:,.0f} callbacks/s",
                    f"direct store writes {count / direct_s:,.0f}/s",
                    f"{direct_s / http_s:.2f}",
                    f"lost: {lost} (worst run)",
                )
            )
        if not pg:
            rows.append(
                row(
                    "callbacks",
                    "PostgreSQL",
                    "skipped: no PostgreSQL",
                    "-",
                    "-",
                    "set KALEYRA_TEST_POSTGRES_URL to include it",
                )
            )
    return rows


def _wait_for_health(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the callback receiver exited at start")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/kaleyra/health")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the callback receiver did not start")
