"""Sensor that waits for the SOIP callbacks of a capability check and writes every number's answer."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
)

from airflow_provider_kaleyra.callbacks.store import CAPABLE, MISSING, NOT_CAPABLE, UNPARSEABLE, get_store
from airflow_provider_kaleyra.numbers.masking import MaskedNumbers, mask
from airflow_provider_kaleyra.numbers.normalize import DistinctNumbers, normalize_block
from airflow_provider_kaleyra.operators.base import KaleyraOperator, as_list, fail_fast, run_identity
from airflow_provider_kaleyra.operators.soip import SoipSubmission
from airflow_provider_kaleyra.triggers.kaleyra import KaleyraSoipCallbackTrigger
from airflow_provider_kaleyra.utils.database import redact_url
from airflow_provider_kaleyra.utils.storage import as_path, open_atomic
from airflow_provider_kaleyra.utils.timestamps import as_utc

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_kaleyra.callbacks.store import CallbackStore


def _as_numbers(value: Any) -> list[str]:
    """A rendered ``numbers``: a list, or text (comma-separated, or a JSON list)."""
    if isinstance(value, str):
        value = value.split(",") if not value.lstrip().startswith("[") else json.loads(value)
    return [n for n in (str(v).strip() for v in as_list(value)) if n]


class KaleyraSoipCallbackSensor(KaleyraOperator, BaseSensorOperator):
    """Wait until ``min_answered_ratio`` of a SOIP check's numbers have a callback received after the
    submission, then write one JSON line per number to ``output`` (on a timeout too, unanswered ones
    ``missing``); returns ``{"summary": {counts...}, "output": location}``, no number (README).

    :param submission: the SOIP check operator's XCom; the numbers are read from the callback store.
    :param numbers: instead of ``submission``, numbers to wait for (read with the connection's
        ``default_region``); callbacks received since the DAG run started count.
    :param output: where the per-number JSON Lines go, with ``storage_conn_id``. (templated)
    :param min_answered_ratio: fraction of numbers that must be answered, in ``(0, 1]``.
    :param deferrable: wait in the triggerer, holding no worker slot.
    :param poll_interval: seconds between store counts when deferred; default: ``poke_interval``.
    """

    template_fields: Sequence[str] = (
        "numbers",
        "submission",
        "kaleyra_conn_id",
        "output_path",
        "storage_conn_id",
    )
    ui_color = "#f4d9c6"

    def __init__(
        self,
        *,
        output: str | ObjectStoragePath,
        submission: SoipSubmission | None = None,
        numbers: list[str] | None = None,
        storage_conn_id: str | None = None,
        min_answered_ratio: float = 1.0,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (numbers is None) == (submission is None):
            raise ValueError("pass exactly one of submission (the SOIP check's XCom) or numbers")
        if not 0 < min_answered_ratio <= 1:
            raise ValueError(f"min_answered_ratio must be in (0, 1], got {min_answered_ratio}")
        self.numbers = numbers
        self.submission = submission
        self.output_path = output  # ``self.output`` is BaseOperator's XComArg
        self.storage_conn_id = storage_conn_id
        self.min_answered_ratio = min_answered_ratio
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self._target: tuple[str, datetime, int, int] | None = None  # set by _resolve
        self._last_answered: int | None = None

    def render_template_fields(self, context: Context, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        if self.numbers is not None:  # Airflow records rendered fields: a masked sample only
            self.numbers = MaskedNumbers(_as_numbers(self.numbers))

    @cached_property
    @fail_fast  # no store configured: fails without retries, naming the setting
    def store(self) -> CallbackStore:
        return get_store(self.hook.config.store_url)

    def _resolve(self, context: Context) -> tuple[str, datetime, int, int]:
        """``(submission id, time after which callbacks count, how many numbers, how many needed)``."""
        if self._target is not None:
            return self._target
        if self.submission is not None:
            submission = self.submission if isinstance(self.submission, Mapping) else {}
            if not submission.get("submission_id") or not submission.get("submitted_at"):
                raise AirflowFailException(
                    "submission has no submission_id/submitted_at: pass the XCom of "
                    "KaleyraSoipCapabilityCheckOperator as a dict (submission=check.output, or a template "
                    "in a DAG with render_template_as_native_obj=True)"
                )
            submission_id, since = str(submission["submission_id"]), as_utc(submission["submitted_at"])
        else:
            submission_id, since = self._register_numbers(context)
        total = self.store.submission_size(submission_id)
        self._target = (submission_id, since, total, math.ceil(total * self.min_answered_ratio - 1e-9))
        return self._target

    def _register_numbers(self, context: Context) -> tuple[str, datetime]:
        """Numbers given directly become a submission of this task instance (the same id on every poke)."""
        numbers = DistinctNumbers()
        numbers.add(*normalize_block(_as_numbers(self.numbers), None, self.hook.config.default_region))
        dag_run = context.get("dag_run")
        start = getattr(dag_run, "start_date", None) or getattr(dag_run, "run_after", None)
        if start is None:
            raise ValueError("no submission time: pass the SOIP check's XCom as submission=")
        submission_id = "sensor-" + hashlib.sha256(run_identity(self, context).encode()).hexdigest()[:40]
        self.store.add_submission(submission_id, list(numbers.seen))
        return submission_id, as_utc(start)

    def poke(self, context: Context) -> PokeReturnValue:
        submission_id, since, total, required = self._resolve(context)
        self._last_answered = answered = self.store.count_answered(submission_id, since) if total else 0
        self.log.info(
            "%s of %s numbers answered since %s (%s needed) in %s",
            answered,
            total,
            since.isoformat(),
            required,
            redact_url(self.store.url),
        )
        if answered < required:
            return PokeReturnValue(False)
        return PokeReturnValue(True, self._build_result())

    def execute(self, context: Context) -> Any:
        submission_id, since, total, required = self._resolve(context)
        if not self.deferrable:
            try:
                return super().execute(context)
            except AirflowSensorTimeout as exc:
                raise self._timed_out(str(exc)) from exc
            except AirflowSkipException as exc:
                if exc.__cause__ is None:  # soft_fail's timeout, not a failure it turned into a skip
                    self._timed_out(str(exc))  # writes what arrived
                raise
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        deadline = datetime.now(UTC) + timedelta(seconds=self.timeout)
        poll = self.poll_interval if self.poll_interval is not None else self.poke_interval
        self.log.info("Deferring until %s numbers are answered or %s", required, deadline)
        self.defer(
            trigger=KaleyraSoipCallbackTrigger(
                submission_id=submission_id,
                since=since,
                total=total,
                required=required,
                kaleyra_conn_id=self.kaleyra_conn_id,
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
        self._resolve(context)
        event = event or {}
        self._last_answered = event.get("answered")
        if event.get("status") == "timeout":
            raise self._timed_out(f"Sensor has timed out after {self.timeout} seconds.")
        if event.get("status") != "success":
            raise AirflowException(f"Waiting for Kaleyra callbacks failed: {event.get('message') or event}")
        return self._build_result()

    def _timed_out(self, message: str) -> AirflowSensorTimeout:
        """Writes what did arrive (a soft fail's downstream reads it); the error names the missing count."""
        self._build_result()
        _, _, total, required = self._target
        answered = self._last_answered or 0
        return AirflowSensorTimeout(
            f"{message} {total - answered} of {total} numbers still have no SOIP callback "
            f"({answered} answered, {required} needed)."
        )

    def _build_result(self) -> dict[str, Any]:
        """Stream every submitted number's answer to ``output``; the summary holds counts only."""
        submission_id, since, _, _ = self._target
        counts = Counter(dict.fromkeys((CAPABLE, NOT_CAPABLE, UNPARSEABLE, MISSING), 0))
        missing: list[str] = []
        target = as_path(self.output_path, self.storage_conn_id)
        with open_atomic(target) as handle:
            for number, result in self.store.results(submission_id, since):
                entry = result.as_dict() if result else {"outcome": MISSING}
                counts[entry["outcome"]] += 1
                if result is None and len(missing) < 5:  # a sample for the log
                    missing.append(number)
                handle.write(json.dumps({"number": number, **entry}) + "\n")
        total = sum(counts.values())
        summary = {
            "submission_id": submission_id,
            "total": total,
            "answered": total - counts[MISSING],
            **counts,
            "since": since.isoformat(),
            "min_answered_ratio": self.min_answered_ratio,
        }
        if missing:
            self.log.info(
                "%s numbers without a callback, e.g. %s", counts[MISSING], ", ".join(mask(n) for n in missing)
            )
        self.log.info("SOIP callbacks: %s; per-number results in %s", summary, target)
        return {"summary": summary, "output": str(target)}
