"""Benchmark 4: the bulk operator over a big audience file (wall time, peak RSS, rows out = rows in)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import (
    CONN_ID,
    HERE,
    Row,
    log,
    median,
    peak_rss_mib,
    row,
    set_connection,
    simulator,
)
from inputs import audience_lines

# -- 4. scale: the bulk operator over a big audience file -------------------------------------


def scale_child(mode: str, audience: str, output: str) -> None:
    """Runs in a child process: the operator (``operator``) or the in-memory way (``memory``)."""
    from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook

    start = time.perf_counter()
    if mode == "operator":
        from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator

        op = KaleyraRcsBulkLookupOperator(
            task_id="bench",
            audience=audience,
            output=output,
            kaleyra_conn_id=CONN_ID,
            max_invalid_ratio=None,
            max_failed_ratio=0.0,
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
    print(
        json.dumps({"seconds": elapsed, "rows": rows, "requests": requests_sent, "peak_mib": peak_rss_mib()})
    )


def run_scale_child(mode: str, audience: str, output: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(HERE / "run.py"), "--child-scale", mode, audience, output],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scale child ({mode}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_scale(quick: bool, runs: int) -> list[Row]:
    count = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="kaleyra-bench-") as tmp:
        audience = os.path.join(tmp, "audience.txt")
        with open(audience, "w", encoding="utf-8") as stream:
            for line in audience_lines(count):
                stream.write(line.replace("\n", " ") + "\n")
        rows = []
        with simulator() as sim:
            set_connection(sim.url, rate_limit=0, max_concurrency=8, default_region="IN")
            results: dict[str, list[dict[str, Any]]] = {"operator": [], "memory": []}
            for run in range(runs):
                for mode in ("operator", "memory"):
                    output = os.path.join(tmp, f"out-{mode}-{run}.csv")
                    sim.reset()
                    child = run_scale_child(mode, audience, output)
                    with open(output, encoding="utf-8") as stream:
                        child["lines_out"] = sum(1 for _ in stream) - 1  # header
                    os.remove(output)
                    results[mode].append(child)
                    log(
                        f"scale {mode} run {run + 1}: {child['seconds']:.1f} s, {child['peak_mib']:.0f} MiB peak, "
                        f"{child['lines_out']:,} rows out, {child['requests']} requests"
                    )
        op, mem = results["operator"], results["memory"]
        op_s, mem_s = median([r["seconds"] for r in op]), median([r["seconds"] for r in mem])
        op_rss, mem_rss = max(r["peak_mib"] for r in op), max(r["peak_mib"] for r in mem)
        rows_ok = all(r["lines_out"] == count for r in op + mem)
        rows.append(
            row(
                "scale",
                f"bulk operator, {count:,}-line audience file, no latency",
                f"{op_s:.1f} s, peak RSS {op_rss:.0f} MiB",
                "target < 400 MB RSS",
                f"RSS {op_rss * 1.048576 / 400:.2f} of target",
                f"rows out = rows in: {'yes' if rows_ok else 'NO'} ({op[0]['lines_out']:,}); "
                f"{count / op_s:,.0f} rows/s; {op[0]['requests']} requests",
            )
        )
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
    return rows
