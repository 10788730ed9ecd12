"""How many calls to keep in flight, from the rate limit and the latency the client observes.

Little's law: to send ``rate`` requests a second when each takes ``latency`` seconds,
``rate x latency`` requests must be in flight. Users set the rate limit (what the account
allows); the latency is measured, so ``max_concurrency`` is only an upper bound. Too few in
flight and the rate limit is never reached (8 at 150 ms carry 53/s, not 100/s); too many
only park threads in the pacer.
"""

from __future__ import annotations

import math
import threading

HEADROOM = 1.5  # service time on the client, jitter, a slow call now and then
EXTRA = 2  # calls beyond the estimate, so a burst of quick answers never starves the pacer
INITIAL_LATENCY = 0.25  # seconds assumed before the first answer
SMOOTHING = 0.2  # weight of each new latency sample in the moving average
OUTLIER = 4.0  # a sample counts for at most this many times the estimate: one stuck call is not a trend


class InFlight:
    """The number of calls to keep in flight: ``ceil(rate x latency x HEADROOM) + EXTRA``, capped.

    :param rate: the connection's ``rate_limit`` (requests per second); 0 for no limit, when
        only ``cap`` bounds the calls in flight.
    :param cap: the connection's ``max_concurrency``.
    """

    def __init__(self, rate: float, cap: int, latency: float = INITIAL_LATENCY) -> None:
        self.rate = rate
        self.cap = max(1, cap)
        self.latency = latency
        self.samples = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"InFlight(rate={self.rate}, cap={self.cap}, latency={self.latency:.3f}, limit={self.limit})"

    def observe(self, seconds: float) -> None:
        """One call's latency (request sent to answer received; the pacer's wait excluded)."""
        if seconds < 0 or math.isnan(seconds):
            return
        with self._lock:
            if self.samples:
                self.latency += SMOOTHING * (min(seconds, OUTLIER * self.latency) - self.latency)
            else:
                self.latency = seconds
            self.samples += 1

    @property
    def limit(self) -> int:
        if not self.rate or self.rate <= 0:
            return self.cap
        return max(1, min(self.cap, math.ceil(self.rate * self.latency * HEADROOM) + EXTRA))
