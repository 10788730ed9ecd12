"""Audience files in, result files out, on any object store Airflow knows (``file://``, ``s3://``, ...).

Every byte goes through :class:`~airflow.sdk.ObjectStoragePath`. Reading streams in
blocks and never holds more than one line (capped at :data:`MAX_LINE_BYTES`); every
line of an audience becomes exactly one row, with a reason when it cannot be a number.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import io
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, NamedTuple

from airflow.sdk import ObjectStoragePath
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_kaleyra.results import FIELDS, RcsResult

MAX_LINE_BYTES = 64 * 1024  # longer lines are refused with a reason, never held whole
READ_BLOCK = 1 << 20
WRITE_BUFFER = 4096  # lines per write call: the store's file wrappers are costly per call

OUTPUT_FIELDS = ("row", *FIELDS)
NOT_UTF8 = "not UTF-8 text"
_BOM = b"\xef\xbb\xbf"
_CSV_SUFFIXES = {".csv"}
_TEXT_SUFFIXES = {"", ".txt", ".text", ".lst"}
_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}


class AudienceRow(NamedTuple):
    """One input: the text found, and the reason it cannot be read as a number (``None`` when it may)."""

    raw: str
    problem: str | None = None


def as_path(
    value: str | os.PathLike[str] | ObjectStoragePath, conn_id: str | None = None
) -> ObjectStoragePath:
    """A path or URL as an ``ObjectStoragePath``; plain local paths are made absolute (``~`` expanded).

    :param conn_id: the Airflow connection of the store, for strings (paths keep their own).
    """
    if isinstance(value, ObjectStoragePath):
        return value
    text = os.fspath(value)
    if "://" not in text:
        text = os.path.abspath(os.path.expanduser(text))
    return ObjectStoragePath(text, conn_id=conn_id)


def audience_format(path: ObjectStoragePath, fmt: str | None = None) -> str:
    """``"csv"`` or ``"text"``: given, or read from the suffix."""
    if fmt is not None:
        if fmt not in ("csv", "text"):
            raise ValueError(f"audience_format must be 'csv' or 'text', got {fmt!r}")
        return fmt
    suffix = path.suffix.lower()
    if suffix in _CSV_SUFFIXES:
        return "csv"
    if suffix in _TEXT_SUFFIXES:
        return "text"
    raise ValueError(
        f"cannot tell the format of audience {path} from its suffix {suffix!r}: "
        "use .csv or .txt, or pass audience_format='csv' or 'text'"
    )


def result_format(path: ObjectStoragePath) -> str:
    """``"csv"`` or ``"jsonl"``, from the output's suffix."""
    suffix = path.suffix.lower()
    if suffix in _CSV_SUFFIXES:
        return "csv"
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    raise ValueError(f"output {path} must end in .csv, .jsonl or .json (JSON Lines), not {suffix!r}")


# -- reading -----------------------------------------------------------------------------


def iter_lines(read: Callable[[int], bytes], limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """Lines of a binary stream without their ``\\n`` / ``\\r\\n``; ``None`` for a line over ``limit`` bytes.

    Reads ``READ_BLOCK`` bytes at a time, so memory stays at one block plus one line,
    whatever the stream holds (even one gigabyte with no newline at all).
    """
    tail = b""
    skipping = False  # inside a line already known to be too long
    while block := read(READ_BLOCK):
        start = 0
        while (end := block.find(b"\n", start)) >= 0:
            if skipping:
                skipping = False
                yield None
            else:
                line = _chomp(tail + block[start:end] if tail else block[start:end])
                tail = b""
                yield line if len(line) <= limit else None
            start = end + 1
        if not skipping:
            rest = block[start:]
            if len(tail) + len(rest) > limit + 1:
                skipping, tail = True, b""
            else:
                tail += rest
    if skipping:
        yield None
    elif tail:
        line = _chomp(tail)
        yield line if len(line) <= limit else None


def _chomp(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


def _decode(line: bytes) -> tuple[str, str | None]:
    try:
        return line.decode("utf-8"), None
    except UnicodeDecodeError:
        return line.decode("utf-8", errors="replace"), NOT_UTF8


def _fields(text: str) -> list[str]:
    if '"' not in text:
        return text.split(",")
    return next(csv.reader([text]), [])


def _column_index(header: list[str], column: str, path: ObjectStoragePath) -> int:
    names = [name.strip() for name in header]
    if column in names:
        return names.index(column)
    folded = [name.casefold() for name in names]
    if folded.count(column.casefold()) == 1:
        return folded.index(column.casefold())
    shown = ", ".join(repr(name[:40]) for name in names[:20]) + (", ..." if len(names) > 20 else "")
    raise ValueError(f"audience {path} has no column {column!r}; columns found: {shown or 'none'}")


def read_audience(
    path: ObjectStoragePath, *, column: str = "phone", fmt: str | None = None
) -> Iterator[AudienceRow]:
    """Stream an audience file: one :class:`AudienceRow` per line after the CSV header.

    CSV files need a header naming ``column``; each physical line is one record (quoted
    fields may hold commas, not newlines). Plain text holds one number per line. A UTF-8
    BOM is dropped; blank lines, over-long lines and lines that are not UTF-8 become rows
    with a reason, so the output can account for every line.

    :raises ValueError: the CSV header is missing, unreadable, or does not name ``column``.
    """
    kind = audience_format(path, fmt)
    with path.open("rb") as stream:
        lines = iter_lines(stream.read)
        first = True
        index = -1
        if kind == "csv":
            header = next(lines, b"")
            if header is None:
                raise ValueError(
                    f"audience {path}: line 1 (the header) is longer than {MAX_LINE_BYTES} bytes"
                )
            header_text, problem = _decode(header.removeprefix(_BOM))
            if problem or not header_text.strip():
                raise ValueError(
                    f"audience {path}: line 1 must be a UTF-8 CSV header naming column {column!r}"
                )
            index = _column_index(_fields(header_text), column, path)
            first = False
        for line in lines:
            if line is None:
                yield AudienceRow("", f"line too long: over {MAX_LINE_BYTES} bytes")
                first = False
                continue
            if first:
                line, first = line.removeprefix(_BOM), False
            text, problem = _decode(line)
            if kind == "text" or not text.strip():
                yield AudienceRow(text, problem)  # a blank line is read as "empty"
                continue
            fields = _fields(text)
            if index < len(fields):
                yield AudienceRow(fields[index], problem)
            else:
                yield AudienceRow("", problem or f"no {column!r} field")


# -- writing -----------------------------------------------------------------------------


def _is_local(path: ObjectStoragePath) -> bool:
    return isinstance(path.fs, LocalFileSystem)


@contextlib.contextmanager
def open_atomic(path: ObjectStoragePath) -> Iterator[IO[str]]:
    """Open ``path`` for writing UTF-8 text so that readers never see a partial file.

    Local files are written under a temporary name and renamed into place; object stores
    publish an object only when its upload completes, so they are written directly.
    """
    if not _is_local(path):
        with path.open("w", encoding="utf-8", newline="") as handle:
            yield handle
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with temp.open("w", encoding="utf-8", newline="", errors="backslashreplace") as handle:
            yield handle
        temp.rename(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            if temp.exists():
                temp.unlink()


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
    """Rows of a result file as dicts, ``row`` as int; empty CSV cells other than ``input`` read as ``None``."""
    fmt = result_format(path)
    with path.open("r", encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            for record in csv.DictReader(handle):
                yield {
                    name: int(value)
                    if name == "row"
                    else (None if value == "" and name != "input" else value)
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
