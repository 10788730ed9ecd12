"""A first-in first-out queue of row blocks waiting for their answers: in memory while short, on a
local temp file beyond (a read-first shard, a slow API), so memory stays bounded. Pickled: the file is
this process's own, and pickle keeps any input as it came at a fraction of JSON's cost."""

from __future__ import annotations

import pickle
import tempfile
from collections import deque
from typing import Any

MEMORY_ROWS = 65_536  # rows kept in memory before blocks spill to disk


class Spool:
    """``put`` blocks in order, ``get`` them back in the same order; ``rows`` says how big a block is."""

    def __init__(self, memory_rows: int = MEMORY_ROWS) -> None:
        self.memory_rows = memory_rows
        self._memory: deque[tuple[int, Any]] = deque()
        self._memory_size = 0
        self._file: Any = None
        self._on_disk = 0  # blocks on disk, not read back yet
        self.spilled = 0  # blocks that went to disk, for tests and logs

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def put(self, block: Any, rows: int | None = None) -> None:
        size = len(block) if rows is None else rows
        # Blocks in memory are older than blocks on disk: once spilling, stay on disk until drained.
        if not self._on_disk and self._memory_size + size <= self.memory_rows:
            self._memory.append((size, block))
            self._memory_size += size
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile("w+b", prefix="kaleyra-spool-")  # noqa: SIM115 - close()
            self._read_at = 0
        self._file.seek(0, 2)
        pickle.dump(block, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self._on_disk += 1
        self.spilled += 1

    def get(self) -> Any | None:
        """The oldest block, or ``None`` when none is waiting."""
        if self._memory:
            size, block = self._memory.popleft()
            self._memory_size -= size
            return block
        if not self._on_disk:
            return None
        self._file.seek(self._read_at)
        block = pickle.load(self._file)
        self._read_at = self._file.tell()
        self._on_disk -= 1
        if not self._on_disk:  # drained: start over at the beginning of the file
            self._read_at = 0
            self._file.truncate(0)
        return block
