"""
### Kaleyra campaign preflight (daily)

Which channel should each row of a campaign audience use? **RCS** where the number is RCS-capable,
else **SMS over IP** where the number can take it (India), else **SMS**; **none** for rows that are not
phone numbers. Every row comes out once, with its channel and the reason, in `rcs.csv`, `soip.csv`,
`sms.csv` or `invalid.csv` (every audience column kept), plus `report.html`, `report.md` and
`summary.json`, under `<output_location>/<run id>/`.

The work is the provider's task group `kaleyra_preflight`: **prepare** (read and normalize the
audience once, plan the shards) → **rcs_lookup** (mapped bulk lookups, pool `kaleyra_api`) →
**soip_candidates** → **soip_check** → **soip_wait** (deferrable, callbacks) → **channels** → **build_report**.
The channel lists are Assets (`kaleyra_preflight.rcs`, `.soip`, `.sms`, `.invalid`): schedule the DAG
that sends the campaign on them.

Runs daily at 06:00 UTC; unpausing it (the Trigger form does) starts no run of its own, only yours.

**Set-up:** a connection `kaleyra_default` (type *Kaleyra*; its `default_region` reads numbers written
without a country code, `US` for the generated sample, or set the param `region_column`;
`callback_secret` and `callback_profile_id` for the SOIP leg), the pool
`airflow pools set kaleyra_api 2 "Kaleyra API"` (without it the lookups are never scheduled), and, when
workers do not share a disk, `output_location` on shared storage (`s3://...` with `storage_conn_id`).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, CronTriggerTimetable, Param, get_current_context, task

from airflow_provider_kaleyra.preflight import kaleyra_preflight

with DAG(
    dag_id="example_kaleyra_campaign_preflight",
    description="Daily campaign preflight: one channel (RCS, SMS over IP, SMS) per audience row",
    doc_md=__doc__,
    # 06:00 UTC daily. No start_date: unpausing (the Trigger form does) starts no run of a past day,
    # so the run you trigger is the only one until the next 06:00.
    schedule=CronTriggerTimetable("0 6 * * *", timezone="UTC"),
    catchup=False,
    render_template_as_native_obj=True,  # "{{ params.shard_count }}" reaches the task group as an int
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    tags=["kaleyra", "rcs", "soip", "example"],
    params={
        "audience_location": Param(
            None,
            type=["null", "string"],
            title="Audience CSV (file://, s3://, ...)",
            description="None: a generated sample audience of audience_size rows under the Airflow home.",
        ),
        "phone_column": Param("phone", type="string", minLength=1, title="Phone column of the audience"),
        "audience_size": Param(10_000, type="integer", minimum=1, maximum=5_000_000, title="Sample rows"),
        "output_location": Param(
            None,
            type=["null", "string"],
            title="Output folder",
            description="None: kaleyra/preflight under the Airflow home (one machine only).",
        ),
        "storage_conn_id": Param(None, type=["null", "string"], title="Object storage connection id"),
        "region_column": Param(
            None,
            type=["null", "string"],
            title="Country column (ISO code, name or calling code) for numbers without a country code",
            description="None: they are read with the connection's default_region; the report counts them.",
        ),
        "shard_count": Param(4, type="integer", minimum=1, maximum=256, title="Most RCS lookup shards"),
        "soip": Param(True, type="boolean", title="SMS-over-IP leg for numbers not RCS-capable"),
    },
) as dag:

    @task
    def audience() -> str:
        """`params.audience_location`, or the deterministic sample audience (generated once)."""
        from airflow_provider_kaleyra.preflight.files import airflow_home
        from airflow_provider_kaleyra.preflight.prepare import write_sample_audience
        from airflow_provider_kaleyra.utils.storage import as_path

        params = get_current_context()["params"]
        if params["audience_location"]:
            return params["audience_location"]
        size = params["audience_size"]
        path = as_path(f"file://{airflow_home()}/kaleyra/samples/audience_{size}.csv")
        if not path.exists():
            write_sample_audience(path, size, seed=42, column=params["phone_column"])
        return str(path)

    kaleyra_preflight(
        audience=audience(),
        column="{{ params.phone_column }}",
        output="{{ params.output_location }}",
        region_column="{{ params.region_column }}",
        storage_conn_id="{{ params.storage_conn_id }}",
        shard_count="{{ params.shard_count }}",
        soip="{{ params.soip }}",
        pool="kaleyra_api",
        asset_prefix="kaleyra_preflight",
    )
