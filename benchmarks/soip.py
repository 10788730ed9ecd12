"""``soip``: a SOIP check end to end: the check operator over an audience file, the simulator's
callbacks to the standalone receiver, the sensor deferred, the per-number output."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from callbacks import clear_store
from common import CONN_ID, Row, log, row, set_connection

from kaleyra_simulator.harness import SimulatorProcess, start_receiver, stop


def bench_soip(quick: bool, runs: int) -> list[Row]:
    """One SOIP check end to end, timed from the operator's start to the sensor's output."""
    import asyncio

    from airflow.sdk.exceptions import TaskDeferred

    from airflow_provider_kaleyra.operators.soip import KaleyraSoipCapabilityCheckOperator
    from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor

    count = 10_000 if quick else 100_000
    secret = "bench-soip-secret-0123456789"
    with tempfile.TemporaryDirectory(prefix="kaleyra-soip-") as tmp:
        url = os.environ.get("KALEYRA_BENCH_POSTGRES_URL") or f"sqlite:///{tmp}/callbacks.db"
        clear_store(url)
        audience = Path(tmp) / "audience.txt"
        audience.write_text("".join(f"+9198{i:08d}\n" for i in range(count)))
        receiver, port = start_receiver(url, secret)
        try:
            with SimulatorProcess(
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
            stop(receiver)
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
