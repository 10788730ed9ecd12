"""Benchmarks of airflow-provider-kaleyra: ``python benchmarks/run.py [--quick] [--only NAME]``.

Every figure is a ratio against a baseline measured in the same run (or, for goodput, against
the ideal the rate limit allows), the median of several runs. Names (``--only``, repeatable):

``goodput``    ``KaleyraHook.lookup_rcs_many`` against the simulator rate-limited at R req/s
               with 150 ms latency: numbers/s as a fraction of the ideal R x 500, 429s, lost.
``baselines``  the same lookup against what a user would write otherwise: a loop of single
               lookups with plain ``requests``, and bulk calls one after another.
``normalize``  ``phone.normalize`` against a plain ``phonenumbers`` parse/validate/format loop
               on the same mixed inputs (identical answers checked on every input).
``scale``      ``KaleyraRcsBulkLookupOperator`` over a 1,000,000-line audience file (no
               latency): wall time, peak RSS, rows out = rows in; against reading the file
               into memory and calling ``lookup_rcs_many``.
``callbacks``  callbacks/s the standalone receiver stores with group commit (SQLite;
               PostgreSQL from ``KALEYRA_BENCH_POSTGRES_URL`` or ``KALEYRA_TEST_POSTGRES_URL``, its
               fsync setting shown), none lost; against a bare endpoint on the same uvicorn and
               FastAPI answering without storing, same clients (8 and 64), same number of server
               processes (1, and 2 with 64 clients), same run.
``soip``       a 100,000-number SOIP check end to end: the check operator over an audience file,
               the simulator's callbacks to the standalone receiver, the sensor deferred (its
               trigger run as the triggerer would), the per-number output; wall time, callbacks/s,
               XCom bytes.

The simulator and the callback receiver run as their own processes (as the real API and a
real receiver would), so they do not share this process's GIL.
"""

from __future__ import annotations

import argparse
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
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


import phonenumbers  # noqa: E402
import requests  # noqa: E402
from inputs import audience_lines, mixed_inputs, valid_e164_numbers  # noqa: E402

from airflow_provider_kaleyra.numbers import fastphone as _fastphone  # noqa: E402
from airflow_provider_kaleyra.numbers.normalize import (  # noqa: E402
    Normalized,
    normalize,
    normalize_with_phonenumbers,
    preclean,
)
from kaleyra_simulator import (  # noqa: E402
    DEFAULT_API_KEY,
    DEFAULT_SID,
    rcs_answer,
    simulator_connection,
)
from kaleyra_simulator.answers import clear_caches  # noqa: E402

LATENCY = 0.15
CONN_ID = "kaleyra_bench"
NAMES = ("goodput", "pipeline", "baselines", "normalize", "scale", "callbacks", "soip")


# -- plumbing --------------------------------------------------------------------------------


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


# -- 1. goodput under a rate limit ----------------------------------------------------------


def bench_goodput(quick: bool, runs: int) -> list[Row]:
    cases = (
        [(10, 10_000), (50, 50_000)]
        if quick
        else [(5, 200_000), (20, 200_000), (50, 200_000), (100, 200_000)]
    )
    rows = []
    audience = valid_e164_numbers(max(n for _, n in cases))
    with simulator(latency=LATENCY) as sim:
        warm_simulator(sim, audience)
        for rate, count in cases:
            numbers = audience[:count]
            sim.configure(latency=LATENCY, rate_limit=rate)
            set_connection(sim.url, rate_limit=rate, max_concurrency=concurrency_for(rate))
            ideal = rate * 500
            measured = []
            for run in range(runs):
                sim.reset()
                elapsed, sent, lost = hook_lookup(numbers)
                stats = sim.stats()
                measured.append((count / elapsed, stats["rate_limited"], lost, sent))
                log(
                    f"goodput R={rate} run {run + 1}: {count / elapsed:,.0f} numbers/s, "
                    f"{stats['rate_limited']} x 429, {lost} lost, {sent} requests"
                )
            rate_med = median([m[0] for m in measured])
            throttled = median([m[1] for m in measured])
            lost_max = max(m[2] for m in measured)
            rows.append(
                row(
                    "goodput",
                    f"R={rate}/s, {count:,} numbers, {concurrency_for(rate)} in flight",
                    f"{rate_med:,.0f} numbers/s",
                    f"ideal {ideal:,.0f}/s",
                    f"{rate_med / ideal:.2f}",
                    f"429s: {throttled:.0f} (median), lost: {lost_max} (worst run), "
                    f"requests: {measured[0][3]}",
                )
            )
    return rows


