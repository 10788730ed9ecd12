"""What goes wrong, on purpose: the seeded dice that pick each request's faults, and the rate limit.

The fault kinds themselves are the ``_fault`` fields of :class:`~.config.SimulatorConfig`
(listed there once, as :data:`~.config.FAULT_KINDS`).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence

from kaleyra_simulator.config import SimulatorConfig

# A request hits at most one of these (the first roll that succeeds, in this order)...
_EXCLUSIVE = ("reset", "error_5xx", "rate_429")
# ...and maybe these on top. The bulk faults are rolled by the bulk endpoint, once it has an answer.
_STACKING = ("slow", "truncated")


class TokenBucket:
    """Requests per second with burst = rate, so an evenly paced client is never throttled."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Take one token: 0.0 when allowed, else the seconds to wait for the next token."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate


class Dice:
    """One seeded RNG shared by all handler threads (locked), so a seed replays the same faults."""

    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def reseed(self, seed: int | None) -> None:
        with self._lock:
            self._rng = random.Random(seed)

    def roll(self, config: SimulatorConfig) -> set[str]:
        """This request's faults: at most one of reset/5xx/429, plus maybe slow and truncated."""
        faults: set[str] = set()
        if not any(getattr(config, kind) for kind in (*_EXCLUSIVE, *_STACKING)):
            return faults
        with self._lock:
            for kind in _EXCLUSIVE:
                if getattr(config, kind) and self._rng.random() < getattr(config, kind):
                    faults.add(kind)
                    break
            for kind in _STACKING:
                if getattr(config, kind) and self._rng.random() < getattr(config, kind):
                    faults.add(kind)
        return faults

    def chance(self, p: float) -> bool:
        with self._lock:
            return self._rng.random() < p

    def choice(self, options: Sequence[int]) -> int:
        with self._lock:
            return self._rng.choice(options)

    def sample(self, population: range, k: int) -> list[int]:
        with self._lock:
            return self._rng.sample(population, k)

    def randint(self, a: int, b: int) -> int:
        with self._lock:
            return self._rng.randint(a, b)
