"""Shared fixtures: a real Kaleyra simulator on 127.0.0.1 and a connection pointing at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from kaleyra_simulator import KaleyraSimulator, SimulatorConfig, harness

TEST_SID = "AC-TEST-SID"
TEST_API_KEY = "test-api-key-0123456789"


@pytest.fixture
def make_simulator() -> Iterator[Callable[..., KaleyraSimulator]]:
    """Factory: ``make_simulator(rate_limit=5, error_5xx=0.5)`` starts one; all are stopped at teardown."""
    started: list[KaleyraSimulator] = []

    def factory(**overrides: Any) -> KaleyraSimulator:
        settings: dict[str, Any] = {"sid": TEST_SID, "api_key": TEST_API_KEY, "latency": 0.0}
        settings.update(overrides)
        sim = KaleyraSimulator(SimulatorConfig(**settings)).start()
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        sim.stop()


@pytest.fixture
def simulator(make_simulator: Callable[..., KaleyraSimulator]) -> KaleyraSimulator:
    """A simulator with the default config (no faults, no rate limit, zero latency)."""
    return make_simulator()


@pytest.fixture
def kaleyra_conn(
    monkeypatch: pytest.MonkeyPatch, simulator: KaleyraSimulator, tmp_path: Path
) -> KaleyraSimulator:
    """Point ``kaleyra_default`` at ``simulator`` (both base URLs) and a SQLite store; returns the simulator."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_KALEYRA_DEFAULT",
        simulator.connection_json(
            default_region="US",
            rate_limit=1000,
            max_concurrency=8,
            max_retries=5,
            callback_store_url=f"sqlite:///{tmp_path / 'kaleyra-callbacks.db'}",
        ),
    )
    return simulator


@pytest.fixture
def serve_app() -> Iterator[Callable[..., int]]:
    """Factory: ``serve_app(app)`` serves an ASGI app with uvicorn on a free 127.0.0.1 port, returns the port."""
    with ExitStack() as running:
        yield lambda app, log_level="warning": running.enter_context(harness.serve_app(app, log_level))


class StructlogEvents:
    """Events logged through ``self.log`` of hooks and operators (structlog, not stdlib ``logging``)."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries  # filled as the test runs

    def messages(self) -> list[str]:
        return [str(entry.get("event", "")) for entry in self.entries]

    @property
    def text(self) -> str:
        return "\n".join(self.messages())


@pytest.fixture
def hook_logs() -> Iterator[StructlogEvents]:
    """Every structlog event of the test: the hook logs through ``self.log``, which stdlib ``caplog`` misses."""
    with capture_logs() as entries:
        yield StructlogEvents(entries)
