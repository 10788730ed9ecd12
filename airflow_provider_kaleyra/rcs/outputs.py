"""Result files out: one row per input row, as CSV or JSON Lines, and shard outputs merged back into one."""

from __future__ import annotations

import contextlib
import csv
import heapq
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import IO, Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.rcs.answers import FIELDS, RcsResult
from airflow_provider_kaleyra.utils.storage import as_path, open_atomic

WRITE_BUFFER = 4096  # lines per write call: the store's file wrappers are costly per call
OUTPUT_FIELDS = ("row", *FIELDS)
_INT_FIELDS = {"row", "age_seconds"}  # read back from CSV as numbers, as JSON Lines keeps them
_CSV_SUFFIXES = {".csv"}
_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}


def result_format(path: ObjectStoragePath) -> str:
    """``"csv"`` or ``"jsonl"``, from the output's suffix."""
    suffix = path.suffix.lower()
    if suffix in _CSV_SUFFIXES:
        return "csv"
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    raise ValueError(f"output {path} must end in .csv, .jsonl or .json (JSON Lines), not {suffix!r}")


class ResultWriter:
    """Writes result rows (``row`` + :data:`results.FIELDS`) as CSV or JSON Lines, buffered."""

    def __init__(self, handle: IO[str], fmt: str) -> None:
        self._handle = handle
        self._fmt = fmt
        self._buffer = io.StringIO()
        self._pending = 0
        self._csv = csv.writer(self._buffer, lineterminator="\n")
        self.rows = 0
        if fmt == "csv":
            self._csv.writerow(OUTPUT_FIELDS)

    def write(self, row: int, result: RcsResult) -> None:
        if self._fmt == "csv":
            self._csv.writerow((row, *("" if value is None else value for value in result)))
        else:
            self._buffer.write(json.dumps({"row": row, **result._asdict()}))
            self._buffer.write("\n")
        self.rows += 1
        self._pending += 1
        if self._pending >= WRITE_BUFFER:
            self.flush()

    def flush(self) -> None:
        if self._buffer.tell():
            self._handle.write(self._buffer.getvalue())
            self._buffer.seek(0)
            self._buffer.truncate()
        self._pending = 0


@contextlib.contextmanager
def write_results(path: ObjectStoragePath) -> Iterator[ResultWriter]:
    """``with write_results(path) as out: out.write(row, result)``: format from the suffix."""
    fmt = result_format(path)
    with open_atomic(path) as handle:
        writer = ResultWriter(handle, fmt)
        yield writer
        writer.flush()


def read_results(path: ObjectStoragePath) -> Iterator[dict[str, Any]]:
    """Rows of a result file as dicts, ``row`` and ``age_seconds`` as int; empty CSV cells other than ``input`` read as ``None``."""
    fmt = result_format(path)
    with path.open("r", encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            for record in csv.DictReader(handle):
                yield {
                    name: (None if value == "" and name != "input" else value)
                    if name not in _INT_FIELDS or value == ""
                    else int(value)
                    for name, value in record.items()
                }
        else:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


def merge_results(
    sources: Iterable[str | ObjectStoragePath], destination: str | ObjectStoragePath
) -> dict[str, Any]:
    """Merge shard outputs (each sorted by ``row``) into one file sorted by ``row``, streaming.

    :param sources: the ``output`` of each shard (e.g. the ``output`` key of their XCom summaries).
    :raises ValueError: an output listed twice, or a row in two outputs (nothing is written then).
    :param destination: where the merged file goes; its suffix picks the format.
    :return: ``{"output": ..., "rows": ..., "statuses": {...}}``.
    """
    target = as_path(destination)
    paths = [as_path(source) for source in sources]
    repeated = sorted(name for name, count in Counter(map(str, paths)).items() if count > 1)
    if repeated:
        raise ValueError(
            f"shard outputs listed more than once: {', '.join(repeated)}; each shard must write its "
            "own output (put {{ ti.map_index }} in the output path), or shards overwrite each other"
        )
    statuses: dict[str, int] = {}
    merged = heapq.merge(*(read_results(p) for p in paths), key=lambda record: record["row"])
    previous = None
    with write_results(target) as out:
        for record in merged:
            if record["row"] == previous:
                raise ValueError(
                    f"row {previous} is in more than one shard output: were two shards given the same index?"
                )
            previous = record["row"]
            result = RcsResult(*(record.get(name) for name in FIELDS))
            out.write(record["row"], result)
            statuses[result.status] = statuses.get(result.status, 0) + 1
    return {"output": str(target), "rows": out.rows, "statuses": statuses}
