"""``pipeline``: the bulk operator's whole pipeline against the ideal the rate limit allows, on a
clean audience (E.164) and a messy one (10% national forms, 5% repeats, 2% garbage), with the
client's CPU per row for each stage (read, normalize, look up, write)."""

from __future__ import annotations

import gc
import os
import tempfile
import time
from collections.abc import Callable
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
    warm_simulator,
)
from inputs import messy_audience, valid_e164_numbers

from airflow_provider_kaleyra.numbers.audience import open_audience
from airflow_provider_kaleyra.numbers.normalize import normalize, normalize_block
from airflow_provider_kaleyra.rcs.answers import Answer, AnsweredRows, shared
from airflow_provider_kaleyra.rcs.outputs import write_results
from airflow_provider_kaleyra.utils.storage import as_path
from kaleyra_simulator.harness import SimulatorProcess

REGION = "US"  # the connection's default_region: the messy audience's national forms are US ones


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


def _cpu(function: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """The median CPU seconds of ``function`` over ``runs`` runs, and its last result."""
    spent, result = [], None
    for _ in range(runs):
        gc.collect()
        start = cpu_seconds()
        result = function()
        spent.append(cpu_seconds() - start)
    return median(spent), result


def stage_cpu(path: str, output: str, runs: int) -> dict[str, float]:
    """CPU seconds of the client-side stages over one audience file, one core, no network:
    ``read`` and ``normalize`` in blocks (what the pipeline uses), ``write`` (blocks of answered
    rows, as the engine writes them), and the row-by-row way (``Audience.rows`` and ``normalize`` per row) as the baseline."""
    audience = open_audience(as_path(path))
    read_s, blocks = _cpu(lambda: list(audience.blocks()), runs)
    normalize_s, answers = _cpu(lambda: [normalize_block(b.raws, b.problems, REGION) for b in blocks], runs)
    rows_s, _ = _cpu(
        lambda: [normalize(r.raw, REGION) if r.problem is None else r for r in audience.rows()], runs
    )
    answer = shared(Answer("rcs_enabled", "Carrier", "ACTIVE"))
    answered, start = [], 0
    for block, (e164s, reasons) in zip(blocks, answers):
        rows = range(start, start + len(e164s))
        start += len(e164s)
        found = [None if e164 is None else answer for e164 in e164s]
        answered.append(AnsweredRows(rows, block.raws, e164s, found, reasons))

    def write() -> None:  # as the engine writes: a block at a time
        with write_results(as_path(output)) as out:
            for block in answered:
                out.write_block(block)

    write_s, _ = _cpu(write, runs)
    return {"read": read_s, "normalize": normalize_s, "write": write_s, "row_by_row": rows_s}


def bench_pipeline(quick: bool, runs: int) -> list[Row]:
    """The bulk operator's whole pipeline (read, normalize, look up, write a file) against the ideal,
    with the connection's DEFAULT concurrency settings (only ``rate_limit`` set), and with the
    old fixed default of 8 in flight for comparison; on the clean and the messy audience."""
    cases = [(100, 50_000)] if quick else [(20, 200_000), (100, 200_000)]
    rows = []
    numbers = valid_e164_numbers(max(n for _, n in cases))
    audiences = {"clean": numbers, "messy": messy_audience(numbers)}
    with (
        SimulatorProcess(latency=LATENCY) as sim,
        tempfile.TemporaryDirectory(prefix="kaleyra-goodput-") as tmp,
    ):
        warm_simulator(sim, numbers)
        for rate, count in cases:
            for kind, lines in audiences.items():
                path = os.path.join(tmp, f"audience-{kind}-{count}.txt")
                Path(path).write_text("\n".join(lines[:count]) + "\n", encoding="utf-8")
                sim.configure(latency=LATENCY, rate_limit=rate)
                ideal = rate * 500
                labels: list[tuple[str, dict[str, Any]]] = [("default concurrency", {})]
                default_cpu = 0.0
                if kind == "clean":
                    labels.append(("max_concurrency=8", {"max_concurrency": 8}))
                for label, extra in labels:
                    set_connection(sim.url, rate_limit=rate, default_region=REGION, **extra)
                    measured = []
                    for run in range(runs):
                        sim.reset()
                        elapsed, summary = operator_lookup(path, os.path.join(tmp, "out.csv"))
                        ok = summary["rows"] == count and summary["failed_numbers"] == 0
                        measured.append((count / elapsed, sim.stats()["rate_limited"], ok, summary))
                        log(
                            f"pipeline {kind} R={rate} {label} run {run + 1}: {count / elapsed:,.0f} numbers/s"
                        )
                    rate_med = median([m[0] for m in measured])
                    cpu = median([m[3]["cpu"] for m in measured])
                    default_cpu = default_cpu if extra else cpu
                    rows.append(
                        row(
                            "pipeline",
                            f"bulk operator, {kind} audience, R={rate}/s, {count:,} rows, {label}",
                            f"{rate_med:,.0f} numbers/s",
                            f"ideal {ideal:,.0f}/s",
                            f"{rate_med / ideal:.2f}",
                            f"429s: {median([m[1] for m in measured]):.0f}, every row answered: "
                            f"{'yes' if all(m[2] for m in measured) else 'NO'}, requests: "
                            f"{measured[0][3]['requests']}; client CPU {cpu:.1f} s = {cpu / count * 1e6:.1f} us "
                            f"a row: one free core would carry {count / cpu / ideal:.1f}x the ideal",
                        )
                    )
                if rate == cases[-1][0]:
                    rows += stage_rows(kind, path, os.path.join(tmp, "stages.csv"), count, default_cpu, runs)
    return rows


def stage_rows(kind: str, path: str, output: str, count: int, total: float, runs: int) -> list[Row]:
    """CPU per row of each stage; ``look up`` is the operator's CPU less the other three."""
    stages = stage_cpu(path, output, runs)
    us = {name: seconds / count * 1e6 for name, seconds in stages.items()}
    lookup = max(0.0, total / count * 1e6 - us["read"] - us["normalize"] - us["write"])
    log(f"stages {kind}: " + ", ".join(f"{name} {value:.2f} us" for name, value in us.items()))
    return [
        row(
            "pipeline",
            f"{kind} audience, {count:,} rows: CPU per row by stage",
            f"read {us['read']:.2f}, normalize {us['normalize']:.2f}, look up {lookup:.2f}, "
            f"write {us['write']:.2f} us",
            f"row by row: read + normalize {us['row_by_row']:.2f} us",
            f"{us['row_by_row'] / (us['read'] + us['normalize']):.2f}",
            f"whole operator {total / count * 1e6:.1f} us a row (budget 8); look up = operator - the others",
        )
    ]