def operator_lookup(audience: str, output: str) -> tuple[float, dict[str, Any]]:
    """The bulk operator over an audience file, in this process: (seconds, summary)."""
    from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator

    op = KaleyraRcsBulkLookupOperator(
        task_id="bench", audience=audience, output=output, kaleyra_conn_id=CONN_ID, max_failed_ratio=0.0
    )
    op.hook.transport  # noqa: B018 - connection read outside the timing, as in goodput above
    gc.collect()
    cpu = cpu_seconds()
    start = time.perf_counter()
    summary = op.execute(context={})
    summary["cpu"] = cpu_seconds() - cpu
    return time.perf_counter() - start, summary


def cpu_seconds() -> float:
    """CPU time of this process, every thread (the simulator is a child process: not counted)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_pipeline(quick: bool, runs: int) -> list[Row]:
    """The bulk operator's whole pipeline (read, normalize, look up, write a file) against the ideal,
    with the connection's DEFAULT concurrency settings (only ``rate_limit`` set), and with the
    old fixed default of 8 in flight for comparison."""
    cases = [(100, 50_000)] if quick else [(20, 200_000), (100, 200_000)]
    rows = []
    audience = valid_e164_numbers(max(n for _, n in cases))
    with simulator(latency=LATENCY) as sim, tempfile.TemporaryDirectory(prefix="kaleyra-goodput-") as tmp:
        warm_simulator(sim, audience)
        for rate, count in cases:
            path = os.path.join(tmp, f"audience-{count}.txt")
            Path(path).write_text("\n".join(audience[:count]) + "\n", encoding="utf-8")
            sim.configure(latency=LATENCY, rate_limit=rate)
            ideal = rate * 500
            for label, extra in (("default concurrency", {}), ("max_concurrency=8", {"max_concurrency": 8})):
                set_connection(sim.url, rate_limit=rate, **extra)
                measured = []
                for run in range(runs):
                    sim.reset()
                    elapsed, summary = operator_lookup(path, os.path.join(tmp, "out.csv"))
                    ok = summary["rows"] == count and summary["failed_numbers"] == 0
                    measured.append(
                        (
                            count / elapsed,
                            sim.stats()["rate_limited"],
                            ok,
                            summary["requests"],
                            summary["cpu"],
                        )
                    )
                    log(f"operator goodput R={rate} {label} run {run + 1}: {count / elapsed:,.0f} numbers/s")
                rate_med = median([m[0] for m in measured])
                rows.append(
                    row(
                        "goodput",
                        f"bulk operator, R={rate}/s, {count:,} rows, {label}",
                        f"{rate_med:,.0f} numbers/s",
                        f"ideal {ideal:,.0f}/s",
                        f"{rate_med / ideal:.2f}",
                        f"429s: {median([m[1] for m in measured]):.0f}, every row answered: "
                        f"{'yes' if all(m[2] for m in measured) else 'NO'}, requests: {measured[0][3]}; "
                        f"client CPU {median([m[4] for m in measured]):.1f} s: one free core would carry "
                        f"{count / median([m[4] for m in measured]) / ideal:.1f}x the ideal",
                    )
                )
    return rows


# -- 2. against what a user would write otherwise ---------------------------------------------


def single_lookup_loop(url: str, numbers: list[str]) -> tuple[float, int, int]:
    """A loop of single lookups with plain requests (one keep-alive session; obeys 429 Retry-After)."""
    session = requests.Session()
    headers = {"api-key": DEFAULT_API_KEY}
    sent = 0
    answers: dict[str, Any] = {}
    start = time.perf_counter()
    for number in numbers:
        while True:
            sent += 1
            answer = session.get(
                f"{url}/v1/{DEFAULT_SID}/rcs/lookup/{quote(number, safe='')}", headers=headers, timeout=30
            )
            if answer.status_code == 429:
                time.sleep(float(answer.headers.get("Retry-After", "1")))
                continue
            answers[number] = answer.json()["data"]["rcsEnabled"] if answer.ok else None
            break
    return time.perf_counter() - start, sent, _lost(numbers, answers)


def _lost(numbers: list[str], answers: dict[str, Any]) -> int:
    """Numbers without the simulator's answer (checked after the clock stops)."""
    return sum(
        1
        for n in numbers
        if answers.get(n) is None or ("rcs_enabled" if answers[n] else "rcs_disabled") != expected_status(n)
    )


