"""The engine's first stages, a block of rows at a time: rows in, normalized, de-duplicated.

Per-row Python is what a bulk run pays for (issue 21), so every stage takes and gives lists
aligned with the rows of a block (:class:`~airflow_provider_kaleyra.numbers.audience.RowBlock`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from airflow_provider_kaleyra.numbers.audience import RowBlock
from airflow_provider_kaleyra.numbers.normalize import MAX_REASONS, already_e164, normalize_block

BLOCK_ROWS = 4096


def input_blocks(inputs: Iterable[Any]) -> Iterator[RowBlock]:
    """Inputs as they came, in blocks (any object: the normalizer says why a non-string is not a number)."""
    it = iter(inputs)
    while chunk := list(islice(it, BLOCK_ROWS)):
        yield RowBlock(chunk)


def read_block(
    block: RowBlock, region: str | None, e164_input: bool
) -> tuple[list[str | None], list[str | None]]:
    """``(e164s, reasons)`` of a block: normalized, or only checked for the E.164 shape when an earlier
    step normalized the audience (``e164_input``: the preflight's shards)."""
    if not e164_input:
        return normalize_block(block.raws, block.problems, region)
    read = [
        already_e164(raw) if p is None else (None, p)
        for raw, p in zip(block.raws, block.problems or [None] * len(block.raws))
    ]
    return [n[0] for n in read], [n[1] for n in read]


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
            invalid = [r for e, r in zip(e164s, reasons) if e is None]
            self.invalid += len(invalid)
            for reason, count in Counter(r or "invalid" for r in invalid).items():
                if reason in self.reasons or len(self.reasons) < MAX_REASONS:
                    self.reasons[reason] += count
        else:
            positions = [add(e, len(seen)) for e in e164s]  # type: ignore[arg-type]
        added = len(seen) - before
        new = list(islice(reversed(seen), added))[::-1] if added else []
        return positions, new
