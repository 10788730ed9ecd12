"""The campaign preflight as one Airflow task group, ``kaleyra_preflight(...)``: ``prepare -> rcs_lookup
(mapped) -> soip_candidates -> soip_check -> soip_wait -> channels -> build_report`` (the SOIP leg may be
skipped); the tasks hand each other typed records (:mod:`.records`), never a number."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, TaskGroup, XComArg, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_provider_kaleyra.client.config import DEFAULT_CONN_ID
from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator
from airflow_provider_kaleyra.operators.soip import KaleyraSoipCapabilityCheckOperator
from airflow_provider_kaleyra.preflight import channels as ch, files
from airflow_provider_kaleyra.preflight.records import ChannelResult, PreparedRun, Shard, SoipLeg
from airflow_provider_kaleyra.preflight.report import KaleyraPreflightReportOperator
from airflow_provider_kaleyra.rcs.engine import CHECKPOINT_BATCHES
from airflow_provider_kaleyra.sensors.kaleyra import KaleyraSoipCallbackSensor
from airflow_provider_kaleyra.utils.storage import as_path

log = logging.getLogger(__name__)
PREPARED = "prepared"  # prepare's XCom key of the PreparedRun


def _expect(name: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    """A setting as the native value it must be: a template rendered as text is refused, not parsed."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise AirflowFailException(
            f"the preflight's {name} must be {kind}, got {type(value).__name__} "
            f"{str(value)[:40]!r}: pass a value or an XComArg, or template it in a DAG with "
            "render_template_as_native_obj=True"
        )
    return value


