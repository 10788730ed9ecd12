"""Helpers of the reliability suite (a plain module, importable from the tests)."""

from __future__ import annotations

import json
import logging
import subprocess
from typing import Any

from kaleyra_simulator import harness, simulator_connection

# Recognisable secrets: if any of these shows up in a log, an XCom, a repr or an error, it leaked.
SECRET_API_KEY = "SECRET-APIKEY-zq81x"
SECRET_CALLBACK = "SECRET-CB-77qk"
SECRETS = (SECRET_API_KEY, SECRET_CALLBACK)


def connection_json(sim_url: str, **extra: Any) -> str:
    """A connection to ``sim_url`` with the recognisable secrets and the suite's fast-failing defaults."""
    settings: dict[str, Any] = {
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
    return json.dumps(simulator_connection(sim_url, api_key=SECRET_API_KEY, **settings))


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


def start_receiver(
    store_url: str, *, workers: int = 1, capture: bool = False
) -> tuple[subprocess.Popen, int]:
    """The standalone receiver on a free port, expecting ``SECRET_CALLBACK`` (see the harness)."""
    return harness.start_receiver(store_url, SECRET_CALLBACK, workers=workers, capture=capture)
