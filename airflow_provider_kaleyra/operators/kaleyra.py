"""Operators for Kaleyra RCS lookups and SMS-over-IP capability checks."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_kaleyra.api import SOIP_CHUNK_SIZE, STATUSES
from airflow_provider_kaleyra.audience import AudienceRow, distinct_numbers, read_audience
from airflow_provider_kaleyra.batching import shard_bounds
from airflow_provider_kaleyra.cache import REFRESH, CacheMode, CapabilityCacheError
from airflow_provider_kaleyra.callbacks.store import get_store
from airflow_provider_kaleyra.config import DEFAULT_CONN_ID, StoreNotConfigured, parse_age
from airflow_provider_kaleyra.exceptions import KaleyraAuthError
from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
from airflow_provider_kaleyra.operators.bulk import CHECKPOINT_BATCHES, BulkLookup, Shard
from airflow_provider_kaleyra.outputs import result_format
from airflow_provider_kaleyra.phone import MaskedNumbers, mask
from airflow_provider_kaleyra.utils.storage import as_path

if TYPE_CHECKING:
    from airflow.sdk import Context


def _as_list(value: Any, name: str) -> list[Any]:
    """A rendered ``numbers`` argument as a list: any iterable but a string (a string is a mistake)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f"{name} must be a list of phone numbers, got {type(value).__name__}; to pass a templated "
            "list, use an XComArg or render_template_as_native_obj=True on the DAG"
        )
    return list(value)


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