def kaleyra_preflight(
    group_id: str = "preflight",
    *,
    audience: Any,
    output: Any = None,
    column: Any = "phone",
    region_column: Any = None,
    storage_conn_id: Any = None,
    kaleyra_conn_id: str = DEFAULT_CONN_ID,
    shard_count: Any = 4,
    pool: str | None = None,
    soip: Any = True,
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

    ``audience``, ``output``, ``column``, ``region_column``, ``storage_conn_id``, ``shard_count`` and
    ``soip`` take values, XComArgs or templates (non-text: with ``render_template_as_native_obj=True``).

    :param audience: the audience CSV (any ``ObjectStoragePath`` URL), with a header naming ``column``.
    :param output: folder of the runs (``<output>/<run id>/``); the default, ``<AIRFLOW_HOME>/kaleyra/
        preflight``, suits one machine only: else give storage every worker shares.
    :param region_column: a column naming each row's country, for national numbers (else ``default_region``).
    :param shard_count: most mapped RCS lookup tasks (each holds at least 100 numbers).
    :param pool: Airflow pool capping the RCS shards calling Kaleyra at once (must exist).
    :param soip: run the SMS-over-IP leg for numbers not RCS-capable and in ``soip_regions``.
    :param soip_timeout: seconds to wait for the SOIP callbacks; the unanswered go to SMS, the run goes on.
    :param asset_prefix: names of the channel-list assets (``<prefix>.rcs`` ...): one per DAG.
    """
    assets = {c: Asset(name=f"{asset_prefix}.{'invalid' if c == ch.NONE else c}") for c in ch.CHANNELS}
    with TaskGroup(group_id=group_id) as group:

        @task(retries=0)
        def prepare(
            audience: Any, output: Any, column: Any, region_column: Any, storage: Any, shards: Any
        ) -> list[Shard]:
            """The shards to map over; the :class:`PreparedRun` goes to XCom key ``prepared``."""
            from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
            from airflow_provider_kaleyra.preflight.prepare import default_region_warning, prepare_audience

            context, optional = get_current_context(), (str, type(None))
            storage = _expect("storage_conn_id", storage, optional)
            base = _expect("output", output, optional) or f"file://{files.airflow_home()}/kaleyra/preflight"
            run_dir = as_path(base, storage) / files.safe_name(context["run_id"])
            region = KaleyraHook(kaleyra_conn_id=kaleyra_conn_id).config.default_region
            try:
                prepared = prepare_audience(
                    _expect("audience", audience, str),
                    run_dir,
                    column=_expect("column", column, str),
                    region=region,
                    shard_count=_expect("shard_count", shards, int),
                    storage_conn_id=storage,
                    region_column=_expect("region_column", region_column, optional),
                )
            except (ValueError, FileNotFoundError, PermissionError) as exc:
                raise AirflowFailException(str(exc)) from exc
            counts = prepared["counts"]
            print(
                f"{counts['rows']:,} rows: {counts['distinct']:,} distinct numbers, {counts['duplicates']:,} "
                f"duplicates, {counts['invalid']:,} invalid; {len(prepared['shards'])} shard(s); region {region}"
            )
            if warning := default_region_warning(prepared):
                log.warning(warning)
            context["ti"].xcom_push(key=PREPARED, value=prepared)
            return prepared["shards"]

        @task(retries=0, multiple_outputs=True)
        def soip_candidates(prepared: PreparedRun, leg: bool, regions: Iterable[str] | str) -> SoipLeg:
            """The numbers for the SOIP leg, written to ``work/soip_numbers.csv``; skips the leg when there are none."""
            if not _expect("soip", leg, bool):
                raise AirflowSkipException("SOIP leg off")
            items = regions.replace(",", " ").split() if isinstance(regions, str) else list(regions or [])
            wanted = sorted({str(item).strip().upper() for item in items if str(item).strip()})
            storage = prepared["storage_conn_id"]
            run_dir = as_path(prepared["run_dir"], storage)
            outputs = [as_path(s["output"], storage) for s in prepared["shards"]]
            target = run_dir / files.SOIP_NUMBERS
            numbers = files.write_csv(target, (files.E164,), zip(ch.soip_candidates(outputs, wanted)))
            if not numbers:
                raise AirflowSkipException("no number for the SOIP leg")
            print(f"{numbers:,} numbers are not RCS-capable and in {wanted}: asking SOIP")
            return {"audience": str(target), "results": str(run_dir / files.SOIP_RESULTS)}

        @task(trigger_rule="none_failed", outlets=list(assets.values()), retries=0, multiple_outputs=False)
        def channels(prepared: PreparedRun, leg: SoipLeg | None) -> ChannelResult:
            """The four lists. The SOIP wait writes what arrived even when it timed out (skipped), so
            the numbers asked and their answers are read from files only."""
            storage = prepared["storage_conn_id"]
            result = ch.write_channel_lists(
                as_path(prepared["run_dir"], storage),
                [as_path(s["output"], storage) for s in prepared["shards"]],
                *(as_path(leg[key], storage) if leg else None for key in ("audience", "results")),
            )
            events = get_current_context()["outlet_events"]
            for c, asset in assets.items():
                events[asset].extra = {"location": result["lists"][c], "rows": result["rows"][c]}
            print(f"channels by row: {result['rows']}")
            return result

        shards = prepare(audience, output, column, region_column, storage_conn_id, shard_count)
        prepared = XComArg(shards.operator, key=PREPARED)  # (a list is mapped over; this record is not)
        # the RCS shards and the SOIP check call Kaleyra with prepare's E.164 numbers
        e164_api = {"kaleyra_conn_id": kaleyra_conn_id, "column": files.E164, "e164_input": True}
        lookups = KaleyraRcsBulkLookupOperator.partial(
            task_id="rcs_lookup",
            max_failed_ratio=max_failed_ratio,
            checkpoint_batches=checkpoint_batches,
            retries=retries,
            **e164_api,
            **({"pool": pool} if pool else {}),
        ).expand_kwargs(shards)
        leg = soip_candidates(prepared, soip, soip_regions)
        lookups >> leg
        check = KaleyraSoipCapabilityCheckOperator(
            task_id="soip_check",
            audience=leg["audience"],
            storage_conn_id=storage_conn_id,
            callback_profile_id=callback_profile_id,
            retries=retries,
            **e164_api,
        )
        wait = KaleyraSoipCallbackSensor(
            task_id="soip_wait",
            kaleyra_conn_id=kaleyra_conn_id,
            submission=check.output,
            output=leg["results"],
            storage_conn_id=storage_conn_id,
            min_answered_ratio=soip_min_answered_ratio,
            deferrable=True,
            poke_interval=2,
            timeout=soip_timeout,
            soft_fail=True,  # a timeout must not lose rows: unanswered numbers go to SMS (soip_no_callback)
            retries=retries,  # (a timeout is not retried; a lost worker or API-server hiccup is)
            retry_delay=timedelta(seconds=15),  # the callbacks are in the store: no need to wait long
        )
        decided = channels(prepared, leg)
        [lookups, wait] >> decided
        KaleyraPreflightReportOperator(
            task_id="build_report",
            prepared=prepared,
            decided=decided,
            lookups=lookups.output,
            submission=check.output,
            trigger_rule="none_failed",  # runs when the SOIP leg was skipped (submission is None then)
            retries=0,
        )
    return group
