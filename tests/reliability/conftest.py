"""Shared helpers for the reliability suite: recognisable secrets and a connection to a simulator."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_provider_kaleyra.simulator import KaleyraSimulator

# Recognisable secrets: if any of these shows up in a log, an XCom, a repr or an error, it leaked.
SECRET_API_KEY = "SECRET-APIKEY-zq81x"
SECRET_CALLBACK = "SECRET-CB-77qk"
SECRETS = (SECRET_API_KEY, SECRET_CALLBACK)


def connection_json(sim_url: str, **extra: Any) -> str:
    settings: dict[str, Any] = {
        "rcs_base_url": sim_url,
        "soip_base_url": sim_url,
        "default_region": "US",
        "rate_limit": 0,
        "max_concurrency": 8,
        "max_retries": 4,
        "retry_backoff": 0.01,
        "timeout": 5,
        "callback_profile_id": "profile-reliability",
        "callback_secret": SECRET_CALLBACK,
    }
    settings.update(extra)
    return json.dumps(
        {"conn_type": "kaleyra", "login": "AC-TEST-SID", "password": SECRET_API_KEY, "extra": settings}
    )


@pytest.fixture
def secret_simulator(make_simulator: Callable[..., KaleyraSimulator]) -> Callable[..., KaleyraSimulator]:
    """``secret_simulator(**knobs)``: a simulator that only accepts ``SECRET_API_KEY``."""

    def factory(**knobs: Any) -> KaleyraSimulator:
        knobs.setdefault("api_key", SECRET_API_KEY)
        return make_simulator(**knobs)

    return factory


@pytest.fixture
def use_connection(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``use_connection(url, conn_id="kaleyra_default", **extra)``: define a ``kaleyra`` connection by env var."""

    def define(url: str, conn_id: str = "kaleyra_default", **extra: Any) -> None:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", connection_json(url, **extra))

    return define


class RecordCollector(logging.Handler):
    """Keeps every record of every logger (the root is set to DEBUG while installed)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> list[str]:
        out = []
        for record in self.records:
            try:
                text = record.getMessage()
            except Exception:  # a bad format string is still text we must scan
                text = f"{record.msg!r} {record.args!r}"
            if record.exc_info and record.exc_info[1] is not None:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            out.append(text)
        return out


@pytest.fixture
def all_logs() -> Iterator[RecordCollector]:
    """Every log record from any logger, at any level, for the duration of the test."""
    collector = RecordCollector()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(collector)
    root.setLevel(logging.DEBUG)
    try:
        yield collector
    finally:
        root.removeHandler(collector)
        root.setLevel(old_level)
