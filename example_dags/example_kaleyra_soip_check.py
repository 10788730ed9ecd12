"""
### Kaleyra SMS-over-IP capability check

Asks Kaleyra which numbers can receive **SMS over IP** (SOIP, India), waits for the answers
that Kaleyra sends back as callbacks, and splits the numbers into outputs.

1. **audience** — where the numbers are: the file at `params.numbers_location` (a CSV with column
   `params.phone_column`, or a text file), or `params.numbers` written to `numbers.txt` in the run's
   output folder. Only locations go to XCom, never a number.
2. **soip_check** — `KaleyraSoipCapabilityCheckOperator` reads that file (its `audience=`) and submits
   the numbers, in chunks of `chunk_size`, with the callback profile `params.callback_profile_id`
   (none: the connection's `callback_profile_id`).
3. **wait_for_callbacks** — `KaleyraSoipCallbackSensor`, **deferrable**: waits in the triggerer, holding
   no worker slot, until every number has a callback in the callback store (or times out).
4. **split_by_capability** — writes `soip_capable.csv`, `soip_not_capable.csv`, `soip_missing.csv`
   (no callback, or a callback that could not be read) and `summary.json` (with the count of inputs
   refused before submission) to `<params.output_location>/<run id>/`.

**Set-up:** a `kaleyra_default` connection with `callback_secret` and `callback_store_url` (a
database the API server, the workers and the triggerer all reach), a Kaleyra callback profile whose URL is
`https://<your api server>/kaleyra/soip/callback` sending the secret (header `X-Kaleyra-Secret`,
a bearer token, or the password of HTTP Basic auth), and the provider installed on the API server
(its plugin mounts the receiver) and on the triggerer.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, get_current_context, task

from airflow_provider_kaleyra.operators.soip import KaleyraSoipCapabilityCheckOperator
from airflow_provider_kaleyra.preflight import files
from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor
from airflow_provider_kaleyra.utils.storage import as_path, open_atomic

KALEYRA_CONN_ID = "kaleyra_default"
CHUNK_SIZE = 500
CALLBACK_TIMEOUT = timedelta(minutes=30)
SAMPLE_NUMBERS = [
    "+91 98765 43210",
    "+919812345678",
    "0091 98765 01234",
    "+91-99000-12345",
    "+91 70123 45678",
    "+918800112233",
]


with DAG(
    dag_id="example_kaleyra_soip_check",
    description="SMS-over-IP capability check: submit, wait for Kaleyra's callbacks (deferred), split by capability",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    render_template_as_native_obj=True,  # "{{ params.storage_conn_id }}" renders None, not "None"
    tags=["kaleyra", "soip", "example"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    params={
        "numbers": Param(
            SAMPLE_NUMBERS,
            type="array",
            items={"type": "string"},
            title="Numbers",
            description="Phone numbers to check (used when numbers_location is none).",
        ),
        "numbers_location": Param(
            None,
            type=["null", "string"],
            title="Numbers file",
            description="CSV file (file://, s3://, ...) to read the numbers from instead; none: use 'numbers'.",
        ),
        "phone_column": Param("phone", type="string", minLength=1, title="Phone column of the CSV"),
        "callback_profile_id": Param(
            None,
            type=["null", "string"],
            title="Callback profile id",
            description="None: the connection's callback_profile_id.",
        ),
        "output_location": Param(
            None,
            type=["null", "string"],
            title="Output location",
            description="Each run writes to <output_location>/<run id>/. None: kaleyra/soip under the Airflow home.",
        ),
        "storage_conn_id": Param(None, type=["null", "string"], title="Object storage connection id"),
    },
) as dag:

    @task(multiple_outputs=True)
    def audience() -> dict[str, str]:
        """Where the numbers to check are, and where this run writes its outputs."""
        context = get_current_context()
        params = context["params"]
        base = params["output_location"] or f"file://{files.airflow_home()}/kaleyra/soip"
        run_dir = as_path(base, params["storage_conn_id"]) / files.safe_name(context["run_id"])
        location = params["numbers_location"]
        if not location:
            if not params["numbers"]:
                raise ValueError("no numbers to check")
            location = run_dir / "numbers.txt"  # one number per line: the operator reads it as text
            with open_atomic(location) as handle:
                handle.writelines(f"{' '.join(str(n).splitlines())}\n" for n in params["numbers"])
        print(f"numbers from {location}; outputs go to {run_dir}")
        return {
            "audience": str(location),
            "run_dir": str(run_dir),
            "callback_results": str(run_dir / "callbacks.jsonl"),
        }

    planned = audience()

    submission = KaleyraSoipCapabilityCheckOperator(
        task_id="soip_check",
        kaleyra_conn_id=KALEYRA_CONN_ID,
        audience=planned["audience"],
        column="{{ params.phone_column }}",
        storage_conn_id="{{ params.storage_conn_id }}",
        callback_profile_id="{{ params.callback_profile_id }}",
        chunk_size=CHUNK_SIZE,
    )

    callbacks = KaleyraSoipCallbackSensor(
        task_id="wait_for_callbacks",
        kaleyra_conn_id=KALEYRA_CONN_ID,
        submission=submission.output,
        output=planned["callback_results"],
        storage_conn_id="{{ params.storage_conn_id }}",
        deferrable=True,
        poke_interval=5,
        timeout=CALLBACK_TIMEOUT.total_seconds(),
    )

    @task
    def split_by_capability(
        submitted: dict[str, Any], waited: dict[str, Any], run_dir: str
    ) -> dict[str, Any]:
        """capable / not capable / missing (and invalid), one CSV each, plus summary.json."""
        params = get_current_context()["params"]
        conn_id = params["storage_conn_id"]
        out = as_path(run_dir, conn_id)
        groups: dict[str, list[tuple[Any, ...]]] = {"capable": [], "not_capable": [], "missing": []}
        with as_path(waited["output"], conn_id).open("r", encoding="utf-8") as fh:
            for line in fh:  # one line per submitted number
                if not line.strip():
                    continue
                entry = json.loads(line)
                outcome = entry.get("outcome", "missing")
                row = (
                    entry["number"],
                    entry.get("status"),
                    entry.get("received_at"),
                    entry.get("request_id"),
                )
                if outcome == "capable":
                    groups["capable"].append(row)
                elif outcome == "not_capable":
                    groups["not_capable"].append(row)
                else:  # no callback at all, or one that could not be read
                    groups["missing"].append((*row, outcome))
        header = ("e164", "status", "received_at", "request_id")
        outputs = {
            "capable": str(out / "soip_capable.csv"),
            "not_capable": str(out / "soip_not_capable.csv"),
            "missing": str(out / "soip_missing.csv"),
            "summary": str(out / "summary.json"),
        }
        files.write_csv(as_path(outputs["capable"], conn_id), header, groups["capable"])
        files.write_csv(as_path(outputs["not_capable"], conn_id), header, groups["not_capable"])
        files.write_csv(as_path(outputs["missing"], conn_id), (*header, "outcome"), groups["missing"])
        counts = {name: len(rows) for name, rows in groups.items()}
        counts.update(submitted=submitted["numbers"], invalid=submitted["invalid"])
        summary = {
            "counts": counts,
            "capable_rate": counts["capable"] / counts["submitted"] if counts["submitted"] else 0.0,
            "missing_outcomes": dict(Counter(row[-1] for row in groups["missing"])),
            "submitted_at": submitted.get("submitted_at"),
            "callback_profile_id": submitted.get("callback_profile_id"),
            "files": outputs,
        }
        with open_atomic(as_path(outputs["summary"], conn_id)) as handle:
            handle.write(json.dumps(summary, indent=2, default=str))
        print(f"SOIP: {counts}; outputs in {run_dir}")
        return summary

    split_by_capability(submission.output, callbacks.output, planned["run_dir"])
