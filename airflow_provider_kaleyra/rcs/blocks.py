"""The engine's first stages, a block of rows at a time: rows in, normalized, de-duplicated.

Per-row Python is what a bulk run pays for (issue 21), so every stage takes and gives lists
aligned with the rows of a block. ``RowBlock`` and ``normalize_block`` follow the audience
contract (PLAN.md, seams 2 and 3); until ``numbers`` provides them, :func:`row_blocks` and
:func:`normalize_block` here adapt today's row reader and ``normalize``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from airflow_provider_kaleyra.numbers.audience import AudienceRow
from airflow_provider_kaleyra.numbers.normalize import MAX_REASONS, Normalized, normalize

BLOCK_ROWS = 4096


@dataclass(slots=True)
class RowBlock:
    """Rows of an audience, in order: the phone field of each, and why it cannot be a number."""

    raws: list[Any]
    problems: list[str | None] | None = None  # ``None``: no row of the block has a problem
    records: list[list[str]] | None = None  # every column of each row, when asked for


def row_blocks(rows: Iterable[AudienceRow]) -> Iterator[RowBlock]:
    """Today's audience rows (``raw``, ``problem``) in blocks, until ``numbers`` reads blocks itself."""
    it = iter(rows)
    while chunk := list(islice(it, BLOCK_ROWS)):
        problems = [row[1] for row in chunk]
        yield RowBlock([row[0] for row in chunk], problems if any(problems) else None)


def input_blocks(inputs: Iterable[Any]) -> Iterator[RowBlock]:
    """Inputs as they came (any object: the normalizer says why a non-string is not a number)."""
    it = iter(inputs)
    while chunk := list(islice(it, BLOCK_ROWS)):
        yield RowBlock(chunk)


def normalize_block(
    raws: list[Any],
    problems: list[str | None] | None,
    region: str | None,
    read: Callable[[object, str | None], Normalized] = normalize,
) -> tuple[list[str | None], list[str | None]]:
    """``(e164s, reasons)`` aligned with ``raws``: the number, or why there is none."""
    if problems is None:
        read_all = [read(raw, region) for raw in raws]
    else:
        read_all = [read(raw, region) if p is None else (None, p) for raw, p in zip(raws, problems)]
    return [n[0] for n in read_all], [n[1] for n in read_all]


class Distinct:
    """Each valid number's position among the distinct numbers (first-seen order), a block at a time."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.inputs = self.invalid = 0
        self.reasons: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.seen)

    def add(self, e164s: list[str | None], reasons: list[str | None]) -> tuple[list[int], list[str]]:
        """``(positions, new numbers)``: -1 for an invalid row; the numbers seen first in this block."""
        seen = self.seen
        before = len(seen)
        add = seen.setdefault
        self.inputs += len(e164s)
        if None in e164s:
            positions = [-1 if e is None else add(e, len(seen)) for e in e164s]
            self._count_invalid([r for e, r in zip(e164s, reasons) if e is None])
        else:
            positions = [add(e, len(seen)) for e in e164s]  # type: ignore[arg-type]
        added = len(seen) - before
        new = list(islice(reversed(seen), added))[::-1] if added else []
        return positions, new

    def _count_invalid(self, reasons: list[str | None]) -> None:
        self.invalid += len(reasons)
        tally = self.reasons
        for reason, count in Counter(reasons).items():
            if reason in tally or len(tally) < MAX_REASONS:
                tally[reason or "invalid"] += count
