"""What the benchmark sections share: the result rows, the simulator as a child process, the
benchmark connection, the hook lookup timed as a task would run it, and the report."""

from __future__ import annotations

import gc
import http.client
import json
import math
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import phonenumbers
import requests

from kaleyra_simulator import rcs_answer, simulator_connection
from kaleyra_simulator.answers import clear_caches

LATENCY = 0.15
CONN_ID = "kaleyra_bench"


class Row(dict):
    """One line of the result table."""


def row(bench: str, case: str, result: str, baseline: str, ratio: str, note: str = "") -> Row:
    return Row(bench=bench, case=case, result=result, baseline=baseline, ratio=ratio, note=note)


def median(values: list[float]) -> float:
    return statistics.median(values)


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Simulator:
    """The Kaleyra simulator as a child process (its CLI), driven through its /_sim endpoints."""

    def __init__(self, **config: Any) -> None:
        args = [sys.executable, "-m", "kaleyra_simulator", "--log-level", "WARNING"]
        for key, value in config.items():
            if value is not None:
                args += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("the simulator did not start")

    def configure(self, **changes: Any) -> None:
        requests.post(f"{self.url}/_sim/config", json=changes, timeout=10).raise_for_status()

    def reset(self) -> None:
        requests.post(f"{self.url}/_sim/reset", timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/_sim/stats", timeout=10).json()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def simulator(**config: Any) -> Iterator[Simulator]:
    sim = Simulator(**config)
    try:
        yield sim
    finally:
        sim.close()


def set_connection(url: str, **extra: Any) -> None:
    """The ``kaleyra_bench`` connection, as an Airflow JSON connection in the environment."""
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(simulator_connection(url, **extra))


def concurrency_for(rate: float) -> int:
    """Requests in flight to keep the pace: rate x latency, doubled for service time and jitter."""
    return max(2, math.ceil(2 * rate * LATENCY))


def expected_status(e164: str) -> str:
    return "rcs_enabled" if rcs_answer(e164)["rcsEnabled"] else "rcs_disabled"


def warm_simulator(sim: Simulator, numbers: list[str]) -> None:
    """One unthrottled pass so the simulator's answer cache is warm: its CPU is not the client's
    (the real API runs elsewhere), and on this 2-core machine it would otherwise compete."""
    from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook

    sim.configure(latency=0.0, rate_limit=None)
    set_connection(sim.url, rate_limit=0, max_concurrency=4)
    for _ in KaleyraHook(CONN_ID).lookup_rcs_many(numbers):
        pass


def hook_lookup(numbers: list[str]) -> tuple[float, int, int]:
    """``lookup_rcs_many`` over ``numbers``: (seconds, requests sent, numbers lost)."""
    from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook

    hook = KaleyraHook(CONN_ID)
    hook.transport  # noqa: B018 - connection read and pacer started outside the timing, as in a task
    gc.collect()  # a task starts with no garbage from the previous run
    start = time.perf_counter()
    # As a task would: keep what it needs of each record (here, plain tuples), not the records.
    results = [(r.e164, r.status) for r in hook.lookup_rcs_many(numbers)]
    elapsed = time.perf_counter() - start
    # checked after the clock stops: the expected answers cost this process CPU, not the hook
    lost = sum(1 for e164, status in results if e164 is None or status != expected_status(e164))
    # (the simulator's answer cache filled by expected_status belongs to no client process)
    clear_caches()
    return elapsed, hook.transport.requests_sent, lost + len(numbers) - len(results)


def cpu_seconds() -> float:
    """CPU time of this process, every thread (the simulator is a child process: not counted)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    """This process's peak RSS. ``VmHWM``, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over from
    the parent's memory across fork/exec, so a child of a big parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def wait_for_health(port: int, proc: subprocess.Popen[bytes]) -> None:
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


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        airflow_version = version("apache-airflow")
    except Exception:
        airflow_version = "?"
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, Airflow {airflow_version}, "
        f"phonenumbers {phonenumbers.__version__}, load average at start {os.getloadavg()[0]:.1f}"
    )


def print_table(rows: list[Row]) -> None:
    headers = {
        "bench": "benchmark",
        "case": "case",
        "result": "result",
        "baseline": "baseline",
        "ratio": "ratio",
        "note": "notes",
    }
    widths = {k: max(len(headers[k]), *(len(str(r[k])) for r in rows)) for k in headers}
    line = " | ".join(headers[k].ljust(widths[k]) for k in headers)
    print(line)
    print("-+-".join("-" * widths[k] for k in headers))
    for r in rows:
        print(" | ".join(str(r[k]).ljust(widths[k]) for k in headers))
