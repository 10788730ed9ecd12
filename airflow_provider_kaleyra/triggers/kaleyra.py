"""Trigger that waits, in the triggerer, for SOIP callbacks to reach the store.

Its kwargs hold no number (100k would bloat the trigger table: the store has them under the
submission id) and no secret (the store's URL is read from the connection when it runs).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_kaleyra.callbacks.store import SchemaVersionError, get_store
from airflow_provider_kaleyra.client.config import DEFAULT_CONN_ID
from airflow_provider_kaleyra.utils.timestamps import as_utc

MAX_CONSECUTIVE_FAILURES = 5


@dataclass(eq=False, repr=False, kw_only=True)  # BaseTrigger's repr and identity
class KaleyraSoipCallbackTrigger(BaseTrigger):
    """Fire once enough submitted numbers have a callback received since ``since``, or at ``deadline``.

    Its fields are its keyword arguments and what it serializes; times are kept as ISO 8601 text."""

    submission_id: str  # the check's submission, whose numbers the store holds
    since: datetime | str  # only callbacks received at or after it count
    total: int  # how many numbers were submitted
    required: int  # how many must be answered to succeed
    kaleyra_conn_id: str = DEFAULT_CONN_ID  # its callback_store_url names the store
    poll_interval: float = 30.0  # seconds between counts
    deadline: datetime | str | None = None  # when to give up and report a timeout; None: never

    def __post_init__(self) -> None:
        super().__init__()
        self.since = as_utc(self.since).isoformat()
        self.deadline = as_utc(self.deadline).isoformat() if self.deadline is not None else None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        kwargs = {field.name: getattr(self, field.name) for field in fields(self)}
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    def _event(self, status: str, answered: int, message: str | None = None) -> TriggerEvent:
        target = {"total": self.total, "required": self.required, "submission_id": self.submission_id}
        return TriggerEvent({"status": status, "answered": answered, **target, "message": message})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Count in a thread (the store is synchronous SQLAlchemy) so the triggerer's loop stays free."""
        from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook

        try:
            config = await KaleyraHook(kaleyra_conn_id=self.kaleyra_conn_id).aconfig()
            store = get_store(config.store_url)
        except Exception as exc:
            yield self._event("error", 0, f"cannot open the callback store: {type(exc).__name__}: {exc}")
            return
        since = as_utc(self.since)
        deadline = as_utc(self.deadline) if self.deadline else datetime.max.replace(tzinfo=UTC)
        answered, failures = 0, 0
        while True:
            try:
                answered = await asyncio.to_thread(store.count_answered, self.submission_id, since)
                failures = 0
            except SchemaVersionError as exc:
                yield self._event("error", answered, str(exc))
                return
            except Exception as exc:
                failures += 1
                self.log.warning("Counting Kaleyra callbacks failed (%s in a row): %s", failures, exc)
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    yield self._event(
                        "error", answered, f"callback store failing: {type(exc).__name__}: {exc}"
                    )
                    return
            else:
                self.log.info("%s of %s numbers answered (%s needed)", answered, self.total, self.required)
                if answered >= self.required:
                    yield self._event("success", answered)
                    return
            left = (deadline - datetime.now(UTC)).total_seconds()
            if left <= 0:
                yield self._event("timeout", answered)
                return
            await asyncio.sleep(min(self.poll_interval, left))