def sequential_bulk(url: str, numbers: list[str]) -> tuple[float, int, int]:
    """Bulk calls of 500, one after another, with plain requests (obeys 429 Retry-After)."""
    session = requests.Session()
    headers = {"api-key": DEFAULT_API_KEY}
    sent = 0
    answers: dict[str, Any] = {}
    start = time.perf_counter()
    for first in range(0, len(numbers), 500):
        chunk = numbers[first : first + 500]
        while True:
            sent += 1
            answer = session.post(
                f"{url}/v1/{DEFAULT_SID}/rcs/lookup",
                json={"deviceAddresses": chunk},
                headers=headers,
                timeout=30,
            )
            if answer.status_code == 429:
                time.sleep(float(answer.headers.get("Retry-After", "1")))
                continue
            if answer.ok:
                answers.update((d["deviceAddress"], d["rcsEnabled"]) for d in answer.json()["devices"])
            break
    return time.perf_counter() - start, sent, _lost(numbers, answers)


def bench_baselines(quick: bool, runs: int) -> list[Row]:
    rate = 20
    count, single_count = (10_000, 50) if quick else (50_000, 200)
    numbers = valid_e164_numbers(count, seed=23)
    rows = []
    with simulator(latency=LATENCY) as sim:
        warm_simulator(sim, numbers)
        sim.configure(latency=LATENCY, rate_limit=rate)
        set_connection(sim.url, rate_limit=rate, max_concurrency=concurrency_for(rate))
        hook_t, bulk_t, single_t = [], [], []
        hook_req = bulk_req = single_req = 0
        lost = 0
        for run in range(runs):
            sim.reset()
            elapsed, hook_req, lost_hook = hook_lookup(numbers)
            hook_t.append(elapsed)
            sim.reset()
            elapsed, bulk_req, lost_bulk = sequential_bulk(sim.url, numbers)
            bulk_t.append(elapsed)
            sim.reset()
            elapsed, single_req, lost_single = single_lookup_loop(sim.url, numbers[:single_count])
            single_t.append(elapsed)
            lost += lost_hook + lost_bulk + lost_single
            log(
                f"baselines run {run + 1}: hook {hook_t[-1]:.1f}s, sequential bulk {bulk_t[-1]:.1f}s, "
                f"single loop {single_t[-1]:.1f}s for {single_count}"
            )
    hook_s, bulk_s = median(hook_t), median(bulk_t)
    single_s = median(single_t) * count / single_count  # the loop is sequential: time is linear in numbers
    case = f"R={rate}/s, 150 ms, {count:,} numbers"
    rows.append(
        row(
            "baselines",
            f"{case}: lookup_rcs_many",
            f"{hook_s:.1f} s, {hook_req} requests",
            "-",
            "1.00",
            f"{count / hook_s:,.0f} numbers/s; numbers lost in all runs: {lost}",
        )
    )
    rows.append(
        row(
            "baselines",
            f"{case}: sequential bulk calls",
            f"{bulk_s:.1f} s, {bulk_req} requests",
            "lookup_rcs_many",
            f"time x{bulk_s / hook_s:.1f}, requests x{bulk_req / hook_req:.1f}",
            "plain requests, one call at a time",
        )
    )
    rows.append(
        row(
            "baselines",
            f"{case}: single-lookup loop",
            f"{single_s:,.0f} s, {count:,} requests (extrapolated)",
            "lookup_rcs_many",
            f"time x{single_s / hook_s:,.0f}, requests x{count / hook_req:,.0f}",
            f"measured on {single_count} numbers ({median(single_t):.1f} s), scaled linearly",
        )
    )
    return rows


# -- 3. normalization throughput ---------------------------------------------------------------


def plain_loop(cleaned: list[Any]) -> list[Normalized]:
    """The baseline: plain phonenumbers on the pre-cleaned inputs (cleaning not charged to it)."""
    return [c if isinstance(c, Normalized) else normalize_with_phonenumbers(*c) for c in cleaned]


