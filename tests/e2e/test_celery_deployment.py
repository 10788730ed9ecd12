"""The campaign preflight on CeleryExecutor: two workers that share no disk, object storage between them.

Redis is the broker; two Celery workers run with their own ``AIRFLOW_HOME`` and working directory;
the audience, the intermediate files (distinct numbers, shard outputs, checkpoints) and the outputs
live in an S3 bucket on moto's standalone server, reached through an AWS connection with
``endpoint_url``. The preflight over 200,000 rows in 4 shards must run on both workers, never more
shards at once than the ``kaleyra_api`` pool allows, and write the same files, row for row, as the
same run on the LocalExecutor (the scheduler restarted with it, same deployment).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from airflow_deployment import PostgresDatabase
from celery_deployment import BUCKET, S3_CONN_ID, CeleryDeployment, Redis, S3Server, wait_for_workers

from airflow_provider_kaleyra.numbers.normalize import normalize
from airflow_provider_kaleyra.preflight.sample import generate_audience_rows
from kaleyra_simulator import KaleyraSimulator, SimulatorConfig, rcs_answer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
CAMPAIGN = "example_kaleyra_campaign_preflight"
LOOKUP = "preflight.rcs_lookup"
ROWS, SEED, SHARDS, POOL_SLOTS = 200_000, 5, 4, 2
RUN_TIMEOUT = 600.0
OUTPUT_FILES = ("rcs.csv", "soip.csv", "sms.csv", "invalid.csv")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CeleryDeployment, S3Server]]:
    server = os.environ.get("KALEYRA_TEST_POSTGRES_URL")
    if not server:
        pytest.skip("CeleryExecutor needs PostgreSQL: KALEYRA_TEST_POSTGRES_URL (scripts/test.sh sets it)")
    base = tmp_path_factory.mktemp("celery")
    metadata = PostgresDatabase(server, "e2e_celery").create()
    started: list[object] = []
    try:
        redis = Redis(base / "redis")
        started.append(redis)
        s3 = S3Server(base / "s3")
        started.append(s3)
        simulator = KaleyraSimulator(SimulatorConfig(latency=0.02)).start()
        started.append(simulator)
        deployment = CeleryDeployment(
            base / "scheduler-home",
            REPO / "example_dags",
            broker_url=redis.url,
            sql_alchemy_conn=metadata.url,
            parallelism=8,
        )
        deployment.env["AIRFLOW_CONN_KALEYRA_DEFAULT"] = json.dumps(
            {
                "conn_type": "kaleyra",
                "login": simulator.config.sid,
                "password": simulator.config.api_key,
                # the connection's default concurrency: only the rate limit is set
                "extra": {"rcs_base_url": simulator.url, "default_region": "US", "rate_limit": 100},
            }
        )
        deployment.env[f"AIRFLOW_CONN_{S3_CONN_ID.upper()}"] = json.dumps(s3.connection())
        deployment.simulator = simulator  # type: ignore[attr-defined]
        started.append(deployment)
        deployment.start()
        wait_for_workers(deployment)
        deployment.api(
            "POST", "/pools", json={"name": "kaleyra_api", "slots": POOL_SLOTS, "description": "e2e"}
        )
        yield deployment, s3
    finally:
        for thing in reversed(started):
            thing.stop()  # type: ignore[attr-defined]
        metadata.drop()


def _upload_audience(s3: S3Server) -> list[tuple[str, str, str]]:
    rows = list(generate_audience_rows(ROWS, SEED))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("customer_id", "phone", "segment"))
    writer.writerows(rows)
    s3.client().put_object(Bucket=BUCKET, Key="audience.csv", Body=text.getvalue().encode())
    return rows


def _safe(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_")


def _run(deployment: CeleryDeployment, folder: str) -> str:
    run_id = deployment.trigger(
        CAMPAIGN,
        {
            "audience_location": f"s3://{BUCKET}/audience.csv",
            "storage_conn_id": S3_CONN_ID,
            "output_location": f"s3://{BUCKET}/{folder}",
            "shard_count": SHARDS,
            "soip": False,  # RCS only: the connection has no SOIP callback store
        },
    )
    states = deployment.wait_for_runs([(CAMPAIGN, run_id)], timeout=RUN_TIMEOUT)
    if states[(CAMPAIGN, run_id)] != "success":
        pytest.fail(f"{folder} run: {states}\n{deployment.diagnostics(CAMPAIGN, run_id)}")
    return run_id


def _max_overlap(task_instances: list[dict]) -> int:
    """The most task instances running at the same moment, from their start and end dates."""
    events = []
    for ti in task_instances:
        events += [
            (datetime.fromisoformat(ti["start_date"]), 1),
            (datetime.fromisoformat(ti["end_date"]), -1),
        ]
    running = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def test_preflight_on_two_celery_workers_sharing_only_object_storage(stack) -> None:
    deployment, s3 = stack
    audience = _upload_audience(s3)
    deployment.wait_for_dags([CAMPAIGN])

    started = time.monotonic()
    celery_run = _run(deployment, "celery")
    celery_seconds = time.monotonic() - started

    # Both workers ran lookup shards, each shard exactly once, and the pool capped them.
    lookups = [ti for ti in deployment.task_instances(CAMPAIGN, celery_run) if ti["task_id"] == LOOKUP]
    assert sorted(ti["map_index"] for ti in lookups) == list(range(SHARDS))
    assert {ti["pool"] for ti in lookups} == {"kaleyra_api"}
    assert all(ti["try_number"] == 1 for ti in lookups)
    assert _max_overlap(lookups) <= POOL_SLOTS
    by_worker = {
        name: deployment.tasks_run_by(name, CAMPAIGN, celery_run, LOOKUP) for name in deployment.worker_names
    }
    assert all(by_worker.values()), f"a worker ran no shard: {by_worker}"
    assert sorted(i for ran in by_worker.values() for i in ran) == list(range(SHARDS))
    # Nothing went through a worker's disk: the work files are in the bucket only.
    for name in deployment.worker_names:
        home = deployment.worker_home(name)
        assert not list(home.rglob("*.csv")), f"{name} wrote CSV files locally"
    celery_keys = s3.keys(f"celery/{_safe(celery_run)}/")
    assert any("/work/rcs_shard_" in key for key in celery_keys), celery_keys
    assert not [key for key in celery_keys if ".checkpoint/" in key], "checkpoints left behind"

    # The answers are right on every number.
    lists = {
        name: list(csv.DictReader(io.StringIO(s3.get(f"celery/{_safe(celery_run)}/{name}").decode())))
        for name in OUTPUT_FILES
    }
    assert sum(len(rows) for rows in lists.values()) == len(audience)  # every row once
    distinct = {e164 for _, phone, _ in audience if (e164 := normalize(phone, "US").e164)}
    assert {r["e164"] for r in lists["rcs.csv"] + lists["sms.csv"]} == distinct
    assert {r["e164"] for r in lists["rcs.csv"]} == {n for n in distinct if rcs_answer(n)["rcsEnabled"]}

    # The same run on the LocalExecutor writes the same files, row for row.
    deployment.restart_scheduler(AIRFLOW__CORE__EXECUTOR="LocalExecutor")
    started = time.monotonic()
    local_run = _run(deployment, "local")
    local_seconds = time.monotonic() - started
    for name in OUTPUT_FILES:
        celery_rows = s3.get(f"celery/{_safe(celery_run)}/{name}").decode().splitlines()
        local_rows = s3.get(f"local/{_safe(local_run)}/{name}").decode().splitlines()
        assert celery_rows == local_rows, name
    print(
        f"\n{ROWS:,} rows in {SHARDS} shards: CeleryExecutor run {celery_seconds:.0f} s "
        f"(shards per worker: {by_worker}), LocalExecutor run {local_seconds:.0f} s; outputs identical"
    )
