"""A bulk RCS lookup in three passes, with bounded memory and resumable API work.

1. :meth:`BulkLookup.read`: stream the audience, normalize each row into a local spool
   file (row order kept) and collect the distinct E.164 numbers in first-seen order.
2. :meth:`BulkLookup.lookup`: cut this shard's numbers into planned batches, grouped into
   checkpoint chunks; chunks with a part file are read back, the others are looked up
   and saved as they complete.
3. :meth:`BulkLookup.write`: join the spool with the answers into the output file.

Rows stay on disk. Pass 1 holds a dict of the distinct numbers (the price of de-duplication);
after it, memory is 8 bytes per number of the shard plus one pointer to a shared answer.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, Any, NamedTuple

from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.api import FAILED, INVALID, STATUSES
from airflow_provider_kaleyra.audience import AudienceRow
from airflow_provider_kaleyra.batching import plan_batch_sizes, shard_bounds, split
from airflow_provider_kaleyra.cache import CacheRun
from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
from airflow_provider_kaleyra.operators.checkpoint import Checkpoint, fingerprint
from airflow_provider_kaleyra.outputs import write_results
from airflow_provider_kaleyra.phone import normalize
from airflow_provider_kaleyra.results import Answer, failed, result_for, shared

CHECKPOINT_BATCHES = 20  # batches per part file: ~10,000 numbers at 500 per call
PROGRESS_SECONDS = 30.0
_MAX_REASONS = 1000  # distinct invalid reasons counted for messages
_SPOOL_ROWS = 4096  # rows per spool line


class Shard(NamedTuple):
    """Which contiguous slice of the distinct numbers this task owns."""

    index: int
    count: int


class Chunk(NamedTuple):
    """Checkpoint unit: ``batches`` planned calls over ``numbers[start:stop]``."""

    index: int
    sizes: list[int]
    start: int
    stop: int


def _e164(digits: int) -> str:
    return f"+{digits}"


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
    """Logs batches done and numbers per second every 10% or every ``PROGRESS_SECONDS``."""

    def __init__(self, log: logging.Logger, total_batches: int) -> None:
        self.log = log
        self.total = total_batches
        self.done = 0
        self.numbers = 0
        self.started = self.last = time.monotonic()
        self.next_step = 1

    def advance(self, batches: int, numbers: int) -> None:
        self.done += batches
        self.numbers += numbers
        now = time.monotonic()
        step = self.done * 10 // self.total if self.total else 10
        if step >= self.next_step or now - self.last >= PROGRESS_SECONDS or self.done == self.total:
            self.next_step = step + 1
            self.last = now
            rate = self.numbers / max(now - self.started, 1e-9)
            self.log.info(
                "RCS lookup: %s/%s batches (%s%%), %s numbers asked, %.0f numbers/s",
                self.done,
                self.total,
                self.done * 100 // max(self.total, 1),
                self.numbers,
                rate,
            )


class BulkLookup:
    """One bulk lookup run writing ``output``; use as a context manager (it owns a temp file).

    :param hook: the Kaleyra hook (its connection's ``default_region`` reads national numbers).
    :param output: where the results go; checkpoints live beside it.
    :param shard: this task's shard, or ``None`` for the whole audience.
    :param checkpoint_batches: batches per checkpoint part.
    """

    def __init__(
        self,
        hook: KaleyraHook,
        output: ObjectStoragePath,
        *,
        shard: Shard | None = None,
        checkpoint_batches: int = CHECKPOINT_BATCHES,
        cache: CacheRun | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.hook = hook
        self.cache = cache
        self.output = output
        self.shard = shard
        self.checkpoint_batches = checkpoint_batches
        self.log = log or logging.getLogger(__name__)
        self.stats = Stats()
        self.failed_chunks: set[int] = set()
        self.checkpoint: Checkpoint | None = None
        self._spool: IO[str] = tempfile.TemporaryFile(  # noqa: SIM115 - closed by close()
            "w+", encoding="utf-8", newline="\n", prefix="kaleyra-spool-"
        )
        self._numbers = array("q")  # this shard's distinct numbers as E.164 digits, first-seen order
        self._first = 0  # index of ``_numbers[0]`` among all distinct numbers
        self._answers: list[Answer | None] = []  # aligned with ``_numbers``
        self._ages = array("q")  # aligned with ``_numbers``: age of a cached answer, -1 from the API
        self._ask: array[int] | range = range(0)  # positions in ``_numbers`` to ask the API about

    def __enter__(self) -> BulkLookup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._spool.close()
        if self.cache is not None:
            self.cache.close()  # (idempotent) answers still queued are written

    # -- pass 1 ----------------------------------------------------------------------------

    def read(self, rows: Iterable[AudienceRow]) -> Stats:
        """Normalize every row into the spool; collect distinct numbers in first-seen order.

        The spool holds ``[raw, e164, index of the number among the distinct ones]`` per valid row
        and ``[raw, null, reason]`` per invalid one, in input order, as one JSON list per line of
        up to ``_SPOOL_ROWS`` rows (one ``json.dumps`` per row cost a fifth of the pass).
        """
        region = self.hook.config.default_region
        stats, spool = self.stats, self._spool
        distinct: dict[int, int] = {}
        buffer: list[tuple[str, str | None, int | str]] = []
        for raw, problem in rows:
            norm = normalize(raw, region) if problem is None else None
            e164 = norm.e164 if norm else None
            if e164 is None:
                reason = problem or (norm.reason if norm else None) or INVALID
                stats.invalid_inputs += 1
                if reason in stats.invalid_reasons or len(stats.invalid_reasons) < _MAX_REASONS:
                    stats.invalid_reasons[reason] += 1
                buffer.append((raw if isinstance(raw, str) else str(raw), None, reason))
            else:
                buffer.append((raw, e164, distinct.setdefault(int(e164[1:]), len(distinct))))
            stats.inputs += 1
            if len(buffer) >= _SPOOL_ROWS:
                spool.write(json.dumps(buffer) + "\n")
                buffer.clear()
        if buffer:
            spool.write(json.dumps(buffer) + "\n")
        start, stop = self._bounds(len(distinct))
        self._numbers = array("q", islice(distinct, start, stop))
        self._first = start
        self._answers = [None] * len(self._numbers)
        self._ask = range(len(self._numbers))
        del distinct
        stats.distinct = len(self._numbers)
        return stats

    def _bounds(self, total: int) -> tuple[int, int]:
        if self.shard is None:
            return 0, total
        bounds = shard_bounds(total, self.shard.count)
        if self.shard.index >= len(bounds):  # fewer numbers than shards: this one has none
            return total, total
        return bounds[self.shard.index]

    # -- pass 2 ----------------------------------------------------------------------------

    def _from_cache(self) -> None:
        """Answer what the cache knows; only the other numbers are planned into calls."""
        if self.cache is None:
            return
        self._ages = array("q", [-1]) * len(self._numbers)
        self._ask = array("q")
        numbers = (_e164(digits) for digits in self._numbers)
        for position, (_, hit) in enumerate(self.cache.lookup(numbers)):
            if hit is None:
                self._ask.append(position)
            else:
                self._answers[position], self._ages[position] = hit

    def plan(self) -> list[Chunk]:
        self._from_cache()
        sizes = plan_batch_sizes(len(self._ask))
        chunks, start = [], 0
        for index, first in enumerate(range(0, len(sizes), self.checkpoint_batches)):
            chunk_sizes = sizes[first : first + self.checkpoint_batches]
            chunks.append(Chunk(index, chunk_sizes, start, start + sum(chunk_sizes)))
            start += sum(chunk_sizes)
        self.stats.batches, self.stats.chunks = len(sizes), len(chunks)
        asked = self._numbers if self.cache is None else array("q", (self._numbers[p] for p in self._ask))
        self.checkpoint = Checkpoint(self.output, fingerprint(asked, sizes, self.checkpoint_batches))
        return chunks

    def lookup(self) -> Stats:
        """Answer every number of the shard, reusing checkpoint parts and saving new ones."""
        chunks = self.plan()
        assert self.checkpoint is not None
        present = self.checkpoint.existing()
        todo: list[Chunk] = []
        for chunk in chunks:
            saved = (
                self.checkpoint.load(chunk.index, self._chunk_numbers(chunk))
                if chunk.index in present
                else None
            )
            if saved is None:
                todo.append(chunk)
            else:
                self._keep(chunk, saved)
                self.stats.chunks_resumed += 1
        if self.stats.chunks_resumed:
            self.log.info(
                "Resuming from %s: %s of %s chunks already answered",
                self.checkpoint.dir,
                self.stats.chunks_resumed,
                len(chunks),
            )
        progress = Progress(self.log, sum(len(chunk.sizes) for chunk in todo))
        with closing(self.hook.lookup_batches(self._batches(todo))) as answered:
            for chunk in todo:
                part: dict[str, Answer] = {}
                for size in chunk.sizes:
                    part.update(next(answered))
                    progress.advance(1, size)
                numbers = self._chunk_numbers(chunk)
                ordered = [(n, part.get(n) or failed("no answer recorded")) for n in numbers]
                self.checkpoint.save(chunk.index, ordered)
                self._keep(chunk, dict(ordered))
                if self.cache is not None:
                    self.cache.add(ordered)
        if self.cache is not None:
            self.cache.close()
        return self.stats

    def _chunk_numbers(self, chunk: Chunk) -> list[str]:
        return [_e164(self._numbers[p]) for p in self._ask[chunk.start : chunk.stop]]

    def _batches(self, chunks: list[Chunk]) -> Iterator[list[str]]:
        for chunk in chunks:
            yield from split(self._chunk_numbers(chunk), chunk.sizes)

    def _keep(self, chunk: Chunk, answers: dict[str, Answer]) -> None:
        numbers = self._numbers
        for position in self._ask[chunk.start : chunk.stop]:
            answer = shared(answers[_e164(numbers[position])])
            self._answers[position] = answer
            if answer.status == FAILED:
                self.stats.failed_numbers += 1
                self.failed_chunks.add(chunk.index)

    # -- pass 3 ----------------------------------------------------------------------------

    def write(self) -> Stats:
        """Join the spool with the answers into the output: every row of this shard, in input order."""
        answers, ages, stats, first = self._answers, self._ages, self.stats, self._first
        with_invalid = self.shard is None or self.shard.index == 0
        self._spool.seek(0)
        rows = (row for line in self._spool for row in json.loads(line))
        with write_results(self.output) as out:
            for row, (raw, e164, extra) in enumerate(rows):
                if e164 is None:
                    if not with_invalid:
                        continue
                    answer, reason = None, extra
                else:
                    position = extra - first
                    if not 0 <= position < len(answers):
                        continue  # another shard's number
                    answer, reason = answers[position], None
                age = ages[position] if ages and e164 is not None else -1
                result = result_for(raw, e164, reason, answer, None if age < 0 else age)
                out.write(row, result)
                stats.statuses[result.status] += 1
        stats.rows = out.rows
        return stats

    def summary(self, requests: int) -> dict[str, Any]:
        """The small XCom dict: counts only, never numbers."""
        stats = self.stats
        return {
            "output": str(self.output),
            "inputs": stats.inputs,
            "rows": stats.rows,
            "distinct": stats.distinct,
            "statuses": {status: stats.statuses.get(status, 0) for status in STATUSES},
            "failed_numbers": stats.failed_numbers,
            "requests": requests,
            "batches": stats.batches,
            "chunks": stats.chunks,
            "chunks_resumed": stats.chunks_resumed,
            "shard": list(self.shard) if self.shard else None,
            "cache": self.cache.summary() if self.cache else None,
        }
