"""Operators for Kaleyra RCS lookups: one number, or a whole audience to a file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_kaleyra.client.api import STATUSES
from airflow_provider_kaleyra.client.config import DEFAULT_CONN_ID, parse_age
from airflow_provider_kaleyra.numbers.masking import mask
from airflow_provider_kaleyra.operators.base import (
    AUDIENCE_FIELDS,
    AudienceOperator,
    KaleyraOperator,
    fail_fast,
)
from airflow_provider_kaleyra.rcs.cache import REFRESH, CacheMode, CapabilityCacheError
from airflow_provider_kaleyra.rcs.engine import CHECKPOINT_BATCHES, Engine
from airflow_provider_kaleyra.rcs.outputs import result_format, write_results
from airflow_provider_kaleyra.rcs.progress import Stats
from airflow_provider_kaleyra.utils.storage import as_path

if TYPE_CHECKING:
    from airflow.sdk import Context


def _ratio(value: float | str | None, name: str) -> float | None:
    """A rendered ratio as a float in [0, 1]; ``None`` or ``""`` for no limit."""
    if value is None or value == "":
        return None
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    return ratio


class KaleyraRcsLookupOperator(KaleyraOperator):
    """Look up whether one phone number is RCS-enabled; returns Kaleyra's device record to XCom.

    The record's ``deviceAddress`` is masked: Airflow logs a task's return value and keeps it
    in XCom, and a phone number is personal data.

    :param number: the number, in any common format; national numbers need the connection's
        ``default_region``. (templated)
    :param kaleyra_conn_id: the ``kaleyra`` connection. (templated)
    """

    template_fields: Sequence[str] = ("kaleyra_conn_id", "number")

    def __init__(self, *, number: str, kaleyra_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(kaleyra_conn_id=kaleyra_conn_id, **kwargs)
        self.number = number

    @fail_fast
    def execute(self, context: Context) -> dict[str, Any]:
        data = self.hook.lookup_rcs(self.number)
        self.log.info(
            "RCS lookup of %s: rcsEnabled=%s, carrierStatus=%s",
            mask(str(self.number)),
            data.get("rcsEnabled"),
            data.get("carrierStatus"),
        )
        return (
            {**data, "deviceAddress": mask(str(data["deviceAddress"]))} if "deviceAddress" in data else data
        )


class KaleyraRcsBulkLookupOperator(AudienceOperator):
    """Look up RCS capability for a whole audience; results go to a file, a summary to XCom.

    Each input row gets exactly one output row (``row``, ``input``, ``e164``, ``status``,
    ``carrier_id``, ``carrier_status``, ``error``) with status ``rcs_enabled``, ``rcs_disabled``,
    ``invalid`` or ``failed``. Numbers are normalized (the connection's ``default_region`` reads
    national numbers), de-duplicated and looked up in compliant 100-500 bulk calls.

    The work is checkpointed next to the output (``<output>.checkpoint/``): when the task is
    retried after a crash, chunks already answered are not asked again, and the output is the
    same as that of an uninterrupted run. The checkpoint belongs to the task instance (DAG, run,
    task, map index): another run writing the same output never reuses its answers. Memory holds the distinct numbers and their answers,
    never the rows. Reading, lookups and writing overlap: calls start after the first ~10,000
    distinct numbers (after the whole audience when ``shard_index`` or ``max_invalid_ratio``
    needs it first), and rows are written as their numbers are answered.

    To spread one audience over several workers, map over ``shard_index`` and template the
    output, e.g. ``.partial(audience=..., shard_count=4, output="s3://b/out-{{ ti.map_index }}.csv",
    pool="kaleyra").expand(shard_index=[0, 1, 2, 3])``; a ``pool`` caps concurrent API use across
    workers. Each shard looks up its contiguous slice of the distinct numbers (first-seen order)
    and writes the rows holding them; invalid rows go to shard 0. Join the shard outputs with
    :func:`airflow_provider_kaleyra.rcs.outputs.merge_results`.

    :param output: where the results go (path or URL or ``ObjectStoragePath``): ``.csv``, or
        ``.jsonl`` / ``.json`` for JSON Lines. Kept as ``output_path``, since ``output`` is the
        operator's XComArg. (templated)
    The audience (``numbers`` or ``audience``, ``column``, ``audience_format``, ``shard_index``,
    ``shard_count``, ``storage_conn_id``) is read as :class:`~.base.AudienceOperator` says;
    ``storage_conn_id`` also serves ``output`` given as a string.

    :param max_failed_ratio: the task fails (after writing the output) when more than this share
        of the distinct numbers could not be looked up; 0.01 by default, so a handful of
        failures in a big audience pass with a warning while an outage fails the task (and a
        retry asks again only for the chunks that held failures); 0 or ``None``: any failure
        fails the task. (templated)
    :param max_invalid_ratio: the task fails, before any API call and without retries, when more
        than this share of the input rows are not valid numbers (a wrong column or region);
        ``None`` (default) for no limit. (templated)
    :param checkpoint_batches: API calls per checkpoint part.
    :param e164_input: the audience was normalized by an earlier step (e.g. the preflight's
        ``prepare``): only the E.164 shape is checked, so each number is parsed once per run.
    :param cache: the capability cache (README, "Remembering answers"): ``None`` uses it when the
        connection sets ``cache_url``; ``True`` requires it; ``False`` bypasses it; ``"refresh"``
        asks Kaleyra for every number and rewrites it.
    :param cache_max_age_positive: how long a cached ``rcs_enabled`` answer is served (``"7d"``,
        ``"36h"``, a ``timedelta``); the connection's by default.
    :param cache_max_age_negative: the same for ``rcs_disabled`` answers.
    :param kaleyra_conn_id: the ``kaleyra`` connection. (templated)
    """

    template_fields: Sequence[str] = (
        *AUDIENCE_FIELDS,
        "output_path",
        "max_failed_ratio",
        "max_invalid_ratio",
    )

    def __init__(
        self,
        *,
        output: str | ObjectStoragePath,
        max_failed_ratio: float | str = 0.01,
        max_invalid_ratio: float | str | None = None,
        checkpoint_batches: int = CHECKPOINT_BATCHES,
        e164_input: bool = False,
        cache: CacheMode = None,
        cache_max_age_positive: timedelta | str | None = None,
        cache_max_age_negative: timedelta | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.e164_input = e164_input
        if checkpoint_batches < 1:
            raise ValueError(f"checkpoint_batches must be at least 1, got {checkpoint_batches}")
        self.output_path = output  # ``self.output`` is BaseOperator's XComArg
        for name, ratio in (("max_failed_ratio", max_failed_ratio), ("max_invalid_ratio", max_invalid_ratio)):
            if not isinstance(ratio, str):  # templated strings are checked once rendered
                _ratio(ratio, name)
        self.max_failed_ratio = max_failed_ratio
        self.max_invalid_ratio = max_invalid_ratio
        self.checkpoint_batches = checkpoint_batches
        if cache not in (None, True, False, REFRESH):
            raise ValueError(f'cache must be True, False, "refresh" or None, got {cache!r}')
        self.cache = cache
        self.cache_max_age_positive, self.cache_max_age_negative = (
            None if age is None else parse_age(age, name)
            for age, name in (
                (cache_max_age_positive, "cache_max_age_positive"),
                (cache_max_age_negative, "cache_max_age_negative"),
            )
        )

    @fail_fast
    def execute(self, context: Context) -> dict[str, Any]:
        output = as_path(self.output_path, self.storage_conn_id)
        result_format(output)  # a wrong suffix fails before any work
        shard = self._shard()
        max_failed = _ratio(self.max_failed_ratio, "max_failed_ratio") or 0.0
        max_invalid = _ratio(self.max_invalid_ratio, "max_invalid_ratio")
        requests_before = self.hook.transport.requests_sent
        try:
            cache = self.hook.cache_run(self.cache, self.cache_max_age_positive, self.cache_max_age_negative)
        except CapabilityCacheError as exc:  # a setting to fix: retries would fail the same way
            raise AirflowFailException(str(exc)) from None
        with Engine(
            self.hook,
            cache=cache,
            shard=shard,
            checkpoint_at=output,
            run=self._run_identity(context),
            checkpoint_batches=self.checkpoint_batches,
            e164_input=self.e164_input,
            log=self.log,
        ) as engine:
            blocks = self._blocks()
            if shard is None and max_invalid is None:
                answered = engine.stream(blocks)  # nothing needs the whole audience first
            else:
                self._check_invalid(engine.read(blocks), max_invalid)
                answered = engine.lookup()
            with write_results(output) as out:
                for block in answered:
                    out.write_block(block)
            stats = engine.stats
            self.log.info(
                "Audience: %s rows, %s invalid, %s distinct numbers for this task%s",
                stats.inputs,
                stats.invalid_inputs,
                stats.distinct,
                f" (shard {shard.index} of {shard.count})" if shard else "",
            )
            summary = _summary(engine, output, self.hook.transport.requests_sent - requests_before)
            assert engine.checkpoint is not None
            failed, distinct = summary["failed_numbers"], summary["distinct"]
            if failed and failed / distinct > max_failed:
                engine.checkpoint.discard(engine.failed_chunks)  # a retry asks again for these only
                raise AirflowException(
                    f"{failed} of {distinct} distinct numbers could not be looked up "
                    f"(max_failed_ratio={max_failed}); every row, with its reason, is in {summary['output']}"
                )
            engine.checkpoint.clear()
        if summary["failed_numbers"]:
            self.log.warning(
                "%s of %s distinct numbers could not be looked up; see status 'failed' in %s",
                summary["failed_numbers"],
                summary["distinct"],
                summary["output"],
            )
        self.log.info(
            "Wrote %s rows to %s: %s; %s API requests",
            summary["rows"],
            summary["output"],
            ", ".join(f"{status}={summary['statuses'][status]}" for status in STATUSES),
            summary["requests"],
        )
        if summary.get("cache"):
            self.log.info(
                "Capability cache: %(from_cache)s numbers answered from it, %(asked)s asked, "
                "%(written_to_cache)s answers written, about %(requests_saved)s API requests saved",
                summary["cache"],
            )
        return summary

    def _run_identity(self, context: Context) -> str:
        """Whose checkpoint this is: a retry of this task instance resumes it, nothing else does."""
        ti = context.get("ti")
        dag_id = getattr(ti, "dag_id", None) or (self.dag_id if self.has_dag() else "")
        run_id = context.get("run_id") or getattr(ti, "run_id", "")
        map_index = getattr(ti, "map_index", -1)
        return json.dumps([dag_id, run_id, self.task_id, map_index if isinstance(map_index, int) else -1])

    @staticmethod
    def _check_invalid(stats: Stats, limit: float | None) -> None:
        inputs, invalid = stats.inputs, stats.invalid_inputs
        if limit is None or not inputs or invalid / inputs <= limit:
            return
        reasons = "; ".join(f"{reason} ({n})" for reason, n in stats.invalid_reasons.most_common(3))
        raise AirflowFailException(
            f"{invalid} of {inputs} input rows are not valid numbers (max_invalid_ratio={limit}), "
            f"so nothing was looked up. Most common reasons: {reasons}"
        )


def _summary(engine: Engine, output: ObjectStoragePath, requests: int) -> dict[str, Any]:
    """The small XCom dict: counts only, never numbers."""
    stats = engine.stats
    return {
        "output": str(output),
        "inputs": stats.inputs,
        "rows": stats.rows,
        "distinct": stats.distinct,
        "statuses": {status: stats.statuses.get(status, 0) for status in STATUSES},
        "failed_numbers": stats.failed_numbers,
        "requests": requests,
        "batches": stats.batches,
        "chunks": stats.chunks,
        "chunks_resumed": stats.chunks_resumed,
        "shard": list(engine.shard) if engine.shard else None,
        "cache": engine.cache.summary() if engine.cache else None,
    }