def fast_loop(inputs: list[tuple[str, str]]) -> list[Normalized]:
    return [normalize(raw, region) for raw, region in inputs]


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def bench_normalize(quick: bool, runs: int) -> list[Row]:
    count = 100_000 if quick else 1_000_000
    inputs = mixed_inputs(count)
    cleaned = [preclean(raw, region) for raw, region in inputs]
    warm = mixed_inputs(20_000, seed=99)  # compile patterns / load metadata for both sides first
    plain_loop([preclean(r, g) for r, g in warm])
    fast_loop(warm)
    plain_t, fast_t = [], []
    for run in range(runs):
        elapsed, expected = timed(lambda: plain_loop(cleaned))
        plain_t.append(elapsed)
        elapsed, got = timed(lambda: fast_loop(inputs))
        fast_t.append(elapsed)
        if got != expected:
            bad = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
            raise AssertionError(
                f"normalize differs from plain phonenumbers on {inputs[bad]!r}: {got[bad]} != {expected[bad]}"
            )
        log(f"normalize run {run + 1}: plain {count / plain_t[-1]:,.0f}/s, fast {count / fast_t[-1]:,.0f}/s")
        del expected, got
    valid = sum(1 for n in fast_loop(inputs) if n.e164)
    on_fast_path = sum(
        1 for c in cleaned if not isinstance(c, Normalized) and _fastphone.parse(*c) is not None
    )
    distinct = len({raw for raw, _ in inputs})
    plain_s, fast_s = median(plain_t), median(fast_t)
    note = (
        f"identical on all {count:,} inputs; {distinct / count:.1%} distinct, {valid / count:.1%} valid, "
        f"{on_fast_path / count:.1%} on the fast path"
    )
    rows = [
        row(
            "normalize",
            f"{count:,} mixed inputs",
            f"{count / fast_s:,.0f}/s",
            f"plain phonenumbers {count / plain_s:,.0f}/s",
            f"{plain_s / fast_s:.2f}",
            note,
        )
    ]
    # The same against phonenumbers with its own compiled-pattern cache switched on.
    sub = min(count, 250_000)
    phonenumbers.enable_pattern_cache()
    try:
        plain_loop(cleaned[:20_000])
        cached_t, fast_sub_t = [], []
        for _ in range(runs):
            cached_t.append(timed(lambda: plain_loop(cleaned[:sub]))[0])
            fast_sub_t.append(timed(lambda: fast_loop(inputs[:sub]))[0])
    finally:
        phonenumbers.re_util._COMPILED_PATTERNS = None  # back to phonenumbers' default
    rows.append(
        row(
            "normalize",
            f"first {sub:,} of them",
            f"{sub / median(fast_sub_t):,.0f}/s",
            f"phonenumbers + enable_pattern_cache() {sub / median(cached_t):,.0f}/s",
            f"{median(cached_t) / median(fast_sub_t):.2f}",
            "a stronger baseline than the plain loop",
        )
    )
    return rows


# -- 4. scale: the bulk operator over a big audience file -------------------------------------


def scale_child(mode: str, audience: str, output: str) -> None:
    """Runs in a child process: the operator (``operator``, or ``shard-I-of-N`` for one shard task)
    or the in-memory way (``memory``)."""
    from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook

    start = time.perf_counter()
    if mode == "operator" or mode.startswith("shard-"):
        from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator

        shard = {}
        if mode.startswith("shard-"):
            index, count = mode.split("-")[1:3]
            shard = {"shard_index": int(index), "shard_count": int(count)}
        op = KaleyraRcsBulkLookupOperator(
            task_id="bench",
            audience=audience,
            output=output,
            kaleyra_conn_id=CONN_ID,
            max_invalid_ratio=None,
            max_failed_ratio=0.0,
            **shard,
        )
        summary = op.execute(context={})
        rows, requests_sent = summary["rows"], summary["requests"]
    else:
        with open(audience, encoding="utf-8") as stream:
            numbers = stream.read().split("\n")[:-1]
        hook = KaleyraHook(CONN_ID)
        with open(output, "w", encoding="utf-8") as out:
            out.write("input,e164,status\n")
            rows = 0
            for result in hook.lookup_rcs_many(numbers):
                out.write(f"{json.dumps(result.input)},{result.e164 or ''},{result.status}\n")
                rows += 1
        requests_sent = hook.transport.requests_sent
    elapsed = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "rows": rows,
                "requests": requests_sent,
                "peak_mib": peak_rss_mib(),
                "cpu": usage.ru_utime + usage.ru_stime,
            }
        )
    )


