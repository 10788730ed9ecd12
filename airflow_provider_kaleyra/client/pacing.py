"""How fast and how many: Kaleyra publishes no rate limit, so the client spaces its requests, obeys
429 and ``Retry-After``, and keeps ``rate x latency`` calls in flight (Little's law; the latency is
measured, ``max_concurrency`` only caps it): 8 in flight at 150 ms carry 53/s, not 100/s."""

from __future__ import annotations

import email.utils
import math
import threading
import time
from collections.abc import Callable

MAX_RETRY_AFTER = 60.0  # never sleep longer than this on one Retry-After
BACKOFF_CAP = 30.0
PACER_SLACK = 0.1  # seconds of lateness the pacer makes up (a burst of at most rate x 0.1 + 1)

HEADROOM = 1.5  # service time on the client, jitter, a slow call now and then
EXTRA = 2  # calls beyond the estimate, so a burst of quick answers never starves the pacer
INITIAL_LATENCY = 0.25  # seconds assumed before the first answer
SMOOTHING = 0.2  # weight of each new latency sample in the moving average
OUTLIER = 4.0  # a sample counts for at most this many times the estimate: one stuck call is not a trend


class Pacer:
    """Spaces requests at ``rate`` per second across all threads; ``hold`` pauses everyone.

    Up to ``PACER_SLACK`` s of lateness is made up, else each late slot is lost (at 100/s, 2.5 ms of
    average lateness costs a quarter of the throughput): at most ``rate * (t + PACER_SLACK) + 1`` in ``t`` s.
    """

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate and rate > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self, sleep: Callable[[float], None] | None = None) -> None:
        """Wait for this thread's slot; ``sleep`` may end the wait early by raising."""
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now - PACER_SLACK)
            self._next = slot + self.interval
        if slot > now:
            (sleep or time.sleep)(slot - now)

    def hold(self, seconds: float) -> None:
        """After a 429 the server is the authority: nobody sends before ``seconds`` from now."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta or HTTP date), capped; ``None`` when absent or nonsense (``nan``,
    ``inf``, negative, garbage), so the caller backs off instead of hammering or sleeping forever."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            seconds = max(when.timestamp() - time.time(), 0.0)  # a date passed: "now"
        except (TypeError, ValueError, OverflowError):
            return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


class InFlight:
    """The calls to keep in flight: ``ceil(rate x latency x HEADROOM) + EXTRA``, at most ``cap``
    (``max_concurrency``); ``rate`` is ``rate_limit``, 0 for none (then ``cap`` alone bounds them)."""

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
