"""The campaign preflight as one Airflow task group: ``kaleyra_preflight(...)``.

::

    prepare -> rcs_lookup (mapped, one per shard) -> soip_candidates -> soip_check -> soip_wait
                                                  \\----------------------------------------> channels -> report

Tasks hand each other locations and counts; the numbers stay in files under the run folder
``<output>/<run id>/``. ``channels`` has the four channel lists as ``outlets`` (Airflow Assets), so a
DAG that sends the campaign can be scheduled on them; each asset event carries the list's location.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from airflow.sdk import Asset, TaskGroup, XComArg, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_provider_kaleyra.client.config import DEFAULT_CONN_ID
from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator
from airflow_provider_kaleyra.operators.soip import KaleyraSoipCapabilityCheckOperator
from airflow_provider_kaleyra.preflight import channels as ch, files
from airflow_provider_kaleyra.preflight.report_task import KaleyraPreflightReportOperator
from airflow_provider_kaleyra.rcs.engine import CHECKPOINT_BATCHES
from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor
from airflow_provider_kaleyra.utils.storage import as_path


def _optional(value: Any) -> str | None:
    """A rendered optional setting: ``None``, ``""`` and the text ``"None"`` all mean unset."""
    return None if value in (None, "", "None") else str(value)


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes", "on")


def _regions(value: Any) -> list[str]:
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value or [])
    return sorted({str(item).strip().upper() for item in items if str(item).strip()})


def channel_assets(prefix: str) -> dict[str, Asset]:
    """The assets ``channels`` updates: ``<prefix>.rcs``, ``.soip``, ``.sms``, ``.invalid``."""
    return {c: Asset(name=f"{prefix}.{'invalid' if c == ch.NONE else c}") for c in ch.CHANNELS}


def kaleyra_preflight(
    group_id: str = "preflight",
    *,
    audience: str,
    output: str | None = None,
    column: str = "phone",
    storage_conn_id: str | None = None,
    kaleyra_conn_id: str = DEFAULT_CONN_ID,
    shard_count: int | str = 4,
    pool: str | None = None,
    soip: bool | str = True,
    soip_regions: Iterable[str] | str = ch.DEFAULT_SOIP_REGIONS,
    callback_profile_id: str | None = None,
    soip_timeout: float = 3600,
    soip_min_answered_ratio: float = 1.0,
    max_failed_ratio: float = 0.02,
    checkpoint_batches: int = CHECKPOINT_BATCHES,
    asset_prefix: str = "kaleyra_preflight",
    retries: int = 2,
) -> TaskGroup:
    """Add a campaign preflight to the current DAG; returns its task group.

    String arguments may be templates (``"{{ params.audience }}"``); they are rendered in each task.

    :param audience: the audience CSV (any ``ObjectStoragePath`` URL), with a header naming ``column``.
    :param output: folder of the runs; each run writes to ``<output>/<run id>/``. Default:
        ``file://<AIRFLOW_HOME>/kaleyra/preflight``, fine on one machine only: on a deployment
        whose workers do not share a disk, set it to shared storage (``s3://...``).
    :param shard_count: most mapped RCS lookup tasks (each holds at least 100 numbers).
    :param pool: Airflow pool capping the RCS shards calling Kaleyra at once (must exist).
    :param soip: run the SMS-over-IP leg for numbers that are not RCS-capable and in ``soip_regions``.
    :param soip_timeout: seconds to wait for the SOIP callbacks; numbers still unanswered then
        go to SMS with reason ``soip_no_callback`` (the run does not fail).
    :param asset_prefix: names of the channel-list assets (``<prefix>.rcs`` ...); give each
        preflight DAG its own.
    """
    assets = channel_assets(asset_prefix)
    with TaskGroup(group_id=group_id) as group:

        @task(retries=0)
        def prepare(
            audience: str, output: str | None, column: str, storage: str | None, shards: Any
        ) -> list[dict[str, Any]]:
            """Read the audience once, normalize each row once, write the work files; returns the shard plan.

            The counts go to XCom under the key ``summary``.
            """
            from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
            from airflow_provider_kaleyra.preflight.prepare import prepare_audience

            context = get_current_context()
            storage = _optional(storage)
            run_dir = files.run_folder(_optional(output), context["run_id"], storage)
            region = KaleyraHook(kaleyra_conn_id=kaleyra_conn_id).config.default_region
            try:
                prepared = prepare_audience(
                    audience,
                    run_dir,
                    column=column,
                    region=region,
                    shard_count=int(shards),
                    storage_conn_id=storage,
                )
            except (ValueError, FileNotFoundError, PermissionError) as exc:
                raise AirflowFailException(str(exc)) from exc
            for shard in prepared["shards"]:
                shard["storage_conn_id"] = storage
            prepared["summary"]["storage_conn_id"] = storage
            counts = prepared["summary"]["counts"]
            print(
                f"{counts['rows']:,} rows: {counts['distinct']:,} distinct numbers, {counts['duplicates']:,} "
                f"duplicates, {counts['invalid']:,} invalid; {len(prepared['shards'])} shard(s); region {region}"
            )
            context["ti"].xcom_push(key="summary", value=prepared["summary"])
            return prepared["shards"]

        @task(retries=0)
        def soip_candidates(
            prepared: dict[str, Any],
            shards: list[dict[str, Any]],
            storage: str | None,
            leg: Any,
            regions: Any,
        ) -> dict[str, Any]:
            """The numbers for the SOIP leg, written to ``work/soip_numbers.csv``; skips the leg when there are none."""
            if not _flag(leg):
                raise AirflowSkipException("SOIP leg off")
            storage = _optional(storage)
            target = as_path(prepared["run_dir"], storage) / files.SOIP_NUMBERS
            outputs = [as_path(s["output"], storage) for s in shards]
            numbers = files.write_csv(
                target, (files.E164,), ((n,) for n in ch.soip_candidates(outputs, _regions(regions)))
            )
            if not numbers:
                raise AirflowSkipException("no number for the SOIP leg")
            print(f"{numbers:,} numbers are not RCS-capable and in {_regions(regions)}: asking SOIP")
            return {"audience": str(target), "numbers": numbers}

        @task(trigger_rule="none_failed", outlets=list(assets.values()), retries=0)
        def channels(
            prepared: dict[str, Any], shards: list[dict[str, Any]], storage: str | None
        ) -> dict[str, Any]:
            """One channel per row; the four lists, keeping every audience column."""
            context = get_current_context()
            storage = _optional(storage)
            run_dir = as_path(prepared["run_dir"], storage)
            answers = ch.read_rcs_answers(as_path(s["output"], storage) for s in shards)
            asked_path = run_dir / files.SOIP_NUMBERS
            asked = {r[files.E164] for r in files.read_records(asked_path)} if asked_path.exists() else set()
            waited = context["ti"].xcom_pull(task_ids=f"{group.group_id}.soip_wait") if asked else None
            outcomes: dict[str, str] = {}
            if waited:
                outcomes = ch.read_soip_outcomes(as_path(waited["output"], storage))
            elif asked:  # the wait timed out (soft_fail): keep what came in; the rest is soip_no_callback
                submission = context["ti"].xcom_pull(task_ids=f"{group.group_id}.soip_check")
                if submission:
                    from airflow_provider_kaleyra.callbacks.store import get_store
                    from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook

                    store = get_store(KaleyraHook(kaleyra_conn_id=kaleyra_conn_id).config.store_url)
                    outcomes = ch.stored_soip_outcomes(store, submission)
            result = ch.write_channel_lists(run_dir, answers, asked, outcomes)
            for channel, asset in assets.items():
                context["outlet_events"][asset].extra = {
                    "location": result["lists"][channel],
                    "rows": result["rows"][channel],
                }
            print(f"channels by row: {result['rows']}")
            return result

        shards = prepare(audience, output, column, storage_conn_id, shard_count)
        prepared = XComArg(shards.operator, key="summary")
        lookups = KaleyraRcsBulkLookupOperator.partial(
            task_id="rcs_lookup",
            kaleyra_conn_id=kaleyra_conn_id,
            column=files.E164,
            e164_input=True,
            max_failed_ratio=max_failed_ratio,
            checkpoint_batches=checkpoint_batches,
            retries=retries,
            **({"pool": pool} if pool else {}),
        ).expand_kwargs(shards)
        candidates = soip_candidates(prepared, shards, storage_conn_id, soip, soip_regions)
        lookups >> candidates
        prepared_field = f"ti.xcom_pull(task_ids='{group.group_id}.prepare', key='summary')"
        check = KaleyraSoipCapabilityCheckOperator(
            task_id="soip_check",
            kaleyra_conn_id=kaleyra_conn_id,
            audience=candidates["audience"],
            column=files.E164,
            storage_conn_id=f"{{{{ {prepared_field}['storage_conn_id'] or '' }}}}",
            callback_profile_id=callback_profile_id,
            retries=retries,
        )
        wait = KaleyraSoipCallbackSensor(
            task_id="soip_wait",
            kaleyra_conn_id=kaleyra_conn_id,
            submission=check.output,
            output=f"{{{{ {prepared_field}['run_dir'] }}}}/{files.SOIP_RESULTS}",
            storage_conn_id=f"{{{{ {prepared_field}['storage_conn_id'] or '' }}}}",
            min_answered_ratio=soip_min_answered_ratio,
            deferrable=True,
            poke_interval=2,
            timeout=soip_timeout,
            soft_fail=True,  # a timeout must not lose rows: unanswered numbers go to SMS (soip_no_callback)
        )
        decided = channels(prepared, shards, storage_conn_id)
        [lookups, wait] >> decided
        KaleyraPreflightReportOperator(
            task_id="build_report",
            prepared=prepared,
            decided=decided,
            lookups=lookups.output,
            storage_conn_id=storage_conn_id,
            soip_check_task_id=check.task_id,
            retries=0,
        )
    return group
