"""Operators for Kaleyra RCS lookups: one number, or a whole audience to a file."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_kaleyra.client.api import STATUSES
from airflow_provider_kaleyra.client.config import parse_age
from airflow_provider_kaleyra.numbers.masking import mask
from airflow_provider_kaleyra.operators.base import AudienceOperator, KaleyraOperator, fail_fast, run_identity
from airflow_provider_kaleyra.rcs.cache import REFRESH, CacheMode, CapabilityCacheError
from airflow_provider_kaleyra.rcs.engine import CHECKPOINT_BATCHES, Engine
from airflow_provider_kaleyra.rcs.outputs import result_format, write_results
from airflow_provider_kaleyra.rcs.progress import Stats
from airflow_provider_kaleyra.utils.storage import as_path

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath


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
    """Look up whether one phone number is RCS-enabled; returns Kaleyra's device record to XCom, its
    ``deviceAddress`` masked (Airflow logs a task's return value and keeps it).

    :param number: in any common format (national: the connection's default_region). (templated)
    """

    template_fields: Sequence[str] = ("kaleyra_conn_id", "number")

    def __init__(self, *, number: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
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
    """Look up RCS capability for a whole audience: one output row per input row, a summary to XCom.

    Answers are checkpointed beside the output, owned by the task instance: a retry resumes, another
    run never reuses them. The audience arguments are :class:`~.base.AudienceOperator`'s; shards and
    the cache: README.

    :param output: ``.csv``, or ``.jsonl`` / ``.json`` for JSON Lines; kept as ``output_path``, since
        ``output`` is the XComArg. (templated)
    :param max_failed_ratio: above this share of failed distinct numbers (0 or ``None``: any) the task
        fails after writing the output; its retry asks again only for chunks with failures. (templated)
    :param max_invalid_ratio: above this share of invalid rows the task fails before any API call,
        without retries; ``None``: no limit. (templated)
    :param checkpoint_batches: API calls per checkpoint part.
    :param cache: ``None`` (on when the connection sets ``cache_url``), ``True``, ``False`` or ``"refresh"``.
    :param cache_max_age_positive: how long a cached ``rcs_enabled`` answer is served (``"7d"``, a
        ``timedelta``); ``cache_max_age_negative``: ``rcs_disabled``. The connection's by default.
    """

    template_fields: Sequence[str] = (
        *AudienceOperator.template_fields,
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
        cache: CacheMode = None,
        cache_max_age_positive: timedelta | str | None = None,
        cache_max_age_negative: timedelta | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if checkpoint_batches < 1:
            raise ValueError(f"checkpoint_batches must be at least 1, got {checkpoint_batches}")
        if cache not in (None, True, False, REFRESH):
            raise ValueError(f'cache must be True, False, "refresh" or None, got {cache!r}')
        for name, ratio in (("max_failed_ratio", max_failed_ratio), ("max_invalid_ratio", max_invalid_ratio)):
            if not isinstance(ratio, str):  # templated strings are checked once rendered
                _ratio(ratio, name)
        self.output_path = output  # ``self.output`` is BaseOperator's XComArg
        self.max_failed_ratio = max_failed_ratio
        self.max_invalid_ratio = max_invalid_ratio
        self.checkpoint_batches = checkpoint_batches
        self.cache = cache
        self.cache_max_age_positive = _age(cache_max_age_positive, "cache_max_age_positive")
        self.cache_max_age_negative = _age(cache_max_age_negative, "cache_max_age_negative")

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
            run=run_identity(self, context),
            checkpoint_batches=self.checkpoint_batches,
            e164_input=self.e164_input,
            log=self.log,
        ) as engine:
            blocks = self._blocks()
            if shard is None and max_invalid is None:
                answered = engine.stream(blocks)  # nothing needs the whole audience first
            else:
                _check_invalid(engine.read(blocks), max_invalid)
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
            summary = {  # counts only, never numbers
                "output": str(output),
                "inputs": stats.inputs,
                "rows": stats.rows,
                "distinct": stats.distinct,
                "statuses": {status: stats.statuses.get(status, 0) for status in STATUSES},
                "failed_numbers": stats.failed_numbers,
                "requests": self.hook.transport.requests_sent - requests_before,
                "batches": stats.batches,
                "chunks": stats.chunks,
                "chunks_resumed": stats.chunks_resumed,
                "shard": list(shard) if shard else None,
                "cache": cache.summary() if cache else None,
            }
            assert engine.checkpoint is not None
            failed, distinct = stats.failed_numbers, stats.distinct
            if failed and failed / distinct > max_failed:
                engine.checkpoint.discard(engine.failed_chunks)  # a retry asks again for these only
                raise AirflowException(
                    f"{failed} of {distinct} distinct numbers could not be looked up "
                    f"(max_failed_ratio={max_failed}); every row, with its reason, is in {output}"
                )
            engine.checkpoint.clear()
        if failed:
            self.log.warning(
                "%s of %s distinct numbers could not be looked up; see status 'failed' in %s",
                failed,
                distinct,
                output,
            )
        statuses = ", ".join(f"{status}={n}" for status, n in summary["statuses"].items())
        self.log.info(
            "Wrote %s rows to %s: %s; %s API requests", stats.rows, output, statuses, summary["requests"]
        )
        if summary["cache"]:
            self.log.info(
                "Capability cache: %(from_cache)s numbers answered from it, %(asked)s asked, "
                "%(written_to_cache)s answers written, about %(requests_saved)s API requests saved",
                summary["cache"],
            )
        return summary


def _age(value: timedelta | str | None, name: str) -> timedelta | None:
    return None if value is None else parse_age(value, name)


def _check_invalid(stats: Stats, limit: float | None) -> None:
    """``max_invalid_ratio``: too many rows that are not numbers stop the task before any call."""
    inputs, invalid = stats.inputs, stats.invalid_inputs
    if limit is not None and inputs and invalid / inputs > limit:
        reasons = "; ".join(f"{reason} ({n})" for reason, n in stats.invalid_reasons.most_common(3))
        raise AirflowFailException(
            f"{invalid} of {inputs} input rows are not valid numbers (max_invalid_ratio={limit}), "
            f"so nothing was looked up. Most common reasons: {reasons}"
        )
