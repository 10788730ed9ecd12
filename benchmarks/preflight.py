"""The campaign preflight at scale: ``python benchmarks/preflight.py [--rows 1000000]``.

Runs the work of each task of ``kaleyra_preflight`` in its own child process, as a worker would
(prepare, the RCS shards two at a time as the ``kaleyra_api`` pool of 2 allows, soip_candidates,
soip_check, soip_wait, channels, report), against the simulator and the standalone callback
receiver, both child processes on 127.0.0.1. Prints wall time and peak RSS (``VmHWM``) per task and
the API calls, for the preflight with the SOIP leg and for the RCS-only preflight of the same
audience (the baseline, measured in the same run). Every row's channel is then checked against the
simulator's deterministic answers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import CONN_ID, machine

from kaleyra_simulator.harness import SimulatorProcess, peak_rss_mib, start_receiver, stop

SECRET = "bench-preflight-secret-0123456789"
SHARDS, POOL_SLOTS, REGION = 4, 2, "US"


def child(step: str, args: dict[str, Any]) -> None:
    """One task's work, in this (child) process; prints its result, seconds and peak RSS as JSON."""
    from airflow_provider_kaleyra.preflight import channels as ch, files, report
    from airflow_provider_kaleyra.utils.storage import as_path

    start = time.perf_counter()
    run_dir = as_path(args["run_dir"])
    result: Any = None
    if step == "prepare":
        from airflow_provider_kaleyra.preflight.prepare import prepare_audience

        result = prepare_audience(
            args["audience"], run_dir, column="phone", region=REGION, shard_count=SHARDS
        )
    elif step == "rcs_lookup":
        from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator

        shard = args["shard"]
        op = KaleyraRcsBulkLookupOperator(
            task_id=f"rcs_lookup_{args['index']}",
            kaleyra_conn_id=CONN_ID,
            column=files.E164,
            e164_input=True,
            **shard,
        )
        result = op.execute({})
    elif step == "soip_candidates":
        outputs = [as_path(s["output"]) for s in args["shards"]]
        numbers = ch.soip_candidates(outputs, ch.DEFAULT_SOIP_REGIONS)
        result = files.write_csv(run_dir / files.SOIP_NUMBERS, (files.E164,), ((n,) for n in numbers))
    elif step == "soip_check":
        from airflow_provider_kaleyra.operators.soip import KaleyraSoipCapabilityCheckOperator

        op = KaleyraSoipCapabilityCheckOperator(
            task_id="soip_check",
            kaleyra_conn_id=CONN_ID,
            audience=str(run_dir / files.SOIP_NUMBERS),
            column="e164",
            e164_input=True,
        )
        result = op.execute({})
    elif step == "soip_wait":
        from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor

        sensor = KaleyraSoipCallbackSensor(
            task_id="soip_wait",
            kaleyra_conn_id=CONN_ID,
            submission=args["submission"],
            output=str(run_dir / files.SOIP_RESULTS),
        )
        while not (poked := sensor.poke({})).is_done:
            time.sleep(1)
        result = poked.xcom_value
    elif step == "channels":
        outputs = [as_path(s["output"]) for s in args["shards"]]
        leg = (run_dir / files.SOIP_NUMBERS, run_dir / files.SOIP_RESULTS) if args["soip"] else (None, None)
        result = ch.write_channel_lists(run_dir, outputs, *leg)
    elif step == "report":
        decided, prepared = args["channels"], args["prepared"]
        summary = report.run_summary(run_dir.name, "now", prepared, decided, args["api"])
        result = report.write_report(run_dir, summary, report.load_history(run_dir.parent, run_dir.name))
    print(json.dumps({"result": result, "seconds": time.perf_counter() - start, "peak_mib": peak_rss_mib()}))


