"""The engine's first stages, a block of rows at a time (per-row Python is what a bulk run pays for):
rows in, normalized into lists aligned with the rows of the block, then de-duplicated by the engine."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from airflow_provider_kaleyra.numbers.audience import RowBlock
from airflow_provider_kaleyra.numbers.normalize import already_e164, normalize_block

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
