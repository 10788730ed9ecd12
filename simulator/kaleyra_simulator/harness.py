"""Process plumbing of the tests, benchmarks and demo: a free port, an ASGI app in a thread, the simulator
and the receiver as child processes (as the real ones run: not on the caller's GIL), a peak RSS."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil
import requests


def free_port() -> int:
    """A port nothing listens on now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_app(app: Any, log_level: str = "warning") -> Iterator[int]:
    """``app`` (ASGI) served by uvicorn in a thread of this process on a free port; yields the port."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level=log_level, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not (server.started and server.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it is still there after 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class SimulatorProcess(subprocess.Popen):
    """The simulator as a child process (its CLI, ``config`` as its flags), driven through /_sim; the end of
    a ``with`` block (or :func:`stop`) stops it."""

    def __init__(self, **config: Any) -> None:
        flags = [f"--{key.replace('_', '-')}={value}" for key, value in config.items() if value is not None]
        command = [sys.executable, "-m", "kaleyra_simulator", "--log-level", "WARNING", *flags]
        super().__init__(command, stdout=subprocess.PIPE, text=True)
        self.url = self.stdout.readline().strip()  # type: ignore[union-attr]
        if not self.url.startswith("http"):
            raise RuntimeError("the simulator did not start")

    def configure(self, **changes: Any) -> None:
        requests.post(f"{self.url}/_sim/config", json=changes, timeout=10).raise_for_status()

    def reset(self) -> None:
        requests.post(f"{self.url}/_sim/reset", timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/_sim/stats", timeout=10).json()

    def __exit__(self, *exc: object) -> None:
        stop(self)
        super().__exit__(*exc)  # (closes its stdout pipe)


def wait_for_health(port: int, proc: subprocess.Popen, workers: int = 1, timeout: float = 60) -> None:
    """Returns once the server of ``proc`` answers ``/kaleyra/health``, its ``workers`` up; else stops it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited at start")
        with suppress(requests.RequestException):
            healthy = requests.get(f"http://127.0.0.1:{port}/kaleyra/health", timeout=2).status_code == 200
            if healthy and (workers <= 1 or len(psutil.Process(proc.pid).children()) >= workers):
                return
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError("the server did not start")


def start_receiver(
    store_url: str,
    secret: str,
    *,
    workers: int = 1,
    capture: bool = False,
    client: tuple[str, str] | None = None,
) -> tuple[subprocess.Popen, int]:
    """The standalone receiver (real uvicorn) on a free port, expecting ``secret`` (and advanced auth with
    ``client``, an ID and a secret), once healthy. ``capture``: its output goes to ``proc.stdout``."""
    port = free_port()
    command = ["-m", "airflow_provider_kaleyra.callbacks", "--port", str(port), "--store-url", store_url]
    command += ["--secret-env", "KALEYRA_HARNESS_SECRET", "--log-level", "warning", "--workers", str(workers)]
    env = {**os.environ, "KALEYRA_HARNESS_SECRET": secret}
    if client is not None:
        command += ["--client-id", client[0], "--client-secret-env", "KALEYRA_HARNESS_CLIENT_SECRET"]
        env["KALEYRA_HARNESS_CLIENT_SECRET"] = client[1]
    out, err = (subprocess.PIPE, subprocess.STDOUT) if capture else (subprocess.DEVNULL, subprocess.DEVNULL)
    proc = subprocess.Popen([sys.executable, *command], env=env, stdout=out, stderr=err)
    wait_for_health(port, proc, workers)
    return proc, port


def peak_rss_mib() -> float:
    """This process's peak RSS. ``VmHWM``, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over from
    the parent's memory across fork/exec, so a child of a big parent would report the parent's size."""
    peak = re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(peak.group(1)) / 1024  # type: ignore[union-attr]
