"""A bulk RCS lookup as one pipeline: read, look up and write overlap, memory stays bounded.

Rows are normalized into a local spool file (row order kept) while their distinct numbers,
in first-seen order, are cut into planned batches grouped into checkpoint chunks; chunks with
a part file are read back, the others are looked up and saved as they complete, and the
writer follows the answers through the spool, so the output grows while calls are in flight.

Two ways in, one way through (:meth:`BulkLookup._pipeline`):

- :meth:`BulkLookup.stream`: the whole audience, read while it is looked up: the first calls
  go out after ~10,000 distinct numbers.
- :meth:`BulkLookup.read` then :meth:`BulkLookup.lookup`: when the whole audience must be
  known first: a shard's slice of the distinct numbers depends on how many there are, and
  ``max_invalid_ratio`` is checked before any call.

Rows wait for the writer in a :class:`~.spool.Spool` (memory while short, disk beyond). Memory
holds a dict of the distinct numbers seen (the price of de-duplication), one pointer per number
to a shared answer, and the chunks in flight.
"""

from __future__ import annotations

import logging
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any, NamedTuple

from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.client.api import FAILED, STATUSES
from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
from airflow_provider_kaleyra.numbers.audience import AudienceRow
from airflow_provider_kaleyra.numbers.normalize import DistinctNumbers, already_e164, normalize
from airflow_provider_kaleyra.rcs.answers import Answer, failed, result_for, shared
from airflow_provider_kaleyra.rcs.batching import Shard, plan_batch_sizes, shard_slice, split, stream_batches
from airflow_provider_kaleyra.rcs.cache import CacheRun
from airflow_provider_kaleyra.rcs.checkpoint import Checkpoint, fingerprint
from airflow_provider_kaleyra.rcs.outputs import ResultWriter, write_results
from airflow_provider_kaleyra.rcs.progress import Progress, Stats
from airflow_provider_kaleyra.rcs.spool import Spool

CHECKPOINT_BATCHES = 20  # batches per part file: ~10,000 numbers at 500 per call
_SPOOL_ROWS = 4096  # rows per spool block
_NO_END = 1 << 62  # the stop of a slice whose end is not known yet


class Chunk(NamedTuple):
    """Checkpoint unit: planned calls of ``sizes`` over ``numbers``, at ``start`` in the shard."""

    index: int
    sizes: list[int]
    start: int
    numbers: list[str]


