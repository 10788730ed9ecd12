"""Sensor that waits for the SOIP callbacks of a capability check and returns the results."""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout

from airflow_provider_kaleyra.callbacks.store import (
    CAPABLE,
    MISSING,
    NOT_CAPABLE,
    UNPARSEABLE,
    CallbackStore,
    get_store,
    redact_url,
)
from airflow_provider_kaleyra.config import DEFAULT_CONN_ID
from airflow_provider_kaleyra.phone import mask, normalize
from airflow_provider_kaleyra.triggers.kaleyra import KaleyraSoipCallbackTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

MAX_INLINE_RESULTS = 1000
_MISSING_SAMPLE = 5


def _canonical(number: str) -> str:
    """E.164 with ``+``; numbers from the check operator already are, raw ones are read as cc + number."""
    text = str(number).strip()
    digits = re.sub(r"\D", "", text)
    found = normalize(text if text.startswith("+") else "+" + digits).e164
    return found or ("+" + digits if digits else text)


def _as_mapping(value: Any) -> dict[str, Any] | None:
    """XCom dicts arrive as dicts, or as their text when templated without native rendering."""
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, str):
        for loads in (json.loads, ast.literal_eval):
            try:
                loaded = loads(value)
            except (ValueError, SyntaxError):
                continue
            if isinstance(loaded, dict):
                return loaded
    raise ValueError(f"submission must be the SOIP check operator's XCom dict, got {type(value).__name__}")


def _as_numbers(value: Any) -> list[str]:
    if isinstance(value, str):
        value = value.split(",") if not value.lstrip().startswith("[") else json.loads(value)
    if not isinstance(value, (list, tuple, set)):
        raise ValueError(f"numbers must be a list of phone numbers, got {type(value).__name__}")
    return [n for n in (str(v).strip() for v in value) if n]


