"""Fixtures of the reliability suite: recognisable secrets and a connection to a simulator."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _reliability import SECRET_API_KEY, RecordCollector, connection_json

from kaleyra_simulator import KaleyraSimulator


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
