"""The one RCS lookup pipeline, for ``lookup_rcs_many``, the bulk operator and the preflight's shards.

read -> normalize once -> de-duplicate -> capability cache -> plan 100-500 batches -> call ->
restore input order -> write, a block of rows (:mod:`.blocks`) at a time and overlapped: calls go
out while the audience is read, rows come out as soon as their numbers are answered, waiting in a
:class:`~.spool.Spool` (memory while short, disk beyond). Memory holds the distinct numbers seen,
one pointer per number to a shared answer, and the calls in flight.
With ``checkpoint_at``, answers are saved beside that output under the run's identity (:mod:`.checkpoint`).
"""

from __future__ import annotations

import logging
import time
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from itertools import chain, count, islice
from operator import countOf, itemgetter
from typing import Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.client.api import FAILED, INVALID
from airflow_provider_kaleyra.numbers.audience import RowBlock
from airflow_provider_kaleyra.numbers.normalize import DistinctNumbers
from airflow_provider_kaleyra.rcs.answers import Answer, AnsweredRows, failed, resumed_age
from airflow_provider_kaleyra.rcs.batching import (
    Shard,
    plan_batch_sizes,
    shard_slice,
    split,
    stream_block_batches,
)
from airflow_provider_kaleyra.rcs.blocks import read_block
from airflow_provider_kaleyra.rcs.cache import CacheRun
from airflow_provider_kaleyra.rcs.checkpoint import Checkpoint, fingerprint
from airflow_provider_kaleyra.rcs.progress import Progress, Stats
from airflow_provider_kaleyra.rcs.spool import Spool

CHECKPOINT_BATCHES = 20  # batches per part file: ~10,000 numbers at 500 per call
_NO_END = 1 << 62  # the stop of a slice whose end is not known yet
_FROM_API = array("q", [-1])  # the age of an answer that did not come from the cache
_STATUS = itemgetter(0)  # an answer's status


@dataclass(slots=True)
class Chunk:
    """Checkpoint unit: planned calls of ``sizes`` over ``numbers``, and their answers as they come."""

    index: int
    sizes: list[int]
    numbers: list[str]
    calls_answered: int = 0
    answers: dict[str, Answer] = field(default_factory=dict)


