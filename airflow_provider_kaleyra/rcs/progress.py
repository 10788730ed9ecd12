"""What a bulk run counts (:class:`Stats`) and logs while its calls are in flight (:class:`Progress`)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

PROGRESS_SECONDS = 30.0


@dataclass
class Stats:
    """What a run did, for the summary and the policy checks."""

    inputs: int = 0
    invalid_inputs: int = 0
    invalid_reasons: Counter[str] = field(default_factory=Counter)
    distinct: int = 0
    batches: int = 0
    chunks: int = 0
    chunks_resumed: int = 0
    failed_numbers: int = 0
    rows: int = 0
    statuses: Counter[str] = field(default_factory=Counter)


class Progress:
    """Logs batches done and numbers a second at each 10% of a known total and every ``PROGRESS_SECONDS``."""

    def __init__(self, log: logging.Logger, total_batches: int | None) -> None:
        self.log, self.total = log, total_batches
        self.done = self.numbers = 0
        self.started = self.last = time.monotonic()
        self.next_step = 1

    def advance(self, numbers: int) -> None:
        """One more batch answered, of ``numbers`` numbers."""
        self.done += 1
        self.numbers += numbers
        now, total = time.monotonic(), self.total
        step = self.done * 10 // total if total else 0
        if step < self.next_step and now - self.last < PROGRESS_SECONDS:
            return
        self.next_step, self.last = step + 1, now
        self.log.info(
            "RCS lookup: %s, %s numbers asked, %.0f numbers/s",
            f"{self.done}/{total} batches ({self.done * 100 // total}%)" if total else f"{self.done} batches",
            self.numbers,
            self.numbers / max(now - self.started, 1e-9),
        )