def run_step(step: str, args: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", step, json.dumps(args)], capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(f"{step} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def preflight(audience: str, run_dir: str, soip: bool, sim: SimulatorProcess) -> dict[str, Any]:
    """The task group's steps, in order; returns per-task figures and the API calls."""
    started = time.perf_counter()
    base = {"run_dir": run_dir, "audience": audience}
    tasks: dict[str, dict[str, Any]] = {}
    tasks["prepare"] = run_step("prepare", base)
    prepared = tasks["prepare"]["result"]
    shards = prepared["shards"]
    with ThreadPoolExecutor(POOL_SLOTS) as pool:  # the kaleyra_api pool: 2 shards at a time
        lookups = list(
            pool.map(
                lambda i: run_step("rcs_lookup", {**base, "shard": shards[i], "index": i}), range(len(shards))
            )
        )
    tasks["rcs_lookup"] = {
        "seconds": sum(r["seconds"] for r in lookups),
        "peak_mib": max(r["peak_mib"] for r in lookups),
        "note": f"{len(lookups)} shards, {POOL_SLOTS} at a time",
    }
    if soip:
        tasks["soip_candidates"] = run_step("soip_candidates", {**base, "shards": shards})
        tasks["soip_check"] = run_step("soip_check", base)
        tasks["soip_wait"] = run_step("soip_wait", {**base, "submission": tasks["soip_check"]["result"]})
    tasks["channels"] = run_step("channels", {**base, "shards": shards, "soip": soip})
    requests = sim.stats()["requests"]
    api = {
        "rcs_requests": requests["rcs_bulk"] + requests["rcs_single"],
        "soip_requests": requests["soip_check"],
    }
    tasks["report"] = run_step(
        "report",
        {**base, "channels": tasks["channels"]["result"], "prepared": prepared, "api": api},
    )
    return {
        "wall": time.perf_counter() - started,
        "tasks": tasks,
        "api": api,
        "channels": tasks["channels"]["result"],
    }


def check(audience: str, run_dir: str, soip: bool) -> int:
    """Rows whose channel differs from the simulator's deterministic answers (0 expected)."""
    from airflow_provider_kaleyra.numbers.normalize import normalize
    from airflow_provider_kaleyra.preflight.channels import DEFAULT_SOIP_REGIONS, region_of
    from kaleyra_simulator import rcs_answer, soip_answer

    def expected(phone: str) -> str:
        e164 = normalize(phone, REGION).e164
        if e164 is None:
            return "none"
        if rcs_answer(e164)["rcsEnabled"]:
            return "rcs"
        if soip and region_of(e164) in DEFAULT_SOIP_REGIONS:
            return "soip" if soip_answer(e164) else "sms"
        return "sms"

    got = {}
    for name in ("rcs", "soip", "sms", "invalid"):
        with open(Path(run_dir) / f"{name}.csv", encoding="utf-8", newline="") as fh:
            got.update((r["customer_id"], r["channel"]) for r in csv.DictReader(fh))
    with open(audience, encoding="utf-8", newline="") as fh:
        return sum(1 for r in csv.DictReader(fh) if got.get(r["customer_id"]) != expected(r["phone"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=2, metavar=("STEP", "ARGS"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(options.child[0], json.loads(options.child[1]))
        return 0
    from airflow_provider_kaleyra.preflight.prepare import write_sample_audience
    from airflow_provider_kaleyra.utils.storage import as_path
    from kaleyra_simulator.config import DEFAULT_API_KEY, DEFAULT_SID

    print(machine())
    with tempfile.TemporaryDirectory(prefix="kaleyra-preflight-bench-") as tmp:
        audience = f"{tmp}/audience.csv"
        write_sample_audience(as_path(audience), options.rows, seed=42)
        store_url = os.environ.get("KALEYRA_TEST_POSTGRES_URL") or f"sqlite:///{tmp}/callbacks.db"
        receiver, port = start_receiver(store_url, SECRET)
        sim = SimulatorProcess(
            callback_url=f"http://127.0.0.1:{port}/kaleyra/soip/callback",
            callback_auth=f"header:X-Kaleyra-Secret:{SECRET}",
        )
        try:
            extra = {"rcs_base_url": sim.url, "soip_base_url": sim.url, "default_region": REGION,
                     "rate_limit": 0, "max_concurrency": 8, "callback_profile_id": "bench",
                     "callback_secret": SECRET, "callback_store_url": store_url}  # fmt: skip
            os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(
                {"conn_type": "kaleyra", "login": DEFAULT_SID, "password": DEFAULT_API_KEY, "extra": extra}
            )
            runs = {}
            for name, soip in (("RCS only", False), ("RCS + SOIP", True)):
                sim.reset()
                run_dir = f"{tmp}/out/{name.replace(' ', '').replace('+', '_')}"
                runs[name] = preflight(audience, run_dir, soip, sim)
                runs[name]["wrong"] = check(audience, run_dir, soip)
        finally:
            stop(sim)
            stop(receiver)
    print(f"\nCampaign preflight of {options.rows:,} rows (simulator without latency, rate limit off)\n")
    print("| task | RCS only: s | RCS only: peak RSS MiB | RCS + SOIP: s | RCS + SOIP: peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    for task in runs["RCS + SOIP"]["tasks"]:
        only = runs["RCS only"]["tasks"].get(task)
        both = runs["RCS + SOIP"]["tasks"][task]
        left = f"{only['seconds']:.1f} | {only['peak_mib']:.0f}" if only else "- | -"
        print(f"| {task} | {left} | {both['seconds']:.1f} | {both['peak_mib']:.0f} |")
    only, both = runs["RCS only"], runs["RCS + SOIP"]
    print(
        f"| **wall time** | **{only['wall']:.1f}** | | **{both['wall']:.1f}** (x{both['wall'] / only['wall']:.2f}) | |"
    )
    for name, figures in runs.items():
        print(f"\n{name}: API calls {figures['api']}; rows by channel {figures['channels']['rows']}; "
              f"SOIP asked/answered {figures['channels']['soip_asked']}/{figures['channels']['soip_answered']}; "
              f"rows whose channel differs from the simulator: {figures['wrong']}")  # fmt: skip
    return 1 if any(figures["wrong"] for figures in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
