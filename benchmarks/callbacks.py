"""``callbacks``: callbacks/s the standalone receiver stores with group commit, against a bare
endpoint on the same uvicorn and FastAPI answering without storing (same clients, same run)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path

from common import Row, free_port, log, median, row, wait_for_health


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
                if answer.status in (200, 202):
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


def clear_store(store_url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(store_url)
    with engine.begin() as conn:
        for table in ("kaleyra_callback_results", "kaleyra_callbacks"):
            try:
                conn.execute(text(f"DELETE FROM {table}"))
            except Exception:
                pass
    engine.dispose()


# The bare endpoint: the same uvicorn, FastAPI and route, reading the body, answering without storing.
_BARE_APP = """
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
@app.get("/kaleyra/health")
async def health():
    return {"status": "ok"}
@app.post("/kaleyra/soip/callback")
async def callback(request: Request):
    await request.body()
    return JSONResponse({"status": "accepted"}, status_code=200)
"""
# Served as the receiver's CLI serves itself: uvicorn.run, by import string when there are workers.
_BARE_SERVER = """
import sys, uvicorn
sys.path.insert(0, sys.argv[1])
workers = int(sys.argv[3])
app = "bare_endpoint:app" if workers > 1 else __import__("bare_endpoint").app
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), workers=workers, log_level="warning", proxy_headers=True)
"""


def serve(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, *(str(port) if arg == "PORT" else arg for arg in args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_health(port, proc)
    return proc, port


def receiver_args(url: str) -> list[str]:
    return [
        "-m",
        "airflow_provider_kaleyra.callbacks",
        "--host",
        "127.0.0.1",
        "--store-url",
        url,
        "--secret-env",
        "KALEYRA_BENCH_SECRET",
        "--log-level",
        "warning",
        "--port",
        "PORT",
    ]


def _fsync(url: str) -> str:
    if not url.startswith("postgresql"):
        return "WAL, synchronous=NORMAL"
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        fsync = conn.execute(text("SHOW fsync")).scalar()
        commit = conn.execute(text("SHOW synchronous_commit")).scalar()
    engine.dispose()
    return f"fsync={fsync}, synchronous_commit={commit}"


def _process_cpu(pid: int) -> float:
    """CPU seconds a server has used, its worker processes included: what it spends per callback."""
    import psutil

    parent = psutil.Process(pid)
    total = 0.0
    for proc in [parent, *parent.children(recursive=True)]:
        with suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


# (clients, server processes): 8 clients measure the commit latency (at most 8 callbacks share a
# commit); 64 the receiver's own cost; 2 processes (receiver --workers 2, the bare endpoint too) use
# the second core, as the API server does with [api] workers.
CALLBACK_CASES = ((8, 1), (64, 1), (64, 2))


def bench_callbacks(quick: bool, runs: int) -> list[Row]:
    """Receiver (group commit) against a bare endpoint on the same stack, same clients, same run."""
    count = 2_000 if quick else 10_000
    secret = "bench-callback-secret-0123456789"
    env = {**os.environ, "KALEYRA_BENCH_SECRET": secret}
    rows = []
    with tempfile.TemporaryDirectory(prefix="kaleyra-cb-") as tmp:
        Path(tmp, "bare_endpoint.py").write_text(_BARE_APP)
        stores = [("SQLite", f"sqlite:///{tmp}/callbacks.db")]
        pg = os.environ.get("KALEYRA_BENCH_POSTGRES_URL") or os.environ.get("KALEYRA_TEST_POSTGRES_URL")
        if pg:
            stores.append(("PostgreSQL", pg))
        for (name, url), (clients, workers) in [(store, case) for store in stores for case in CALLBACK_CASES]:
            bare, bare_port = serve(["-c", _BARE_SERVER, tmp, "PORT", str(workers)])
            proc, port = serve([*receiver_args(url), "--workers", str(workers)], env)
            try:
                http_t, bare_t, lost, http_cpu, bare_cpu = [], [], 0, [], []
                for run in range(runs):
                    clear_store(url)
                    indexes = range(run * count, (run + 1) * count)
                    before = _process_cpu(bare.pid)
                    bare_t.append(_post_callbacks(bare_port, secret, indexes, clients))
                    bare_cpu.append((_process_cpu(bare.pid) - before) / count)
                    before = _process_cpu(proc.pid)
                    http_t.append(_post_callbacks(port, secret, indexes, clients))
                    http_cpu.append((_process_cpu(proc.pid) - before) / count)
                    stored, numbers = _stored(url)
                    lost = max(lost, count - stored, count - numbers)
                    log(
                        f"callbacks {name} {clients} clients {workers} process(es) run {run + 1}: "
                        f"{count / http_t[-1]:,.0f}/s stored, bare endpoint {count / bare_t[-1]:,.0f}/s, "
                        f"{count - stored} lost"
                    )
            finally:
                for server in (proc, bare):
                    server.terminate()
                    server.wait(timeout=15)
            http_s, bare_s = median(http_t), median(bare_t)
            rows.append(
                row(
                    "callbacks",
                    f"{name} ({_fsync(url)}): {count:,} callbacks, {clients} keep-alive clients, "
                    f"{workers} server process{'es' if workers > 1 else ''} each",
                    f"{count / http_s:,.0f} callbacks/s",
                    f"bare endpoint {count / bare_s:,.0f}/s",
                    f"{bare_s / http_s:.2f}",
                    f"lost: {lost} (worst run); server CPU per callback {median(http_cpu) * 1e6:.0f} us, "
                    f"bare {median(bare_cpu) * 1e6:.0f} us",
                )
            )
    if not pg:
        rows.append(
            row("callbacks", "PostgreSQL", "skipped", "-", "-", "set KALEYRA_BENCH_POSTGRES_URL (fsync=on)")
        )
    return rows
