"""``scale``: ``KaleyraRcsBulkLookupOperator`` over a 1,000,000-line audience file (no latency):
wall time, peak RSS, rows out = rows in; against reading the file into memory and calling
``lookup_rcs_many``; and the preflight's shard tasks. Each run is a child process (this file)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import CONN_ID, Row, log, median, row, set_connection
from inputs import audience_lines

from kaleyra_simulator.harness import SimulatorProcess, peak_rss_mib

SCALE_ROWS = 1_000_000  # run.py --scale-rows changes it (the 10,000,000-row plan in README.md)


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


def run_scale_child(mode: str, audience: str, output: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), mode, audience, output],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scale child ({mode}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_scale(quick: bool, runs: int, rows: int = SCALE_ROWS) -> list[Row]:
    count = 100_000 if quick else rows
    with_memory = count <= 2_000_000  # the in-memory way needs ~400 MiB per million rows
    with tempfile.TemporaryDirectory(prefix="kaleyra-bench-") as tmp:
        audience = os.path.join(tmp, "audience.txt")
        with open(audience, "w", encoding="utf-8") as stream:
            for line in audience_lines(count):
                stream.write(line.replace("\n", " ") + "\n")
        rows = []
        with SimulatorProcess() as sim:
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


def shard_tasks(sim: SimulatorProcess, audience: str, tmp: str, count: int, shards: int = 4) -> list[Row]:
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


if __name__ == "__main__":
    scale_child(*sys.argv[1:4])