def _age_or_none(value: timedelta | str | None, name: str) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    try:
        return parse_age(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


# What waiting cannot fix: bad credentials (401/403), a wrong column or configuration (ValueError,
# TypeError), an audience that is not there or not readable. Retrying these only delays the failure.
_PERMANENT_ERRORS = (KaleyraAuthError, ValueError, TypeError, FileNotFoundError, PermissionError)


@functools.cache
def _non_retryable(kind: type[Exception]) -> type[AirflowFailException]:
    """``AirflowFailException`` that is still a ``kind``: code catching ``ValueError`` etc. keeps working."""
    return type(kind.__name__, (AirflowFailException, kind), {"__module__": kind.__module__})


def _fail_fast(execute: Callable[..., Any]) -> Callable[..., Any]:
    """Re-raise a permanent error of ``execute`` as non-retryable (same message, same type); others propagate."""

    @functools.wraps(execute)
    def wrapper(self: BaseOperator, context: Context) -> Any:
        try:
            return execute(self, context)
        except AirflowException:
            raise
        except _PERMANENT_ERRORS as exc:
            error = _non_retryable(type(exc))(*exc.args)
            error.__dict__.update(exc.__dict__)
            raise error.with_traceback(exc.__traceback__) from exc

    wrapper.__kaleyra_fail_fast__ = True  # type: ignore[attr-defined]
    return wrapper


class _KaleyraOperator(BaseOperator):
    """Holds the connection id and the hook; the hook reads the connection on first use only.

    Every subclass's ``execute`` fails at once, without retries, on what waiting cannot fix
    (:data:`_PERMANENT_ERRORS`); transient errors keep the task's ``retries``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        execute = cls.__dict__.get("execute")
        if execute is not None and not getattr(execute, "__kaleyra_fail_fast__", False):
            cls.execute = _fail_fast(execute)  # type: ignore[method-assign]

    def __init__(self, *, kaleyra_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kaleyra_conn_id = kaleyra_conn_id

    @cached_property
    def hook(self) -> KaleyraHook:
        return KaleyraHook(kaleyra_conn_id=self.kaleyra_conn_id)


class _AudienceOperator(_KaleyraOperator):
    """The audience arguments of the RCS bulk lookup and the SOIP check, read one way by both.

    ``numbers`` (a list) or ``audience`` (a file) + ``column`` + ``audience_format``, with
    ``storage_conn_id`` and an optional ``shard_index``/``shard_count``. A rendered ``numbers`` list
    is kept as :class:`~airflow_provider_kaleyra.phone.MaskedNumbers`: Airflow records rendered
    fields, and they would otherwise show the audience in clear.
    """

    template_fields_renderers = {"numbers": "json"}

    def __init__(
        self,
        *,
        numbers: Iterable[str] | None = None,
        audience: str | ObjectStoragePath | None = None,
        column: str = "phone",
        audience_format: str | None = None,
        shard_index: int | str | None = None,
        shard_count: int | str | None = None,
        storage_conn_id: str | None = None,
        kaleyra_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(kaleyra_conn_id=kaleyra_conn_id, **kwargs)
        if (numbers is None) == (audience is None):
            raise ValueError("pass exactly one of numbers (a list) or audience (a file)")
        self.numbers = numbers
        self.audience = audience
        self.column = column
        self.audience_format = audience_format
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.storage_conn_id = storage_conn_id

    def render_template_fields(self, context: Context, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        if self.numbers is not None:
            self.numbers = MaskedNumbers(_as_list(self.numbers, "numbers"))

    def _shard(self) -> Shard | None:
        if self.shard_index in (None, "") and self.shard_count in (None, ""):
            return None
        if self.shard_index in (None, "") or self.shard_count in (None, ""):
            raise ValueError("shard_index and shard_count must be set together")
        index, count = int(self.shard_index), int(self.shard_count)  # type: ignore[arg-type]
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard_index must be in [0, shard_count), got {index} of {count}")
        return Shard(index, count)

    def _rows(self) -> Iterable[AudienceRow]:
        if self.audience is not None:
            path = as_path(self.audience, self.storage_conn_id)
            return read_audience(path, column=self.column, fmt=self.audience_format)
        return (AudienceRow(raw) for raw in _as_list(self.numbers, "numbers"))


class KaleyraRcsLookupOperator(_KaleyraOperator):
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


class KaleyraRcsBulkLookupOperator(_AudienceOperator):
    """Look up RCS capability for a whole audience; results go to a file, a summary to XCom.

    Each input row gets exactly one output row (``row``, ``input``, ``e164``, ``status``,
    ``carrier_id``, ``carrier_status``, ``error``) with status ``rcs_enabled``, ``rcs_disabled``,
    ``invalid`` or ``failed``. Numbers are normalized (the connection's ``default_region`` reads
    national numbers), de-duplicated and looked up in compliant 100-500 bulk calls.

    The work is checkpointed next to the output (``<output>.checkpoint/``): when the task is
    retried after a crash, chunks already answered are not asked again, and the output is the
    same as that of an uninterrupted run. Memory holds the distinct numbers and their answers,
    never the rows. Reading, lookups and writing overlap: calls start after the first ~10,000
    distinct numbers (after the whole audience when ``shard_index`` or ``max_invalid_ratio``
    needs it first), and rows are written as their numbers are answered.

    To spread one audience over several workers, map over ``shard_index`` and template the
    output, e.g. ``.partial(audience=..., shard_count=4, output="s3://b/out-{{ ti.map_index }}.csv",
    pool="kaleyra").expand(shard_index=[0, 1, 2, 3])``; a ``pool`` caps concurrent API use across
    workers. Each shard looks up its contiguous slice of the distinct numbers (first-seen order)
    and writes the rows holding them; invalid rows go to shard 0. Join the shard outputs with
    :func:`airflow_provider_kaleyra.outputs.merge_results`.

    :param output: where the results go (path or URL or ``ObjectStoragePath``): ``.csv``, or
        ``.jsonl`` / ``.json`` for JSON Lines. Kept as ``output_path``, since ``output`` is the
        operator's XComArg. (templated)
    :param numbers: the audience as a list, for small audiences. (templated)
    :param audience: the audience as a file (path or URL or ``ObjectStoragePath``): a CSV with a
        header naming ``column``, or plain text with one number per line. (templated)
    :param column: the CSV column holding the numbers. (templated)
    :param audience_format: ``"csv"`` or ``"text"``; by default read from the suffix.
    :param shard_index: this task's shard, from 0; set with ``shard_count``. (templated)
    :param shard_count: how many shards the audience is cut into. (templated)
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
    :param storage_conn_id: the Airflow connection of the object store, for ``audience`` and
        ``output`` given as strings. (templated)
    :param kaleyra_conn_id: the ``kaleyra`` connection. (templated)
    """

    template_fields: Sequence[str] = (
        "kaleyra_conn_id",
        "numbers",
        "audience",
        "output_path",
        "column",
        "shard_index",
        "shard_count",
        "max_failed_ratio",
        "max_invalid_ratio",
        "storage_conn_id",
    )

    def __init__(
        self,
        *,
        output: str | ObjectStoragePath,
        numbers: Iterable[str] | None = None,
        audience: str | ObjectStoragePath | None = None,
        column: str = "phone",
        audience_format: str | None = None,
        shard_index: int | str | None = None,
        shard_count: int | str | None = None,
        max_failed_ratio: float | str = 0.01,
        max_invalid_ratio: float | str | None = None,
        checkpoint_batches: int = CHECKPOINT_BATCHES,
        e164_input: bool = False,
        cache: CacheMode = None,
        cache_max_age_positive: timedelta | str | None = None,
        cache_max_age_negative: timedelta | str | None = None,
        storage_conn_id: str | None = None,
        kaleyra_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            numbers=numbers,
            audience=audience,
            column=column,
            audience_format=audience_format,
            shard_index=shard_index,
            shard_count=shard_count,
            storage_conn_id=storage_conn_id,
            kaleyra_conn_id=kaleyra_conn_id,
            **kwargs,
        )
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
        self.cache_max_age_positive = _age_or_none(cache_max_age_positive, "cache_max_age_positive")
        self.cache_max_age_negative = _age_or_none(cache_max_age_negative, "cache_max_age_negative")

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
        with BulkLookup(
            self.hook,
            output,
            shard=shard,
            checkpoint_batches=self.checkpoint_batches,
            cache=cache,
            log=self.log,
            e164_input=self.e164_input,
        ) as run:
            if shard is None and max_invalid is None:
                # nothing needs the whole audience first: calls start after ~10,000 numbers
                stats = run.stream(self._rows())
            else:
                stats = run.read(self._rows())
                self._check_invalid(stats.inputs, stats.invalid_inputs, max_invalid, run)
                run.lookup()
            self.log.info(
                "Audience: %s rows, %s invalid, %s distinct numbers for this task%s",
                stats.inputs,
                stats.invalid_inputs,
                stats.distinct,
                f" (shard {shard.index} of {shard.count})" if shard else "",
            )
            summary = run.summary(self.hook.transport.requests_sent - requests_before)
            assert run.checkpoint is not None
            failed, distinct = summary["failed_numbers"], summary["distinct"]
            if failed and failed / distinct > max_failed:
                run.checkpoint.discard(run.failed_chunks)  # a retry asks again for these only
                raise AirflowException(
                    f"{failed} of {distinct} distinct numbers could not be looked up "
                    f"(max_failed_ratio={max_failed}); every row, with its reason, is in {summary['output']}"
                )
            run.checkpoint.clear()
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

    @staticmethod
    def _check_invalid(inputs: int, invalid: int, limit: float | None, run: BulkLookup) -> None:
        if limit is None or not inputs or invalid / inputs <= limit:
            return
        reasons = "; ".join(f"{reason} ({n})" for reason, n in run.stats.invalid_reasons.most_common(3))
        raise AirflowFailException(
            f"{invalid} of {inputs} input rows are not valid numbers (max_invalid_ratio={limit}), "
            f"so nothing was looked up. Most common reasons: {reasons}"
        )


class KaleyraSoipCapabilityCheckOperator(_AudienceOperator):
    """Submit an audience for an SMS-over-IP capability check; the answers arrive later by callback.

    Takes the same audience as :class:`KaleyraRcsBulkLookupOperator` (a list, or a file on any
    object store, optionally sharded). Numbers are normalized (the connection's
    ``default_region`` reads national numbers), de-duplicated, recorded in the callback store
    under a new submission id, and submitted in concurrent, paced requests of ``chunk_size``.
    The XCom value is a summary with no phone number in it, which
    :class:`~airflow_provider_kaleyra.sensors.kaleyra.KaleyraSoipCallbackSensor` takes as
    ``submission``::

        {"submission_id": "...", "submitted_at": "2026-01-01T10:00:00+00:00", "numbers": 20000,
         "invalid": 3, "requests": 200, "callback_profile_id": "..."}

    A retry is a new submission; callbacks Kaleyra delivers again count for it.

    :param numbers: the audience as a list, for small audiences. (templated)
    :param audience: the audience as a file (path, URL or ``ObjectStoragePath``): a CSV with a
        header naming ``column``, or plain text with one number per line. (templated)
    :param column: the CSV column holding the numbers. (templated)
    :param audience_format: ``"csv"`` or ``"text"``; by default read from the suffix.
    :param shard_index: this task's shard, from 0; set with ``shard_count``. (templated)
    :param shard_count: how many shards the audience is cut into. (templated)
    :param storage_conn_id: the Airflow connection of the object store, for ``audience`` given as a
        string. (templated)
    :param callback_profile_id: the callback profile; defaults to the connection's. (templated)
    :param chunk_size: numbers per API request.
    :param kaleyra_conn_id: the ``kaleyra`` connection; its ``callback_store_url`` names the store.
        (templated)
    """

    template_fields: Sequence[str] = (
        "kaleyra_conn_id",
        "numbers",
        "audience",
        "column",
        "shard_index",
        "shard_count",
        "storage_conn_id",
        "callback_profile_id",
    )

    def __init__(
        self,
        *,
        numbers: Iterable[str] | None = None,
        audience: str | ObjectStoragePath | None = None,
        column: str = "phone",
        audience_format: str | None = None,
        shard_index: int | str | None = None,
        shard_count: int | str | None = None,
        storage_conn_id: str | None = None,
        callback_profile_id: str | None = None,
        chunk_size: int = SOIP_CHUNK_SIZE,
        kaleyra_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            numbers=numbers,
            audience=audience,
            column=column,
            audience_format=audience_format,
            shard_index=shard_index,
            shard_count=shard_count,
            storage_conn_id=storage_conn_id,
            kaleyra_conn_id=kaleyra_conn_id,
            **kwargs,
        )
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.callback_profile_id = callback_profile_id
        self.chunk_size = chunk_size

    def execute(self, context: Context) -> dict[str, Any]:
        config = self.hook.config
        profile = self.callback_profile_id or config.callback_profile_id
        if not profile:
            raise AirflowFailException(
                "a SOIP capability check needs callback_profile_id, here or on the connection"
            )
        try:
            store = get_store(config.store_url)
        except StoreNotConfigured as exc:
            raise AirflowFailException(str(exc)) from None
        shard = self._shard()
        found = distinct_numbers(self._rows(), config.default_region)
        numbers = found.numbers
        if shard is not None:
            bounds = shard_bounds(len(numbers), shard.count)
            start, stop = bounds[shard.index] if shard.index < len(bounds) else (0, 0)
            numbers = numbers[start:stop]
        if found.invalid:
            reasons = "; ".join(f"{reason} ({n})" for reason, n in found.reasons.most_common(3))
            self.log.warning(
                "%s of %s inputs are not valid numbers: %s", found.invalid, found.inputs, reasons
            )
        submission_id = uuid.uuid4().hex
        store.add_submission(submission_id, numbers)  # before the first request: callbacks can be fast
        submitted_at = datetime.now(UTC)
        requests = self._submit(numbers, profile)
        self.log.info(
            "Submitted %s numbers in %s requests for SOIP capability (submission %s, callback profile %s)",
            len(numbers),
            requests,
            submission_id,
            profile,
        )
        return {
            "submission_id": submission_id,
            "submitted_at": submitted_at.isoformat(),
            "numbers": len(numbers),
            "invalid": found.invalid,
            "requests": requests,
            "callback_profile_id": profile,
        }

    def _submit(self, numbers: list[str], profile: str) -> int:
        """Chunks go out ``max_concurrency`` at a time; the transport paces and retries them."""
        chunks = [numbers[i : i + self.chunk_size] for i in range(0, len(numbers), self.chunk_size)]
        if not chunks:
            self.log.warning("No valid number to submit")
            return 0
        workers = min(self.hook.config.max_concurrency, len(chunks))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kaleyra-soip") as pool:
            futures = [pool.submit(self.hook.submit_soip, chunk, profile) for chunk in chunks]
            try:
                for future in futures:
                    future.result()
            finally:
                for future in futures:
                    future.cancel()
        return len(chunks)