def _parse_time(value: Any) -> datetime:
    parsed = (
        value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    )
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class KaleyraSoipCallbackSensor(BaseSensorOperator):
    """Wait until the SOIP callbacks for a set of numbers are in the callback store.

    Succeeds when ``answered / total >= min_answered_ratio``, counting only callbacks received after
    the submission. Returns ``{"summary": {...}, "results": {number: {...}}}`` for up to 1,000 numbers,
    or writes one JSON line per number to ``output`` and returns ``{"summary": {...}, "output": location}``.

    :param numbers: numbers to wait for (E.164); default: ``submission["numbers"]``.
    :param submission: the SOIP check operator's XCom, ``{"numbers": [...], "submitted_at": ISO 8601, ...}``;
        without it, callbacks received since the DAG run started count.
    :param kaleyra_conn_id: connection whose ``callback_store_url`` locates the store.
    :param store_url: SQLAlchemy URL of the store, overriding the connection.
    :param min_answered_ratio: fraction of numbers that must be answered, in ``(0, 1]``.
    :param deferrable: wait in the triggerer, holding no worker slot.
    :param poll_interval: seconds between store counts when deferred; default: ``poke_interval``.
    :param output: file (local path or ``ObjectStoragePath``/URL) for per-number JSON Lines; required
        above 1,000 numbers.
    :param storage_conn_id: the Airflow connection of the object store, for ``output`` given as a string.
    """

    # ``output`` is stored as ``output_path``: ``BaseOperator.output`` is the task's XComArg.
    template_fields: Sequence[str] = (
        "numbers",
        "submission",
        "kaleyra_conn_id",
        "store_url",
        "output_path",
        "storage_conn_id",
    )
    ui_color = "#f4d9c6"

    def __init__(
        self,
        *,
        numbers: list[str] | None = None,
        submission: dict[str, Any] | None = None,
        kaleyra_conn_id: str = DEFAULT_CONN_ID,
        store_url: str | None = None,
        min_answered_ratio: float = 1.0,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float | None = None,
        output: str | ObjectStoragePath | None = None,
        storage_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < min_answered_ratio <= 1:
            raise ValueError(f"min_answered_ratio must be in (0, 1], got {min_answered_ratio}")
        self.numbers = numbers
        self.submission = submission
        self.kaleyra_conn_id = kaleyra_conn_id
        self.store_url = store_url
        self.min_answered_ratio = min_answered_ratio
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.output_path = output
        self.storage_conn_id = storage_conn_id
        self._targets: tuple[list[str], datetime] | None = None
        self._last_answered: int | None = None

    def render_template_fields(self, context: Context, jinja_env: Any = None) -> None:
        from airflow_provider_kaleyra.hooks.kaleyra import mask_url_password

        super().render_template_fields(context, jinja_env)
        # before Airflow records the rendered fields: a store_url given here may hold a password
        mask_url_password(self.store_url)

    # -- inputs ---------------------------------------------------------------------------------

    def _resolve_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook

        return KaleyraHook(kaleyra_conn_id=self.kaleyra_conn_id).config.store_url

    def _store(self) -> CallbackStore:
        return get_store(self._resolve_store_url())

    def _resolve_targets(self, context: Context) -> tuple[list[str], datetime]:
        """Numbers (deduplicated E.164) and the time after which callbacks count."""
        if self._targets is not None:
            return self._targets
        submission = _as_mapping(self.submission)
        raw = self.numbers if self.numbers is not None else (submission or {}).get("numbers")
        if raw is None:
            raise ValueError("KaleyraSoipCallbackSensor needs numbers or a submission with numbers")
        numbers = list(dict.fromkeys(_canonical(n) for n in _as_numbers(raw)))
        if submission and submission.get("submitted_at"):
            since = _parse_time(submission["submitted_at"])
        else:
            dag_run = context.get("dag_run")
            start = getattr(dag_run, "start_date", None) or getattr(dag_run, "run_after", None)
            if start is None:
                raise ValueError("no submission time: pass submission={'submitted_at': ...}")
            since = _parse_time(start)
        if len(numbers) > MAX_INLINE_RESULTS and self.output_path is None:
            raise ValueError(
                f"{len(numbers)} numbers is more than {MAX_INLINE_RESULTS}: set output= to a path for "
                "the per-number results (XCom is not the place for them)"
            )
        self._targets = (numbers, since)
        return self._targets

    def _required(self, total: int) -> int:
        return math.ceil(total * self.min_answered_ratio - 1e-9)

    # -- poke and reschedule modes ----------------------------------------------------------------

    def poke(self, context: Context) -> PokeReturnValue:
        numbers, since = self._resolve_targets(context)
        store = self._store()
        answered = store.count_answered(numbers, since) if numbers else 0
        self._last_answered = answered
        required = self._required(len(numbers))
        self.log.info(
            "%s of %s numbers answered since %s (%s needed) in %s",
            answered,
            len(numbers),
            since.isoformat(),
            required,
            redact_url(store.url),
        )
        if answered < required:
            return PokeReturnValue(False)
        return PokeReturnValue(True, self._build_result(context, store, numbers, since))

    def execute(self, context: Context) -> Any:
        numbers, since = self._resolve_targets(context)
        if not self.deferrable:
            try:
                return super().execute(context)
            except AirflowSensorTimeout as exc:
                raise AirflowSensorTimeout(f"{exc} {self._missing_message(len(numbers))}") from exc
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        store = self._store()
        watch_id = store.register_watch(numbers)
        deadline = datetime.now(UTC) + timedelta(seconds=self.timeout)
        poll = self.poll_interval if self.poll_interval is not None else self.poke_interval
        self.log.info("Deferring until %s numbers are answered or %s", self._required(len(numbers)), deadline)
        self.defer(
            trigger=KaleyraSoipCallbackTrigger(
                watch_id=watch_id,
                since=since,
                total=len(numbers),
                required=self._required(len(numbers)),
                kaleyra_conn_id=self.kaleyra_conn_id,
                store_url=self.store_url,
                poll_interval=poll,
                deadline=deadline,
            ),
            method_name="execute_complete",
            # The trigger reports its own timeout with the missing count; this is the backstop
            # for a triggerer that is down.
            timeout=timedelta(seconds=self.timeout + max(60.0, 2 * poll)),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Build the result once the trigger fires; a timeout event becomes ``AirflowSensorTimeout``."""
        numbers, since = self._resolve_targets(context)
        event = event or {}
        store = self._store()
        watch_id = event.get("watch_id")
        try:
            status = event.get("status")
            self._last_answered = event.get("answered")
            if status == "timeout":
                raise AirflowSensorTimeout(
                    f"Sensor has timed out after {self.timeout} seconds. {self._missing_message(len(numbers))}"
                )
            if status != "success":
                raise AirflowException(
                    f"Waiting for Kaleyra callbacks failed: {event.get('message') or event}"
                )
            return self._build_result(context, store, numbers, since)
        finally:
            if watch_id:
                try:
                    store.drop_watch(watch_id)
                except Exception:
                    self.log.warning("Could not drop callback watch %s; purge() removes it later", watch_id)

    def _missing_message(self, total: int) -> str:
        answered = self._last_answered or 0
        required = self._required(total)
        return (
            f"{total - answered} of {total} numbers still have no SOIP callback "
            f"({answered} answered, {required} needed)."
        )

    # -- result -----------------------------------------------------------------------------------

    def _build_result(
        self, context: Context, store: CallbackStore, numbers: list[str], since: datetime
    ) -> dict[str, Any]:
        found = store.results_for(numbers, since) if numbers else {}
        counts = {CAPABLE: 0, NOT_CAPABLE: 0, UNPARSEABLE: 0, MISSING: 0}
        per_number: dict[str, dict[str, Any]] = {}
        for number in numbers:
            result = found.get(number)
            entry = result.as_dict() if result else {"outcome": MISSING}
            counts[entry["outcome"]] += 1
            per_number[number] = entry
        summary = {
            "total": len(numbers),
            "answered": len(numbers) - counts[MISSING],
            **counts,
            "since": since.isoformat(),
            "min_answered_ratio": self.min_answered_ratio,
        }
        missing = [n for n, e in per_number.items() if e["outcome"] == MISSING]
        if missing:
            self.log.info(
                "%s numbers without a callback, e.g. %s",
                len(missing),
                ", ".join(mask(n) for n in missing[:_MISSING_SAMPLE]),
            )
        self.log.info("SOIP callbacks: %s", summary)
        if self.output_path is None:
            return {"summary": summary, "results": per_number}
        location = self._write_output(per_number)
        return {"summary": summary, "output": location}

    def _write_output(self, per_number: dict[str, dict[str, Any]]) -> str:
        """One JSON object per line, so consumers can stream 100k numbers."""
        from airflow_provider_kaleyra.utils.storage import as_path

        target = as_path(self.output_path, self.storage_conn_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w") as handle:
            for number, entry in per_number.items():
                handle.write(json.dumps({"number": number, **entry}) + "\n")
        self.log.info("Wrote %s per-number SOIP results to %s", len(per_number), target)
        return str(target)
