"""``callbacks``: callbacks/s the standalone receiver stores with group commit, against a bare
endpoint on the same uvicorn and FastAPI answering without storing (same clients, same run), with
each auth mode Kaleyra's console offers at volume: a header secret, and Advanced auth (a token
fetched once per client from the token route, then ``Authorization: Bearer`` on every callback)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from common import Row, log, median, row

from kaleyra_simulator.harness import free_port, start_receiver, stop, wait_for_health


def _callback_body(i: int) -> bytes:
    return json.dumps(
        {
            "number": f"9198{i:08d}",
            "soip_capable": i % 3 != 0,
            "request_id": f"bench-{i // 100}",
            "timestamp": "2026-01-01T00:00:00.000Z",
        }
    ).encode()


# Auth of one client: on its own keep-alive connection, the headers it sends with every callback.
Login = Callable[[http.client.HTTPConnection], dict[str, str]]
SECRET = "bench-callback-secret-0123456789"
CLIENT = ("bench-client", "bench-client-secret-0123456789")


def header_auth(conn: http.client.HTTPConnection) -> dict[str, str]:
    return {"X-Kaleyra-Secret": SECRET}


def advanced_auth(conn: http.client.HTTPConnection) -> dict[str, str]:
    """Kaleyra's Advanced auth: one token from the token route, then Bearer on every callback."""
    body = json.dumps({"client_id": CLIENT[0], "client_secret": CLIENT[1]})
    conn.request("POST", "/kaleyra/soip/token", body=body, headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    token = json.loads(answer.read())
    if answer.status != 200 or token.get("token_type") != "Bearer":
        raise RuntimeError(f"token route answered HTTP {answer.status}")
    return {"Authorization": f"Bearer {token['access_token']}"}


AUTH_MODES: tuple[tuple[str, Login], ...] = (("header auth", header_auth), ("Advanced auth", advanced_auth))


def _post_callbacks(port: int, login: Login, indexes: range, clients: int) -> float:
    """Deliver callbacks from ``clients`` threads, each on one keep-alive connection (its ``login``
    first, timed too); retries on 5xx."""
    errors: list[str] = []

    def client(part: range) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            headers = {"Content-Type": "application/json", **login(conn)}
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            errors.append(f"login: {exc}")
            return
        for i in part:
            for _attempt in range(5):
                conn.request("POST", "/kaleyra/soip/callback", body=_callback_body(i), headers=headers)
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


def serve_bare(tmp: str, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = ["-c", _BARE_SERVER, tmp, str(port), str(workers)]
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_health(port, proc, workers)
    return proc, port


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


def _timed(pid: int, port: int, login: Login, indexes: range, clients: int) -> tuple[float, float]:
    """(seconds, server CPU seconds per callback) of one delivery of ``indexes``."""
    before = _process_cpu(pid)
    seconds = _post_callbacks(port, login, indexes, clients)
    return seconds, (_process_cpu(pid) - before) / len(indexes)


def bench_callbacks(quick: bool, runs: int) -> list[Row]:
    """Receiver (group commit) against a bare endpoint on the same stack, same clients, same run;
    each run times the bare endpoint once, then the receiver once per auth mode (store cleared)."""
    count = 2_000 if quick else 10_000
    rows = []
    with tempfile.TemporaryDirectory(prefix="kaleyra-cb-") as tmp:
        Path(tmp, "bare_endpoint.py").write_text(_BARE_APP)
        stores = [("SQLite", f"sqlite:///{tmp}/callbacks.db")]
        pg = os.environ.get("KALEYRA_BENCH_POSTGRES_URL") or os.environ.get("KALEYRA_TEST_POSTGRES_URL")
        if pg:
            stores.append(("PostgreSQL", pg))
        for (name, url), (clients, workers) in [(store, case) for store in stores for case in CALLBACK_CASES]:
            bare, bare_port = serve_bare(tmp, workers)
            # One receiver with both the shared secret and client credentials, as a profile may use them.
            proc, port = start_receiver(url, SECRET, workers=workers, client=CLIENT)
            bare_t, bare_cpu = [], []
            modes = {mode: {"t": [], "cpu": [], "lost": 0} for mode, _login in AUTH_MODES}
            try:
                for run in range(runs):
                    indexes = range(run * count, (run + 1) * count)
                    seconds, cpu = _timed(bare.pid, bare_port, header_auth, indexes, clients)
                    bare_t.append(seconds)
                    bare_cpu.append(cpu)
                    for mode, login in AUTH_MODES:
                        clear_store(url)
                        seconds, cpu = _timed(proc.pid, port, login, indexes, clients)
                        modes[mode]["t"].append(seconds)
                        modes[mode]["cpu"].append(cpu)
                        stored, numbers = _stored(url)
                        modes[mode]["lost"] = max(modes[mode]["lost"], count - stored, count - numbers)
                        log(
                            f"callbacks {name} {clients} clients {workers} process(es) {mode} run "
                            f"{run + 1}: {count / seconds:,.0f}/s stored, bare endpoint "
                            f"{count / bare_t[-1]:,.0f}/s, {count - stored} lost"
                        )
            finally:
                stop(proc)
                stop(bare)
            bare_s = median(bare_t)
            for mode, got in modes.items():
                http_s = median(got["t"])
                rows.append(
                    row(
                        "callbacks",
                        f"{name} ({_fsync(url)}), {mode}: {count:,} callbacks, {clients} keep-alive "
                        f"clients, {workers} server process{'es' if workers > 1 else ''} each",
                        f"{count / http_s:,.0f} callbacks/s",
                        f"bare endpoint {count / bare_s:,.0f}/s",
                        f"{bare_s / http_s:.2f}",
                        f"lost: {got['lost']} (worst run); server CPU per callback "
                        f"{median(got['cpu']) * 1e6:.0f} us, bare {median(bare_cpu) * 1e6:.0f} us",
                    )
                )
    if not pg:
        rows.append(
            row("callbacks", "PostgreSQL", "skipped", "-", "-", "set KALEYRA_BENCH_POSTGRES_URL (fsync=on)")
        )
    return rows
