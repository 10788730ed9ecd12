"""A first-in first-out queue of row blocks: in memory while short, on a local temp file beyond.

The bulk pipeline puts the rows it has read and normalized here and its writer takes them back
once their numbers are answered. While calls keep up, the writer follows the reader closely
and the blocks never leave memory (encoding them cost a tenth of a run); when the writer
falls behind (a read-first shard, a slow API, an audience of garbage that makes no call)
blocks go to disk, so memory stays bounded whatever the audience.
"""

from __future__ import annotations

import json
import tempfile
from collections import deque
from typing import Any

MEMORY_ROWS = 65_536  # rows kept in memory before blocks spill to disk


class Spool:
    """``put`` blocks (lists of JSON-able rows) in order, ``get`` them back in the same order."""

    def __init__(self, memory_rows: int = MEMORY_ROWS) -> None:
        self.memory_rows = memory_rows
        self._memory: deque[list[Any]] = deque()
        self._memory_size = 0
        self._file: Any = None
        self._write_at = 0  # end of the last block on disk
        self._read_at = 0  # start of the next block to read from disk
        self.spilled = 0  # blocks that went to disk, for tests and logs

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def put(self, block: list[Any]) -> None:
        # Blocks in memory are older than blocks on disk: once spilling, stay on disk until drained.
        if self._read_at == self._write_at and self._memory_size + len(block) <= self.memory_rows:
            self._memory.append(block)
            self._memory_size += len(block)
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile("w+b", prefix="kaleyra-spool-")  # noqa: SIM115 - close()
        data = json.dumps(block).encode() + b"\n"
        self._file.seek(self._write_at)
        self._file.write(data)
        self._write_at += len(data)
        self.spilled += 1

    def get(self) -> list[Any] | None:
        """The oldest block, or ``None`` when none is waiting."""
        if self._memory:
            block = self._memory.popleft()
            self._memory_size -= len(block)
            return block
        if self._read_at == self._write_at:
            return None
        self._file.seek(self._read_at)
        line = self._file.readline()
        self._read_at += len(line)
        if self._read_at == self._write_at:  # drained: start over at the beginning of the file
            self._read_at = self._write_at = 0
            self._file.truncate(0)
        return json.loads(line)
