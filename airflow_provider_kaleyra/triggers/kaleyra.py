"""Trigger that waits, in the triggerer, for SOIP callbacks to reach the store.

The numbers themselves are not in the trigger's kwargs (100k numbers would bloat the trigger
table); the sensor registers them in the store as a *watch* and the trigger counts against it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_kaleyra.callbacks.store import SchemaVersionError, get_store
from airflow_provider_kaleyra.config import DEFAULT_CONN_ID

MAX_CONSECUTIVE_FAILURES = 5


def _iso(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _parse(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class KaleyraSoipCallbackTrigger(BaseTrigger):
    """Fire once enough watched numbers have a callback received since ``since``, or at ``deadline``.

    :param watch_id: id returned by ``CallbackStore.register_watch`` for the awaited numbers.
    :param since: only callbacks received at or after this time count (ISO 8601 or datetime).
    :param total: how many numbers are watched.
    :param required: how many must be answered to succeed.
    :param kaleyra_conn_id: connection whose ``callback_store_url`` is read when ``store_url`` is unset.
    :param store_url: explicit store URL.
    :param poll_interval: seconds between counts.
    :param deadline: when to give up and report a timeout (ISO 8601 or datetime); ``None``: never.
    """

    def __init__(
        self,
        *,
        watch_id: str,
        since: datetime | str,
        total: int,
        required: int,
        kaleyra_conn_id: str = DEFAULT_CONN_ID,
        store_url: str | None = None,
        poll_interval: float = 30.0,
        deadline: datetime | str | None = None,
    ) -> None:
        super().__init__()
        self.watch_id = watch_id
        self.since = _iso(since)
        self.total = total
        self.required = required
        self.kaleyra_conn_id = kaleyra_conn_id
        self.store_url = store_url
        self.poll_interval = poll_interval
        self.deadline = _iso(deadline)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "watch_id": self.watch_id,
                "since": self.since,
                "total": self.total,
                "required": self.required,
                "kaleyra_conn_id": self.kaleyra_conn_id,
                "store_url": self.store_url,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
            },
        )

    async def _store_url(self) -> str:
        if self.store_url:
            return self.store_url
        from airflow.sdk import BaseHook

        from airflow_provider_kaleyra.config import KaleyraConfig

        conn = await BaseHook.aget_connection(self.kaleyra_conn_id)
        return KaleyraConfig.from_connection(conn).store_url

    def _event(self, status: str, answered: int, message: str | None = None) -> TriggerEvent:
        return TriggerEvent(
            {
                "status": status,
                "answered": answered,
                "total": self.total,
                "required": self.required,
                "watch_id": self.watch_id,
                "message": message,
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Count in a thread (the store is synchronous SQLAlchemy) so the triggerer's loop stays free."""
        try:
            store = get_store(await self._store_url())
        except Exception as exc:
            yield self._event("error", 0, f"cannot open the callback store: {type(exc).__name__}: {exc}")
            return
        since = _parse(self.since) if self.since else datetime.min.replace(tzinfo=UTC)
        deadline = _parse(self.deadline) if self.deadline else None
        answered, failures = 0, 0
        while True:
            try:
                answered = await asyncio.to_thread(store.count_answered_watch, self.watch_id, since)
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
            now = datetime.now(UTC)
            if deadline is not None and now >= deadline:
                yield self._event("timeout", answered)
                return
            wait = self.poll_interval
            if deadline is not None:
                wait = min(wait, max((deadline - now).total_seconds(), 0.0))
            await asyncio.sleep(wait)
