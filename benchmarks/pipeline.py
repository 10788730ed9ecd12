"""``pipeline``: the bulk operator's whole pipeline against the ideal the rate limit allows."""

from __future__ import annotations

import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    CONN_ID,
    LATENCY,
    Row,
    cpu_seconds,
    log,
    median,
    row,
    set_connection,
    simulator,
    warm_simulator,
)
from inputs import valid_e164_numbers


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