@dataclass
class _Open:
    """A chunk whose answers are not all in yet (or not yet taken up by the writer)."""

    chunk: Chunk
    outstanding: int  # batches still to be answered; 0 for a resumed chunk
    answers: dict[str, Answer]
    resumed: bool = False


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
        e164_input: bool = False,
    ) -> None:
        self.hook = hook
        self.read_number = already_e164 if e164_input else normalize
        self.cache = cache
        self.output = output
        self.shard = shard
        self.checkpoint_batches = checkpoint_batches
        self.log = log or logging.getLogger(__name__)
        self.stats = Stats()
        self.failed_chunks: set[int] = set()
        self.checkpoint: Checkpoint | None = None
        self._spool = Spool()  # blocks of up to ``_SPOOL_ROWS`` rows read, waiting for the writer
        self._rows: deque[tuple[int, list[Any]]] = deque()  # (row number, spool row) read, not written
        self._next_row = 0
        self._distinct = DistinctNumbers(None)  # the numbers read, with their index (set by _spool_rows)
        self._numbers = array("q")  # after read(): this shard's numbers as E.164 digits, in order
        self._first = 0  # index of this shard's first number among all distinct numbers
        self._stop = _NO_END  # index after its last one
        self._answers: list[Answer | None] = []  # aligned with this shard's numbers
        self._answered = 0  # this shard's numbers answered and kept, a prefix
        # With a cache: where each number asked of the API sits among this shard's numbers (the
        # others are answered from the cache, out of order), and the age of each cached answer.
        self._asked_at: array[int] | None = None
        self._ages = array("q")  # aligned with ``_answers``; -1: answered by the API

    def __enter__(self) -> BulkLookup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._spool.close()
        if self.cache is not None:
            self.cache.close()  # (idempotent) answers still queued are written

    # -- reading ---------------------------------------------------------------------------

    def _spool_rows(self, rows: Iterable[AudienceRow]) -> Iterator[str]:
        """Normalize every row into the spool; yields each new distinct E.164 number, first-seen order.

        The spool holds ``(raw, e164, index of the number among the distinct ones)`` per valid row
        and ``(raw, None, reason)`` per invalid one, in input order, in blocks of ``_SPOOL_ROWS``.
        """
        distinct = self._distinct = DistinctNumbers(
            self.hook.config.default_region, self.read_number, positions=True
        )
        add = distinct.add
        buffer: list[tuple[str, str | None, int | str | None]] = []
        for raw, problem in rows:
            e164, reason, index, first = add(raw, problem)
            if first:
                yield e164  # type: ignore[misc]
            if e164 is None:
                buffer.append((raw if isinstance(raw, str) else str(raw), None, reason))
            else:
                buffer.append((raw, e164, index))
            if len(buffer) >= _SPOOL_ROWS:
                self._spool.put(buffer)
                buffer = []
        if buffer:
            self._spool.put(buffer)
        stats = self.stats
        stats.inputs, stats.invalid_inputs, stats.invalid_reasons = (
            distinct.inputs,
            distinct.invalid,
            distinct.reasons,
        )

    def read(self, rows: Iterable[AudienceRow]) -> Stats:
        """Read the whole audience first; keep this shard's distinct numbers, first-seen order."""
        for _ in self._spool_rows(rows):
            pass
        total = len(self._distinct)
        start, stop = shard_slice(total, self.shard)
        numbers = self._numbers
        for digits, index in self._distinct.seen.items():
            if start <= index < stop:
                numbers.append(digits)
        self._distinct.seen.clear()  # the spool has the indexes; only the slice is needed from here
        self._first, self._stop = start, stop
        self.stats.distinct = len(numbers)
        return self.stats

    # -- planning --------------------------------------------------------------------------

    def _chunks(self, batches: Iterable[list[str]]) -> Iterator[Chunk]:
        """Group planned batches into checkpoint chunks, in order."""
        sizes: list[int] = []
        numbers: list[str] = []
        index = start = 0
        for batch in batches:
            sizes.append(len(batch))
            numbers += batch
            if len(sizes) == self.checkpoint_batches:
                yield Chunk(index, sizes, start, numbers)
                index, start, sizes, numbers = index + 1, start + len(numbers), [], []
        if sizes:
            yield Chunk(index, sizes, start, numbers)

    def stream(self, rows: Iterable[AudienceRow]) -> Stats:
        """Read, look up and write the whole audience at once (no shard)."""
        if self.shard is not None:
            raise ValueError("a shard needs the count of distinct numbers first: use read() and lookup()")
        self.checkpoint = Checkpoint(self.output, fingerprint((), (), self.checkpoint_batches))
        numbers = self._through_cache(self._spool_rows(rows))
        self._pipeline(self._chunks(stream_batches(numbers)), total_batches=None)
        self.stats.distinct = self._answered
        return self.stats

    def lookup(self) -> Stats:
        """After :meth:`read`: look up this shard's numbers and write the output as they are answered."""
        asked = self._numbers
        if self.cache is not None:  # planning needs the count of numbers left: read the cache first
            for _ in self._through_cache(f"+{digits}" for digits in self._numbers):
                pass
            asked = array("q", (self._numbers[position] for position in self._asked_at or ()))
        sizes = plan_batch_sizes(len(asked))
        self.checkpoint = Checkpoint(self.output, fingerprint(asked, sizes, self.checkpoint_batches))
        numbers = (f"+{digits}" for digits in asked)
        self._pipeline(self._chunks(split(numbers, sizes)), total_batches=len(sizes))
        return self.stats

    def _through_cache(self, numbers: Iterator[str]) -> Iterator[str]:
        """The distinct numbers, in order, less those the cache answers (kept at their position)."""
        if self.cache is None:
            yield from numbers
            return
        asked_at = self._asked_at = array("q")
        store, ages = self._answers, self._ages
        start = 0
        for chunk, found in self.cache.lookup(numbers):
            store.extend([None] * len(chunk))  # room for answers that come out of order
            ages.extend(array("q", [-1]) * len(chunk))
            for position, e164 in enumerate(chunk, start):
                hit = found.get(e164)
                if hit is None:
                    asked_at.append(position)
                    yield e164
                else:
                    store[position], ages[position] = hit
            start += len(chunk)
            self._advance()

    def _advance(self) -> None:
        """Move the answered prefix past every position now answered."""
        store, answered = self._answers, self._answered
        while answered < len(store) and store[answered] is not None:
            answered += 1
        self._answered = answered

    # -- looking up and writing ------------------------------------------------------------

    def _pipeline(self, chunks: Iterator[Chunk], total_batches: int | None) -> None:
        """Reuse saved chunks, ask for the others, keep answers in chunk order, write behind them."""
        checkpoint, stats = self.checkpoint, self.stats
        assert checkpoint is not None
        present = checkpoint.existing()
        queue: deque[_Open] = deque()
        progress = Progress(self.log, total_batches)

        def to_ask() -> Iterator[list[str]]:
            for chunk in chunks:
                stats.chunks += 1
                stats.batches += len(chunk.sizes)
                saved = checkpoint.load(chunk.index, chunk.numbers) if chunk.index in present else None
                if saved is not None:
                    stats.chunks_resumed += 1
                    queue.append(_Open(chunk, 0, saved, resumed=True))
                else:
                    queue.append(_Open(chunk, len(chunk.sizes), {}))
                    yield from split(chunk.numbers, chunk.sizes)

        with write_results(self.output) as out, closing(self.hook.lookup_batches(to_ask())) as answered:
            for answers in answered:
                entry = next(entry for entry in queue if entry.outstanding)
                entry.answers.update(answers)
                entry.outstanding -= 1
                progress.advance(len(answers))
                self._settle(queue, out)
            self._settle(queue, out)
            self._write(out, final=True)
            stats.rows = out.rows
        if self.cache is not None:
            self.cache.close()  # every new answer written before the summary counts them
        if stats.chunks_resumed:
            self.log.info(
                "Resumed from %s: %s of %s chunks were already answered",
                checkpoint.dir,
                stats.chunks_resumed,
                stats.chunks,
            )

    def _settle(self, queue: deque[_Open], out: ResultWriter) -> None:
        """Keep the answers of the chunks complete at the head of the queue, save new ones, write."""
        assert self.checkpoint is not None
        kept = False
        while queue and not queue[0].outstanding:
            entry = queue.popleft()
            chunk, answers = entry.chunk, entry.answers
            ordered = [(n, answers.get(n) or failed("no answer recorded")) for n in chunk.numbers]
            if not entry.resumed:
                self.checkpoint.save(chunk.index, ordered)
                if self.cache is not None:
                    self.cache.add(ordered)
            self._keep(chunk, ordered)
            kept = True
        if kept:
            self._write(out, final=False)

    def _keep(self, chunk: Chunk, ordered: list[tuple[str, Answer]]) -> None:
        """Store a chunk's answers (shared when equal) at their numbers' positions; count failures."""
        store, asked_at = self._answers, self._asked_at
        if asked_at is None:  # no cache: the chunk's numbers are the next positions
            store.extend([None] * (chunk.start + len(ordered) - len(store)))
        for asked, (_, answer) in enumerate(ordered, chunk.start):
            answer = store[asked if asked_at is None else asked_at[asked]] = shared(answer)
            if answer.status == FAILED:
                self.stats.failed_numbers += 1
                self.failed_chunks.add(chunk.index)
        if asked_at is None:
            self._answered = chunk.start + len(ordered)
        else:
            self._advance()  # (room made by _through_cache)

    def _write(self, out: ResultWriter, *, final: bool) -> None:
        """Write every row, in input order, up to the first one whose number is not answered yet.

        Rows of other shards are skipped; invalid rows belong to shard 0 (or the whole run).
        """
        answers, stats, first, answered = self._answers, self.stats, self._first, self._answered
        ages = self._ages if self.cache is not None else None
        with_invalid = self.shard is None or self.shard.index == 0
        rows = self._rows
        while True:
            if not rows:
                block = self._spool.get()
                if block is None:
                    break
                rows.extend(enumerate(block, self._next_row))
                self._next_row += len(block)
            row, (raw, e164, extra) = rows[0]
            if e164 is None:
                if with_invalid:
                    result = result_for(raw, None, extra, None)
                    out.write(row, result)
                    stats.statuses[result.status] += 1
                rows.popleft()
                continue
            position = extra - first
            if position < 0 or extra >= self._stop:
                rows.popleft()  # another shard's number
                continue
            if position >= answered:
                if final:
                    raise RuntimeError(f"row {row} has no answer although every call is done")
                break
            age = ages[position] if ages is not None else -1
            result = result_for(raw, e164, None, answers[position], age if age >= 0 else None)
            out.write(row, result)
            stats.statuses[result.status] += 1
            rows.popleft()

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