def peak_rss_mib() -> float:
    """This process's peak RSS. ``VmHWM``, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over from
    the parent's memory across fork/exec, so a child of a big parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_scale_child(mode: str, audience: str, output: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child-scale", mode, audience, output],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scale child ({mode}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


SCALE_ROWS = 1_000_000  # --scale-rows changes it (the 10,000,000-row plan in README.md)


def bench_scale(quick: bool, runs: int) -> list[Row]:
    count = 100_000 if quick else SCALE_ROWS
    with_memory = count <= 2_000_000  # the in-memory way needs ~400 MiB per million rows
    with tempfile.TemporaryDirectory(prefix="kaleyra-bench-") as tmp:
        audience = os.path.join(tmp, "audience.txt")
        with open(audience, "w", encoding="utf-8") as stream:
            for line in audience_lines(count):
                stream.write(line.replace("\n", " ") + "\n")
        rows = []
        with simulator() as sim:
            # the connection's default concurrency (max_concurrency is only a cap); no rate limit
            set_connection(sim.url, rate_limit=0, default_region="IN")
            results: dict[str, list[dict[str, Any]]] = {"operator": [], "memory": []}
            for run in range(runs):
                for mode in ("operator", "memory") if with_memory else ("operator",):
                    output = os.path.join(tmp, f"out-{mode}-{run}.csv")
                    sim.reset()
                    child = run_scale_child(mode, audience, output)
                    with open(output, encoding="utf-8") as stream:
                        child["lines_out"] = sum(1 for _ in stream) - 1  # header
                    os.remove(output)
                    results[mode].append(child)
                    log(
                        f"scale {mode} run {run + 1}: {child['seconds']:.1f} s, {child['cpu']:.1f} s CPU, "
                        f"{child['peak_mib']:.0f} MiB peak, "
                        f"{child['lines_out']:,} rows out, {child['requests']} requests"
                    )
            shards = shard_tasks(sim, audience, tmp, count)
        op, mem = results["operator"], results["memory"]
        op_s = median([r["seconds"] for r in op])
        op_rss = max(r["peak_mib"] for r in op)
        rows_ok = all(r["lines_out"] == count for r in op + mem)
        rows.append(
            row(
                "scale",
                f"bulk operator, {count:,}-line audience file, no latency",
                f"{op_s:.1f} s, peak RSS {op_rss:.0f} MiB",
                "target < 300 MB RSS",
                f"RSS {op_rss * 1.048576 / 300:.2f} of target",
                f"rows out = rows in: {'yes' if rows_ok else 'NO'} ({op[0]['lines_out']:,}); "
                f"{count / op_s:,.0f} rows/s; {op[0]['requests']} requests; "
                f"task CPU {median([r['cpu'] for r in op]):.1f} s (with its imports)",
            )
        )
        if mem:
            mem_s, mem_rss = median([r["seconds"] for r in mem]), max(r["peak_mib"] for r in mem)
            rows.append(
                row(
                    "scale",
                    "same, vs file read into a list + lookup_rcs_many",
                    f"{op_s:.1f} s, {op_rss:.0f} MiB",
                    f"{mem_s:.1f} s, {mem_rss:.0f} MiB",
                    f"time x{op_s / mem_s:.2f}, RSS x{op_rss / mem_rss:.2f}",
                    "the operator also spools, checkpoints and writes all 7 columns",
                )
            )
        rows += shards
    return rows


def shard_tasks(sim: Simulator, audience: str, tmp: str, count: int, shards: int = 4) -> list[Row]:
    """The preflight's lookup tasks over the distinct E.164 numbers of the audience (what its prepare
    step writes), each task a child process, one after another: wall time, peak RSS, API calls.

    Two ways to hand a task its shard: one file per shard (the task streams it: memory follows
    the shard) or ``shard_index`` over the one file of all numbers (the task reads all of them
    to find its slice: memory follows the audience). Shard 0 is run both ways."""
    from airflow_provider_kaleyra.numbers.normalize import normalize as _normalize
    from airflow_provider_kaleyra.rcs.batching import shard_bounds

    numbers = os.path.join(tmp, "numbers.txt")
    seen: set[str] = set()
    with open(audience, encoding="utf-8") as source, open(numbers, "w", encoding="utf-8") as out:
        for line in source:
            e164 = _normalize(line.rstrip("\n"), "IN").e164
            if e164 and e164 not in seen:
                seen.add(e164)
                out.write(e164 + "\n")
    distinct = len(seen)
    del seen
    files = []
    with open(numbers, encoding="utf-8") as source:
        for index, (start, stop) in enumerate(shard_bounds(distinct, shards)):
            files.append(os.path.join(tmp, f"numbers-{index:03d}.txt"))
            with open(files[-1], "w", encoding="utf-8") as out:
                out.writelines(next(source) for _ in range(stop - start))
    sim.reset()
    tasks = []
    for index, path in enumerate(files):
        tasks.append(run_scale_child("operator", path, os.path.join(tmp, f"shard-{index}.csv")))
        log(f"scale shard file {index}: {tasks[-1]['seconds']:.1f} s, {tasks[-1]['peak_mib']:.0f} MiB peak")
    calls = sum(sim.stats()["requests"].values())
    whole = run_scale_child(f"shard-0-{shards}", numbers, os.path.join(tmp, "shard-index-0.csv"))
    log(f"scale shard_index 0 over all numbers: {whole['seconds']:.1f} s, {whole['peak_mib']:.0f} MiB peak")
    return [
        row(
            "scale",
            f"{shards} shard tasks, one file each, over the {distinct:,} distinct numbers of {count:,} rows",
            f"slowest {max(t['seconds'] for t in tasks):.1f} s, sum {sum(t['seconds'] for t in tasks):.1f} s",
            f"peak RSS per task {max(t['peak_mib'] for t in tasks):.0f} MiB",
            f"{calls} API calls",
            "tasks run one after another here; in a deployment the pool runs them side by side",
        ),
        row(
            "scale",
            f"shard 0 of {shards} with shard_index over the one file of all {distinct:,} numbers",
            f"{whole['seconds']:.1f} s, peak RSS {whole['peak_mib']:.0f} MiB",
            f"own file: {tasks[0]['seconds']:.1f} s, {tasks[0]['peak_mib']:.0f} MiB",
            f"time x{whole['seconds'] / tasks[0]['seconds']:.2f}, RSS x{whole['peak_mib'] / tasks[0]['peak_mib']:.2f}",
            "shard_index reads (and de-duplicates) every number to find its slice",
        ),
    ]


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


def _serve(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, *(str(port) if arg == "PORT" else arg for arg in args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_health(port, proc)
    return proc, port


def _receiver_args(url: str) -> list[str]:
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
            bare, bare_port = _serve(["-c", _BARE_SERVER, tmp, "PORT", str(workers)])
            proc, port = _serve([*_receiver_args(url), "--workers", str(workers)], env)
            try:
                http_t, bare_t, lost, http_cpu, bare_cpu = [], [], 0, [], []
                for run in range(runs):
                    _clear_store(url)
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


def bench_soip(quick: bool, runs: int) -> list[Row]:
    """One SOIP check end to end, timed from the operator's start to the sensor's output."""
    import asyncio

    from airflow.sdk.exceptions import TaskDeferred

    from airflow_provider_kaleyra.operators.soip import KaleyraSoipCapabilityCheckOperator
    from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor

    count = 10_000 if quick else 100_000
    secret = "bench-soip-secret-0123456789"
    env = {**os.environ, "KALEYRA_BENCH_SECRET": secret}
    with tempfile.TemporaryDirectory(prefix="kaleyra-soip-") as tmp:
        url = os.environ.get("KALEYRA_BENCH_POSTGRES_URL") or f"sqlite:///{tmp}/callbacks.db"
        _clear_store(url)
        audience = Path(tmp) / "audience.txt"
        audience.write_text("".join(f"+9198{i:08d}\n" for i in range(count)))
        receiver, port = _serve(_receiver_args(url), env)
        try:
            with simulator(
                callback_url=f"http://127.0.0.1:{port}/kaleyra/soip/callback",
                callback_auth=f"header:X-Kaleyra-Secret:{secret}",
            ) as sim:
                set_connection(sim.url, callback_store_url=url, callback_profile_id="bench", rate_limit=0)
                started = time.perf_counter()
                check = KaleyraSoipCapabilityCheckOperator(
                    task_id="soip_check", audience=str(audience), kaleyra_conn_id=CONN_ID
                )
                summary = check.execute({})
                submitted = time.perf_counter()
                sensor = KaleyraSoipCallbackSensor(
                    task_id="wait",
                    submission=summary,
                    output=f"{tmp}/soip.jsonl",
                    kaleyra_conn_id=CONN_ID,
                    deferrable=True,
                    poll_interval=1,
                    timeout=1800,
                )
                try:
                    result = sensor.execute({})
                except TaskDeferred as deferred:
                    event = asyncio.run(anext(deferred.trigger.run()))  # as the triggerer runs it
                    result = sensor.execute_complete({}, event.payload)
                elapsed = time.perf_counter() - started
        finally:
            receiver.terminate()
            receiver.wait(timeout=15)
    answered = result["summary"]["answered"]
    xcom = len(json.dumps(summary)) + len(json.dumps(result))
    log(f"soip: {count:,} numbers in {elapsed:.1f} s, {answered:,} answered, XCom {xcom} bytes")
    return [
        row(
            "soip",
            f"{count:,}-number SOIP check end to end ({'PostgreSQL' if url.startswith('postgresql') else 'SQLite'})",
            f"{elapsed:.1f} s wall, {answered / (elapsed - (submitted - started)):,.0f} callbacks/s",
            f"submit {submitted - started:.1f} s",
            "-",
            f"XCom {xcom} bytes; answered {answered:,}/{count:,}",
        )
    ]


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


# -- report ------------------------------------------------------------------------------------


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


BENCHES: dict[str, Callable[[bool, int], list[Row]]] = {
    "goodput": bench_goodput,
    "baselines": bench_baselines,
    "pipeline": bench_pipeline,
    "normalize": bench_normalize,
    "scale": bench_scale,
    "callbacks": bench_callbacks,
    "soip": bench_soip,
}


def main(argv: list[str] | None = None) -> int:
    global SCALE_ROWS  # --scale-rows sets it for the sections
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child-scale"]:
        scale_child(*argv[1:4])
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    parser.add_argument(
        "--only", action="append", choices=NAMES, metavar="NAME", help=f"one of {', '.join(NAMES)}"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per figure, median reported (default 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument(
        "--scale-rows",
        type=int,
        default=SCALE_ROWS,
        help="rows of the scale audience (default 1,000,000)",
    )
    parser.add_argument(
        "--no-gc-freeze", action="store_true", help="do not freeze the import-time heap (see below)"
    )
    args = parser.parse_args(argv)
    SCALE_ROWS = args.scale_rows
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    import airflow_provider_kaleyra.hooks.kaleyra
    import airflow_provider_kaleyra.operators.kaleyra  # noqa: F401

    if not args.no_gc_freeze:
        # Airflow's LocalExecutor and DAG processor gc.freeze() their import-time heap before
        # forking workers, so a task's full garbage collections skip Airflow's ~170k import-time
        # objects. Do the same here, or this process pays ~0.2 s per full collection that a
        # task would not (several per second at R=100).
        gc.collect()
        gc.freeze()
    print(f"machine: {machine()}")
    print(f"gc: import-time heap {'not frozen' if args.no_gc_freeze else 'frozen, as in an Airflow worker'}")
    print(f"command: python benchmarks/run.py {' '.join(argv)}".rstrip())
    rows: list[Row] = []
    started = time.perf_counter()
    for name in args.only or NAMES:
        began = time.perf_counter()
        log(f"{name} ...")
        try:
            rows += BENCHES[name](args.quick, args.runs)
        except Exception as exc:
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            rows.append(row(name, "error", f"{type(exc).__name__}: {detail}"[:160], "-", "-"))
            log(f"{name} failed: {exc}")
        gc.collect()
        log(f"{name} done in {time.perf_counter() - began:.0f} s")
    print()
    print_table(rows)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "argv": argv, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
