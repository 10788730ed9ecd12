"""The simulator's counters (``GET /_sim/stats``, :meth:`KaleyraSimulator.stats`)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from kaleyra_simulator.config import FAULT_KINDS

ENDPOINTS = ("rcs_single", "rcs_bulk", "soip_check", "sim", "unknown")


class Stats:
    """Thread-safe counters; one lock, since every update is a handful of integer adds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def snapshot(self, pending_callbacks: int) -> dict[str, Any]:
        with self._lock:
            c = dict(self._counts)

        def group(prefix: str, keys: tuple[str, ...] = ()) -> dict[str, int]:
            out = dict.fromkeys(keys, 0)
            out.update({k[len(prefix) :]: v for k, v in c.items() if k.startswith(prefix)})
            return out

        return {
            "connections": c.get("connections", 0),
            "requests": group("req.", ENDPOINTS),
            "responses": group("status."),
            "rate_limited": c.get("rate_limited", 0),
            "auth_failures": c.get("auth_failures", 0),
            "faults": group("fault.", FAULT_KINDS),
            "numbers_looked_up": group("numbers.", ("rcs", "soip")),
            "callbacks": {
                "sent": c.get("cb.sent", 0),
                "failed": c.get("cb.failed", 0),
                "retried": c.get("cb.retried", 0),
                "pending": pending_callbacks,
            },
            "callback_tokens": c.get("cb.tokens", 0),  # advanced-auth tokens fetched
        }
