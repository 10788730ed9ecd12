"""Helpers of the reliability suite (a plain module, importable from the tests)."""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import time
from typing import Any

import psutil

from airflow_provider_kaleyra.callbacks.receiver import URL_PREFIX
from kaleyra_simulator import simulator_connection

# Recognisable secrets: if any of these shows up in a log, an XCom, a repr or an error, it leaked.
SECRET_API_KEY = "SECRET-APIKEY-zq81x"
SECRET_CALLBACK = "SECRET-CB-77qk"
SECRETS = (SECRET_API_KEY, SECRET_CALLBACK)


def connection_json(sim_url: str, **extra: Any) -> str:
    """A connection to ``sim_url`` with the recognisable secrets and the suite's fast-failing defaults."""
    settings: dict[str, Any] = {
        "default_region": "US",
        "rate_limit": 0,
        "max_concurrency": 8,
        "max_retries": 4,
        "retry_backoff": 0.01,
        "timeout": 5,
        "callback_profile_id": "profile-reliability",
        "callback_secret": SECRET_CALLBACK,
    }
    settings.update(extra)
    return json.dumps(simulator_connection(sim_url, api_key=SECRET_API_KEY, **settings))


class RecordCollector(logging.Handler):
    """Keeps every record of every logger (the root is set to DEBUG while installed)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> list[str]:
        out = []
        for record in self.records:
            try:
                text = record.getMessage()
            except Exception:  # a bad format string is still text we must scan
                text = f"{record.msg!r} {record.args!r}"
            if record.exc_info and record.exc_info[1] is not None:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            out.append(text)
        return out


def start_receiver(
    store_url: str, *, workers: int = 1, capture: bool = False
) -> tuple[subprocess.Popen, int]:
    """The standalone receiver (``python -m airflow_provider_kaleyra.callbacks``, real uvicorn) on a free
    port, expecting ``SECRET_CALLBACK``; returns once it answers its health check and its workers run.

    ``capture``: its output goes to ``proc.stdout`` (for a test that scans it), else nowhere.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = ["-m", "airflow_provider_kaleyra.callbacks", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--store-url", store_url, "--secret-env", "KALEYRA_RELIABILITY_SECRET"]
    command += ["--log-level", "warning", "--workers", str(workers)]
    proc = subprocess.Popen(
        [sys.executable, *command],
        env={**os.environ, "KALEYRA_RELIABILITY_SECRET": SECRET_CALLBACK},
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if capture else subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, "the receiver exited at start"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", f"{URL_PREFIX}/health")
            healthy = conn.getresponse().status == 200
            conn.close()
        except OSError:
            healthy = False
        if healthy and (workers <= 1 or len(psutil.Process(proc.pid).children()) >= workers):
            return proc, port
        assert time.monotonic() < deadline, "the receiver did not start"
        time.sleep(0.1)