class Engine:
    """One lookup run; use as a context manager (it owns a temporary file and the cache run).

    :param hook: the Kaleyra hook: its ``default_region`` reads national numbers, ``lookup_batches`` calls.
    :param shard: this task's slice of the distinct numbers, or ``None`` for all.
    :param checkpoint_at: the output whose checkpoint parts this run saves and resumes, if any.
    :param run: the run's identity (dag, run, task, map index): part of the checkpoint key.
    :param e164_input: inputs were normalized by an earlier step: only their shape is checked.
    """

    def __init__(
        self,
        hook: Any,
        *,
        cache: CacheRun | None = None,
        shard: Shard | None = None,
        checkpoint_at: ObjectStoragePath | None = None,
        run: str = "",
        checkpoint_batches: int = CHECKPOINT_BATCHES,
        e164_input: bool = False,
        log: logging.Logger | None = None,
    ) -> None:
        self.hook = hook
        self.cache = cache
        self.shard = shard
        self.checkpoint_at = checkpoint_at
        self.run = run
        self.checkpoint_batches = checkpoint_batches
        self.e164_input = e164_input
        self.log = log or logging.getLogger(__name__)
        self.stats = Stats()
        self.failed_chunks: set[int] = set()
        self.checkpoint: Checkpoint | None = None
        self._distinct = DistinctNumbers()
        self._spool = Spool()
        self._head: tuple[Any, int] | None = None  # the oldest block not written yet, and its last position
        self._next_row = 0
        self._first, self._stop = 0, _NO_END  # this shard's distinct numbers: positions [first, stop)
        self._answers: list[Answer | None] = []  # by position (distinct index - first)
        self._ages: array[int] | None = None  # with a cache or resumed parts: ages (AnsweredRows), else -1
        self._answered = 0  # positions answered, a prefix

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._spool.close()
        if self.cache is not None:
            self.cache.close()  # (idempotent) answers still queued are written

    def stream(self, blocks: Iterable[RowBlock]) -> Iterator[AnsweredRows]:
        """Read, look up and answer the whole audience at once (no shard)."""
        if self.shard is not None:
            raise ValueError("a shard needs the count of distinct numbers first: use read() and lookup()")
        self._open_checkpoint((), ())
        numbers = self._unknown(self._read(blocks))
        yield from self._lookup(self._chunks(stream_block_batches(numbers)), total_batches=None)
        self.stats.distinct = len(self._distinct)

    def read(self, blocks: Iterable[RowBlock]) -> Stats:
        """Read the whole audience first (a shard's slice depends on the count of distinct numbers; the
        bulk operator checks ``max_invalid_ratio`` before any call); :meth:`lookup` follows."""
        for _ in self._read(blocks):
            pass
        self._first, self._stop = shard_slice(len(self._distinct), self.shard)
        self.stats.distinct = self._stop - self._first
        return self.stats

    def lookup(self) -> Iterator[AnsweredRows]:
        """After :meth:`read`: look up this shard's numbers; rows come out as they are answered."""
        first, stop = self._first, self._stop
        mine = [e164 for e164, position in self._distinct.seen.items() if first <= position < stop]
        asked = list(chain.from_iterable(self._unknown(iter([mine]))))  # planning needs the count left
        del mine
        sizes = plan_batch_sizes(len(asked))
        self._open_checkpoint(asked, sizes)
        yield from self._lookup(self._chunks(split(asked, sizes)), total_batches=len(sizes))

    def _open_checkpoint(self, asked: Iterable[str], sizes: list[int] | tuple[()]) -> None:
        if self.checkpoint_at is not None:
            key = fingerprint(asked, sizes, self.checkpoint_batches, run=self.run)  # type: ignore[arg-type]
            self.checkpoint = Checkpoint(self.checkpoint_at, key)

    def _read(self, blocks: Iterable[RowBlock]) -> Iterator[list[str]]:
        """Normalize each block into the spool; yields the numbers each block saw first."""
        region = self.hook.config.default_region
        distinct = self._distinct
        for block in blocks:
            e164s, reasons = read_block(block, region, self.e164_input)
            positions, new = distinct.add(e164s, reasons)
            invalid = None in e164s
            top = max(positions, default=-1)
            self._spool.put((block.raws, e164s, positions, reasons if invalid else None, top), len(e164s))
            if new:
                yield new
        self.stats.inputs = distinct.inputs
        self.stats.invalid_inputs = distinct.invalid
        self.stats.invalid_reasons = distinct.reasons

    def _unknown(self, blocks: Iterator[list[str]]) -> Iterator[list[str]]:
        """The distinct numbers, in order, less those the cache answers (stored at their position)."""
        store = self._answers
        if self.cache is None:
            for block in blocks:
                store.extend([None] * len(block))
                if self._ages is not None:  # (answers resumed from a checkpoint have ages)
                    self._ages.extend(_FROM_API * len(block))
                yield block
            return
        ages = self._ages = array("q")
        seen, first = self._distinct.seen, self._first
        for chunk, found in self.cache.lookup(chain.from_iterable(blocks)):
            store.extend([None] * len(chunk))
            ages.extend(_FROM_API * len(chunk))
            if not found:
                yield chunk
                continue
            for e164, (answer, age) in found.items():
                position = seen[e164] - first
                store[position], ages[position] = answer, age
            yield [e164 for e164 in chunk if e164 not in found]
            self._advance()

    def _chunks(self, batches: Iterable[list[str]]) -> Iterator[Chunk]:
        """Group planned batches into checkpoint chunks, in order."""
        batches = iter(batches)
        for index in count():
            group = list(islice(batches, self.checkpoint_batches))
            if not group:
                return
            yield Chunk(index, [len(batch) for batch in group], list(chain.from_iterable(group)))

    def _lookup(self, chunks: Iterator[Chunk], total_batches: int | None) -> Iterator[AnsweredRows]:
        """Reuse saved chunks, ask for the others, keep answers as they come, give rows behind them."""
        checkpoint, stats = self.checkpoint, self.stats
        present = checkpoint.existing() if checkpoint is not None else set()
        waiting: deque[Chunk] = deque()
        progress = Progress(self.log, total_batches)

        def to_ask() -> Iterator[list[str]]:
            for chunk in chunks:
                stats.chunks += 1
                stats.batches += len(chunk.sizes)
                saved = None
                if checkpoint is not None and chunk.index in present:
                    saved = checkpoint.load(chunk.index, chunk.numbers)
                if saved is not None:
                    stats.chunks_resumed += 1
                    self._keep(saved[0], chunk.index)
                    self._resumed(saved[0], saved[1])
                    continue
                waiting.append(chunk)
                yield from split(chunk.numbers, chunk.sizes)

        with closing(self.hook.lookup_batches(to_ask())) as answered:
            for answers in answered:
                chunk = waiting[0]
                chunk.answers.update(answers)
                chunk.calls_answered += 1
                self._keep(answers, chunk.index)
                progress.advance(len(answers))
                if chunk.calls_answered == len(chunk.sizes):
                    self._settle(waiting.popleft())
                yield from self._ready(final=False)
        yield from self._ready(final=True)
        if self.cache is not None:
            self.cache.close()  # every new answer written before the summary counts them
        if stats.chunks_resumed and checkpoint is not None:
            self.log.info(
                "Resumed from %s: %s of %s chunks were already answered",
                checkpoint.dir,
                stats.chunks_resumed,
                stats.chunks,
            )

    def _settle(self, chunk: Chunk) -> None:
        """A chunk fully answered: save it, hand its answers to the cache."""
        answers = chunk.answers
        missing = dict.fromkeys((n for n in chunk.numbers if n not in answers), failed("no answer recorded"))
        if missing:
            self._keep(missing, chunk.index)
            answers.update(missing)
        # (pairs made as they are read: a list of 10,000 new tuples costs a full garbage collection)
        if self.checkpoint is not None:
            self.checkpoint.save(chunk.index, zip(chunk.numbers, map(answers.__getitem__, chunk.numbers)))
        if self.cache is not None:
            self.cache.add(zip(chunk.numbers, map(answers.__getitem__, chunk.numbers)))

    def _resumed(self, answers: dict[str, Answer], saved_at: float) -> None:
        """Answers an earlier try of this task saved: reported with their age, not as fresh."""
        if self._ages is None:
            self._ages = _FROM_API * len(self._answers)
        ages, seen, first = self._ages, self._distinct.seen, self._first
        code = resumed_age(int(max(0.0, time.time() - saved_at)))
        for e164 in answers:
            ages[seen[e164] - first] = code

    def _keep(self, answers: dict[str, Answer], chunk_index: int) -> None:
        """Store answers at their numbers' positions; count failures."""
        positions = list(map(self._distinct.seen.__getitem__, answers))
        found = list(answers.values())  # (shared records: no copy per number)
        first = positions[0] if positions else 0
        if positions == list(range(first, first + len(positions))):  # the usual batch: one slice
            self._answers[first - self._first : first - self._first + len(found)] = found
        else:
            store, first = self._answers, self._first
            for position, answer in zip(positions, found):
                store[position - first] = answer
        failures = countOf(map(_STATUS, found), FAILED)
        if failures:
            self.stats.failed_numbers += failures
            self.failed_chunks.add(chunk_index)
        self._advance()

    def _advance(self) -> None:
        """Move the answered prefix past every position now answered."""
        try:
            self._answered = self._answers.index(None, self._answered)
        except ValueError:
            self._answered = len(self._answers)

    def _ready(self, *, final: bool) -> Iterator[AnsweredRows]:
        """Every block, in input order, up to the first one holding a number not answered yet."""
        while True:
            if self._head is None:
                block = self._spool.get()
                if block is None:
                    return
                self._head = (block, self._last_position(block))
            block, last = self._head
            if last >= self._answered:
                if final:
                    raise RuntimeError(f"row {self._next_row} on has no answer although every call is done")
                return
            self._head = None
            yield self._answer_block(block)

    def _last_position(self, block: tuple[Any, ...]) -> int:
        """The last position (this shard's) a block's rows need answered; -1 for none."""
        positions, top = block[2], block[4]
        if self.shard is None:
            return top
        first, stop = self._first, self._stop
        return max((p - first for p in positions if first <= p < stop), default=-1)

    def _answer_block(self, block: tuple[Any, ...]) -> AnsweredRows:
        raws, e164s, positions, reasons, _ = block
        start = self._next_row
        self._next_row += len(raws)
        rows: Any = range(start, self._next_row)
        if self.shard is not None:  # other shards' rows are theirs; invalid rows belong to shard 0
            first, stop, invalid_too = self._first, self._stop, self.shard.index == 0
            keep = [i for i, p in enumerate(positions) if first <= p < stop or (p < 0 and invalid_too)]
            rows, raws, e164s = [start + i for i in keep], [raws[i] for i in keep], [e164s[i] for i in keep]
            positions = [positions[i] - first if positions[i] >= 0 else -1 for i in keep]
            reasons = [reasons[i] for i in keep] if reasons is not None else None
        store = self._answers
        if reasons is None:
            answers: list[Answer | None] = [store[p] for p in positions]
        else:
            answers = [store[p] if p >= 0 else None for p in positions]
        ages = None
        if self._ages is not None:
            cached = self._ages
            ages = [cached[p] if p >= 0 else -1 for p in positions]
            if ages.count(-1) == len(ages):
                ages = None
        self._count(answers)
        return AnsweredRows(rows, raws, e164s, answers, reasons, ages)

    def _count(self, answers: list[Answer | None]) -> None:
        statuses = self.stats.statuses
        invalid = answers.count(None)
        if invalid:
            statuses[INVALID] += invalid
        statuses.update(map(_STATUS, filter(None, answers)) if invalid else map(_STATUS, answers))
        self.stats.rows += len(answers)
