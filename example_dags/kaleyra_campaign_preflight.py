"""
### Kaleyra campaign preflight (daily)

Before a campaign goes out, find out **which numbers of the audience can receive RCS** and
which must fall back to SMS, and which rows are not phone numbers at all.

1. **ensure_audience** — uses `params.audience_location`; when it is empty, a deterministic sample
   audience of `params.audience_size` rows is generated (once) under the Airflow home, with about 5%
   messy or garbage rows and some duplicates written in other formats.
2. **prepare_audience** — reads the audience (CSV, column `params.phone_column`), normalizes every
   row to E.164 (`params.default_region` reads national numbers), drops duplicates, writes the
   invalid rows with their reasons, and cuts the distinct numbers into `params.shard_count` shards
   of at least 100 numbers each (`params.shard_count` is a maximum).
3. **rcs_lookup** — one mapped `KaleyraRcsBulkLookupOperator` per shard, in the `kaleyra_api` pool.
   Each shard is cut into balanced bulk calls of 100-500 numbers (fewer than 100: single lookups),
   checkpointed every `params.checkpoint_batches` calls so a retried shard resumes; a shard fails when more
   than `params.max_failed_ratio` of its numbers could not be looked up.
4. **build_report** — merges the shards into `rcs_capable.csv`, `sms_fallback.csv`, and writes
   `report.html` (counts, rates, carriers, countries and an SVG bar chart), `report.md` and
   `summary.json`.

All outputs go under `<params.output_location>/<run id>/`. Every location is an Airflow
`ObjectStoragePath`: `file:///...`, `s3://bucket/prefix`, `gs://...` all work (the latter with
`params.storage_conn_id`).

**Set-up:** a connection `kaleyra_default` of type *Kaleyra*, and a pool limiting how many shards
call Kaleyra at once (each shard itself runs `max_concurrency` requests, paced by `rate_limit`):

```bash
airflow pools set kaleyra_api 2 "Kaleyra API: concurrent RCS lookup shards"
```
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any

import campaign_report as helpers  # campaign_report.py beside this file: files, audience, report
from airflow.sdk import DAG, Param, get_current_context, task

from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator
from airflow_provider_kaleyra.utils.storage import as_path

KALEYRA_CONN_ID = "kaleyra_default"
KALEYRA_POOL = "kaleyra_api"
PHONE_COLUMN = "phone"
E164_COLUMN = "e164"


with DAG(
    dag_id="kaleyra_campaign_preflight",
    description="Daily RCS capability preflight of a campaign audience (RCS list, SMS fallback, invalid rows, report)",
    doc_md=__doc__,
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    tags=["kaleyra", "rcs", "example"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2)},
    params={
        "audience_location": Param(
            "",
            type="string",
            title="Audience location",
            description="CSV file (file://, s3://, gs://, ...). Empty: a generated sample under the Airflow home.",
        ),
        "phone_column": Param(
            PHONE_COLUMN, type="string", minLength=1, title="Phone column of the audience CSV"
        ),
        "audience_size": Param(
            10_000,
            type="integer",
            minimum=1,
            maximum=5_000_000,
            title="Rows of the generated sample audience",
        ),
        "sample_seed": Param(42, type="integer", title="Seed of the generated sample audience"),
        "output_location": Param(
            "",
            type="string",
            title="Output location",
            description="Folder for the outputs; each run writes to <output_location>/<run id>/. "
            "Empty: kaleyra/preflight under the Airflow home.",
        ),
        "storage_conn_id": Param(
            "",
            type="string",
            title="Object storage connection id",
            description="For s3:// and the like; empty: none.",
        ),
        "default_region": Param(
            "US",
            type=["null", "string"],
            title="Default region",
            description="ISO country for numbers written without a country code; null: such numbers are invalid.",
        ),
        "shard_count": Param(
            4,
            type="integer",
            minimum=1,
            maximum=256,
            title="Shards (mapped lookup tasks; each holds >= 100 numbers)",
        ),
        "checkpoint_batches": Param(
            20,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Bulk calls per checkpoint",
            description="A retried shard skips the checkpointed calls (each bulk call holds 100-500 numbers).",
        ),
        "max_failed_ratio": Param(
            0.02,
            type="number",
            minimum=0,
            maximum=1,
            title="Max failed ratio",
            description="A shard fails when more than this share of its numbers could not be looked up.",
        ),
    },
) as dag:

    @task
    def ensure_audience() -> str:
        """The audience to check: ``params.audience_location``, or the sample (generated if missing)."""
        params = get_current_context()["params"]
        conn_id = params["storage_conn_id"] or None
        if params["audience_location"]:
            path = as_path(params["audience_location"], conn_id)
            if not path.exists():
                raise FileNotFoundError(f"audience not found: {path}")
            return str(path)
        path = as_path(helpers.default_sample_location(params["audience_size"], params["sample_seed"]))
        if path.exists():
            print(f"Using the sample audience {path}")
            return str(path)
        rows = helpers.write_sample_audience(
            path, PHONE_COLUMN, params["audience_size"], params["sample_seed"]
        )
        print(f"Generated a sample audience of {rows:,} rows at {path}")
        return str(path)

    @task
    def prepare_audience(audience: str) -> list[dict[str, Any]]:
        """Normalize to E.164, drop duplicates, write the invalid rows, plan the shards."""
        from airflow_provider_kaleyra.batching import shard_bounds

        context = get_current_context()
        params = context["params"]
        conn_id = params["storage_conn_id"] or None
        base = as_path(params["output_location"] or helpers.default_output_location(), conn_id)
        run_dir = base / helpers.safe_name(context["run_id"])
        region = (params["default_region"] or "").upper() or None

        scan = helpers.scan_audience(
            helpers.read_csv(as_path(audience, conn_id)), params["phone_column"], region
        )
        distinct, invalid = scan.distinct, scan.invalid
        # The distinct numbers in first-seen order: the input of the lookup shards.
        numbers_path = run_dir / "work" / "numbers.csv"
        helpers.write_csv(numbers_path, (E164_COLUMN,), ((n,) for n in distinct))
        helpers.write_csv(run_dir / "invalid.csv", ("row", "input", "reason", *scan.others), invalid)
        bounds = shard_bounds(len(distinct), params["shard_count"]) if distinct else []
        # One mapped lookup task per shard: the operator looks up its contiguous slice of the distinct
        # numbers (the same ``shard_bounds``), in balanced bulk calls of 100-500 numbers.
        shards = [
            {
                "audience": str(numbers_path),
                "shard_index": index,
                "shard_count": len(bounds),
                "output": str(run_dir / "work" / f"rcs_shard_{index:03d}.csv"),
                "max_failed_ratio": params["max_failed_ratio"],
                "storage_conn_id": conn_id,
                "checkpoint_batches": params["checkpoint_batches"],
            }
            for index in range(len(bounds))
        ]
        print(
            f"{scan.rows:,} rows: {len(distinct):,} distinct valid numbers, {scan.duplicates:,} duplicates, "
            f"{len(invalid):,} invalid; {len(shards)} shard(s)"
        )
        context["ti"].xcom_push(
            key="prepared",
            value={
                "audience": audience,
                "run_dir": str(run_dir),
                "counts": scan.counts(),
                "invalid_reasons": dict(Counter(item[2] for item in invalid).most_common()),
            },
        )
        return shards

    @task(trigger_rule="none_failed")
    def build_report(shards: list[dict[str, Any]], lookups: Any) -> dict[str, Any]:
        """Merge the shards into the RCS list and the SMS fallback list; write the report."""
        context = get_current_context()
        prepared = context["ti"].xcom_pull(task_ids="prepare_audience", key="prepared")
        params = context["params"]
        conn_id = params["storage_conn_id"] or None
        run_dir = as_path(prepared["run_dir"], conn_id)
        header = ("e164", "carrier_id", "carrier_status")
        results = chain.from_iterable(
            helpers.read_csv(as_path(shard["output"], conn_id)) for shard in shards or []
        )
        split = helpers.split_lookups(
            results
        )  # each number once: RCS-capable, or SMS fallback with the reason
        # The mapped lookups' XCom summaries (by index: iterating would probe past the end).
        shard_summaries = [lookups[i] for i in range(len(lookups))] if lookups is not None else []
        counts = dict(prepared["counts"])
        if split.answered != counts["distinct"]:
            raise ValueError(
                f"the shards answered {split.answered:,} numbers, {counts['distinct']:,} were asked"
            )
        files = {
            "rcs_capable": str(run_dir / "rcs_capable.csv"),
            "sms_fallback": str(run_dir / "sms_fallback.csv"),
            "invalid": str(run_dir / "invalid.csv"),
            "report_html": str(run_dir / "report.html"),
            "report_md": str(run_dir / "report.md"),
            "chart": str(run_dir / "outcome.svg"),
            "summary": str(run_dir / "summary.json"),
        }
        helpers.write_csv(as_path(files["rcs_capable"], conn_id), header, split.capable)
        helpers.write_csv(
            as_path(files["sms_fallback"], conn_id), (*header, "status", "reason"), split.fallback
        )
        counts.update(rcs_capable=len(split.capable), sms_fallback=len(split.fallback), failed=split.failed)
        summary = {
            "run_id": context["run_id"],
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "audience": prepared.get("audience", ""),
            "counts": counts,
            "rates": {
                "rcs_capable": counts["rcs_capable"] / counts["distinct"] if counts["distinct"] else 0.0,
                "invalid": counts["invalid"] / counts["rows"] if counts["rows"] else 0.0,
                "duplicates": counts["duplicates"] / counts["rows"] if counts["rows"] else 0.0,
            },
            "carriers": split.carriers,
            "countries": split.countries,
            "invalid_reasons": prepared["invalid_reasons"],
            "shards": shard_summaries,
            "files": files,
        }
        helpers.write_report(summary, conn_id)  # report.html, report.md, outcome.svg and summary.json
        print(
            f"RCS-capable {counts['rcs_capable']:,}, SMS fallback {counts['sms_fallback']:,} "
            f"({split.failed:,} failed lookups), invalid {counts['invalid']:,}; report: {files['report_html']}"
        )
        return {"report": files["report_html"], "summary": files["summary"], "counts": counts}

    audience = ensure_audience()
    prepared = prepare_audience(audience)
    lookups = KaleyraRcsBulkLookupOperator.partial(
        task_id="rcs_lookup",
        kaleyra_conn_id=KALEYRA_CONN_ID,
        column=E164_COLUMN,
        pool=KALEYRA_POOL,
        retries=2,
    ).expand_kwargs(prepared)
    build_report(prepared, lookups.output)
