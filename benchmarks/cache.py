"""Capability cache benchmark: ``python benchmarks/cache.py [--size N] [--rate R] [--postgres]``.

A daily preflight, simulated in one run against the simulator rate-limited at R requests/s
(150 ms per call), each lookup in its own child process (wall time, requests, peak RSS), by
the bulk operator over an audience file (``--via hook``: ``lookup_rcs_many`` over a list):

1. ``off``:  day 1's audience with ``cache=False`` (the baseline: what a run costs today);
2. ``day1``: the same audience with an empty cache (what remembering costs);
3. ``day2``: the next day's audience, 98% the same numbers (fresh in the cache), 2% new.

Every record is checked against the simulator's answers after the clock stops; day 2's
cached records must equal day 1's API records. Goals (issue 15): day 2 makes <= 3% of
day 1's API calls in <= 25% of its time; day 1 is no more than a few percent slower than ``off``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    CONN_ID,
    LATENCY,
    cpu_seconds,
    expected_status,
    log,
    machine,
    print_table,
    row,
    set_connection,
)
from inputs import valid_e164_numbers

from kaleyra_simulator.harness import SimulatorProcess, peak_rss_mib

NEW_SHARE = 0.02


def child(mode: str, audience: str, via: str) -> None:
    """One lookup in this (child) process, by the bulk operator or the hook; prints a JSON line."""
    from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook

    cache = mode != "off"
    if via == "operator":
        from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator
        from airflow_provider_kaleyra.rcs.outputs import read_results
        from airflow_provider_kaleyra.utils.storage import as_path

        output = audience + f".{mode}.csv"
        op = KaleyraRcsBulkLookupOperator(
            task_id="bench", audience=audience, output=output, kaleyra_conn_id=CONN_ID, cache=cache
        )
        op.hook.transport  # noqa: B018 - connection read outside the timing, as in a task
        start = time.perf_counter()
        summary = op.execute(context={})
        elapsed = time.perf_counter() - start
        rss = peak_rss_mib()
        records = [(r["e164"], r["status"], r["source"]) for r in read_results(as_path(output))]
        requests, written = summary["requests"], (summary["cache"] or {}).get("written_to_cache", 0)
    else:
        with open(audience, encoding="utf-8") as stream:
            numbers = stream.read().split("\n")[:-1]
        hook = KaleyraHook(CONN_ID)
        hook.transport  # noqa: B018
        start = time.perf_counter()
        records = [(r.e164, r.status, r.source) for r in hook.lookup_rcs_many(numbers, cache=cache)]
        elapsed = time.perf_counter() - start
        rss = peak_rss_mib()
        requests, written = hook.transport.requests_sent, hook.last_cache.written if hook.last_cache else 0
    with open(audience, encoding="utf-8") as stream:
        lines = sum(1 for _ in stream)
    wrong = sum(1 for e164, status, _ in records if e164 is None or status != expected_status(e164))
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "rows": len(records),
                "wrong": wrong + lines - len(records),
                "requests": requests,
                "from_cache": sum(1 for *_, source in records if source == "cache"),
                "written": written,
                "peak_mib": rss,
                # day 1 waits on the rate limit, day 2 is CPU-bound: on a shared machine day 2's
                # wall time stretches with the load, day 1's does not
                "cpu": cpu_seconds(),
            }
        )
    )


def run_child(mode: str, audience: str, via: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", mode, audience, via],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cache child ({mode}) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    log(
        f"{mode}: {result['seconds']:.1f} s ({result['cpu']:.1f} s CPU), {result['requests']} requests, "
        f"{result['from_cache']:,} from the cache, {result['peak_mib']:.0f} MiB peak, {result['wrong']} wrong or lost"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(*argv[1:4])
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1_000_000, help="audience size (default %(default)s)")
    parser.add_argument("--rate", type=float, default=20, help="rate limit, requests/s (default %(default)s)")
    parser.add_argument(
        "--via", choices=("operator", "hook"), default="operator", help="what looks up (default %(default)s)"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="cache in KALEYRA_TEST_POSTGRES_URL instead of a SQLite file"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    print(f"machine: {machine()}")  # (with the load average: CPU-bound day 2 stretches with it)
    print(f"command: python benchmarks/cache.py {' '.join(argv)}".rstrip())
    new = int(args.size * NEW_SHARE)
    numbers = valid_e164_numbers(args.size + new)
    with tempfile.TemporaryDirectory(prefix="kaleyra-bench-cache-") as tmp:
        day1, day2 = os.path.join(tmp, "day1.txt"), os.path.join(tmp, "day2.txt")
        Path(day1).write_text("".join(f"{n}\n" for n in numbers[: args.size]), encoding="utf-8")
        Path(day2).write_text("".join(f"{n}\n" for n in numbers[new:]), encoding="utf-8")
        del numbers
        if args.postgres:
            cache_url = os.environ["KALEYRA_TEST_POSTGRES_URL"]
            from sqlalchemy import create_engine, text

            engine = create_engine(cache_url)
            with engine.begin() as conn:
                conn.execute(text("DROP TABLE IF EXISTS kaleyra_rcs_cache"))
            engine.dispose()
        else:
            cache_url = f"sqlite:///{os.path.join(tmp, 'cache.db')}"
        with SimulatorProcess(latency=LATENCY, rate_limit=args.rate) as sim:
            set_connection(sim.url, rate_limit=args.rate, cache_url=cache_url)  # concurrency: its default
            results = {}
            for mode, audience in (("off", day1), ("day1", day1), ("day2", day2)):
                sim.reset()
                results[mode] = run_child(mode, audience, args.via)
    off, first, second = results["off"], results["day1"], results["day2"]
    backend = "PostgreSQL" if args.postgres else "SQLite"
    ok = all(r["wrong"] == 0 and r["rows"] == args.size for r in results.values())
    size = f"{args.via}, {args.size:,} numbers, R = {args.rate:g}/s, cache on {backend}"
    rows = [
        row(
            "cache",
            f"day 2 (2% new) vs day 1 (empty cache), {size}",
            f"{second['seconds']:.1f} s, {second['requests']} requests, {second['peak_mib']:.0f} MiB",
            f"{first['seconds']:.1f} s, {first['requests']} requests, {first['peak_mib']:.0f} MiB",
            f"time {second['seconds'] / first['seconds']:.3f}, calls {second['requests'] / first['requests']:.3f}",
            f"goals <= 0.25 and <= 0.03; CPU {second['cpu']:.1f} s vs {first['cpu']:.1f} s; "
            f"{second['from_cache']:,} rows from the cache; "
            f"answers right on every row: {'yes' if ok else 'NO'}",
        ),
        row(
            "cache",
            f"day 1 (empty cache) vs cache off, {size}",
            f"{first['seconds']:.1f} s, {first['peak_mib']:.0f} MiB",
            f"{off['seconds']:.1f} s, {off['peak_mib']:.0f} MiB",
            f"time x{first['seconds'] / off['seconds']:.3f}, RSS x{first['peak_mib'] / off['peak_mib']:.2f}",
            f"{first['written']:,} answers written to the cache",
        ),
    ]
    print()
    print_table(rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
